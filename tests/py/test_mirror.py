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
import http.client
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import cli, hubmesh_bin, wait_for
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

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

    # The object's line is written once the flight stored it (after the client's last byte).
    oid = hashlib.sha256(weights).hexdigest()
    wait_for("the object's audit line", lambda: any(e.get("object") == oid for e in audit_lines(mirror)), mirror)
    events = audit_lines(mirror)
    pulled = [e for e in events if e["action"] == "mirror" and e["repo"] == f"models/{repo}"]
    assert any(e.get("commit") == commit for e in pulled)
    assert any(e.get("object") == oid for e in pulled)
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


def test_site_to_site_through_two_mirrors(node_factory, tmp_path):
    """Site B's mirror pulls from site A's mirror, which pulls from the upstream (three
    processes, not mesh peers, HTTP only: two sites across a firewall). What B serves carries
    the upstream's commit shas and bytes, for the Hub API and for git + git-lfs."""
    up = node_factory("upstream", "--admin", "alice")
    site_a = node_factory("site-a", "--upstream", up.url)
    site_b = node_factory("site-b", "--upstream", site_a.url)
    weights = blob(2 * MIB + 5, 7)
    files = {"config.json": b'{"model_type": "tiny"}\n', "model.safetensors": weights}
    repo, commit = make_repo(up, "chained", files)

    assert HfApi(endpoint=site_b.url).model_info(repo).sha == commit
    snap = snapshot_download(repo, endpoint=site_b.url, cache_dir=tmp_path / "snap")
    for name, data in files.items():
        assert open(os.path.join(snap, name), "rb").read() == data
    # Site A holds it now too, pulled once for both sites.
    assert HfApi(endpoint=site_a.url).model_info(repo).sha == commit

    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "LANG": "C"}
    subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True, capture_output=True)
    # A second repo, cloned cold at B with git: both hops pull it during the clone.
    repo2, commit2 = make_repo(up, "cloned-at-b", {"w.bin": weights, "a.txt": b"hello\n"})
    dest = tmp_path / "clone"
    out = subprocess.run(["git", "clone", f"{site_b.url}/{repo2}", str(dest)], env=env, capture_output=True, timeout=180)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, env=env, capture_output=True, check=True, text=True)
    assert head.stdout.strip() == commit2
    assert (dest / "w.bin").read_bytes() == weights
    for site in (site_a, site_b):
        pulled = [e for e in audit_lines(site) if e["action"] == "mirror"]
        assert any(e.get("commit") == commit2 and e["repo"] == f"models/{repo2}" for e in pulled)


def make_pki(directory, name):
    """A CA (`ca.pem`) and a certificate it signed for 127.0.0.1 (`cert.pem`, `key.pem`)."""
    directory.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={name} CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=127.0.0.1")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "cert.pem", "-days", "2", "-extfile", "ext.cnf")
    return directory / "ca.pem", directory / "cert.pem", directory / "key.pem"


class Front:
    """A reverse proxy in front of a node, as a site puts nginx in front of one; with `cert`
    and `key`, TLS-terminating: HTTPS on its own port, HTTP to the node with
    `X-Forwarded-Proto: https`. Records the paths it served. With `hold_after`, an LFS object
    body stops after that many bytes until `release` is set (a slow upstream, made
    deterministic)."""

    def __init__(self, target_url, cert=None, key=None, hold_after=None):
        target = urllib.parse.urlsplit(target_url)
        paths = self.paths = []
        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def proxy(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                if cert:
                    headers["X-Forwarded-Proto"] = "https"
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                paths.append(self.path)
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Connection", "close")
                self.end_headers()
                sent = 0
                hold = hold_after if self.path.startswith("/lfs-objects/") else None
                while self.command != "HEAD" and (chunk := resp.read(1 << 16)):
                    if hold is not None and sent + len(chunk) > hold:
                        self.wfile.write(chunk[: hold - sent])
                        self.wfile.flush()
                        release.wait(timeout=120)
                        chunk, hold = chunk[hold - sent :], None
                    self.wfile.write(chunk)
                    sent += len(chunk)
                conn.close()
                self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = proxy

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_https_upstream_with_the_sites_ca_and_a_wrong_ca_refused(node_factory, tmp_path):
    """`upstream = "https://…"`: the mirror speaks TLS to its upstream (here a node behind a
    TLS front whose CA the test made), trusting `upstream_ca_file` besides the system's roots;
    an upstream whose certificate no trusted CA signed is refused with a clear error."""
    up = node_factory("upstream", "--admin", "alice")
    ca, cert, key = make_pki(tmp_path / "pki", "site")
    other_ca, _, _ = make_pki(tmp_path / "other-pki", "other")
    front = Front(up.url, cert, key)
    try:
        weights = blob(MIB + 3, 8)
        repo, commit = make_repo(up, "over-tls", {"w.bin": weights, "config.json": b"{}"})
        config = tmp_path / "mirror.toml"
        config.write_text(f'[mirror]\nupstream = "{front.url}"\nupstream_ca_file = "{ca}"\n')
        mirror = node_factory("mirror", "--config", str(config))
        assert HfApi(endpoint=mirror.url).model_info(repo).sha == commit
        path = hf_hub_download(repo, "w.bin", endpoint=mirror.url, cache_dir=tmp_path / "c")
        assert open(path, "rb").read() == weights
        # Everything went through TLS: repo info, git, the LFS batch API and the object itself.
        assert any(p.startswith(f"/api/models/{repo}") for p in front.paths)
        assert any(p.endswith(".git/git-upload-pack") for p in front.paths)
        assert any(p.endswith("/info/lfs/objects/batch") for p in front.paths)
        assert any(p.startswith("/lfs-objects/") for p in front.paths)

        # A mirror that trusts another CA refuses the upstream's certificate, and says why.
        config.write_text(f'[mirror]\nupstream = "{front.url}"\nupstream_ca_file = "{other_ca}"\n')
        wrong = node_factory("wrong-ca", "--config", str(config))
        seen = len(front.paths)
        status, headers, body = request("GET", f"{wrong.url}/api/models/{repo}")
        assert status == 503, body
        message = body.decode()
        assert front.url in message and "certificate" in message and "upstream_ca_file" in message, message
        assert headers["X-Error-Message"]
        assert len(front.paths) == seen  # no request got past the handshake
    finally:
        front.close()


def upstream_gets(node) -> float:
    """GET requests the node served, its own /metrics scrapes left out."""
    _, _, body = request("GET", f"{node.url}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith('http_requests_total{method="GET"') and 'route="/metrics"' not in line
    )


def test_names_the_upstream_lacks_are_remembered_briefly(node_factory, tmp_path):
    """A negative cache: a repo the upstream lacks is answered 404 from the mirror for
    `negative_ttl_secs` without asking the upstream again; after that it is asked again."""
    ttl = 8
    up = node_factory("upstream", "--admin", "alice")
    config = tmp_path / "mirror.toml"
    config.write_text(f'[mirror]\nupstream = "{up.url}"\nnegative_ttl_secs = {ttl}\n')
    mirror = node_factory("mirror", "--config", str(config))
    url = f"{mirror.url}/api/models/alice/later"
    before = upstream_gets(up)
    status, headers, _ = request("GET", url)
    first = time.monotonic()
    assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"
    asked = upstream_gets(up) - before
    assert asked >= 1
    for _ in range(5):
        assert request("GET", url)[0] == 404
    assert upstream_gets(up) - before == asked, "answered from the negative cache"

    repo, commit = make_repo(up, "later", {"a.txt": b"now it exists"})
    if time.monotonic() - first < ttl - 2:
        assert request("GET", url)[0] == 404, "still remembered as missing within the TTL"
    # Once the TTL passed, the upstream is asked again and the repo is pulled.
    wait_for("the negative entry to expire", lambda: request("GET", url)[0] == 200, node=mirror, timeout=ttl + 30)
    assert HfApi(endpoint=mirror.url).model_info(repo).sha == commit


def test_pins_at_a_commit_and_at_a_tag_serve_that_revision_as_main(node_factory, tmp_path):
    """`pin = "ns/name@REV"`: the mirror serves that revision (a commit sha or a tag) as the
    repo's `main`, with the upstream's sha, for the Hub API and git; later upstream commits
    are neither served nor fetched, and a refresh does not move it."""
    up = node_factory("upstream", "--admin", "alice")
    up_api = HfApi(endpoint=up.url, token=up.admin_token)
    by_sha, c1 = make_repo(up, "by-sha", {"a.txt": b"v1"})
    by_tag, t1 = make_repo(up, "by-tag", {"a.txt": b"v1"})
    up_api.create_tag(by_tag, tag="v1.0")
    c2 = up_api.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id=by_sha).oid
    up_api.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id=by_tag)
    mirror = node_factory("mirror", "--upstream", up.url)
    cli(mirror, "mirror", "add", f"{by_sha}@{c1}", "--rule", "pin")
    cli(mirror, "mirror", "add", f"{by_tag}@v1.0", "--rule", "pin")
    cli(mirror, "mirror", "add", "alice/nowhere@v9", "--rule", "pin")

    api = HfApi(endpoint=mirror.url)
    for repo, commit in [(by_sha, c1), (by_tag, t1)]:
        assert api.model_info(repo).sha == commit
        path = hf_hub_download(repo, "a.txt", endpoint=mirror.url, cache_dir=tmp_path / repo)
        assert open(path, "rb").read() == b"v1"
        status, headers, _ = request("HEAD", f"{mirror.url}/{repo}/resolve/main/a.txt")
        assert status == 200 and headers["X-Repo-Commit"] == commit
    refs = api.list_repo_refs(by_tag)
    assert [b.name for b in refs.branches] == ["main"]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", t1)]
    assert [b.name for b in api.list_repo_refs(by_sha).branches] == ["main"]
    # The upstream's later commit was not fetched: not servable by its sha either.
    assert request("GET", f"{mirror.url}/api/models/{by_sha}/revision/{c2}")[0] == 404
    # git sees the pinned commit as main.
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "LANG": "C"}
    dest = tmp_path / "clone"
    out = subprocess.run(["git", "clone", f"{mirror.url}/{by_sha}", str(dest)], env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, env=env, capture_output=True, check=True, text=True)
    assert head.stdout.strip() == c1 and (dest / "a.txt").read_bytes() == b"v1"
    # A refresh leaves a repo pinned at a sha where it is.
    up_api.upload_file(path_or_fileobj=b"v3", path_in_repo="a.txt", repo_id=by_sha)
    cli(mirror, "mirror", "refresh", by_sha)
    assert api.model_info(by_sha).sha == c1
    # A pin at a revision the upstream lacks: not served (404), and a refresh says why.
    make_repo(up, "nowhere", {"a.txt": b"x"})
    assert request("GET", f"{mirror.url}/api/models/alice/nowhere")[0] == 404
    out = run_cli("mirror", "refresh", "alice/nowhere", "--data", str(mirror.data))
    assert out.returncode != 0 and "has no revision v9 of alice/nowhere" in out.stdout + out.stderr, out


def test_bundles_into_and_out_of_running_nodes(node_factory, tmp_path):
    """`hubmesh bundle export|import --data DIR` while a node runs on DIR goes through that
    node (`/api/bundles/…`): the imported repo is served at once, without a restart; a
    tampered bundle is refused with nothing visible; an incremental one follows."""
    v1 = blob(3 * MIB, 9)
    v2 = v1[: 2 * MIB] + blob(MIB, 10)
    a = node_factory("site-a", "--admin", "alice")
    repo, c1 = make_repo(a, "live", {"model.safetensors": v1, "config.json": b"{}"})
    b1, b2 = tmp_path / "live.bundle", tmp_path / "live-2.bundle"
    out = run_cli("bundle", "export", "--data", str(a.data), "--repo", repo, "-o", str(b1), "--json")
    assert out.returncode == 0, out.stderr
    full = json.loads(out.stdout)
    assert b1.stat().st_size == full["bundle_bytes"] > 3 * MIB
    signer = full["signer"]

    b = node_factory("site-b")
    api = HfApi(endpoint=b.url)
    tampered = tmp_path / "tampered.bundle"
    data = bytearray(b1.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    out = run_cli("bundle", "import", str(tampered), "--data", str(b.data))
    assert out.returncode != 0 and "signature" in out.stderr, out.stderr
    assert request("GET", f"{b.url}/api/models/{repo}")[0] == 404
    out = run_cli("bundle", "import", str(b1), "--data", str(b.data), "--trust", "11" * 32)
    assert out.returncode != 0 and "trusted" in out.stderr, out.stderr
    assert request("GET", f"{b.url}/api/models/{repo}")[0] == 404

    out = run_cli("bundle", "import", str(b1), "--data", str(b.data), "--trust", signer, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["signer"] == signer
    # Served and listed by the running node at once.
    assert api.model_info(repo).sha == c1
    path = hf_hub_download(repo, "model.safetensors", endpoint=b.url, cache_dir=tmp_path / "c1")
    assert open(path, "rb").read() == v1
    assert repo in [m.id for m in api.list_models(author="alice")]

    c2 = HfApi(endpoint=a.url, token=a.admin_token).upload_file(
        path_or_fileobj=v2, path_in_repo="model.safetensors", repo_id=repo
    ).oid
    out = run_cli("bundle", "export", "--data", str(a.data), "--repo", repo, "--since", str(b1), "-o", str(b2), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bundle_bytes"] < 2 * MIB
    out = run_cli("bundle", "import", str(b2), "--data", str(b.data), "--trust", signer)
    assert out.returncode == 0, out.stderr
    assert api.model_info(repo).sha == c2
    path = hf_hub_download(repo, "model.safetensors", endpoint=b.url, cache_dir=tmp_path / "c2")
    assert open(path, "rb").read() == v2

    assert sum(e["action"] == "import" for e in audit_lines(b)) == 2
    assert sum(e["action"] == "export" for e in audit_lines(a)) == 2


def test_a_ranged_get_of_a_cold_file_streams_while_it_arrives(node_factory, tmp_path):
    """A ranged GET of a file the mirror lacks answers 206 with the range's bytes as the
    upstream's bytes pass, not after the whole file: here the upstream (behind a proxy that
    stops the object after its first MiB) has sent only 1 MiB of 8 when the range's bytes
    arrive; the range's last byte comes once the whole file was verified."""
    up = node_factory("upstream", "--admin", "alice")
    front = Front(up.url, hold_after=MIB)
    try:
        weights = blob(8 * MIB, 11)
        repo, commit = make_repo(up, "ranged", {"big.bin": weights})
        mirror = node_factory("mirror", "--upstream", front.url)
        assert HfApi(endpoint=mirror.url).model_info(repo).sha == commit
        start, end = 1000, 300_999
        conn = http.client.HTTPConnection("127.0.0.1", int(mirror.url.rsplit(":", 1)[1]), timeout=60)
        conn.request("GET", f"/{repo}/resolve/main/big.bin", headers={"Range": f"bytes={start}-{end}"})
        resp = conn.getresponse()
        assert resp.status == 206
        assert resp.getheader("Content-Range") == f"bytes {start}-{end}/{len(weights)}"
        assert resp.getheader("X-Repo-Commit") == commit
        head = resp.read(end - start)  # all but the last byte, while the upstream is held
        assert head == weights[start:end]
        assert not front.release.is_set()
        front.release.set()
        assert resp.read() == weights[end : end + 1]
        conn.close()
        # The whole file was fetched once and is now served from the store.
        path = hf_hub_download(repo, "big.bin", endpoint=mirror.url, cache_dir=tmp_path / "c")
        assert open(path, "rb").read() == weights
        assert sum(p.startswith("/lfs-objects/") for p in front.paths) == 1
    finally:
        front.close()


def mirror_usage(node):
    return json.loads(cli(node, "mirror", "list", "--json"))["usage"]


def held_objects(node):
    return {o["sha256"] for o in mirror_usage(node)["objects"]}


def test_quota_evicts_the_least_recently_used_content_that_is_not_pinned(node_factory, tmp_path):
    """`[mirror] quota`: a pull that would exceed it first evicts the least recently used
    pulled content that is not pinned (through the store's gc); usage stays under the quota,
    the pinned repo's file stays, and an evicted file is pulled again, same bytes, on its next
    read."""
    quota = 5 * MIB
    up = node_factory("upstream", "--admin", "alice")
    files = {name: blob(size, seed) for name, size, seed in [("kept", 2 * MIB, 21), ("a", 3 * MIB // 2, 22), ("b", 3 * MIB // 2, 23), ("c", 3 * MIB // 2, 24)]}
    repos = {name: make_repo(up, name, {"w.bin": data})[0] for name, data in files.items()}
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    config = tmp_path / "mirror.toml"
    config.write_text(f'[mirror]\nupstream = "{up.url}"\nquota = "5MiB"\npin = ["{repos["kept"]}"]\n')
    mirror = node_factory("mirror", "--config", str(config))

    def read(name, cache):
        path = hf_hub_download(repos[name], "w.bin", endpoint=mirror.url, cache_dir=tmp_path / cache)
        assert open(path, "rb").read() == files[name]
        # The last byte goes out once verified; the store import follows: wait for it.
        wait_for(f"{name} to be stored", lambda: sha[name] in held_objects(mirror), node=mirror)

    for name in ["kept", "a", "b"]:
        read(name, "c1")
    usage = mirror_usage(mirror)
    assert usage["quota"] == quota and usage["bytes"] == quota
    assert usage["pinned_bytes"] == len(files["kept"])
    assert held_objects(mirror) == {sha["kept"], sha["a"], sha["b"]}
    # `a` is read again (from the store: no upstream fetch), so `b` is now the oldest.
    pulls = metric(up, LFS_GETS)
    read("a", "c2")
    assert metric(up, LFS_GETS) == pulls

    # Pulling `c` needs room: `b` goes (least recently used, not pinned); `kept` stays.
    read("c", "c3")
    usage = mirror_usage(mirror)
    assert usage["bytes"] <= quota
    assert held_objects(mirror) == {sha["kept"], sha["a"], sha["c"]}
    assert metric(up, LFS_GETS) == pulls + 1

    # `b` is evicted content: its next read pulls it again, same SHA-256 and bytes, and
    # evicts `a` (now the least recently used), never the pinned file.
    read("b", "c4")
    assert metric(up, LFS_GETS) == pulls + 2
    assert held_objects(mirror) == {sha["kept"], sha["c"], sha["b"]}
    assert mirror_usage(mirror)["bytes"] <= quota
    listing = cli(mirror, "mirror", "list")
    assert "usage\t5.0 MiB in 3 object(s) (2.0 MiB pinned)\tquota 5.0 MiB" in listing, listing

    evictions = [e for e in audit_lines(mirror) if e["action"] == "evict"]
    assert [e["objects"] for e in evictions] == [[sha["b"]], [sha["a"]]]
    assert all(e["quota"] == quota for e in evictions)


def test_a_file_streamed_while_evicted_is_delivered_whole(node_factory, tmp_path):
    """Eviction goes through the store's gc, which keeps what a reader leases: a download in
    progress while its file is evicted finishes with every byte; the next eviction removes
    the file, and the next read pulls it again (same SHA-256)."""
    size = 24 * MIB  # far more than the socket buffers and the gateway's queue hold
    up = node_factory("upstream", "--admin", "alice")
    weights = blob(size, 25)
    digest = hashlib.sha256(weights).hexdigest()
    repo, commit = make_repo(up, "streamed", {"w.bin": weights})
    mirror = node_factory("mirror", "--upstream", up.url)
    path = hf_hub_download(repo, "w.bin", endpoint=mirror.url, cache_dir=tmp_path / "c1")
    assert open(path, "rb").read() == weights
    wait_for("the pull to be stored", lambda: held_objects(mirror) == {digest}, node=mirror)

    conn = http.client.HTTPConnection("127.0.0.1", int(mirror.url.rsplit(":", 1)[1]), timeout=60)
    conn.request("GET", f"/{repo}/resolve/main/w.bin")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("X-Repo-Commit") == commit
    head = resp.read(256 * 1024)
    # Evict everything while the reader holds the file: chosen, but kept for the reader.
    report = json.loads(cli(mirror, "mirror", "evict", "0", "--json"))
    assert report["in_use"] == [digest] and report["evicted"] == []
    rest = resp.read()
    conn.close()
    assert hashlib.sha256(head + rest).hexdigest() == digest, "delivered whole"

    # The reader is gone (its thread lets go of the file right after its last send): now it
    # is evicted, and its blocks freed.
    report = wait_for(
        "the evicted file's reader to end",
        lambda: (r := json.loads(cli(mirror, "mirror", "evict", "0", "--json")))["evicted"] and r,
        node=mirror,
    )
    assert report["evicted"] == [digest] and report["in_use"] == []
    assert report["freed_bytes"] >= size and report["usage"] == 0
    assert held_objects(mirror) == set()
    pulls = metric(up, LFS_GETS)
    path = hf_hub_download(repo, "w.bin", endpoint=mirror.url, cache_dir=tmp_path / "c2", force_download=True)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    assert metric(up, LFS_GETS) == pulls + 1
    wait_for("the pull to be stored", lambda: held_objects(mirror) == {digest}, node=mirror)


def test_a_gated_upstream_repo_through_the_sites_token(node_factory, tmp_path):
    """The upstream gates a repo; the site's `upstream_token` belongs to a user it granted
    access, so the site's users download through the mirror. A mirror without the token gets
    the upstream's gate as the Hub's `GatedRepo` error (403), naming what to set."""
    up = node_factory("upstream", "--admin", "alice")
    cli(up, "user", "add", "site")
    site_token = cli(up, "token", "create", "site", "--scope", "read")
    weights = blob(2 * MIB + 3, 11)
    files = {"config.json": b'{"model_type": "gated"}\n', "model.safetensors": weights}
    repo, commit = make_repo(up, "gated", files)
    admin = HfApi(endpoint=up.url, token=up.admin_token)
    admin.update_repo_settings(repo, gated="manual")
    with pytest.raises(GatedRepoError):
        hf_hub_download(repo, "config.json", endpoint=up.url, token=site_token, cache_dir=tmp_path / "denied")
    admin.grant_access(repo, "site")

    config = tmp_path / "mirror.toml"
    config.write_text(f'[mirror]\nupstream = "{up.url}"\nupstream_token = "{site_token}"\n')
    mirror = node_factory("mirror", "--config", str(config))
    bare = node_factory("bare-mirror", "--upstream", up.url)

    # A user of the site (no upstream account, no token) downloads through the mirror.
    assert HfApi(endpoint=mirror.url).model_info(repo).sha == commit
    for name, data in files.items():
        path = hf_hub_download(repo, name, endpoint=mirror.url, token=False, cache_dir=tmp_path / "c1")
        assert open(path, "rb").read() == data
    def pulled():
        return [e for e in audit_lines(mirror) if e["action"] == "mirror" and e["repo"] == f"models/{repo}"]

    assert any(e.get("commit") == commit for e in pulled())
    # The object's line is written once the flight stored it (after the client's last byte).
    oid = hashlib.sha256(weights).hexdigest()
    wait_for("the object's audit line", lambda: any(e.get("object") == oid for e in pulled()), mirror)

    # Without the token: the Hub's gated error, from the client and on the wire; not a 500.
    with pytest.raises(GatedRepoError) as e:
        hf_hub_download(repo, "model.safetensors", endpoint=bare.url, token=False, cache_dir=tmp_path / "c2")
    assert e.value.response.status_code == 403
    status, headers, body = request("GET", f"{bare.url}/{repo}/resolve/main/config.json")
    assert status == 403 and headers["X-Error-Code"] == "GatedRepo", body
    assert up.url in headers["X-Error-Message"] and "upstream_token" in headers["X-Error-Message"]


def test_two_sites_mirror_each_others_public_namespaces_over_the_mesh(node_factory, tmp_path):
    """Two sites on one p2p mesh, each with its own accounts: site B seeds `alice/*` (site A's
    namespace) and A seeds `bob/*`. Public repos cross with their signed refs (same commit
    shas) and their LFS content verified chunk by chunk; private repos never cross; neither
    site accepts the other's tokens."""
    a = node_factory("site-a", "--admin", "alice", "--seed", "bob/*")
    b = node_factory("site-b", "--admin", "bob", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    weights = blob(3 * MIB + 1, 21)
    on_a = HfApi(endpoint=a.url, token=a.admin_token)
    on_b = HfApi(endpoint=b.url, token=b.admin_token)
    on_a.create_repo("alice/secret", private=True)
    on_a.upload_file(path_or_fileobj=b"private a\n", path_in_repo="leak.txt", repo_id="alice/secret")
    on_b.create_repo("bob/secret", private=True)
    on_b.upload_file(path_or_fileobj=b"private b\n", path_in_repo="leak.txt", repo_id="bob/secret")
    repo_a, commit_a = make_repo(a, "weights", {"model.safetensors": weights, "config.json": b"{}"})
    on_b.create_repo("bob/data", repo_type="dataset")
    commit_b = on_b.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv",
                                repo_id="bob/data", repo_type="dataset").oid

    def at(node, kind, repo, sha):
        status, _, body = request("GET", f"{node.url}/api/{kind}/{repo}")
        return status == 200 and json.loads(body).get("sha") == sha

    wait_for("site A's repo at site B", lambda: at(b, "models", repo_a, commit_a), b)
    wait_for("site B's dataset at site A", lambda: at(a, "datasets", "bob/data", commit_b), a)
    path = hf_hub_download(repo_a, "model.safetensors", endpoint=b.url, token=False, cache_dir=tmp_path / "c1")
    assert open(path, "rb").read() == weights
    path = hf_hub_download("bob/data", "train.csv", repo_type="dataset", endpoint=a.url, token=False,
                           cache_dir=tmp_path / "c2")
    assert open(path, "rb").read() == b"a,b\n1,2\n"
    # The LFS object came to B over the mesh, each chunk checked against A's signed manifest.
    _, _, body = request("GET", f"{b.url}/api/mesh/repos/model/{repo_a}")
    lfs = json.loads(body)["lfs"]
    assert lfs["fetched"] == 1 and lfs["missing"] == 0, lfs
    assert "ref update accepted" in b.log() and "ref update accepted" in a.log()

    # Private repos stay home, by the Hub API, listings and git.
    for node, other in ((b, "alice/secret"), (a, "bob/secret")):
        assert request("GET", f"{node.url}/api/models/{other}")[0] == 404
        assert request("GET", f"{node.url}/{other}.git/info/refs?service=git-upload-pack")[0] in (401, 404)
    _, _, listed = request("GET", f"{b.url}/api/models?author=alice")
    assert [m["id"] for m in json.loads(listed)] == [repo_a]
    # Each site keeps its accounts: a token of one site means nothing at the other.
    assert request("GET", f"{b.url}/api/whoami-v2", token=a.admin_token)[0] == 401
    assert request("GET", f"{a.url}/api/whoami-v2", token=b.admin_token)[0] == 401


def test_datasets_and_spaces_pull_through_as_models_do(sites, tmp_path):
    """A dataset (with an LFS file) and a Space's repo are pulled through the mirror with the
    upstream's commit shas and bytes, by `snapshot_download` and `hf_hub_download`."""
    up, mirror = sites
    api = HfApi(endpoint=up.url, token=up.admin_token)
    rows = blob(MIB + 9, 31)
    api.create_repo("alice/table", repo_type="dataset")
    ds = api.create_commit("alice/table", repo_type="dataset", commit_message="data", operations=[
        CommitOperationAdd(path_in_repo="data/train.parquet", path_or_fileobj=rows),
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=b"---\nlicense: mit\n---\n"),
    ]).oid
    api.create_repo("alice/demo", repo_type="space", space_sdk="static")
    sp = api.upload_file(path_or_fileobj=b"<h1>demo</h1>\n", path_in_repo="index.html",
                         repo_id="alice/demo", repo_type="space").oid

    at_mirror = HfApi(endpoint=mirror.url)
    assert at_mirror.dataset_info("alice/table").sha == ds
    snap = snapshot_download("alice/table", repo_type="dataset", endpoint=mirror.url, cache_dir=tmp_path / "c1")
    assert open(os.path.join(snap, "data", "train.parquet"), "rb").read() == rows
    assert at_mirror.space_info("alice/demo").sha == sp
    path = hf_hub_download("alice/demo", "index.html", repo_type="space", endpoint=mirror.url,
                           cache_dir=tmp_path / "c2")
    assert open(path, "rb").read() == b"<h1>demo</h1>\n"
    repos = {e["repo"] for e in audit_lines(mirror) if e["action"] == "mirror"}
    assert {"datasets/alice/table", "spaces/alice/demo"} <= repos
