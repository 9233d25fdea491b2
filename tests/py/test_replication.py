"""Peer-to-peer replication of git metadata between two real nodes on loopback.

Node A hosts the namespace `alice` (its admin user); node B bootstraps from A and seeds
`alice/*`. Writes on A with huggingface_hub are signed, gossiped and replicated to B as packs
of the difference; B serves the same commits and bytes. Private repos never reach B.
"""

import json
import time
import urllib.error
import urllib.request

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

DEADLINE = 60.0

FILES = {
    "config.json": b'{"model_type": "tiny", "hidden_size": 8}\n',
    "README.md": b"---\nlicense: mit\ntags: [tiny]\n---\n# tiny\n",
    "notes.txt": b"a small text file\n" * 20,
}


def get(url):
    """(status, parsed JSON or text) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:200]


def info(node, repo):
    return get(f"{node.url}/api/models/{repo}")


def wait_for_sha(node, repo, sha):
    """Polls until `repo` on `node` is at `sha`; fails at the deadline with what it saw."""
    deadline = time.monotonic() + DEADLINE
    seen = None
    while time.monotonic() < deadline:
        status, body = info(node, repo)
        seen = (status, body.get("sha") if status == 200 else body)
        if status == 200 and body.get("sha") == sha:
            return
        time.sleep(0.1)
    pytest.fail(f"{repo} on {node.url} never reached {sha}; last seen {seen}\n{node.log()[-4000:]}")


def test_public_repo_replicates_to_a_seeding_node(node_factory, tmp_path):
    a = node_factory("a", "--admin", "alice")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    api = HfApi(endpoint=a.url, token=a.admin_token)

    api.create_repo("alice/secret", private=True)
    api.upload_file(path_or_fileobj=b"private\n", path_in_repo="leak.txt", repo_id="alice/secret")
    api.create_repo("alice/tiny")
    api.create_commit(
        "alice/tiny",
        [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in FILES.items()],
        commit_message="add files",
    )
    sha = api.model_info("alice/tiny").sha
    wait_for_sha(b, "alice/tiny", sha)

    for path, data in FILES.items():
        got = hf_hub_download(
            "alice/tiny", path, endpoint=b.url, cache_dir=tmp_path / "cache-b", token=False
        )
        assert open(got, "rb").read() == data, path

    # A second commit converges too.
    api.upload_file(path_or_fileobj=b"second\n", path_in_repo="second.txt", repo_id="alice/tiny")
    sha2 = api.model_info("alice/tiny").sha
    assert sha2 != sha
    wait_for_sha(b, "alice/tiny", sha2)
    got = hf_hub_download(
        "alice/tiny", "second.txt", endpoint=b.url, cache_dir=tmp_path / "cache-b2", token=False
    )
    assert open(got, "rb").read() == b"second\n"

    # The private repo, written before both public commits, never appeared on B.
    assert info(b, "alice/secret")[0] == 404
    assert info(a, "alice/secret")[0] in (401, 404)
    status, listed = get(f"{b.url}/api/models?author=alice")
    assert status == 200
    assert [m["id"] for m in listed] == ["alice/tiny"]
    assert "ref update accepted" in b.log()
