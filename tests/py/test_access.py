"""Who may read and write what, through the real client: a second user, read and write
tokens, a fine-grained token, an organisation with roles, private repos."""

import base64
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest
from conftest import SECRETS_SEEN, cli, hubmesh_bin
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError


def status_of(call):
    try:
        call()
    except RepositoryNotFoundError as e:
        return 404, "RepoNotFound", e
    except HfHubHTTPError as e:
        return e.response.status_code, e.response.headers.get("x-error-code"), e
    return 200, None, None


@pytest.fixture
def site(node, tmp_path):
    cli(node, "user", "add", "bob")
    cli(node, "user", "add", "carol")
    cli(node, "user", "add", "dave")
    cli(node, "org", "add", "acme")
    cli(node, "org", "member", "add", "acme", "bob", "--role", "contributor")
    cli(node, "org", "member", "add", "acme", "carol", "--role", "read")
    revoked = json.loads(cli(node, "token", "create", "bob", "--scope", "write", "--json"))
    cli(node, "token", "revoke", revoked["id"])
    tokens = {
        "admin": node.admin_token,
        "bob_write": cli(node, "token", "create", "bob", "--scope", "write"),
        "bob_read": cli(node, "token", "create", "bob", "--scope", "read"),
        "bob_fine_other": cli(node, "token", "create", "bob", "--scope", "write", "--repo", "admin/elsewhere"),
        "bob_fine_team": cli(node, "token", "create", "bob", "--scope", "write", "--repo", "acme/team"),
        "carol_write": cli(node, "token", "create", "carol", "--scope", "write"),
        "dave_write": cli(node, "token", "create", "dave", "--scope", "write"),
        "revoked": revoked["token"],
    }
    admin = HfApi(endpoint=node.url, token=tokens["admin"])
    admin.create_repo("admin/public")
    admin.create_repo("admin/secret", private=True)
    admin.create_repo("acme/team", private=True)
    for repo in ("admin/public", "admin/secret", "acme/team"):
        admin.create_commit(repo, [CommitOperationAdd("config.json", b"{}")], commit_message="c")
    return node, tokens


def http_status(method, url, token, body=None, headers=None):
    """Status of one raw request; the token goes as Bearer (API) or Basic (git, LFS)."""
    h = dict(headers or {})
    if token and token.startswith("basic:"):
        h["authorization"] = "Basic " + base64.b64encode(f"x:{token[6:]}".encode()).decode()
    elif token:
        h["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        h.setdefault("content-type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# Who may do what, on each surface. Columns: API info, API tree, resolve, API commit,
# LFS batch download, LFS batch upload, git fetch (info/refs of upload-pack), git push
# (info/refs of receive-pack). The Hub's answers: 200 allowed; 401 no or bad credentials
# (git and LFS ask for them with a challenge, also for private repos, so that git retries
# with the token); 403 may see but not write; 404 RepoNotFound — a private repo the caller
# may not see is indistinguishable from a missing one.
MATRIX = {
    (None, "admin/public"):             (200, 200, 200, 401, 200, 401, 200, 401),
    (None, "admin/secret"):             (404, 404, 404, 401, 401, 401, 401, 401),
    ("bob_read", "admin/public"):       (200, 200, 200, 403, 200, 403, 200, 403),
    ("bob_read", "admin/secret"):       (404, 404, 404, 404, 404, 404, 404, 404),
    ("bob_write", "admin/public"):      (200, 200, 200, 403, 200, 403, 200, 403),
    ("bob_write", "acme/team"):         (200, 200, 200, 200, 200, 200, 200, 200),
    ("bob_read", "acme/team"):          (200, 200, 200, 403, 200, 403, 200, 403),
    ("carol_write", "acme/team"):       (200, 200, 200, 403, 200, 403, 200, 403),
    ("dave_write", "acme/team"):        (404, 404, 404, 404, 404, 404, 404, 404),
    ("bob_fine_other", "acme/team"):    (404, 404, 404, 404, 404, 404, 404, 404),
    ("bob_fine_other", "admin/public"): (200, 200, 200, 403, 200, 403, 200, 403),
    ("bob_fine_team", "acme/team"):     (200, 200, 200, 200, 200, 200, 200, 200),
    ("bob_fine_team", "admin/public"):  (200, 200, 200, 403, 200, 403, 200, 403),
    ("revoked", "admin/public"):        (401, 401, 401, 401, 401, 401, 401, 401),
    ("admin", "admin/secret"):          (200, 200, 200, 200, 200, 200, 200, 200),
}


def test_access_matrix(site):
    node, t = site
    u = node.url
    oid = hashlib.sha256(b"{}").hexdigest()
    got = {}
    for (who, repo) in MATRIX:
        token = t[who] if who else None
        basic = f"basic:{token}" if token else None
        commit = b'{"key":"header","value":{"summary":"w"}}\n{"key":"file","value":{"path":"x.txt","content":"eA==","encoding":"base64"}}\n'
        lfs = lambda op: http_status(  # noqa: E731
            "POST", f"{u}/{repo}.git/info/lfs/objects/batch", basic,
            {"operation": op, "transfers": ["basic"], "objects": [{"oid": oid, "size": 2}]},
            {"accept": "application/vnd.git-lfs+json"},
        )
        req = urllib.request.Request(f"{u}/api/models/{repo}/commit/main", data=commit, method="POST",
                                     headers={"content-type": "application/x-ndjson", **({"authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                commit_status = r.status
        except urllib.error.HTTPError as e:
            commit_status = e.code
        got[(who, repo)] = (
            http_status("GET", f"{u}/api/models/{repo}", token),
            http_status("GET", f"{u}/api/models/{repo}/tree/main", token),
            http_status("GET", f"{u}/{repo}/resolve/main/config.json", token),
            commit_status,
            lfs("download"),
            lfs("upload"),
            http_status("GET", f"{u}/{repo}/info/refs?service=git-upload-pack", basic),
            http_status("GET", f"{u}/{repo}/info/refs?service=git-receive-pack", basic),
        )
    wrong = {k: (got[k], v) for k, v in MATRIX.items() if got[k] != v}
    assert not wrong, "\n".join(f"{k}: got {g}, want {w}" for k, (g, w) in wrong.items())


def test_real_clients_agree_with_the_matrix(site, tmp_path):
    """The same rules through huggingface_hub and git themselves."""
    node, t = site
    cache = str(tmp_path / "cache")
    api = lambda token: HfApi(endpoint=node.url, token=token)  # noqa: E731
    assert status_of(lambda: api(t["bob_write"]).model_info("acme/team"))[0] == 200
    assert status_of(lambda: api(t["dave_write"]).model_info("acme/team"))[:2] == (404, "RepoNotFound")
    assert status_of(lambda: hf_hub_download("admin/secret", "config.json", endpoint=node.url, token=False, cache_dir=cache))[0] == 404
    assert status_of(lambda: api(t["carol_write"]).create_commit("acme/team", [CommitOperationAdd("y.txt", b"y")], commit_message="w"))[0] == 403
    env = {**os.environ, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    url = lambda who, repo: node.url.replace("http://", f"http://{who}:{t[who + '_write']}@") + f"/{repo}"  # noqa: E731
    run = lambda *a, cwd=None: subprocess.run(["git", *a], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    assert run("clone", url("dave", "acme/team"), str(tmp_path / "d")).returncode != 0, "non-members cannot clone"
    clone = run("clone", url("carol", "acme/team"), str(tmp_path / "c"))
    assert clone.returncode == 0, clone.stderr
    (tmp_path / "c" / "carol.txt").write_text("c")
    run("add", ".", cwd=tmp_path / "c")
    run("commit", "-m", "c", cwd=tmp_path / "c")
    push = run("push", "origin", "HEAD:main", cwd=tmp_path / "c")
    assert push.returncode != 0, "a read-role member cannot push"
    b = run("clone", url("bob", "acme/team"), str(tmp_path / "b"))
    assert b.returncode == 0, b.stderr
    (tmp_path / "b" / "bob.txt").write_text("b")
    run("add", ".", cwd=tmp_path / "b")
    run("commit", "-m", "b", cwd=tmp_path / "b")
    push = run("push", "origin", "HEAD:main", cwd=tmp_path / "b")
    assert push.returncode == 0, push.stderr
    assert "bob.txt" in api(t["admin"]).list_repo_files("acme/team")
    assert "carol.txt" not in api(t["admin"]).list_repo_files("acme/team")


def test_revoked_token_is_refused_at_once(site):
    node, t = site
    token = cli(node, "token", "create", "bob", "--scope", "write", "--json")
    import json

    record = json.loads(token)
    api = HfApi(endpoint=node.url, token=record["token"])
    assert api.whoami()["name"] == "bob"
    cli(node, "token", "revoke", record["id"])
    with pytest.raises(HfHubHTTPError) as err:
        api.whoami()
    assert err.value.response.status_code == 401


def test_whoami_lists_orgs(site):
    node, t = site
    me = HfApi(endpoint=node.url, token=t["bob_write"]).whoami()
    assert me["name"] == "bob"
    assert [o["name"] for o in me["orgs"]] == ["acme"]


def test_org_roles_follow_the_hub(site):
    """read < contributor < write < admin, through the real client: contributors add commits
    but do not delete branches or tags, change visibility, move or delete the repo; write
    members may delete branches and tags; only admins administer the repo."""
    node, t = site
    cli(node, "user", "add", "wes")
    cli(node, "user", "add", "ada")
    cli(node, "org", "member", "add", "acme", "wes", "--role", "write")
    cli(node, "org", "member", "add", "acme", "ada", "--role", "admin")
    api = {who: HfApi(endpoint=node.url, token=tok) for who, tok in [
        ("contributor", t["bob_write"]),
        ("write", cli(node, "token", "create", "wes", "--scope", "write")),
        ("admin", cli(node, "token", "create", "ada", "--scope", "write")),
    ]}
    repo = "acme/roles"
    api["admin"].create_repo(repo)
    for who, a in api.items():
        a.create_commit(repo, [CommitOperationAdd(f"{who}.txt", b"x")], commit_message=who)
        a.create_branch(repo, branch=f"b-{who}")
        a.create_tag(repo, tag=f"t-{who}")

    c = api["contributor"]
    assert status_of(lambda: c.delete_branch(repo, branch="b-contributor"))[0] == 403
    assert status_of(lambda: c.delete_tag(repo, tag="t-contributor"))[0] == 403
    for who in ("contributor", "write"):
        a = api[who]
        assert status_of(lambda: a.update_repo_settings(repo, private=True))[0] == 403, who
        assert status_of(lambda: a.move_repo(repo, "acme/renamed"))[0] == 403, who
        assert status_of(lambda: a.delete_repo(repo))[0] == 403, who
    # Moving an org repo into one's own namespace is a move, too.
    assert status_of(lambda: c.move_repo(repo, "bob/roles"))[0] == 403
    assert not api["admin"].repo_info(repo).private
    assert {r.name for r in api["admin"].list_repo_refs(repo).branches} >= {"b-contributor"}

    w = api["write"]
    w.delete_branch(repo, branch="b-contributor")
    w.delete_tag(repo, tag="t-contributor")
    a = api["admin"]
    a.update_repo_settings(repo, private=True)
    assert a.repo_info(repo).private
    a.move_repo(repo, "acme/renamed")
    a.delete_repo("acme/renamed")
    assert status_of(lambda: a.repo_info("acme/renamed"))[0] == 404


def test_contributor_cannot_delete_a_branch_with_git_push(site, tmp_path):
    node, t = site
    admin = HfApi(endpoint=node.url, token=t["admin"])
    admin.create_repo("acme/pushed")
    admin.create_commit("acme/pushed", [CommitOperationAdd("a.txt", b"a")], commit_message="a")
    admin.create_branch("acme/pushed", branch="dev")
    url = node.url.replace("http://", f"http://bob:{t['bob_write']}@") + "/acme/pushed"
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    subprocess.run(["git", "init", "-q", str(tmp_path / "w")], check=True)
    out = subprocess.run(["git", "push", url, "--delete", "dev"], cwd=tmp_path / "w", env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out.stderr
    assert "deleting a ref needs" in out.stderr, out.stderr
    assert "dev" in {b.name for b in admin.list_repo_refs("acme/pushed").branches}


def test_listing_applies_a_scoped_tokens_rights_per_repo(site):
    node, t = site
    admin = HfApi(endpoint=node.url, token=t["admin"])
    admin.create_repo("acme/open")
    scoped = HfApi(endpoint=node.url, token=t["bob_fine_other"])  # write on admin/elsewhere only
    for kwargs in ({"author": "acme"}, {"search": "team"}, {"author": "acme", "full": True}, {}):
        names = {m.id for m in scoped.list_models(**kwargs)}
        assert "acme/team" not in names, (kwargs, names)
    assert "acme/open" in {m.id for m in scoped.list_models(author="acme")}
    # bob's own write token still lists the private org repo he may read.
    full = HfApi(endpoint=node.url, token=t["bob_write"])
    assert "acme/team" in {m.id for m in full.list_models(author="acme")}
