"""Pull-through mirroring (hub-mirror) with real processes: an upstream `hubmesh up` reached
only over HTTP, and a mirror `hubmesh up --upstream URL` that the real clients
(`huggingface_hub`, `git` + `git lfs`) use as their endpoint.

The mirror pulls a repo it lacks with git smart HTTP (same commit shas) and its LFS files
through the upstream's batch API (streamed while they arrive, SHA-256 verified, stored); one
upstream fetch serves concurrent misses; with the upstream gone it serves its cache and
refuses the rest fast, naming the upstream; policy rules deny and pin; the audit log records
it all.
"""

import concurrent.futures
import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from conftest import cli, hubmesh_bin, wait_for
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

MIB = 1024 * 1024


def blob(size: int, seed: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def request(method, url, token=None, headers=None, body=None, timeout=60):
    """(status, headers, body bytes)."""
    req = urllib.request.Request(url, method=method, data=body, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def metric(node, prefix: str) -> float:
    """The sum of the /metrics samples whose line starts with `prefix`."""
    _, _, body = request("GET", f"{node.url}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines() if line.startswith(prefix)
    )


LFS_GETS = 'http_requests_total{method="GET",route="/lfs-objects/{oid}"'


def make_repo(up, name, files):
    api = HfApi(endpoint=up.url, token=up.admin_token)
    repo = f"alice/{name}"
    api.create_repo(repo)
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=b) for p, b in files.items()]
    info = api.create_commit(repo, operations=ops, commit_message="files")
    return repo, info.oid


@pytest.fixture
def sites(node_factory):
    """(upstream, mirror): the upstream hosts `alice`; the mirror pulls from it over HTTP."""
    up = node_factory("upstream", "--admin", "alice")
    mirror = node_factory("mirror", "--upstream", up.url)
    return up, mirror


def audit_lines(node):
    out = cli(node, "audit")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_pull_through_with_hf_hub_and_the_upstreams_headers(sites, tmp_path):
    up, mirror = sites
    weights = blob(3 * MIB + 17, 1)
    files = {"config.json": b'{"model_type": "tiny"}\n', "model.safetensors": weights}
    repo, commit = make_repo(up, "tiny", files)

    # The mirror lacks the repo: a read pulls it, with the upstream's commit.
    api = HfApi(endpoint=mirror.url)
    assert api.model_info(repo).sha == commit
    for name, data in files.items():
        path = hf_hub_download(repo, name, endpoint=mirror.url, cache_dir=tmp_path / "c1")
        assert open(path, "rb").read() == data
    snap = snapshot_download(repo, endpoint=mirror.url, cache_dir=tmp_path / "c2")
    assert sorted(os.listdir(snap)) == sorted([*files, ".gitattributes"])
    assert open(os.path.join(snap, "model.safetensors"), "rb").read() == weights

    # The headers clients rely on are the upstream's; no Xet hint, no link to another host.
    for method in ["HEAD", "GET"]:
        url = f"/{repo}/resolve/main/model.safetensors"
        s1, h_up, _ = request(method, up.url + url)
        s2, h_mi, body = request(method, mirror.url + url, headers={"Range": "bytes=5-1004"})
        assert s1 == 200 and s2 == 206
        for h in ["X-Repo-Commit", "ETag", "X-Linked-Etag", "X-Linked-Size"]:
            assert h_mi[h] == h_up[h], h
        assert h_mi["Content-Range"] == f"bytes 5-1004/{len(weights)}"
        assert "X-Xet-Hash" not in h_mi and "Link" not in h_mi
        if method == "GET":
            assert body == weights[5:1005]
    # Tree and paths-info list no xetHash and no absolute URL.
    _, _, tree = request("GET", f"{mirror.url}/api/models/{repo}/tree/main")
    assert b"xetHash" not in tree and b"http" not in tree

    # Writes to a mirrored namespace belong upstream.
    admin = HfApi(endpoint=mirror.url, token=mirror.admin_token)
    with pytest.raises(HfHubHTTPError) as e:
        admin.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    assert up.url in str(e.value)

    events = audit_lines(mirror)
    pulled = [e for e in events if e["action"] == "mirror" and e["repo"] == f"models/{repo}"]
    assert any(e.get("commit") == commit for e in pulled)
    assert any(e.get("object") == hashlib.sha256(weights).hexdigest() for e in pulled)
    assert any(e["action"] == "read" and e["actor"] == "anonymous" for e in events)


def test_git_clone_through_the_mirror(sites, tmp_path):
    up, mirror = sites
    weights = blob(2 * MIB, 2)
    repo, commit = make_repo(up, "cloned", {"w.bin": weights, "a.txt": b"hello\n"})
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "LANG": "C",
    }
    subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True, capture_output=True)
    dest = tmp_path / "clone"
    out = subprocess.run(
        ["git", "clone", f"{mirror.url}/{repo}", str(dest)],
        env=env,
        capture_output=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=dest, env=env, capture_output=True, check=True, text=True
    ).stdout.strip()
    assert head == commit
    assert (dest / "w.bin").read_bytes() == weights
    assert (dest / "a.txt").read_bytes() == b"hello\n"
    # git and git-lfs reads are in the audit log too.
    assert any(
        e["action"] == "read" and e["repo"] == f"models/{repo}" for e in audit_lines(mirror)
    )


def test_concurrent_misses_make_one_upstream_fetch(sites):
    up, mirror = sites
    weights = blob(8 * MIB, 3)
    repo, _ = make_repo(up, "hot", {"big.bin": weights})
    assert HfApi(endpoint=mirror.url).model_info(repo).sha  # the repo, not its content
    before = metric(up, LFS_GETS)
    url = f"{mirror.url}/{repo}/resolve/main/big.bin"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: request("GET", url, timeout=120), range(8)))
    for status, headers, body in results:
        assert status == 200
        assert body == weights
    assert metric(up, LFS_GETS) - before == 1
    # From then on it is served from the mirror's store: no more upstream fetches.
    assert request("GET", url)[2] == weights
    assert metric(up, LFS_GETS) - before == 1


def test_offline_serves_the_cache_and_refuses_the_rest_fast(sites, node_factory, tmp_path):
    up, mirror = sites
    weights = blob(MIB, 4)
    cached, commit = make_repo(up, "cached", {"w.bin": weights, "config.json": b"{}"})
    make_repo(up, "never", {"config.json": b"{}"})
    paths = {
        name: hf_hub_download(cached, name, endpoint=mirror.url, cache_dir=tmp_path / "warm")
        for name in ["w.bin", "config.json"]
    }
    url = f"/{cached}/resolve/main/w.bin"
    _, before, _ = request("HEAD", mirror.url + url)
    up.terminate()

    def check_cache_and_refusal(node, why):
        api = HfApi(endpoint=node.url)
        assert api.model_info(cached).sha == commit
        path = hf_hub_download(cached, "w.bin", endpoint=node.url, cache_dir=tmp_path / why)
        assert open(path, "rb").read() == weights
        _, after, _ = request("HEAD", node.url + url)
        for h in ["X-Repo-Commit", "ETag", "X-Linked-Etag", "X-Linked-Size", "Content-Length"]:
            assert after[h] == before[h], h
        started = time.monotonic()
        status, headers, body = request("GET", f"{node.url}/api/models/alice/never")
        assert time.monotonic() - started < 10
        assert status == 503, body
        assert up.url in body.decode() and why in body.decode()
        assert headers["X-Error-Message"]

    check_cache_and_refusal(mirror, "unreachable")
    mirror.terminate()
    offline = node_factory("mirror", "--upstream", up.url, "--offline")
    check_cache_and_refusal(offline, "offline")
    assert paths


def test_deny_and_pin_policies(node_factory, tmp_path):
    up = node_factory("upstream", "--admin", "alice")
    config = tmp_path / "mirror.toml"
    config.write_text(f'[mirror]\nupstream = "{up.url}"\nrefresh_secs = 1\ndeny = ["re:models/alice/secret-.*"]\n')
    mirror = node_factory("mirror", "--config", str(config))
    make_repo(up, "secret-plans", {"a.txt": b"no"})
    status, _, body = request("GET", f"{mirror.url}/api/models/alice/secret-plans")
    assert status == 403 and b"deny re:models/alice/secret-.*" in body
    cli(mirror, "mirror", "add", "alice/other", "--rule", "deny")
    make_repo(up, "other", {"a.txt": b"no"})
    assert request("GET", f"{mirror.url}/api/models/alice/other")[0] == 403

    pinned, first = make_repo(up, "pinned", {"a.txt": b"v1"})
    moving, _ = make_repo(up, "moving", {"a.txt": b"v1"})
    cli(mirror, "mirror", "add", pinned, "--rule", "pin")
    api, up_api = HfApi(endpoint=mirror.url), HfApi(endpoint=up.url, token=up.admin_token)
    assert api.model_info(pinned).sha == first
    api.model_info(moving)
    new_pinned = up_api.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id=pinned).oid
    new_moving = up_api.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id=moving).oid
    # The scheduled refresh moves the other repo; the pinned one stays until refreshed.
    wait_for("the scheduled refresh", lambda: api.model_info(moving).sha == new_moving)
    assert api.model_info(pinned).sha == first
    listing = json.loads(cli(mirror, "mirror", "list", "--json"))
    assert {"rule": "pin", "pattern": pinned, "source": "runtime"} in listing["rules"]
    cli(mirror, "mirror", "refresh", pinned)
    assert api.model_info(pinned).sha == new_pinned
    path = hf_hub_download(pinned, "a.txt", endpoint=mirror.url, cache_dir=tmp_path / "c")
    assert open(path, "rb").read() == b"v2"

    events = audit_lines(mirror)
    assert any(e["action"] == "policy" and e.get("pattern") == pinned for e in events)
    assert any(e["action"] == "mirror-refresh" and e.get("repo") == pinned for e in events)


def run_cli(*args):
    out = subprocess.run([str(hubmesh_bin()), *args], capture_output=True, text=True, timeout=300)
    return out


def test_air_gap_bundles_full_incremental_and_tampered(node_factory, tmp_path):
    size = 8 * MIB
    v1 = blob(size, 5)
    # A fine-tune: one "tensor" (1 MiB in the middle) changes.
    v2 = v1[: 5 * MIB] + blob(MIB, 6) + v1[6 * MIB :]
    up = node_factory("site-a", "--admin", "alice")
    repo, c1 = make_repo(up, "ft", {"model.safetensors": v1, "config.json": b"{}"})
    up.terminate()
    b1, b2 = tmp_path / "full.bundle", tmp_path / "incr.bundle"
    out = run_cli("bundle", "export", "--data", str(up.data), "--repo", repo, "-o", str(b1), "--json")
    assert out.returncode == 0, out.stderr
    full = json.loads(out.stdout)
    signer = full["signer"]
    up = node_factory("site-a", "--admin", "alice")
    c2 = HfApi(endpoint=up.url, token=up.admin_token).upload_file(
        path_or_fileobj=v2, path_in_repo="model.safetensors", repo_id=repo
    ).oid
    up.terminate()
    out = run_cli("bundle", "export", "--data", str(up.data), "--repo", repo, "--since", str(b1), "-o", str(b2), "--json")
    assert out.returncode == 0, out.stderr
    incr = json.loads(out.stdout)
    assert full["bundle_bytes"] > size
    # About the changed tensor: 1 MiB plus the chunks cut across its edges.
    assert incr["bundle_bytes"] < 2.5 * MIB, incr

    # Site B: no network to site A at all.
    b = node_factory("site-b")
    b.terminate()
    # A tampered bundle is refused, and nothing of it is imported.
    tampered = tmp_path / "tampered.bundle"
    data = bytearray(b1.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    out = run_cli("bundle", "import", str(tampered), "--data", str(b.data))
    assert out.returncode != 0 and "signature" in out.stderr, out.stderr
    assert not (b.data / "repos" / "models" / "alice" / "ft.git").exists()
    # A bundle from another key than the trusted one is refused too.
    out = run_cli("bundle", "import", str(b1), "--data", str(b.data), "--trust", "00" * 32)
    assert out.returncode != 0 and "trusted" in out.stderr
    # The incremental one alone lacks its prerequisite.
    out = run_cli("bundle", "import", str(b2), "--data", str(b.data), "--trust", signer)
    assert out.returncode != 0 and "earlier bundle" in out.stderr, out.stderr

    out = run_cli("bundle", "import", str(b1), "--data", str(b.data), "--trust", signer)
    assert out.returncode == 0, out.stderr
    b = node_factory("site-b")
    api = HfApi(endpoint=b.url)
    assert api.model_info(repo).sha == c1
    path = hf_hub_download(repo, "model.safetensors", endpoint=b.url, cache_dir=tmp_path / "c1")
    assert open(path, "rb").read() == v1
    b.terminate()
    out = run_cli("bundle", "import", str(b2), "--data", str(b.data), "--trust", signer)
    assert out.returncode == 0, out.stderr
    b = node_factory("site-b")
    assert HfApi(endpoint=b.url).model_info(repo).sha == c2
    path = hf_hub_download(repo, "model.safetensors", endpoint=b.url, cache_dir=tmp_path / "c2")
    assert open(path, "rb").read() == v2

    lines = [json.loads(line) for line in (b.data / "audit.jsonl").read_text().splitlines()]
    imports = [e for e in lines if e["action"] == "import"]
    assert [e["signer"] for e in imports] == [signer, signer]
    exports = [json.loads(line) for line in (up.data / "audit.jsonl").read_text().splitlines()]
    assert sum(e["action"] == "export" for e in exports) == 2
