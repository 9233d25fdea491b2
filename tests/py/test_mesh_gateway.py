"""Issue #6: a runtime seeding policy (`hubmesh seed add|rm|list`) and "any gateway serves the
whole mesh" (on-demand fetches of public repos a node does not hold; writes to a namespace
hosted elsewhere are refused with the hosting node's peer id).

Node A hosts `alice`; the other nodes bootstrap from A. Every node hears every public signed
update (gossip + catch-up), so the mesh inspection API shows `last_seq` before any fetch.
"""

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.utils import HfHubHTTPError

from conftest import hubmesh_bin
from test_replication import safetensors_bytes, wait_for


class LfsRefused(Exception):
    """An error answer to a git-lfs batch request, shaped like an HfHubHTTPError's response."""

    def __init__(self, status, headers, text):
        super().__init__(f"{status}: {text}")
        self.response = self
        self.status_code = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.text = text


def lfs_upload_batch(node, repo):
    """A git-lfs batch upload request, as `git lfs push` sends it; raises LfsRefused on an
    error status."""
    body = {"operation": "upload", "transfers": ["basic"],
            "objects": [{"oid": "a" * 64, "size": 1}]}
    req = urllib.request.Request(
        f"{node.url}/{repo}.git/info/lfs/objects/batch", data=json.dumps(body).encode(),
        headers={"content-type": "application/vnd.git-lfs+json",
                 "accept": "application/vnd.git-lfs+json",
                 "authorization": f"Bearer {node.admin_token}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        raise LfsRefused(e.code, dict(e.headers), e.read().decode()) from None


def request(method, url, body=None, token=None):
    """(status, headers, parsed JSON or text) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode(errors="replace")[:500]


def mesh_repo(node, repo):
    status, _, body = request("GET", f"{node.url}/api/mesh/repos/model/{repo}")
    return body if status == 200 else None


def wait_heard(node, origin, repo):
    """Waits until `node` accepted the signed update `origin` published last for `repo` (or a
    later one: `origin` may announce again while this waits)."""
    seq = mesh_repo(origin, repo)["last_seq"]
    wait_for(f"{repo} seq {seq} to be accepted",
             lambda: ((mesh_repo(node, repo) or {}).get("last_seq") or 0) >= seq, node)
    return seq


def seed_cli(node, *args, check=True):
    out = subprocess.run(
        [str(hubmesh_bin()), "seed", *args, "--data", str(node.data)],
        capture_output=True, text=True, timeout=60,
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def seed_list(node):
    listed = json.loads(seed_cli(node, "list", "--json").stdout)["seeds"]
    return [(s["pattern"], s["source"]) for s in listed]


def local_sha(node, repo):
    """The commit `repo` is at on `node` (only for repos the node holds: no on-demand fetch
    is triggered when the repo is there)."""
    status, _, body = request("GET", f"{node.url}/api/models/{repo}")
    assert status == 200, body
    return body["sha"]


def test_seed_commands_change_what_a_running_node_replicates(node_factory):
    a = node_factory("a", "--admin", "alice")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0])
    api = HfApi(endpoint=a.url, token=a.admin_token)
    api.create_repo("alice/tiny")
    api.upload_file(path_or_fileobj=b"one\n", path_in_repo="notes.txt", repo_id="alice/tiny")
    sha = api.model_info("alice/tiny").sha

    # B hears of the repo but seeds nothing: it holds nothing.
    wait_heard(b, a, "alice/tiny")
    state = mesh_repo(b, "alice/tiny")
    assert state["local"] is False and state["seeded"] is False, state
    assert seed_list(b) == []

    # Bad patterns and callers without the admin token are refused with the Hub's headers.
    bad = seed_cli(b, "add", "alice/x/y", check=False)
    assert bad.returncode != 0 and "invalid seed pattern" in bad.stderr, bad.stderr
    status, headers, _ = request("POST", f"{b.url}/api/mesh/seeds", {"pattern": "../x"},
                                 token=b.admin_token)
    assert status == 400 and headers["x-error-code"] == "InvalidSeedPattern"
    assert "invalid seed pattern" in headers["x-error-message"]
    assert request("POST", f"{b.url}/api/mesh/seeds", {"pattern": "alice/*"})[0] == 401

    # `seed add` starts syncing what B already heard of.
    assert "now seeding alice/*" in seed_cli(b, "add", "alice/*").stdout
    wait_for("alice/tiny to replicate after `seed add`",
             lambda: (mesh_repo(b, "alice/tiny") or {}).get("local"), b)
    assert mesh_repo(b, "alice/tiny")["seeded"] is True
    wait_for("B to reach A's commit", lambda: local_sha(b, "alice/tiny") == sha, b)
    assert seed_list(b) == [("alice/*", "runtime")], "replicated by the pattern, not on demand"

    # The pattern survives a restart and merges with configured patterns.
    assert b.terminate() == 0
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "carol/*")
    assert seed_list(b) == [("carol/*", "config"), ("alice/*", "runtime")]
    api.upload_file(path_or_fileobj=b"two\n", path_in_repo="notes.txt", repo_id="alice/tiny")
    sha2 = api.model_info("alice/tiny").sha
    wait_for("B to follow A after the restart", lambda: local_sha(b, "alice/tiny") == sha2, b)

    # Configured patterns cannot be removed at run time; unknown ones are a 404.
    out = seed_cli(b, "rm", "carol/*", check=False)
    assert out.returncode != 0 and "configuration" in out.stderr, out.stderr
    status, headers, _ = request("DELETE", f"{b.url}/api/mesh/seeds?pattern=dave%2F%2A",
                                 token=b.admin_token)
    assert status == 404 and headers["x-error-code"] == "SeedPatternNotFound"

    # `seed rm` stops future fetches; what was replicated stays.
    assert "no longer seeding alice/*" in seed_cli(b, "rm", "alice/*").stdout
    assert seed_list(b) == [("carol/*", "config")]
    api.upload_file(path_or_fileobj=b"three\n", path_in_repo="notes.txt", repo_id="alice/tiny")
    wait_heard(b, a, "alice/tiny")
    assert mesh_repo(b, "alice/tiny")["seeded"] is False
    assert local_sha(b, "alice/tiny") == sha2


def test_any_gateway_serves_public_repos_it_does_not_hold(node_factory, tmp_path):
    a = node_factory("a", "--admin", "alice")
    c = node_factory("c", "--bootstrap", a.info["p2p"][0])
    api = HfApi(endpoint=a.url, token=a.admin_token)
    weights = safetensors_bytes(3)
    config = b'{"model_type": "tiny"}\n'
    for name in ("alice/weights", "alice/code", "alice/tree"):
        api.create_repo(name)
        api.create_commit(
            name,
            [CommitOperationAdd(path_in_repo="model.safetensors", path_or_fileobj=weights),
             CommitOperationAdd(path_in_repo="config.json", path_or_fileobj=config)],
            commit_message="add files",
        )
    api.create_repo("alice/secret", private=True)
    api.upload_file(path_or_fileobj=b"private\n", path_in_repo="x.txt", repo_id="alice/secret")
    for name in ("alice/weights", "alice/code", "alice/tree"):
        wait_heard(c, a, name)
        assert mesh_repo(c, name)["local"] is False

    # A download is the first request C sees for alice/weights: fetched on demand, LFS
    # content included, byte-identical.
    got = hf_hub_download("alice/weights", "model.safetensors", endpoint=c.url,
                          cache_dir=tmp_path / "hf", token=False)
    assert open(got, "rb").read() == weights
    got = hf_hub_download("alice/weights", "config.json", endpoint=c.url,
                          cache_dir=tmp_path / "hf", token=False)
    assert open(got, "rb").read() == config
    anon = HfApi(endpoint=c.url, token=False)
    sha = api.model_info("alice/weights").sha
    assert anon.model_info("alice/weights").sha == sha
    assert anon.model_info("alice/weights", revision=sha).sha == sha

    # model_info (with a revision) as the first request.
    sha_tree = api.model_info("alice/tree").sha
    info = anon.model_info("alice/tree", revision=sha_tree, files_metadata=True)
    assert info.sha == sha_tree
    assert sorted(s.rfilename for s in info.siblings) == [
        ".gitattributes", "config.json", "model.safetensors"]
    paths = anon.get_paths_info("alice/tree", ["config.json"], revision=sha_tree)
    assert [p.path for p in paths] == ["config.json"]

    # git clone as the first request.
    sha_code = api.model_info("alice/code").sha
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", f"{c.url}/alice/code", str(clone)], check=True,
                   env={**os.environ, "GIT_LFS_SKIP_SMUDGE": "1"}, timeout=90)
    assert (clone / "config.json").read_bytes() == config
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert head == sha_code

    # Never announced, so never served; unknown repos stay 404.
    assert request("GET", f"{c.url}/api/models/alice/secret")[0] == 404
    assert request("GET", f"{c.url}/api/models/alice/nothing")[0] == 404

    # Fetched repos stay seeded: listed, and they follow A.
    listed = seed_list(c)
    for name in ("alice/weights", "alice/code", "alice/tree"):
        assert (name, "fetched") in listed, listed
    assert mesh_repo(c, "alice/weights")["seeded"] is True
    api.upload_file(path_or_fileobj=b"v2\n", path_in_repo="notes.txt", repo_id="alice/weights")
    sha2 = api.model_info("alice/weights").sha
    wait_for("C to follow A", lambda: local_sha(c, "alice/weights") == sha2, c)

    # Writes to alice's namespace on C name the node that hosts it.
    c_api = HfApi(endpoint=c.url, token=c.admin_token)
    for write in (
        lambda: c_api.create_repo("alice/new"),
        lambda: c_api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt",
                                  repo_id="alice/weights"),
        lambda: c_api.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt",
                                  repo_id="alice/unknown"),
        lambda: c_api.delete_repo("alice/weights"),
        lambda: c_api.delete_repo("alice/never-heard-of"),
        lambda: c_api.move_repo("alice/weights", "alice/renamed"),
        lambda: lfs_upload_batch(c, "alice/never-heard-of"),
    ):
        with pytest.raises((HfHubHTTPError, LfsRefused)) as err:
            write()
        response = err.value.response
        assert response.status_code == 403, response.text
        assert response.headers["x-error-code"] == "NamespaceHostedElsewhere"
        message = response.headers["x-error-message"]
        assert a.info["peer_id"] in message and '"alice"' in message, message
    # git push too.
    subprocess.run(["git", "-C", str(clone), "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True, env={**os.environ, "GIT_AUTHOR_NAME": "t",
                                    "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                                    "GIT_COMMITTER_EMAIL": "t@t"})
    push_url = f"http://admin:{c.admin_token}@{c.info['http']}/alice/code"
    pushed = subprocess.run(["git", "-C", str(clone), "push", push_url, "HEAD:main"],
                            capture_output=True, text=True, timeout=60)
    assert pushed.returncode != 0 and "403" in pushed.stderr, pushed.stderr
    assert a.info["peer_id"] in pushed.stderr, pushed.stderr


def test_a_download_streams_lfs_content_while_it_arrives(node_factory):
    """C holds nothing of A's repo: a plain GET of its large LFS file on C is answered from the
    first verified chunks on, while the rest still arrives from A; the bytes are A's."""
    import hashlib

    a = node_factory("a", "--admin", "alice")
    api = HfApi(endpoint=a.url, token=a.admin_token)
    api.create_repo("alice/stream")
    weights = safetensors_bytes(96)
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors",
                    repo_id="alice/stream")
    c = node_factory("c", "--bootstrap", a.info["p2p"][0])
    wait_heard(c, a, "alice/stream")

    url = f"{c.url}/alice/stream/resolve/main/model.safetensors"
    with urllib.request.urlopen(url, timeout=120) as resp:
        assert resp.status == 200
        assert int(resp.headers["content-length"]) == len(weights)
        # The answer started before the object was stored (96 MiB take seconds to arrive).
        counters = request("GET", f"{c.url}/api/mesh/peers")[2]["counters"]
        assert counters["lfs_objects_fetched"] == 0, counters
        digest = hashlib.sha256()
        while block := resp.read(1 << 20):
            digest.update(block)
    assert digest.hexdigest() == hashlib.sha256(weights).hexdigest()
    assert "streaming LFS content while it arrives from peers" in c.log()
    # Stored too, and served from the store from now on.
    wait_for("the object stored on C",
             lambda: request("GET", f"{c.url}/api/mesh/peers")[2]["counters"][
                 "lfs_objects_fetched"] >= 1, c)
    with urllib.request.urlopen(url, timeout=120) as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == hashlib.sha256(weights).hexdigest()
