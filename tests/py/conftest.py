"""pytest harness: real `hubmesh up` processes on free loopback ports.

The `node` fixture starts a fresh node in a temporary data directory and stops it after the
test (also when the test fails); `node_factory` starts as many as a test needs. The binary is
$HUBMESH_BIN (set by scripts/test), else target/debug/hubmesh under $CARGO_TARGET_DIR or the
repository. The Rust harness in tests/src/lib.rs does the same for Rust tests.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Keep the client's cache and token out of the user's home. huggingface_hub reads these at
# import time, and conftest is imported before any test module.
# The directory is made only when the caller set none, and removed when the run ends (it
# holds the client's cache of every file the tests download).
if "HF_HOME" not in os.environ:
    _hf_home = tempfile.mkdtemp(prefix="hubmesh-hf-home-")
    os.environ["HF_HOME"] = _hf_home
    atexit.register(shutil.rmtree, _hf_home, ignore_errors=True)
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_ENDPOINT", None)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def hubmesh_bin() -> Path:
    env = os.environ.get("HUBMESH_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidate = target / "debug" / "hubmesh"
    if not candidate.is_file():
        raise RuntimeError(
            f"no hubmesh binary at {candidate}: run `cargo build --bin hubmesh` or set HUBMESH_BIN"
        )
    return candidate


@dataclass
class Node:
    data: Path
    proc: subprocess.Popen
    log_path: Path
    info: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.info['http']}"

    @property
    def admin_token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"node ignored SIGTERM:\n{self.log()}")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_node(data: Path, *extra: str) -> Node:
    data.mkdir(parents=True, exist_ok=True)
    info_path = data / "node.json"
    info_path.unlink(missing_ok=True)
    log_path = data.with_suffix(".log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [
            str(hubmesh_bin()),
            "up",
            "--data", str(data),
            "--http", "127.0.0.1:0",
            "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Debug logs by default, so that the secret check below sees everything a node logs.
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "debug")},
    )
    log.close()
    node = Node(data=data, proc=proc, log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if info_path.exists():
            node.info = json.loads(info_path.read_text())
            return node
        if proc.poll() is not None:
            raise AssertionError(f"hubmesh up exited with {proc.returncode}:\n{node.log()}")
        if time.monotonic() > deadline:
            node.kill()
            raise AssertionError(f"no node.json within {START_TIMEOUT}s:\n{node.log()}")
        time.sleep(0.02)


@pytest.fixture
def node_factory(tmp_path):
    started: list[Node] = []

    def make(name: str = "node", *extra: str) -> Node:
        node = start_node(tmp_path / name, *extra)
        started.append(node)
        return node

    yield make
    for node in started:
        node.kill()
    # Secrets never reach the logs: not the admin token, nor any token a test created.
    for node in started:
        log = node.log()
        for secret in {node.admin_token, *SECRETS_SEEN}:
            assert secret not in log, f"a token appears in the log of {node.data}"
    SECRETS_SEEN.clear()


# Tokens created by tests (CLI output); checked against every node log at teardown.
SECRETS_SEEN: set[str] = set()


@pytest.fixture
def node(node_factory) -> Node:
    return node_factory()


def wait_for(what, check, node=None, timeout=60.0, interval=0.1, tolerate=()):
    """Polls `check()` until it returns a truthy value, and returns that value. An exception
    of a type in `tolerate` counts as "not yet". At the deadline the test fails, naming `what`
    with the last value or error and, given a node, the end of its log."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = check()
            if last:
                return last
        except tolerate as e:
            last = e
        if time.monotonic() > deadline:
            log = f"\n{node.log()[-4000:]}" if node is not None else ""
            pytest.fail(f"timed out waiting for {what}; last: {last!r}{log}")
        time.sleep(interval)


def cli(node, *args):
    """Runs `hubmesh ARGS --data NODE_DATA` (the node's own CLI); its trimmed stdout. A token it
    creates is remembered, so the tests can check no answer or log ever shows it."""
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


def hf(node, token, *args, home):
    """Runs the `hf` CLI of the test venv against the node; its stdout."""
    env = {
        **os.environ,
        "HF_ENDPOINT": node.url,
        "HF_TOKEN": token,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_COLOR": "1",
    }
    exe = Path(sys.executable).with_name("hf")
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, f"hf {args}: {out.stdout}\n{out.stderr}"
    return out.stdout
