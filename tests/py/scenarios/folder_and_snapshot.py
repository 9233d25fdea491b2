"""upload_folder (many small files + LFS files), snapshot_download with allow_patterns, then an
offline snapshot_download that makes no request."""
import os
import subprocess
import sys
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

api = HfApi()
user = api.whoami()["name"]
repo = f"{user}/folder"
api.create_repo("folder")
work = Path(os.environ["SCENARIO_WORKDIR"])
folder = work / "model"
(folder / "configs").mkdir(parents=True)
for i in range(200):
    (folder / "configs" / f"c{i:03}.json").write_text(f'{{"i": {i}}}')
(folder / "README.md").write_text("---\nlicense: mit\ntags: [test]\n---\n# A model\n")
weights = {f"w{i}.bin": os.urandom(200_000 + i) for i in range(3)}
for name, data in weights.items():
    (folder / name).write_bytes(data)
api.upload_folder(folder_path=str(folder), repo_id=repo)
files = api.list_repo_files(repo)
assert len(files) == 1 + 200 + 1 + 3, len(files)
lfs = {e.path for e in api.list_repo_tree(repo) if getattr(e, "lfs", None)}
assert lfs == set(weights), lfs
snap = Path(snapshot_download(repo, allow_patterns=["*.bin", "README.md"]))
got = sorted(p.name for p in snap.iterdir())
assert got == ["README.md", "w0.bin", "w1.bin", "w2.bin"], got
for name, data in weights.items():
    assert (snap / name).read_bytes() == data
# Offline: same snapshot from cache, in a fresh process with no network at all.
code = (
    "from huggingface_hub import snapshot_download; "
    f"print(snapshot_download({repo!r}, allow_patterns=['*.bin', 'README.md']))"
)
env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
assert out.returncode == 0, out.stderr
assert Path(out.stdout.strip()) == snap
print("ok")
