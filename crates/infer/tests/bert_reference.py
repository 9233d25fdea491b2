"""Reference BERT sentence embeddings in NumPy (float64), independent of hub-infer.

Reads a sentence-transformers model directory (config.json, model.safetensors parsed by hand,
modules.json + the pooling module's config.json) and a JSON job on stdin:

    {"model_dir": "...", "inputs": [[101, 7592, 102], ...]}

Each input (token ids, special tokens included) is run ALONE — no padding, no mask — through
transformers' BertModel (embeddings = word + position + token type 0, LayerNorm; per layer
softmax(QK^T/sqrt(d))V, output dense + residual + LayerNorm, exact erf GELU FFN + residual +
LayerNorm), then pooled as modules.json says (CLS / mean / max / mean-sqrt-len) and
L2-normalized when a Normalize module is listed. Prints {"embeddings": [[...], ...],
"hidden": [[...] per token of the first input]}.
"""

import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import load_safetensors  # noqa: E402

_erf = np.vectorize(math.erf)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class Bert:
    def __init__(self, model_dir):
        with open(f"{model_dir}/config.json") as f:
            c = json.load(f)
        w = load_safetensors(f"{model_dir}/model.safetensors")
        self.w = {k.removeprefix("bert."): v for k, v in w.items()}
        self.layers = c["num_hidden_layers"]
        self.heads = c["num_attention_heads"]
        self.eps = c.get("layer_norm_eps", 1e-12)
        assert c.get("hidden_act", "gelu") == "gelu"
        self.pooling, self.normalize = "mean", False
        modules_path = f"{model_dir}/modules.json"
        if os.path.exists(modules_path):
            with open(modules_path) as f:
                modules = json.load(f)
            for m in modules:
                kind = m["type"].rsplit(".", 1)[-1]
                if kind == "Pooling":
                    with open(f"{model_dir}/{m['path']}/config.json") as f:
                        p = json.load(f)
                    modes = [k for k in ("cls_token", "mean_tokens", "max_tokens",
                                         "mean_sqrt_len_tokens") if p.get(f"pooling_mode_{k}")]
                    assert len(modes) == 1, modes
                    self.pooling = modes[0]
                elif kind == "Normalize":
                    self.normalize = True

    def lin(self, x, name):
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def ln(self, x, name):
        return layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def hidden(self, ids):
        w, t = self.w, len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:t]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self.ln(x, "embeddings.LayerNorm")
        h = x.shape[1]
        d = h // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            split = lambda y: y.reshape(t, self.heads, d).transpose(1, 0, 2)  # noqa: E731
            q = split(self.lin(x, f"{p}.attention.self.query"))
            k = split(self.lin(x, f"{p}.attention.self.key"))
            v = split(self.lin(x, f"{p}.attention.self.value"))
            s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(t, h)
            x = self.ln(self.lin(ctx, f"{p}.attention.output.dense") + x,
                        f"{p}.attention.output.LayerNorm")
            u = self.lin(x, f"{p}.intermediate.dense")
            u = 0.5 * u * (1.0 + _erf(u / math.sqrt(2.0)))
            x = self.ln(self.lin(u, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x

    def embed(self, ids):
        x = self.hidden(ids)
        if self.pooling == "cls_token":
            v = x[0]
        elif self.pooling == "mean_tokens":
            v = x.mean(0)
        elif self.pooling == "max_tokens":
            v = x.max(0)
        else:
            v = x.sum(0) / math.sqrt(len(ids))
        if self.normalize:
            v = v / max(np.linalg.norm(v), 1e-12)
        return v


def main():
    job = json.load(sys.stdin)
    model = Bert(job["model_dir"])
    inputs = job["inputs"]
    out = {
        "embeddings": [model.embed(ids).tolist() for ids in inputs],
        "hidden": model.hidden(inputs[0]).tolist(),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
