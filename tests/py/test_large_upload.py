"""A 1 GiB safetensors file through the default client: upload_file, then hf_hub_download.
Bytes must match, and the node's peak RSS (VmHWM) must stay under 512 MiB throughout."""

import hashlib
import json
import os
import struct
import subprocess
import sys

GIB = 1024**3
RSS_LIMIT = 512 * 1024**2


def write_safetensors(path, size):
    """One F32 tensor filling `size` bytes of random data; returns the file's sha256."""
    n = (size - 256) // 4
    header = json.dumps({"weight": {"dtype": "F32", "shape": [n], "data_offsets": [0, n * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for part in (struct.pack("<Q", len(header)), header):
            f.write(part)
            h.update(part)
        left = n * 4
        while left:
            chunk = os.urandom(min(left, 64 * 1024**2))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_one_gib_round_trip_with_bounded_memory(node, tmp_path):
    src = tmp_path / "model.safetensors"
    sha = write_safetensors(src, GIB)
    env = {
        **os.environ,
        "HF_ENDPOINT": node.url,
        "HF_TOKEN": node.admin_token,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    code = f"""
import hashlib
from huggingface_hub import HfApi, hf_hub_download
api = HfApi()
api.create_repo("big")
repo = api.whoami()["name"] + "/big"
api.upload_file(path_or_fileobj={str(src)!r}, path_in_repo="model.safetensors", repo_id=repo)
entry = [e for e in api.list_repo_tree(repo) if e.path == "model.safetensors"][0]
assert entry.lfs is not None and entry.lfs.sha256 == {sha!r}, entry
out = hf_hub_download(repo, "model.safetensors")
h = hashlib.sha256()
with open(out, "rb") as f:
    while chunk := f.read(16 * 1024 * 1024):
        h.update(chunk)
assert h.hexdigest() == {sha!r}
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{node.log()[-3000:]}"
    rss = peak_rss(node.proc.pid)
    print(f"node peak RSS for a 1 GiB upload + download: {rss / 1024**2:.0f} MiB")
    assert rss < RSS_LIMIT, f"peak RSS {rss / 1024**2:.0f} MiB"
