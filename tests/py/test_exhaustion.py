"""One client must not be able to exhaust a node: stalled git requests, slow connections,
huge request bodies and large reads are bounded, and the API keeps answering meanwhile.

Limits are configured low (through a config file) so that each attack stays small."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from test_git import git, gitenv  # noqa: F401  (fixtures: git with a throwaway HOME)

# A bound on how long an honest request may take while an attack runs.
API_BOUND = 3.0


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def host_port(node):
    host, port = node.info["http"].rsplit(":", 1)
    return host, int(port)


def children(pid: int, comm: str) -> list[int]:
    """Live (not zombie) processes named `comm` whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and name == comm and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(what: str, cond, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def timed_api_call(api: HfApi, rid: str) -> float:
    started = time.monotonic()
    assert api.model_info(rid).id == rid
    elapsed = time.monotonic() - started
    assert elapsed < API_BOUND, f"the API took {elapsed:.1f}s under attack"
    return elapsed


def stalled_upload_pack(node, rid: str, source_ip: str) -> socket.socket:
    """An anonymous fetch that sends its headers and a few body bytes, then nothing."""
    s = socket.create_connection(host_port(node), timeout=10, source_address=(source_ip, 0))
    s.sendall(
        (
            f"POST /{rid}/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/x-git-upload-pack-request\r\n"
            "Content-Length: 1000\r\n\r\n0032want "
        ).encode()
    )
    return s


def status_of(s: socket.socket, timeout: float) -> tuple[int, str]:
    """The status line and the head of the response on `s`."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n")[0].decode(errors="replace")
    return int(head.split()[1]), head


def read_to_end(s: socket.socket, timeout: float) -> bytes:
    """Everything the node sends on `s` until it closes the connection."""
    s.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_stalled_git_fetches_are_bounded_and_the_api_stays_responsive(node_factory, tmp_path):
    limit, per_client, idle = 4, 2, 2
    node = node_factory(
        "node",
        "--config",
        config_file(
            tmp_path,
            f"[gateway]\ngit_max_processes = {limit}\ngit_max_per_client = {per_client}\n"
            f"git_idle_timeout_secs = {idle}\n",
        ),
    )
    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "admin/stall"
    api.create_repo(rid)
    api.create_commit(rid, [CommitOperationAdd("a.txt", b"a")], commit_message="a")
    pid = node.proc.pid

    held, refused = [], []
    try:
        # Two clients fill the node, each up to its share.
        for n, ip in enumerate(["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"], start=1):
            held.append(stalled_upload_pack(node, rid, ip))
            wait_until(f"{n} git processes", lambda: len(children(pid, "git")) == n, 10)
        # Three times the limit in all: a client past its share is told to slow down, anyone
        # else that the node is full; both at once, both with Retry-After.
        for i in range(3 * limit - len(held)):
            ip = "127.0.0.1" if i % 2 == 0 else f"127.0.0.{3 + i}"
            s = stalled_upload_pack(node, rid, ip)
            refused.append(s)
            status, head = status_of(s, API_BOUND)
            assert status == (429 if ip == "127.0.0.1" else 503), head
            assert "retry-after:" in head.lower(), head
        assert len(children(pid, "git")) == limit
        # The API answers while the node holds its git processes (authenticated and not).
        timed_api_call(api, rid)
        timed_api_call(HfApi(endpoint=node.url, token=False), rid)
        # The stalled requests are ended and their processes killed after the idle timeout.
        wait_until("the stalled git processes are gone", lambda: not children(pid, "git"), idle + 10)
        # Their connections end without a complete answer (git's CGI sends its headers
        # early, so the status line may already have been 200).
        for s in held:
            data = read_to_end(s, 10)
            assert not data.endswith(b"0\r\n\r\n"), data[-200:]
    finally:
        for s in held + refused:
            s.close()
    # The slots were given back: a fetch works again.
    out = subprocess.run(
        ["git", "ls-remote", f"{node.url}/{rid}"], capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert b"refs/heads/main" in out.stdout


def half_request(node) -> socket.socket:
    """A connection that sends half a request line, then nothing."""
    s = socket.create_connection(host_port(node), timeout=10)
    s.sendall(b"GET /health HT")
    return s


def test_slow_clients_are_disconnected_and_do_not_block_others(node_factory, tmp_path):
    import resource
    import urllib.request

    header_timeout, idle, cap = 1, 2, 16
    config = config_file(
        tmp_path,
        f"[gateway]\nheader_read_timeout_secs = {header_timeout}\nidle_timeout_secs = {idle}\n"
        f"max_connections = {cap}\n",
    )
    # Start the node under a low soft limit of open files: it raises it to the hard limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        node = node_factory("node", "--config", config)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{node.proc.pid}/limits").read_text()
    line = next(l for l in limits.splitlines() if l.startswith("Max open files"))
    assert line.split()[3] == line.split()[4], line

    # Half a request line: closed after the header timeout (the read fails if not within 10 s).
    s = half_request(node)
    read_to_end(s, 10)
    s.close()

    # Three times the connection cap of such clients: an honest request is still answered.
    slow = [half_request(node) for _ in range(3 * cap)]
    try:
        with urllib.request.urlopen(node.url + "/health", timeout=10) as resp:
            assert resp.status == 200
        for s in slow:
            read_to_end(s, 10)
    finally:
        for s in slow:
            s.close()

    # A request body that stops arriving: the connection is closed after the idle timeout.
    s = socket.create_connection(host_port(node), timeout=10)
    s.sendall(
        (
            "POST /api/repos/create HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {node.admin_token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\""
        ).encode()
    )
    read_to_end(s, idle + 10)
    s.close()
    # The node still answers.
    with urllib.request.urlopen(node.url + "/health", timeout=10) as resp:
        assert resp.status == 200


def test_commit_body_with_a_bad_path_is_refused_while_it_is_still_sent(node, tmp_path):
    """A huge NDJSON commit body whose second line has an invalid path: the node answers 422
    while the client is still sending, instead of reading (and holding) the whole body."""
    import base64
    import json
    import select

    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "admin/ndjson"
    api.create_repo(rid)
    declared = 900 * 1024 * 1024
    s = socket.create_connection(host_port(node), timeout=10)
    s.sendall(
        (
            f"POST /api/models/{rid}/commit/main HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {node.admin_token}\r\n"
            f"Content-Type: application/x-ndjson\r\nContent-Length: {declared}\r\n\r\n"
        ).encode()
    )

    def line(key, value):
        return (json.dumps({"key": key, "value": value}) + "\n").encode()

    s.sendall(line("header", {"summary": "s"}))
    s.sendall(line("file", {"content": "eA==", "path": "a/" * 3000 + "x", "encoding": "base64"}))
    # Then valid small files, 1 MiB at a time, until the node answers.
    chunk = b"".join(
        line("file", {"content": base64.b64encode(os.urandom(3000)).decode(), "path": f"f{i}", "encoding": "base64"})
        for i in range(256)
    )
    sent, bound = 0, 64 * 1024 * 1024
    s.setblocking(False)
    answered = False
    while sent < bound and not answered:
        readable, writable, _ = select.select([s], [s], [], 10)
        if readable:
            answered = True
            break
        if not writable:
            raise AssertionError("the node neither reads nor answers")
        try:
            sent += s.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            answered = True
    assert answered, f"no answer after {sent} bytes of the body"
    assert sent < 16 * 1024 * 1024, f"the node read {sent} bytes before answering"
    s.setblocking(True)
    try:
        status, head = status_of(s, 10)
    except ConnectionResetError:
        # The node closed with our unread bytes in flight; its answer may be lost in the
        # reset. It came early, which is what this test is about.
        status, head = None, ""
    assert status in (422, None), head
    s.close()
    # Nothing was committed.
    assert [f for f in api.list_repo_files(rid) if f.startswith("f")] == []


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_range_reads_of_a_large_git_file_do_not_hold_it_in_memory(node, git, tmp_path):
    """A large file in git (not LFS), read by many clients at once with 1-byte ranges: the
    node streams the blob instead of reading it whole per request, so its peak RSS does not
    grow with the number of readers. Files over 10 MiB are refused outside LFS, as the Hub
    refuses them, so the file is the largest git may hold; a 40 MB one is refused."""
    import concurrent.futures
    import threading
    import urllib.request

    from test_git import remote

    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "admin/bigblob"
    api.create_repo(rid)
    d = tmp_path / "c"
    git.run("clone", remote(node, rid), str(d))
    # Over 10 MiB outside LFS, a push is refused with the Hub's message and its LFS hint.
    (d / "huge.raw").write_bytes(os.urandom(40 * 1024 * 1024))
    git.run("add", "huge.raw", cwd=d)
    git.run("commit", "-m", "40 MB in git", cwd=d)
    refused = git.run("push", "origin", "main", cwd=d, check=False)
    err = refused.stderr.decode(errors="replace")
    assert refused.returncode != 0
    assert "Your push was rejected because it contains files larger than 10 MiB" in err, err
    assert "git-lfs" in err and "huge.raw" in err, err
    assert "huge.raw" not in api.list_repo_files(rid)
    git.run("reset", "--hard", "HEAD~1", cwd=d)
    (d / "huge.raw").unlink(missing_ok=True)
    # The largest file git may hold (10 MiB) is served by ranges without being held whole.
    size = 10 * 1024 * 1024
    content = os.urandom(size)
    (d / "big.raw").write_bytes(content)
    git.run("add", "big.raw", cwd=d)
    git.run("commit", "-m", "10 MiB in git", cwd=d)
    git.run("push", "origin", "main", cwd=d)

    url = f"{node.url}/{rid}/resolve/main/big.raw"

    def get(range_header=None) -> bytes:
        req = urllib.request.Request(url, headers={"Range": range_header} if range_header else {})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.read()

    # Correct bytes, whole and in ranges.
    assert get("bytes=0-0") == content[:1]
    assert get("bytes=5000000-5000009") == content[5000000:5000010]
    assert get("bytes=-5") == content[-5:]
    pid = node.proc.pid
    before = vm_kib(pid, "VmHWM")
    readers = 12
    barrier = threading.Barrier(readers)

    def one_byte(i):
        barrier.wait(timeout=30)
        return get(f"bytes={i}-{i}")

    with concurrent.futures.ThreadPoolExecutor(readers) as pool:
        got = list(pool.map(one_byte, range(readers)))
    assert got == [content[i : i + 1] for i in range(readers)]
    assert hashlib.sha256(get()).digest() == hashlib.sha256(content).digest()
    grown = (vm_kib(pid, "VmHWM") - before) * 1024
    # Before: each reader held the whole blob (12 x 10 MiB). Now: a read buffer each.
    assert grown < size, f"peak RSS grew by {grown / 2**20:.0f} MiB for {readers} 1-byte reads"
