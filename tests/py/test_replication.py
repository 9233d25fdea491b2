"""Peer-to-peer replication of git metadata between two real nodes on loopback.

Node A hosts the namespace `alice` (its admin user); node B bootstraps from A and seeds
`alice/*`. Writes on A with huggingface_hub are signed, gossiped and replicated to B as packs
of the difference; B serves the same commits and bytes. Private repos never reach B.
"""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download

from conftest import hubmesh_bin, wait_for

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


def safetensors_bytes(mib):
    """A safetensors file of about `mib` MiB of pseudo-random (incompressible) weights."""
    body = os.urandom(mib * 1024 * 1024)
    header = json.dumps(
        {"w": {"dtype": "U8", "shape": [len(body)], "data_offsets": [0, len(body)]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + body


def mesh_peers(node):
    status, body = get(f"{node.url}/api/mesh/peers")
    assert status == 200, body
    return body


def test_lfs_content_replicates_verified_and_once(node_factory, tmp_path):
    a = node_factory("a", "--admin", "alice")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    api = HfApi(endpoint=a.url, token=a.admin_token)
    weights = safetensors_bytes(6)
    api.create_repo("alice/weights")
    api.upload_file(
        path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id="alice/weights"
    )
    sha = api.model_info("alice/weights").sha
    wait_for_sha(b, "alice/weights", sha)

    def fetched():
        status, body = get(f"{b.url}/api/mesh/repos/model/alice/weights")
        return status == 200 and body["lfs"]["fetched"] == 1 and body["lfs"]["missing"] == 0

    wait_for("the LFS object to replicate", fetched, b)
    assert_downloads(b, "alice/weights", weights, tmp_path / "c")
    # The client uploaded through Xet (hf_xet) to A; B fetched an ordinary LFS object over p2p
    # and holds no Xet record of it, so its resolve answers name no Xet hash or server.
    assert "Xet shard stored" in a.log()
    head = urllib.request.Request(f"{b.url}/alice/weights/resolve/main/model.safetensors", method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as r:
        assert r.headers.get("x-xet-hash") is None and r.headers.get("link") is None

    # Bytes on the wire: about the file, once.
    received = mesh_peers(b)["counters"]["chunk_bytes_received"]
    assert len(weights) <= received <= len(weights) * 1.05, received
    assert mesh_peers(b)["counters"]["chunks_rejected"] == 0
    # Over the blob data plane (iroh, verified streaming), not the libp2p fallback.
    assert mesh_peers(b)["counters"]["blob_bytes_received"] == received
    assert mesh_peers(a)["counters"]["blob_bytes_sent"] == received
    assert mesh_peers(a)["blob_addrs"] and mesh_peers(b)["blob_addrs"]
    # The git objects came as a pack blob too.
    assert mesh_peers(b)["counters"]["pack_blob_bytes_received"] > 0
    peers = mesh_peers(b)["peers"]
    assert [p["peer_id"] for p in peers] == [a.info["peer_id"]]
    assert peers[0]["chunk_bytes_received"] == received
    status, repo = get(f"{b.url}/api/mesh/repos/model/alice/weights")
    assert repo["last_seq"] >= 2 and repo["seeded"] and repo["last_error"] is None
    assert a.info["peer_id"] in repo["providers"]
    assert get(f"{b.url}/api/mesh/repos/model/alice/nothing")[0] == 404

    # A second commit adding a small file does not move the big one again.
    api.upload_file(path_or_fileobj=b"v2\n", path_in_repo="notes.txt", repo_id="alice/weights")
    sha2 = api.model_info("alice/weights").sha
    wait_for_sha(b, "alice/weights", sha2)
    got = hf_hub_download(
        "alice/weights", "notes.txt", endpoint=b.url, cache_dir=tmp_path / "c2", token=False
    )
    assert open(got, "rb").read() == b"v2\n"
    assert mesh_peers(b)["counters"]["chunk_bytes_received"] == received

    # The CLI reads the same API.
    out = subprocess.run(
        [str(hubmesh_bin()), "peers", "--data", str(b.data), "--json"],
        check=True, capture_output=True, text=True,
    )
    assert json.loads(out.stdout)["peers"][0]["peer_id"] == a.info["peer_id"]

    # After a restart nothing is fetched again; the store is clean.
    assert b.terminate() == 0
    assert_store_clean(b)
    b2 = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    assert_downloads(b2, "alice/weights", weights, tmp_path / "c3")
    assert mesh_peers(b2)["counters"]["chunk_bytes_received"] == 0


def test_a_provider_sending_corrupt_chunks_is_refused(node_factory, monkeypatch):
    monkeypatch.setenv("HUBMESH_TEST_CORRUPT_CHUNKS", "1")
    a = node_factory("a", "--admin", "alice")
    monkeypatch.delenv("HUBMESH_TEST_CORRUPT_CHUNKS")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    api = HfApi(endpoint=a.url, token=a.admin_token)
    api.create_repo("alice/bad")
    api.upload_file(
        path_or_fileobj=safetensors_bytes(1), path_in_repo="model.safetensors", repo_id="alice/bad"
    )
    wait_for_sha(b, "alice/bad", api.model_info("alice/bad").sha)
    wait_for("a corrupt chunk to be refused",
             lambda: mesh_peers(b)["counters"]["chunks_rejected"] >= 1, b)
    status, repo = get(f"{b.url}/api/mesh/repos/model/alice/bad")
    assert repo["lfs"]["missing"] == 1 and repo["lfs"]["fetched"] == 0
    assert mesh_peers(b)["peers"][0]["bad_chunks"] >= 1
    # Not served: content a replica lacks is a retryable 503, never corrupt bytes.
    status, _ = get(f"{b.url}/alice/bad/resolve/main/model.safetensors")
    assert status == 503
    assert b.terminate() == 0
    out = subprocess.run(
        [str(hubmesh_bin()), "store", "stats", "--data", str(b.data), "--json"],
        check=True, capture_output=True, text=True,
    )
    assert json.loads(out.stdout)["files"] == 0, out.stdout


def test_an_honest_and_a_corrupt_provider_the_download_completes(
    node_factory, tmp_path, monkeypatch
):
    """D fetches a 16 MiB file from honest A and corrupt B at once (B flips the first byte
    of every batch it serves; its own copy, fetched from A, is intact). B's answers fail
    verification in their first 16 KiB group, so not one byte of them is accepted; B is
    penalised and dropped, A serves the rest, and D's bytes and store are correct."""
    a = node_factory("a", "--admin", "alice")
    monkeypatch.setenv("HUBMESH_TEST_CORRUPT_CHUNKS", "1")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    monkeypatch.delenv("HUBMESH_TEST_CORRUPT_CHUNKS")
    api = HfApi(endpoint=a.url, token=a.admin_token)
    api.create_repo("alice/mixed")
    weights = safetensors_tensors(16, 1)[1]
    api.upload_file(
        path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id="alice/mixed"
    )
    sha = api.model_info("alice/mixed").sha
    wait_for_sha(b, "alice/mixed", sha)
    lfs_settled(b, "alice/mixed", 1)

    d = node_factory("d", "--bootstrap", a.info["p2p"][0], "--bootstrap", b.info["p2p"][0],
                     "--seed", "alice/*")
    wait_for_sha(d, "alice/mixed", sha)
    lfs_settled(d, "alice/mixed", 1)
    assert_downloads(d, "alice/mixed", weights, tmp_path / "d")

    body = mesh_peers(d)
    peers = {p["peer_id"]: p for p in body["peers"]}
    honest, corrupt = peers[a.info["peer_id"]], peers[b.info["peer_id"]]
    assert corrupt["bad_chunks"] >= 1, peers
    assert honest["bad_chunks"] == 0, peers
    assert corrupt["chunk_bytes_received"] == 0, peers
    assert len(weights) <= honest["chunk_bytes_received"] <= len(weights) * 1.05, peers
    counters = body["counters"]
    assert counters["chunks_rejected"] >= 1
    assert counters["blob_bytes_received"] == counters["chunk_bytes_received"]
    assert d.terminate() == 0
    assert_store_clean(d)


def assert_downloads(node, repo, data, cache_dir):
    """`hf_hub_download` of the repo's model.safetensors from `node`'s gateway gives `data`."""
    got = hf_hub_download(repo, "model.safetensors", endpoint=node.url, cache_dir=cache_dir,
                          token=False)
    assert open(got, "rb").read() == data


def assert_store_clean(node):
    """`hubmesh store fsck` on a stopped node's data directory finds nothing wrong."""
    fsck = subprocess.run(
        [str(hubmesh_bin()), "store", "fsck", "--data", str(node.data)],
        capture_output=True, text=True,
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def safetensors_tensors(tensors, mib_each):
    """A safetensors file of `tensors` pseudo-random tensors of `mib_each` MiB each."""
    bodies = [os.urandom(mib_each * 1024 * 1024) for _ in range(tensors)]
    return bodies, safetensors_from(bodies)


def safetensors_from(bodies):
    header, offset = {}, 0
    for i, body in enumerate(bodies):
        header[f"t{i}"] = {"dtype": "U8", "shape": [len(body)],
                           "data_offsets": [offset, offset + len(body)]}
        offset += len(body)
    header = json.dumps(header).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + b"".join(bodies)


def lfs_settled(node, repo, fetched):
    """Polls until `repo` on `node` has fetched `fetched` LFS objects and misses none."""
    def check():
        status, body = get(f"{node.url}/api/mesh/repos/model/{repo}")
        return status == 200 and body["lfs"]["fetched"] >= fetched and body["lfs"]["missing"] == 0
    wait_for(f"{repo} to hold its LFS content", check, node)


def test_line_topology_replicates_through_the_middle_node(node_factory, tmp_path):
    """A — B — C: C knows only B; gossip, packs and LFS chunks reach C through B, and a
    second commit that changes one tensor moves only that tensor's chunks."""
    a = node_factory("a", "--admin", "alice")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    c = node_factory("c", "--bootstrap", b.info["p2p"][0], "--seed", "alice/*")
    api = HfApi(endpoint=a.url, token=a.admin_token)
    bodies, weights = safetensors_tensors(8, 1)
    api.create_repo("alice/line")
    api.create_commit(
        "alice/line",
        [
            CommitOperationAdd(path_in_repo="model.safetensors", path_or_fileobj=weights),
            CommitOperationAdd(path_in_repo="config.json", path_or_fileobj=FILES["config.json"]),
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=FILES["README.md"]),
        ],
        commit_message="weights",
    )
    sha = api.model_info("alice/line").sha
    wait_for_sha(b, "alice/line", sha)
    wait_for_sha(c, "alice/line", sha)
    lfs_settled(c, "alice/line", 1)

    assert_downloads(c, "alice/line", weights, tmp_path / "c1")
    snap = snapshot_download("alice/line", endpoint=c.url, cache_dir=tmp_path / "c2",
                             token=False)
    for path, data in [("model.safetensors", weights), ("config.json", FILES["config.json"]),
                       ("README.md", FILES["README.md"])]:
        assert (Path(snap) / path).read_bytes() == data, path
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", f"{c.url}/alice/line", str(clone)], check=True,
                   env={**os.environ, "GIT_LFS_SKIP_SMUDGE": "1"}, timeout=60)
    assert (clone / "config.json").read_bytes() == FILES["config.json"]
    assert subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip() == sha
    before = mesh_peers(c)["counters"]["chunk_bytes_received"]
    assert before >= len(weights) * 0.95, before

    # Second commit: one tensor of eight changes; only its chunks travel to C.
    bodies[3] = os.urandom(len(bodies[3]))
    weights2 = safetensors_from(bodies)
    api.upload_file(path_or_fileobj=weights2, path_in_repo="model.safetensors",
                    repo_id="alice/line")
    sha2 = api.model_info("alice/line").sha
    wait_for_sha(c, "alice/line", sha2)
    lfs_settled(c, "alice/line", 2)
    assert_downloads(c, "alice/line", weights2, tmp_path / "c3")
    delta = mesh_peers(c)["counters"]["chunk_bytes_received"] - before
    assert 0 < delta < len(weights2) * 0.25, (delta, len(weights2))
    assert mesh_peers(c)["counters"]["chunks_rejected"] == 0


def seeded_by_two_then_origin_stopped(node_factory, repo, weights):
    """A (alice) hosts `repo` with `weights` as model.safetensors; B (from A) and C (from B
    only) seed it until both hold it whole; then A stops. Returns (b, c, weights, sha)."""
    a = node_factory("a", "--admin", "alice")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    c = node_factory("c", "--bootstrap", b.info["p2p"][0], "--seed", "alice/*")
    api = HfApi(endpoint=a.url, token=a.admin_token)
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id=repo)
    sha = api.model_info(repo).sha
    for node in (b, c):
        wait_for_sha(node, repo, sha)
        lfs_settled(node, repo, 1)
    assert a.terminate() == 0
    return b, c, weights, sha


def test_a_late_node_fetches_from_several_seeders_at_once(node_factory, tmp_path):
    """B and C seed A's repo; A stops; D joins through C only and fetches the file's chunk
    batches from both B and C (found through gossip catch-up and the DHT), verified."""
    b, c, weights, sha = seeded_by_two_then_origin_stopped(
        node_factory, "alice/multi", safetensors_tensors(16, 1)[1])

    d = node_factory("d", "--bootstrap", c.info["p2p"][0], "--seed", "alice/*")
    wait_for_sha(d, "alice/multi", sha)
    lfs_settled(d, "alice/multi", 1)
    assert_downloads(d, "alice/multi", weights, tmp_path / "d")
    by_peer = {p["peer_id"]: p["chunk_bytes_received"] for p in mesh_peers(d)["peers"]}
    from_b, from_c = by_peer.get(b.info["peer_id"], 0), by_peer.get(c.info["peer_id"], 0)
    assert from_b > 0 and from_c > 0, by_peer
    assert from_b + from_c <= len(weights) * 1.05, by_peer
    assert mesh_peers(d)["counters"]["chunks_rejected"] == 0


# Issue #6: interrupted and multi-source LFS fetches. A 48 MiB file is large enough that a
# kill lands mid-fetch; the polls below read the cheap `/api/mesh/peers` counters only.
BIG_MIB = 48


def poll_peers_until(node, what, check, deadline=DEADLINE):
    """Polls `/api/mesh/peers` of `node` (no sleep between polls: the moment matters) until
    `check(body)` is truthy; returns that body."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        body = mesh_peers(node)
        if check(body):
            return body
        time.sleep(0.005)
    pytest.fail(f"{what} never happened on {node.url}\n{node.log()[-4000:]}")


def test_a_seeder_killed_mid_fetch_resumes_without_fetching_it_all_again(
    node_factory, tmp_path
):
    """B is SIGKILLed while it fetches a large LFS object from A, and restarted on the same
    data directory: it completes the object, byte-identical to A's, and the chunk bytes of
    both runs together are about the file once (what arrived before the kill is kept)."""
    a = node_factory("a", "--admin", "alice")
    api = HfApi(endpoint=a.url, token=a.admin_token)
    _, weights = safetensors_tensors(BIG_MIB // 4, 4)
    api.create_repo("alice/resume")
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors",
                    repo_id="alice/resume")
    sha = api.model_info("alice/resume").sha

    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    seen = poll_peers_until(
        b, "the first chunk bytes",
        lambda p: p["counters"]["chunk_bytes_received"] >= len(weights) // 4
        or p["counters"]["lfs_objects_fetched"] > 0,
    )
    b.kill()
    first_run = seen["counters"]["chunk_bytes_received"]
    assert seen["counters"]["lfs_objects_fetched"] == 0, "fetched before the kill: too fast"
    assert 0 < first_run < len(weights), first_run
    # The killed fetch left the store consistent, and its verified chunks in a spool.
    assert_store_clean(b)
    partial = b.data / "store" / "partial"
    assert [p.suffix for p in partial.iterdir()] == [".part"]

    b2 = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    wait_for_sha(b2, "alice/resume", sha)
    lfs_settled(b2, "alice/resume", 1)
    assert_downloads(b2, "alice/resume", weights, tmp_path / "b")
    counters = mesh_peers(b2)["counters"]
    assert counters["chunks_rejected"] == 0
    second_run = counters["chunk_bytes_received"]
    assert second_run > 0, "nothing left to fetch after the restart: the kill came too late"
    total, size = first_run + second_run, len(weights)
    # At most the batch in flight at the kill is lost (one 4 MiB batch per provider).
    assert total <= size * 1.1, (
        f"{first_run} bytes before the kill + {second_run} after the restart = "
        f"{total / size:.2f}× the file of {size}"
    )
    # The spool went with the completed import; the store is clean.
    assert list(partial.iterdir()) == []
    assert b2.terminate() == 0
    assert_store_clean(b2)


def test_a_multi_source_fetch_survives_a_seeder_killed_mid_download(node_factory, tmp_path):
    """B and C seed A's repo; A stops; D fetches from B and C at once, and B is SIGKILLed
    once both have sent some of the file: D finishes from C, verified, with A's bytes."""
    b, c, weights, _ = seeded_by_two_then_origin_stopped(
        node_factory, "alice/survive", safetensors_tensors(BIG_MIB // 4, 4)[1])

    d = node_factory("d", "--bootstrap", c.info["p2p"][0], "--seed", "alice/*")
    ids = b.info["peer_id"], c.info["peer_id"]

    def from_both(body):
        by_peer = {p["peer_id"]: p["chunk_bytes_received"] for p in body["peers"]}
        return body["counters"]["lfs_objects_fetched"] > 0 or all(
            by_peer.get(i, 0) > 0 for i in ids
        )

    seen = poll_peers_until(d, "chunk bytes from both B and C", from_both)
    b.kill()
    at_kill = seen["counters"]["chunk_bytes_received"]
    assert seen["counters"]["lfs_objects_fetched"] == 0, "fetched before the kill: too fast"
    assert at_kill < len(weights), at_kill

    lfs_settled(d, "alice/survive", 1)
    assert_downloads(d, "alice/survive", weights, tmp_path / "d")
    counters = mesh_peers(d)["counters"]
    assert counters["chunks_rejected"] == 0
    assert counters["chunk_bytes_received"] > at_kill, "nothing arrived after the kill"
    by_peer = {p["peer_id"]: p["chunk_bytes_received"] for p in mesh_peers(d)["peers"]}
    assert by_peer.get(c.info["peer_id"], 0) > 0, by_peer
    # Only batches in flight to B at the kill are asked again: about the file, once.
    size = len(weights)
    assert counters["chunk_bytes_received"] <= size * 1.1, (counters, size)


def http_status(url):
    """The status of a GET, its body read and dropped."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_a_repo_made_private_or_deleted_is_withdrawn_from_every_seeder(node_factory, tmp_path):
    """Visibility replicates: the host's signed withdrawal makes seeders drop their copy and
    stop serving it at once, and a third node no longer fetches it on demand."""
    a = node_factory("a", "--admin", "alice")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    c = node_factory("c", "--bootstrap", b.info["p2p"][0])
    api = HfApi(endpoint=a.url, token=a.admin_token)
    weights = safetensors_bytes(1)
    for repo in ("alice/turns-private", "alice/deleted"):
        api.create_repo(repo)
        api.create_commit(
            repo,
            [
                CommitOperationAdd(path_in_repo="config.json", path_or_fileobj=FILES["config.json"]),
                CommitOperationAdd(path_in_repo="model.safetensors", path_or_fileobj=weights),
            ],
            commit_message="add",
        )
        wait_for_sha(b, repo, api.model_info(repo).sha)
        wait_for(
            f"{repo}'s weights on b",
            lambda: http_status(f"{b.url}/{repo}/resolve/main/model.safetensors") == 200
            or None,
            b,
        )
    # C heard of both through B; it would fetch them on demand.
    wait_for_sha(c, "alice/deleted", api.model_info("alice/deleted").sha)

    announced = get(f"{a.url}/api/mesh/repos/model/alice/turns-private")[1]["last_seq"]
    api.update_repo_settings("alice/turns-private", private=True)
    api.delete_repo("alice/deleted")

    for node in (b, c):
        for repo in ("alice/turns-private", "alice/deleted"):
            wait_for(f"{repo} gone from {node.url}", lambda: info(node, repo)[0] == 404, node)
            assert http_status(f"{node.url}/{repo}/resolve/main/model.safetensors") == 404
            assert http_status(f"{node.url}/{repo}/resolve/main/config.json") == 404
    status, listed = get(f"{b.url}/api/models?author=alice")
    assert status == 200 and listed == [], listed
    assert "replica dropped" in b.log()
    # A fresh node joining later hears the withdrawal and never fetches the repo.
    d = node_factory("d", "--bootstrap", b.info["p2p"][0])
    def heard_withdrawal():
        status, body = get(f"{d.url}/api/mesh/repos/model/alice/turns-private")
        return status == 200 and (body["last_seq"] or 0) > announced
    wait_for("d hears the withdrawal", heard_withdrawal, d)
    assert info(d, "alice/turns-private")[0] == 404
    # The host still serves its private repo to its owner.
    assert api.model_info("alice/turns-private").private


def test_a_publisher_that_restarts_is_replicated_again(node_factory, tmp_path):
    """Issue 14 item 16: B retries while the publisher A is down; once A is back (same key,
    new ports) B asks again where A's blob endpoint listens instead of keeping 'none', so A's
    new repos and the interrupted LFS object still replicate."""
    a = node_factory("a", "--admin", "alice")
    api = HfApi(endpoint=a.url, token=a.admin_token)
    _, weights = safetensors_tensors(BIG_MIB // 4, 4)
    api.create_repo("alice/big")
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id="alice/big")
    sha = api.model_info("alice/big").sha

    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    seen = poll_peers_until(
        b, "the first chunk bytes",
        lambda p: p["counters"]["chunk_bytes_received"] > 0
        or p["counters"]["lfs_objects_fetched"] > 0,
    )
    a.kill()
    assert seen["counters"]["lfs_objects_fetched"] == 0, "fetched before the kill: too fast"
    failures = b.log().count("will retry")
    # B's retries run while A is down (every 5 s).
    wait_for("a retry while the publisher is down", lambda: b.log().count("will retry") > failures, b)

    a2 = node_factory("a", "--admin", "alice", "--bootstrap", b.info["p2p"][0])
    api2 = HfApi(endpoint=a2.url, token=a2.admin_token)
    api2.create_repo("alice/after")
    api2.upload_file(path_or_fileobj=b"after\n", path_in_repo="after.txt", repo_id="alice/after")
    wait_for_sha(b, "alice/after", api2.model_info("alice/after").sha)
    wait_for_sha(b, "alice/big", sha)
    lfs_settled(b, "alice/big", 1)
    assert_downloads(b, "alice/big", weights, tmp_path / "b")
