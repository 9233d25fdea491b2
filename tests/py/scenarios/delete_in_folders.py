"""Deleting files inside folders (delete_file, delete_files, HfFileSystem.rm), folders that vanish
when emptied, delete_folder, and a commit adding both a file and a folder of one name."""
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

api = HfApi()
user = api.whoami()["name"]
repo = f"{user}/deletes"
api.create_repo("deletes")
files = ["sub/a.txt", "sub/b.txt", "a/b/c.txt", "x/y/z.txt", "x/keep.txt", "fs/f.txt", "fs/g.txt"]
api.create_commit(repo, [CommitOperationAdd(p, p.encode()) for p in files], commit_message="files")


def listing():
    return sorted(api.list_repo_files(repo))


def folders():
    return sorted(e.path for e in api.list_repo_tree(repo, recursive=True) if not hasattr(e, "size"))


api.delete_file("sub/a.txt", repo)
assert "sub/a.txt" not in listing() and "sub/b.txt" in listing(), listing()
# The last file of nested folders: the folders go with it.
api.delete_file("a/b/c.txt", repo)
assert not any(p.startswith("a/") for p in listing()), listing()
assert "a" not in folders() and "a/b" not in folders(), folders()
# delete_folder, and a file deleted twice is a clear 404.
api.delete_folder("x/y", repo)
assert "x/y/z.txt" not in listing() and "x/keep.txt" in listing(), listing()
try:
    api.delete_file("sub/a.txt", repo)
    raise SystemExit("deleting a missing file must fail")
except EntryNotFoundError:
    pass
if hasattr(api, "delete_files"):
    api.delete_files(repo, delete_patterns=["x/keep.txt"])
    assert "x/keep.txt" not in listing() and "x" not in folders(), (listing(), folders())
# HfFileSystem.rm goes through the same commit API.
fs = HfFileSystem()
fs.rm(f"{repo}/fs/f.txt")
assert "fs/f.txt" not in listing() and "fs/g.txt" in listing(), listing()
fs.rm(f"{repo}/fs", recursive=True)
assert not any(p.startswith("fs/") for p in listing()), listing()

# A file and a folder of one name in one commit: refused, nothing written.
sha = api.model_info(repo).sha
for ops in (
    [CommitOperationAdd("clash", b"1"), CommitOperationAdd("clash/inner", b"2")],
    [CommitOperationAdd("sub/b.txt/inner", b"2")],
    [CommitOperationAdd("sub", b"2")],
):
    try:
        api.create_commit(repo, ops, commit_message="clash")
        raise SystemExit(f"{[o.path_in_repo for o in ops]} must be refused")
    except HfHubHTTPError as e:
        assert e.response.status_code == 400, (e.response.status_code, e.response.text)
    assert api.model_info(repo).sha == sha, "nothing written"
assert listing() == [".gitattributes", "sub/b.txt"], listing()
print("ok")
