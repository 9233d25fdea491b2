"""NumPy reference for hub-quant's kernels, written from the GGUF block layouts
(independent of the Rust code).

Reads JSON on stdin: {"cases": [{"qtype": "Q4_0"|"Q5_0"|..., "rows", "cols", "data": hex of the
blocks, "acts": [[f32 per col] per activation row]}]} and prints, per case,
{"dequantized": [[...] per row], "dots": [[row · act for each act] per row]} in float64.
"""

import json
import sys

import numpy as np


def f16(b):
    """One f16 per block: (nb, 2) bytes -> (nb,) float64."""
    return b.copy().view("<f2").astype(np.float64).reshape(-1)


def scale_min_k4(scales):
    # scales: (nb, 12) uint8 -> sc, m: (nb, 8)
    sc = np.zeros((scales.shape[0], 8), np.float64)
    m = np.zeros_like(sc)
    for j in range(8):
        if j < 4:
            sc[:, j] = scales[:, j] & 63
            m[:, j] = scales[:, j + 4] & 63
        else:
            sc[:, j] = (scales[:, j + 4] & 0xF) | ((scales[:, j - 4] >> 6) << 4)
            m[:, j] = (scales[:, j + 4] >> 4) | ((scales[:, j] >> 6) << 4)
    return sc, m


def dequantize(qtype, raw, n):
    b = np.frombuffer(raw, np.uint8)
    if qtype in ("Q4_0", "Q4_1"):
        bb = 18 if qtype == "Q4_0" else 20
        blk = b.reshape(-1, bb)
        d = f16(blk[:, 0:2])[:, None]
        qs = blk[:, bb - 16 :]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float64)
        if qtype == "Q4_0":
            return (d * (q - 8)).reshape(n)
        return (d * q + f16(blk[:, 2:4])[:, None]).reshape(n)
    if qtype in ("Q5_0", "Q5_1"):
        bb = 22 if qtype == "Q5_0" else 24
        blk = b.reshape(-1, bb)
        d = f16(blk[:, 0:2])[:, None]
        qh = blk[:, bb - 20 : bb - 16].copy().view("<u4").astype(np.int64)  # (nb, 1)
        qs = blk[:, bb - 16 :]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.int64)
        q |= ((qh >> np.arange(32)) & 1) << 4
        if qtype == "Q5_0":
            return (d * (q - 16)).reshape(n)
        return (d * q + f16(blk[:, 2:4])[:, None]).reshape(n)
    if qtype == "Q8_0":
        blk = b.reshape(-1, 34)
        return (f16(blk[:, 0:2])[:, None] * blk[:, 2:].view(np.int8)).reshape(n)
    if qtype in ("Q4_K", "Q5_K"):
        bb = 144 if qtype == "Q4_K" else 176
        blk = b.reshape(-1, bb)
        d, dmin = f16(blk[:, 0:2]), f16(blk[:, 2:4])
        sc, m = scale_min_k4(blk[:, 4:16])
        qs = blk[:, bb - 128 :].reshape(-1, 4, 32)
        codes = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.int64)
        if qtype == "Q5_K":
            qh = blk[:, 16:48]
            for j in range(8):
                codes[:, j, :] |= ((qh >> j) & 1).astype(np.int64) << 4
        y = d[:, None, None] * sc[:, :, None] * codes - dmin[:, None, None] * m[:, :, None]
        return y.reshape(n)
    if qtype == "Q6_K":
        blk = b.reshape(-1, 210)
        ql, qh = blk[:, :128], blk[:, 128:192]
        sc = blk[:, 192:208].view(np.int8).astype(np.float64)
        d = f16(blk[:, 208:210])
        out = np.zeros((blk.shape[0], 256))
        for half in range(2):
            l0, l1, h = ql[:, 64 * half : 64 * half + 32], ql[:, 64 * half + 32 : 64 * half + 64], qh[:, 32 * half : 32 * half + 32]
            runs = [
                (l0 & 0xF) | ((h & 3) << 4),
                (l1 & 0xF) | (((h >> 2) & 3) << 4),
                (l0 >> 4) | (((h >> 4) & 3) << 4),
                (l1 >> 4) | (((h >> 6) & 3) << 4),
            ]
            for r, q in enumerate(runs):
                base = 128 * half + 32 * r
                out[:, base : base + 32] = q.astype(np.float64) - 32
        groups = out.reshape(-1, 16, 16) * sc[:, :, None] * d[:, None, None]
        return groups.reshape(n)
    raise ValueError(qtype)


def main():
    job = json.load(sys.stdin)
    results = []
    for c in job["cases"]:
        w = dequantize(c["qtype"], bytes.fromhex(c["data"]), c["rows"] * c["cols"])
        w = w.reshape(c["rows"], c["cols"])
        acts = np.array(c["acts"], dtype=np.float64).reshape(-1, c["cols"])
        results.append({"dequantized": w.tolist(), "dots": (w @ acts.T).tolist()})
    json.dump(results, sys.stdout)


main()
