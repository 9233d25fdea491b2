"""Issue 14 #3: namespace claims across nodes (ADR 0006).

A node claims a namespace for the mesh when the account is created on it (the admin account
at first start included). Two sites that each had a `bob` before they met keep their own:
neither takes the other's namespace document, neither serves the other's `bob/*`, and both
`bob`s keep creating repos. A node that already heard another node's claim refuses to create
an account of that name (409 `NamespaceClaimedInMesh`, naming the claiming node).
"""

from huggingface_hub import HfApi

from test_mesh_gateway import mesh_repo, request, wait_heard
from test_replication import wait_for


def admin_post(node, path, body):
    return request("POST", f"{node.url}/api/admin/{path}", body, token=node.admin_token)


def make_user(node, name):
    """Creates `name` on `node` and returns a write token of it."""
    status, _, body = admin_post(node, "users", {"name": name})
    assert status == 200, body
    status, _, body = admin_post(node, "tokens", {"user": name, "scope": "write"})
    assert status == 200, body
    return body["token"]


def counters(node):
    status, _, body = request("GET", f"{node.url}/api/mesh/peers")
    assert status == 200, body
    return body["counters"]


def test_two_sites_with_a_bob_keep_their_own_and_later_names_are_refused(node_factory):
    # Site A: `bob` is its admin, created at first start.
    a = node_factory("a", "--admin", "bob")
    # Site B: its own `bob`, created before the two sites meet.
    b = node_factory("b")
    b_token = make_user(b, "bob")
    assert b.terminate() == 0
    b = node_factory("b", "--bootstrap", a.info["p2p"][0])
    c = node_factory("c", "--bootstrap", a.info["p2p"][0])

    a_api = HfApi(endpoint=a.url, token=a.admin_token)
    a_api.create_repo("bob/x")
    a_api.upload_file(path_or_fileobj=b"from a\n", path_in_repo="a.txt", repo_id="bob/x")
    # The mesh carries A's claim and update: C (no local bob) takes them.
    wait_heard(c, a, "bob/x")
    # B hears them too, and refuses them (before the fix: accepts them).
    wait_for("B to judge A's bob/x",
             lambda: counters(b).get("foreign_updates_refused", 0) >= 1
             or (mesh_repo(b, "bob/x") or {}).get("last_seq"), b)

    # B's bob still owns `bob` on B: it creates and writes repos (before: 403
    # NamespaceHostedElsewhere).
    b_api = HfApi(endpoint=b.url, token=b_token)
    b_api.create_repo("bob/y")
    b_api.upload_file(path_or_fileobj=b"from b\n", path_in_repo="b.txt", repo_id="bob/y")
    assert b_api.model_info("bob/y").sha
    # B never serves A's bob/x under its own bob (not even fetched on demand), and knows no
    # signed state of it.
    status, _, _ = request("GET", f"{b.url}/api/models/bob/x")
    assert status == 404
    assert mesh_repo(b, "bob/x") is None
    assert counters(b)["foreign_claims_refused"] >= 1
    # Nor does A take B's bob/y; A's own bob/x is untouched.
    wait_for("A to refuse B's bob/y", lambda: counters(a)["foreign_updates_refused"] >= 1, a)
    assert request("GET", f"{a.url}/api/models/bob/y")[0] == 404
    assert mesh_repo(a, "bob/y") is None
    assert a_api.model_info("bob/x").sha

    # C heard A's claim: an account named bob (user or org) is refused, naming A.
    a_peer = a.info["peer_id"]
    for kind in ("users", "orgs"):
        status, headers, body = admin_post(c, kind, {"name": "bob"})
        assert status == 409, body
        assert headers["x-error-code"] == "NamespaceClaimedInMesh"
        assert a_peer in headers["x-error-message"], headers["x-error-message"]
    # A free name is created (and claimed at once) on C.
    make_user(c, "carol")
