"""Gated repos through the real `huggingface_hub` client and the `hf` CLI: the gate set in the
repo's settings, the card's access form (`extra_gated_fields`), access requests (pending,
accepted, rejected, cancelled, granted), auto approval, `GatedRepoError` on downloads (resolve,
git, LFS) while the info and card stay readable; and a grant made on node A enforced on node B,
replicated with the repo's signed refs."""

import base64
import itertools
import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest
from conftest import cli, hf
from conftest import wait_for as poll
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

DEADLINE = 60.0


def wait_for(what, check, node):
    # A replica answers errors (404, 403) until the change arrives: those mean "not yet".
    return poll(what, check, node, timeout=DEADLINE, tolerate=(HfHubHTTPError,))

CARD = b"""---
license: mit
extra_gated_prompt: "You agree to share your contact information."
extra_gated_fields:
  Company: text
  I agree to the terms: checkbox
---
# Gated model
"""


def request(method, url, token=None, body=None, basic=None):
    """Status and JSON body of one raw request."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw.startswith((b"{", b"[")) else raw), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def gated_status(call):
    """The HTTP status of a `GatedRepoError` raised by `call`; fails when it downloads."""
    with pytest.raises(GatedRepoError) as info:
        call()
    return info.value.response.status_code


def test_gated_repo_flow(node, tmp_path):
    for user in ("bob", "carol", "dave"):
        cli(node, "user", "add", user)
    tokens = {u: cli(node, "token", "create", u, "--scope", "write") for u in ("bob", "carol", "dave")}
    admin = HfApi(endpoint=node.url, token=node.admin_token)
    bob, carol, dave = (HfApi(endpoint=node.url, token=tokens[u]) for u in ("bob", "carol", "dave"))
    repo = "admin/gated"
    admin.create_repo(repo)
    admin.create_commit(repo, [
        CommitOperationAdd("README.md", CARD),
        CommitOperationAdd("config.json", b'{"a": 1}'),
        CommitOperationAdd("weights.bin", os.urandom(64 * 1024)),
    ], commit_message="files")
    assert admin.model_info(repo).gated is False
    # Not gated: nothing to request.
    status, _, _ = request("POST", f"{node.url}/api/models/{repo}/user-access-request",
                           tokens["bob"], {"fields": {}})
    assert status == 400
    with pytest.raises(HfHubHTTPError) as e:
        list(admin.list_pending_access_requests(repo))
    assert e.value.response.status_code == 400

    # Only the repo's admins gate it; the hf CLI sets it as update_repo_settings does.
    with pytest.raises(HfHubHTTPError) as e:
        bob.update_repo_settings(repo, gated="manual")
    assert e.value.response.status_code == 403
    hf(node, node.admin_token, "repos", "settings", repo, "--gated", "manual", home=tmp_path / "hf")
    info = bob.model_info(repo)
    assert info.gated == "manual"
    # The card (with its form) and the file list stay readable; the files do not.
    assert info.card_data["extra_gated_fields"]["Company"] == "text"
    assert {"README.md", "config.json", "weights.bin"} <= set(bob.list_repo_files(repo))
    fresh = itertools.count()
    get = lambda api_token, name="config.json": hf_hub_download(  # noqa: E731
        repo, name, endpoint=node.url, token=api_token, cache_dir=tmp_path / f"cache{next(fresh)}")
    assert gated_status(lambda: get(tokens["bob"])) == 403
    assert gated_status(lambda: get(False)) == 401
    status, _, headers = request("GET", f"{node.url}/{repo}/resolve/main/config.json", tokens["bob"])
    assert status == 403 and headers["x-error-code"] == "GatedRepo"
    # git and the LFS batch API refuse too; the admin (a writer) downloads.
    status, _, _ = request("GET", f"{node.url}/{repo}.git/info/refs?service=git-upload-pack",
                           basic=f"bob:{tokens['bob']}")
    assert status == 403
    sha = admin.model_info(repo, files_metadata=True)
    weights = next(s for s in sha.siblings if s.rfilename == "weights.bin")
    status, _, _ = request("POST", f"{node.url}/{repo}.git/info/lfs/objects/batch",
                           body={"operation": "download", "objects": [
                               {"oid": weights.lfs.sha256, "size": weights.lfs.size}]},
                           basic=f"bob:{tokens['bob']}")
    assert status == 403
    assert open(get(node.admin_token), "rb").read() == b'{"a": 1}'

    # A request must fill in the card's form; then it waits for a writer.
    url = f"{node.url}/api/models/{repo}/user-access-request"
    status, body, _ = request("POST", url, tokens["bob"], {"fields": {"Company": "Acme"}})
    assert status == 400, body
    form = {"Company": "Acme", "I agree to the terms": True}
    status, body, _ = request("POST", url, tokens["bob"], {"fields": form})
    assert (status, body) == (200, {"status": "pending"})
    status, body, _ = request("GET", url, tokens["bob"])
    assert body["gated"] == "manual" and body["request"]["status"] == "pending"
    assert gated_status(lambda: get(tokens["bob"])) == 403
    pending = list(admin.list_pending_access_requests(repo))
    assert [(r.username, r.status, r.fields) for r in pending] == [("bob", "pending", form)]
    # Readers may not see or handle requests.
    with pytest.raises(HfHubHTTPError) as e:
        list(carol.list_pending_access_requests(repo))
    assert e.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as e:
        carol.accept_access_request(repo, "bob")
    assert e.value.response.status_code == 403

    admin.accept_access_request(repo, "bob")
    assert open(get(tokens["bob"]), "rb").read() == b'{"a": 1}'
    assert get(tokens["bob"], "weights.bin")
    assert [r.username for r in admin.list_accepted_access_requests(repo)] == ["bob"]
    with pytest.raises(HfHubHTTPError) as e:
        admin.accept_access_request(repo, "bob")
    assert e.value.response.status_code == 404

    admin.reject_access_request(repo, request_id=pending[0].request_id, rejection_reason="no")
    assert gated_status(lambda: get(tokens["bob"])) == 403
    assert [r.username for r in admin.list_rejected_access_requests(repo)] == ["bob"]
    admin.cancel_access_request(repo, "bob")
    assert [r.username for r in admin.list_pending_access_requests(repo)] == ["bob"]
    with pytest.raises(HfHubHTTPError) as e:
        admin.accept_access_request(repo, "nobody")
    assert e.value.response.status_code == 404

    # A grant needs no request; granting twice is a 400.
    admin.grant_access(repo, "carol")
    assert open(get(tokens["carol"]), "rb").read() == b'{"a": 1}'
    with pytest.raises(HfHubHTTPError) as e:
        admin.grant_access(repo, "carol")
    assert e.value.response.status_code == 400

    # Auto approval: a complete request is accepted at once.
    admin.update_repo_settings(repo, gated="auto")
    assert dave.model_info(repo).gated == "auto"
    assert gated_status(lambda: get(tokens["dave"])) == 403
    status, body, _ = request("POST", url, tokens["dave"], {"fields": form})
    assert (status, body) == (200, {"status": "accepted"})
    assert open(get(tokens["dave"]), "rb").read() == b'{"a": 1}'
    # Still pending for bob: switching to auto does not approve old requests.
    assert gated_status(lambda: get(tokens["bob"])) == 403

    # Ungated: everyone downloads again.
    admin.update_repo_settings(repo, gated=False)
    assert admin.model_info(repo).gated is False
    assert open(get(False), "rb").read() == b'{"a": 1}'


def test_a_grant_on_a_is_enforced_on_b(node_factory, tmp_path):
    a = node_factory("a", "--admin", "alice")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    cli(b, "user", "add", "bob")
    bob_on_b = cli(b, "token", "create", "bob", "--scope", "read")
    on_a = HfApi(endpoint=a.url, token=a.admin_token)
    on_b = HfApi(endpoint=b.url, token=bob_on_b)
    repo = "alice/gated"
    on_a.create_repo(repo)
    on_a.create_commit(repo, [CommitOperationAdd("config.json", b'{"b": 2}')], commit_message="c")
    on_a.update_repo_settings(repo, gated="manual")

    fresh = itertools.count()

    def get():
        return hf_hub_download(repo, "config.json", endpoint=b.url, token=bob_on_b,
                               cache_dir=tmp_path / f"cache{next(fresh)}")

    # B learns the gate with the repo, and refuses bob until A grants him access.
    wait_for("the gate on B", lambda: on_b.model_info(repo).gated == "manual", b)
    with pytest.raises(GatedRepoError):
        get()
    # Requests are writes: B sends them to the hosting node by name.
    status, body, headers = request("POST", f"{b.url}/api/models/{repo}/user-access-request",
                                    bob_on_b, {"fields": {}})
    assert status == 403 and headers["x-error-code"] == "NamespaceHostedElsewhere", body
    on_a.grant_access(repo, "bob")

    def served():
        try:
            return open(get(), "rb").read() == b'{"b": 2}'
        except GatedRepoError:
            return False

    wait_for("bob served on B after the grant on A", served, b)
