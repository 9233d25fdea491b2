"""Branches, tags, history, downloads by branch / tag / commit, delete operations."""
from huggingface_hub import CommitOperationAdd, CommitOperationCopy, CommitOperationDelete, HfApi, hf_hub_download
from pathlib import Path

api = HfApi()
user = api.whoami()["name"]
repo = f"{user}/hist"
api.create_repo("hist")
c1 = api.create_commit(repo, [CommitOperationAdd("v.txt", b"one")], commit_message="first")
api.create_branch(repo, branch="dev")
api.create_tag(repo, tag="v1", revision="main")
c2 = api.create_commit(repo, [CommitOperationAdd("v.txt", b"two")], commit_message="second", revision="dev")
refs = api.list_repo_refs(repo)
assert sorted(b.name for b in refs.branches) == ["dev", "main"]
assert [t.name for t in refs.tags] == ["v1"] and refs.tags[0].target_commit == c1.oid
assert Path(hf_hub_download(repo, "v.txt", revision="dev")).read_bytes() == b"two"
assert Path(hf_hub_download(repo, "v.txt", revision="v1")).read_bytes() == b"one"
assert Path(hf_hub_download(repo, "v.txt", revision=c1.oid)).read_bytes() == b"one"
log = api.list_repo_commits(repo, revision="dev")
assert [c.title for c in log][:2] == ["second", "first"], [c.title for c in log]
assert log[0].commit_id == c2.oid
api.create_commit(repo, [CommitOperationDelete("v.txt")], commit_message="rm", revision="dev")
assert "v.txt" not in api.list_repo_files(repo, revision="dev")
api.delete_tag(repo, tag="v1")
api.delete_branch(repo, branch="dev")
assert [b.name for b in api.list_repo_refs(repo).branches] == ["main"]
# Copies go through paths-info (regular files are re-sent, LFS files referenced by oid).
api.create_commit(repo, [CommitOperationAdd("w.bin", b"\0lfs content")], commit_message="lfs")
api.create_commit(
    repo,
    [CommitOperationCopy("v.txt", "copies/v.txt"), CommitOperationCopy("w.bin", "copies/w.bin")],
    commit_message="copy",
)
assert Path(hf_hub_download(repo, "copies/v.txt")).read_bytes() == b"one"
assert Path(hf_hub_download(repo, "copies/w.bin")).read_bytes() == b"\0lfs content"
infos = {p.path: p for p in api.get_paths_info(repo, ["v.txt", "copies", "nope"])}
assert set(infos) == {"v.txt", "copies"}, infos
# Renaming keeps history.
api.move_repo(repo, f"{user}/hist-renamed")
assert api.list_repo_commits(f"{user}/hist-renamed")[0].title == "copy"
# The old id redirects to the new one, as on the Hub (307 after a rename).
assert api.repo_info(repo).id == f"{user}/hist-renamed"
print("ok")
