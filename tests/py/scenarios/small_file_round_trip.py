"""upload_file of a small text file, hf_hub_download, cache layout, etag = git blob sha1."""
import hashlib
import os
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download

api = HfApi()
user = api.whoami()["name"]
repo = f"{user}/small"
api.create_repo("small")
work = Path(os.environ["SCENARIO_WORKDIR"])
src = work / "hello.txt"
src.write_bytes(b"hello world\n")
commit = api.upload_file(path_or_fileobj=str(src), path_in_repo="sub/hello.txt", repo_id=repo)
assert len(commit.oid) == 40
info = api.model_info(repo, files_metadata=True)
assert info.sha == commit.oid
sib = {s.rfilename: s for s in info.siblings}["sub/hello.txt"]
blob = b"hello world\n"
git_sha1 = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
assert sib.blob_id == git_sha1 and sib.size == len(blob) and sib.lfs is None, sib
path = hf_hub_download(repo, "sub/hello.txt")
assert Path(path).read_bytes() == blob
assert f"snapshots/{commit.oid}/sub/hello.txt" in path, path
assert os.path.realpath(path).endswith(f"blobs/{git_sha1}")
files = api.list_repo_files(repo)
assert sorted(files) == [".gitattributes", "sub/hello.txt"], files

# Download counting: requests for the query file config.json count, other files do not.
assert api.model_info(repo).downloads == 0
api.upload_file(path_or_fileobj=b'{"model_type": "llama"}', path_in_repo="config.json", repo_id=repo)
hf_hub_download(repo, "sub/hello.txt", force_download=True)
assert api.model_info(repo).downloads == 0, "non-query files do not count"
hf_hub_download(repo, "config.json")
first = api.model_info(repo).downloads
assert first >= 1, first
hf_hub_download(repo, "config.json", force_download=True)
assert api.model_info(repo).downloads > first
print("ok")
