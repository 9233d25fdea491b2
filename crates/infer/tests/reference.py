"""Reference Llama forward pass in NumPy (float64), independent of hub-infer.

Reads a model directory (config.json + model.safetensors, parsed by hand: 8-byte header
length, JSON header, raw little-endian data) and a JSON job on stdin:

    {"model_dir": "...", "prompts": [[1, 2, 3], ...], "decode_steps": 4}

For each prompt it recomputes the *whole* sequence from scratch at every step (no KV cache,
no paging, no batching) and prints JSON:

    [{"prompt_logits": [[...vocab...] per prompt position],
      "steps": [{"token": greedy id, "logits": [...] of the position that produced it}]}]

It follows transformers' LlamaForCausalLM: RMSNorm (x * rsqrt(mean(x^2) + eps) * w),
rotate-half RoPE with inv_freq = theta^(-2i/d), repeat_kv for GQA, causal softmax attention
scaled by 1/sqrt(d), SwiGLU MLP, optional projection biases (Qwen2), optional tied lm_head,
Qwen3's per-head RMSNorm of q and k (`self_attn.{q,k}_norm.weight`, over head_dim, before
RoPE), and `rope_scaling` of type `linear` (inv_freq / factor) or `llama3` (transformers'
`_compute_llama3_parameters`, vectorised with np.where as there).
"""

import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        raw = data[base + start : base + end]
        if meta["dtype"] == "BF16":
            u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u16.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[meta["dtype"]]).newbyteorder("<"))
        out[name] = arr.astype(np.float64).reshape(meta["shape"])
    return out


class Llama:
    def __init__(self, model_dir):
        with open(f"{model_dir}/config.json") as f:
            c = json.load(f)
        self.w = load_safetensors(f"{model_dir}/model.safetensors")
        self.layers = c["num_hidden_layers"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads", self.heads)
        self.head_dim = c.get("head_dim") or c["hidden_size"] // self.heads
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.theta = c.get("rope_theta", 10000.0)
        self.tied = c.get("tie_word_embeddings", False)
        self.inv_freq = self.rope_inv_freq(c.get("rope_scaling"))

    def rope_inv_freq(self, scaling):
        d = self.head_dim
        inv = 1.0 / (self.theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        if scaling is None:
            return inv
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind == "default":
            return inv
        if kind == "linear":
            return inv / scaling["factor"]
        if kind != "llama3":
            raise ValueError(f"unsupported rope_scaling {kind}")
        factor = scaling["factor"]
        lo, hi = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        lo_wavelen, hi_wavelen = old / lo, old / hi
        wavelen = 2 * np.pi / inv
        out = np.where(wavelen > lo_wavelen, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < hi_wavelen) & ~(wavelen > lo_wavelen)
        return np.where(medium, smoothed, out)

    def linear(self, x, name):
        # Biases are optional (Qwen2 has q/k/v biases).
        return x @ self.w[f"{name}.weight"].T + self.w.get(f"{name}.bias", 0.0)

    def rms_norm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        # x: (heads, T, d); rotate_half convention.
        d = self.head_dim
        ang = np.outer(pos, self.inv_freq)  # (T, d/2)
        cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)
        sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        rot = np.concatenate([-x2, x1], axis=-1)
        return x * cos + rot * sin

    def forward(self, tokens):
        w = self.w
        t = len(tokens)
        pos = np.arange(t, dtype=np.float64)
        x = w["model.embed_tokens.weight"][tokens]
        mask = np.triu(np.full((t, t), -np.inf), k=1)
        g = self.heads // self.kv_heads
        for i in range(self.layers):
            p = f"model.layers.{i}"
            h = self.rms_norm(x, w[f"{p}.input_layernorm.weight"])
            q = self.linear(h, f"{p}.self_attn.q_proj").reshape(t, self.heads, -1).transpose(1, 0, 2)
            k = self.linear(h, f"{p}.self_attn.k_proj").reshape(t, self.kv_heads, -1).transpose(1, 0, 2)
            v = self.linear(h, f"{p}.self_attn.v_proj").reshape(t, self.kv_heads, -1).transpose(1, 0, 2)
            if f"{p}.self_attn.q_norm.weight" in w:  # Qwen3: per head, over head_dim
                q = self.rms_norm(q, w[f"{p}.self_attn.q_norm.weight"])
                k = self.rms_norm(k, w[f"{p}.self_attn.k_norm.weight"])
            q, k = self.rope(q, pos), self.rope(k, pos)
            k = np.repeat(k, g, axis=0)  # repeat_kv: head j uses kv head j // g
            v = np.repeat(v, g, axis=0)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(self.head_dim) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            o = (s @ v).transpose(1, 0, 2).reshape(t, -1)
            x = x + self.linear(o, f"{p}.self_attn.o_proj")
            h = self.rms_norm(x, w[f"{p}.post_attention_layernorm.weight"])
            gate = h @ w[f"{p}.mlp.gate_proj.weight"].T
            up = h @ w[f"{p}.mlp.up_proj.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * up) @ w[f"{p}.mlp.down_proj.weight"].T
        x = self.rms_norm(x, w["model.norm.weight"])
        head = w["model.embed_tokens.weight"] if self.tied else w["lm_head.weight"]
        return x @ head.T


def main():
    job = json.load(sys.stdin)
    model = Llama(job["model_dir"])
    results = []
    for prompt in job["prompts"]:
        tokens = list(prompt)
        logits = model.forward(tokens)
        res = {"prompt_logits": logits.tolist(), "steps": []}
        last = logits[-1]
        for _ in range(job["decode_steps"]):
            tok = int(np.argmax(last))
            res["steps"].append({"token": tok, "logits": last.tolist()})
            tokens.append(tok)
            last = model.forward(tokens)[-1]
        results.append(res)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
