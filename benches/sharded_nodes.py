#!/usr/bin/env python3
"""Sharded inference across node processes: decode tok/s of one model served whole on node A
and the same weights served tensor-parallel over 2 (A + B) and 4 (A + B + C + D) `hubmesh up`
processes on 127.0.0.1, over `/hubmesh/shard/1` streams on the nodes' libp2p TCP
connections.

The same random Llama is uploaded to A under three names (the store keeps one copy):
`alice/whole` is served whole, `alice/tp2` and `alice/tp4` are placed with
`POST /api/mesh/placements`. Requests alternate between the three within each round, so all
see the same machine load. Decode rate: greedy streamed text completion of --tokens tokens
(the head scores `</s>` 0, so no answer stops early); rate = (tokens − 1) ÷ (time from the
first content event to the last). Best and median over --rounds. The tokens of every layout
are checked equal to the whole model's.

Bytes per token are not measured here (the nodes do not export the shard links' counters):
they follow from the all-reduce count, which `traffic_per_token_follows_the_all_reduce_count`
(crates/infer/tests/infer/shard.rs) checks against the measured counters.

Usage: .venv/bin/python benches/sharded_nodes.py [--bin PATH] [--rounds 3] [--tokens 32]
       [--layers 8] [--hidden 512] [--out FILE]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "py"))
from test_sharded import safetensors  # noqa: E402

from huggingface_hub import HfApi  # noqa: E402

PROMPT = " ".join(f"w{i}" for i in range(10, 34))


class Node:
    def __init__(self, data: Path, binary: Path, *extra: str):
        data.mkdir(parents=True, exist_ok=True)
        info = data / "node.json"
        self.data = data
        log = open(data.with_suffix(".log"), "ab")
        self.proc = subprocess.Popen(
            [str(binary), "up", "--data", str(data), "--http", "127.0.0.1:0",
             "--p2p-listen", "/ip4/127.0.0.1/tcp/0", *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "info"})
        deadline = time.monotonic() + 60
        while not info.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"node {data} did not start")
            time.sleep(0.05)
        self.info = json.loads(info.read_text())
        self.url = f"http://{self.info['http']}"

    @property
    def token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def model_files(layers: int, hidden: int, vocab: int = 8192) -> dict[str, bytes]:
    heads, kv, inter = 8, 4, 3 * hidden
    hd = hidden // heads
    rng = np.random.default_rng(5)

    def lin(rows, cols):
        return (rng.uniform(-1, 1, (rows, cols)) * 1.5 / np.sqrt(cols)).astype("<f4")

    t = {"model.embed_tokens.weight": rng.uniform(-1, 1, (vocab, hidden)).astype("<f4")}
    for layer in range(layers):
        p = f"model.layers.{layer}"
        t[f"{p}.input_layernorm.weight"] = np.ones(hidden, "<f4")
        t[f"{p}.self_attn.q_proj.weight"] = lin(heads * hd, hidden)
        t[f"{p}.self_attn.k_proj.weight"] = lin(kv * hd, hidden)
        t[f"{p}.self_attn.v_proj.weight"] = lin(kv * hd, hidden)
        t[f"{p}.self_attn.o_proj.weight"] = lin(hidden, heads * hd)
        t[f"{p}.post_attention_layernorm.weight"] = np.ones(hidden, "<f4")
        t[f"{p}.mlp.gate_proj.weight"] = lin(inter, hidden)
        t[f"{p}.mlp.up_proj.weight"] = lin(inter, hidden)
        t[f"{p}.mlp.down_proj.weight"] = lin(hidden, inter)
    t["model.norm.weight"] = np.ones(hidden, "<f4")
    head = lin(vocab, hidden) * 2
    head[2] = 0
    t["lm_head.weight"] = head
    words = ["<unk>", "<s>", "</s>", "user", "assistant", "system", ":"]
    words += [f"w{i}" for i in range(len(words), vocab)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": words[i], "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for i in range(3)],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)},
                  "unk_token": "<unk>"},
    }
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False,
        "eos_token_id": 2, "bos_token_id": 1, "torch_dtype": "float32",
    }
    return {
        "config.json": json.dumps(config).encode(),
        "tokenizer.json": json.dumps(tokenizer).encode(),
        "tokenizer_config.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>"}).encode(),
        "model.safetensors": safetensors(t),
    }


def post(url: str, body: dict, token: str | None = None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def decode(node: Node, model: str, tokens: int) -> tuple[float, str]:
    """Greedy streamed completion: (decode tok/s, text)."""
    req = urllib.request.Request(
        f"{node.url}/v1/completions", method="POST",
        data=json.dumps({"model": model, "prompt": PROMPT, "max_tokens": tokens,
                         "temperature": 0, "stream": True}).encode())
    req.add_header("content-type", "application/json")
    times, text = [], []
    with urllib.request.urlopen(req, timeout=600) as resp:
        for line in resp:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise SystemExit(f"{model}: {event['error']}")
            piece = event["choices"][0].get("text") or ""
            if piece:
                times.append(time.perf_counter())
                text.append(piece)
    if len(times) < 2:
        raise SystemExit(f"{model}: {len(times)} tokens")
    return (len(times) - 1) / (times[-1] - times[0]), "".join(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path,
                    default=Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
                    / "release" / "hubmesh")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--nodes", type=int, default=4, choices=[2, 4])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sharded-bench-") as tmp:
        tmp = Path(tmp)
        cfg = tmp / "node.toml"
        cfg.write_text("[inference]\nmode = \"mesh\"\nadvert_period_secs = 1\n")
        nodes = [Node(tmp / "a", args.bin, "--admin", "alice", "--config", str(cfg))]
        for name in "bcd"[: args.nodes - 1]:
            nodes.append(Node(tmp / name, args.bin, "--config", str(cfg),
                              "--bootstrap", nodes[0].info["p2p"][0]))
        a = nodes[0]
        try:
            files = model_files(args.layers, args.hidden)
            mdir = tmp / "model"
            mdir.mkdir()
            for name, data in files.items():
                (mdir / name).write_bytes(data)
            api = HfApi(endpoint=a.url, token=a.token)
            layouts = {"whole": 1, "tp2": 2} | ({"tp4": 4} if args.nodes == 4 else {})
            for name in layouts:
                api.create_repo(f"alice/{name}")
                api.upload_folder(folder_path=str(mdir), repo_id=f"alice/{name}")
            deadline = time.monotonic() + 120
            for name, tp in layouts.items():
                if tp == 1:
                    continue
                while True:
                    try:
                        placed = post(f"{a.url}/api/mesh/placements",
                                      {"model": f"alice/{name}", "tensor_parallel": tp},
                                      a.token)
                        break
                    except urllib.error.HTTPError as e:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"place {name}: {e.read()}")
                        time.sleep(1)
                print(f"placed {name}: {placed['stages'][0]['nodes']}", file=sys.stderr)
            rates = {name: [] for name in layouts}
            texts = {}
            for name in layouts:  # warm-up: loads, first allocations
                decode(a, f"alice/{name}", 4)
            for r in range(args.rounds):
                for name in layouts:
                    rate, text = decode(a, f"alice/{name}", args.tokens)
                    rates[name].append(rate)
                    texts.setdefault(name, text)
                    print(f"round {r} {name}: {rate:.1f} tok/s", file=sys.stderr)
            load_end = os.getloadavg()
        finally:
            for n in nodes:
                n.stop()
    # Embedding and head, then per layer q and o (h²), k and v (h²/2 each), MLP (3 · 3h²).
    params = 2 * 8192 * args.hidden + args.layers * 12 * args.hidden**2
    base = max(rates["whole"])
    lines = [
        "## 3. Node processes (`benches/sharded_nodes.py`)",
        "",
        f"`{' '.join(sys.argv)}` — `hubmesh` at `{args.bin}`, {platform.node()}, "
        f"{os.cpu_count()} cores; load average {load_start[0]:.2f} / {load_start[1]:.2f} / "
        f"{load_start[2]:.2f} at the start, {load_end[0]:.2f} / {load_end[1]:.2f} / "
        f"{load_end[2]:.2f} at the end (a loaded, shared machine: read the ratios).",
        "",
        f"Model: random Llama, {args.layers} layers, hidden {args.hidden}, 8 heads over 4 KV "
        f"heads, MLP {3 * args.hidden}, vocab 8192 (~{params / 1e6:.0f} M parameters, f32). "
        f"Engine pools at their default (one worker per core). Greedy text completion, "
        f"{args.tokens} tokens after a 24-token prompt, streamed; rounds alternate the layouts.",
        "",
        "| layout | node processes | decode tok/s best | median | × whole (best) | same tokens |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for name, tp in layouts.items():
        lines.append(
            f"| {name} | {tp} | {max(rates[name]):.1f} | {statistics.median(rates[name]):.1f} | "
            f"{max(rates[name]) / base:.2f}× | {'yes' if texts[name] == texts['whole'] else 'NO'} |")
    out = "\n".join(lines) + "\n"
    print(out)
    if args.out:
        args.out.write_text(out)


if __name__ == "__main__":
    main()
