"""Who may read and write what, through the real client: a second user, read and write
tokens, a fine-grained token, an organisation with roles, private repos."""

import json
import subprocess

import pytest
from conftest import SECRETS_SEEN, hubmesh_bin
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError


def cli(node, *args):
    out = subprocess.run(
        [str(hubmesh_bin()), *args, "--data", str(node.data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    stdout = out.stdout.strip()
    if args[:2] == ("token", "create"):
        SECRETS_SEEN.add(json.loads(stdout)["token"] if "--json" in args else stdout)
    return stdout


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
    cli(node, "org", "add", "acme")
    cli(node, "org", "member", "add", "acme", "bob", "--role", "contributor")
    tokens = {
        "admin": node.admin_token,
        "bob_write": cli(node, "token", "create", "bob", "--scope", "write"),
        "bob_read": cli(node, "token", "create", "bob", "--scope", "read"),
        "bob_fine_other": cli(node, "token", "create", "bob", "--scope", "write", "--repo", "admin/elsewhere"),
    }
    admin = HfApi(endpoint=node.url, token=tokens["admin"])
    admin.create_repo("admin/public")
    admin.create_repo("admin/secret", private=True)
    admin.create_repo("acme/team", private=True)
    for repo in ("admin/public", "admin/secret", "acme/team"):
        admin.create_commit(repo, [CommitOperationAdd("config.json", b"{}")], commit_message="c")
    return node, tokens


def test_access_matrix(site, tmp_path):
    node, t = site
    api = lambda token: HfApi(endpoint=node.url, token=token)  # noqa: E731
    cache = str(tmp_path / "cache")

    def read(token, repo):
        return status_of(lambda: (api(token).model_info(repo), hf_hub_download(repo, "config.json", endpoint=node.url, token=token, cache_dir=cache, force_download=True)))

    def write(token, repo):
        return status_of(lambda: api(token).create_commit(repo, [CommitOperationAdd("x.txt", b"x")], commit_message="w"))

    expected = {
        # (token, repo): (read status, write status)
        (False, "admin/public"): (200, 401),
        (False, "admin/secret"): (404, 401),
        ("bob_read", "admin/public"): (200, 403),
        ("bob_read", "admin/secret"): (404, 404),
        ("bob_write", "admin/public"): (200, 403),
        ("bob_write", "admin/secret"): (404, 404),
        ("bob_write", "acme/team"): (200, 200),
        ("bob_read", "acme/team"): (200, 403),
        ("bob_fine_other", "acme/team"): (404, 404),
        ("bob_fine_other", "admin/public"): (200, 403),
        ("admin", "admin/secret"): (200, 200),
    }
    got = {}
    for (who, repo), _ in expected.items():
        token = t[who] if who else False
        got[(who, repo)] = (read(token, repo)[0], write(token, repo)[0])
    assert got == expected


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
