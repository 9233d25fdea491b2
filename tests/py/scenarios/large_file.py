"""A binary model file: stored as LFS server-side (store + pointer), downloaded byte-exact,
with X-Linked-Etag = sha256 and working Range requests."""
import hashlib
import os
from pathlib import Path

import _http
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url

api = HfApi()
user = api.whoami()["name"]
repo = f"{user}/large"
api.create_repo("large")
work = Path(os.environ["SCENARIO_WORKDIR"])
data = os.urandom(3 * 1024 * 1024 + 17)
src = work / "model.safetensors"
src.write_bytes(data)
sha = hashlib.sha256(data).hexdigest()
api.upload_file(path_or_fileobj=str(src), path_in_repo="model.safetensors", repo_id=repo)
entry = [e for e in api.list_repo_tree(repo) if e.path == "model.safetensors"][0]
assert entry.lfs is not None and entry.lfs.sha256 == sha and entry.size == len(data), entry
meta = get_hf_file_metadata(hf_hub_url(repo, "model.safetensors"))
assert meta.etag == sha and meta.size == len(data), meta
out = hf_hub_download(repo, "model.safetensors")
assert Path(out).read_bytes() == data
url = hf_hub_url(repo, "model.safetensors")
r = _http.get(url, headers={"Range": "bytes=100-199"})
assert r.status_code == 206 and r.content == data[100:200], r.status_code
assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
r = _http.get(url, headers={"Range": f"bytes={len(data)}-"})
assert r.status_code == 416, r.status_code
print("ok")
