"""The chunk store under pressure, with real clients against real nodes: a disk at its reserved
headroom answers 507 and keeps nothing, a rejected LFS upload leaves nothing, and
`hubmesh store gc` reclaims what no repository references."""

import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError

from conftest import hubmesh_bin


def store_cli(node, *args):
    out = subprocess.run(
        [str(hubmesh_bin()), "store", *args, "--data", str(node.data), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def call(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def lfs_put(node, repo, oid, size, body):
    """Asks the LFS batch API where to upload object `oid` of `size` bytes to `repo`, then PUTs
    `body` there (as git-lfs and huggingface_hub 0.x do). Returns the PUT's status."""
    batch = {"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
             "objects": [{"oid": oid, "size": size}]}
    status, reply = call(
        "POST", f"{node.url}/{repo}.git/info/lfs/objects/batch", json.dumps(batch).encode(),
        {"content-type": "application/vnd.git-lfs+json", "accept": "application/vnd.git-lfs+json",
         "authorization": f"Bearer {node.admin_token}"})
    assert status == 200, reply
    href = json.loads(reply)["objects"][0]["actions"]["upload"]["href"]
    status, _ = call("PUT", href, body, {"content-type": "application/octet-stream"})
    return status


def test_a_full_disk_is_507_and_keeps_nothing(node_factory, tmp_path):
    config = tmp_path / "hubmesh.toml"
    # A headroom no disk has: every write to the chunk store is refused up front.
    config.write_text("[store]\nreserved_mib = 1099511627776\n")
    node = node_factory("node", "--config", str(config))
    api = HfApi(endpoint=node.url, token=node.admin_token)
    repo = api.create_repo("full").repo_id
    # Small text files live in git: still fine.
    api.upload_file(path_or_fileobj=b"# hello\n", path_in_repo="README.md", repo_id=repo)
    sha = api.model_info(repo).sha
    # The default client (hf_xet, which fetches its write token itself and retries any 5xx for
    # minutes): the node refuses the Xet write token with a 403 it does not retry.
    assert hf_constants.HF_HUB_DISABLE_XET is False
    started = time.monotonic()
    with pytest.raises(Exception) as e:
        api.upload_file(path_or_fileobj=os.urandom(3_000_000), path_in_repo="w.bin", repo_id=repo)
    assert time.monotonic() - started < 30, "refused at once, not after retries"
    chain, err = [], e.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    assert any("403" in m and "xet-write-token" in m for m in chain), chain
    assert api.model_info(repo).sha == sha, "nothing committed"
    weights = os.urandom(2_000_000)
    oid = hashlib.sha256(weights).hexdigest()
    assert lfs_put(node, repo, oid, len(weights), weights) == 507
    node.terminate()
    stats = store_cli(node, "stats")
    assert (stats["files"], stats["blocks"]) == (0, 0), stats


def test_rejected_uploads_leave_nothing_and_gc_reclaims_the_unreferenced(node_factory):
    node = node_factory()
    api = HfApi(endpoint=node.url, token=node.admin_token)
    keep = api.create_repo("keep").repo_id
    gone = api.create_repo("gone").repo_id
    kept = os.urandom(1_500_000)
    api.upload_file(path_or_fileobj=kept, path_in_repo="kept.bin", repo_id=keep)
    # A PUT whose bytes are not the announced object: 400, and nothing of it stays.
    announced = os.urandom(2_000_000)
    oid = hashlib.sha256(announced).hexdigest()
    assert lfs_put(node, keep, oid, len(announced), os.urandom(2_000_000)) == 400
    # Uploaded but never committed, then its repository deleted: nothing references it.
    orphan = os.urandom(1_000_000)
    assert lfs_put(node, gone, hashlib.sha256(orphan).hexdigest(), len(orphan), orphan) == 200
    # Uploaded and not committed yet, to a repository that stays: kept (a commit may follow).
    pending = os.urandom(500_000)
    assert lfs_put(node, keep, hashlib.sha256(pending).hexdigest(), len(pending), pending) == 200
    api.delete_repo(gone)
    node.terminate()

    assert store_cli(node, "stats")["files"] == 3, "kept, orphan, pending; nothing of the rejected PUT"
    report = store_cli(node, "gc")
    assert (report["files_removed"], report["files_kept"]) == (1, 2), report
    assert report["bytes_freed"] >= len(orphan), report
    assert store_cli(node, "stats")["files"] == 2
    assert store_cli(node, "fsck")["corrupt_blocks"] == []
    again = store_cli(node, "gc")
    assert again["files_removed"] == 0, again

    node = node_factory()  # the same data directory, restarted
    path = hf_hub_download(keep, "kept.bin", endpoint=node.url, token=node.admin_token)
    with open(path, "rb") as f:
        assert f.read() == kept


def test_a_deleted_repos_committed_content_is_reclaimed_unless_another_repo_holds_it(node_factory):
    """Deleting a repo releases its LFS objects: `store gc` reclaims what no other repo holds,
    and keeps what one still does."""
    node = node_factory()
    api = HfApi(endpoint=node.url, token=node.admin_token)
    shared, own = os.urandom(1_200_000), os.urandom(900_000)
    for repo, files in (("a", {"shared.bin": shared, "own.bin": own}), ("b", {"shared.bin": shared})):
        rid = api.create_repo(repo).repo_id
        for name, data in files.items():
            api.upload_file(path_or_fileobj=data, path_in_repo=name, repo_id=rid)
    api.delete_repo("admin/a")
    node.terminate()
    report = store_cli(node, "gc")
    assert (report["files_removed"], report["files_kept"]) == (1, 1), report
    assert report["bytes_freed"] >= len(own), report
    node = node_factory()  # the same data directory, restarted
    path = hf_hub_download("admin/b", "shared.bin", endpoint=node.url, token=node.admin_token)
    with open(path, "rb") as f:
        assert f.read() == shared
