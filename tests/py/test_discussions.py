"""Pull requests and discussions through the real `huggingface_hub` client, its `hf` CLI and
git, against real nodes: `create_commit(create_pr=True)`, the thread's events, comments
(edit, hide), title, status, merge (fast-forward and merge commit), `revision=refs/pr/N`
(info, tree, downloads, `HfFileSystem`), `git fetch` of `refs/pr/*` and a `git push` to an open
pull request's head; and a discussion opened on node A showing on node B, replicated
with the repo's signed refs."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import SECRETS_SEEN, cli, hf, hubmesh_bin
from conftest import wait_for as poll
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

DEADLINE = 60.0


def wait_for(what, check, node):
    # A replica answers errors (404, 403) until the change arrives: those mean "not yet".
    return poll(what, check, node, timeout=DEADLINE, tolerate=(HfHubHTTPError,))


def git(*args, cwd=None):
    out = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_LFS_SKIP_SMUDGE": "1"},
    )
    assert out.returncode == 0, f"git {args}: {out.stdout}\n{out.stderr}"
    return out.stdout


def test_pull_request_flow(node, tmp_path):
    cli(node, "user", "add", "bob")
    cli(node, "user", "add", "eve")
    bob = cli(node, "token", "create", "bob", "--scope", "write")
    eve = cli(node, "token", "create", "eve", "--scope", "write")
    admin = HfApi(endpoint=node.url, token=node.admin_token)
    as_bob = HfApi(endpoint=node.url, token=bob)
    as_eve = HfApi(endpoint=node.url, token=eve)
    admin.create_repo("admin/m")
    admin.create_commit("admin/m", [CommitOperationAdd("a.txt", b"a\n")], commit_message="a")
    head = admin.model_info("admin/m").sha

    # bob may not write to admin/m, but may open a pull request with a commit.
    pr = as_bob.create_commit(
        "admin/m",
        [CommitOperationAdd("b.txt", b"b\n")],
        commit_message="Add b",
        commit_description="Please take b.",
        create_pr=True,
    )
    assert pr.pr_num == 1 and pr.pr_url == f"{node.url}/admin/m/discussions/1"
    assert admin.model_info("admin/m").sha == head
    # revision=refs/pr/N everywhere: repo info, tree, downloads.
    assert admin.model_info("admin/m", revision=pr.pr_revision).sha == pr.oid
    assert "b.txt" in admin.list_repo_files("admin/m", revision=pr.pr_revision)
    got = hf_hub_download("admin/m", "b.txt", revision=pr.pr_revision, endpoint=node.url,
                          cache_dir=tmp_path / "c", token=False)
    assert Path(got).read_bytes() == b"b\n"
    fs = HfFileSystem(endpoint=node.url, token=node.admin_token)
    assert fs.read_text(f"admin/m@{pr.pr_revision}/b.txt") == "b\n"
    assert "admin/m@refs/pr/1/b.txt" in fs.ls(f"admin/m@{pr.pr_revision}", detail=False)
    refs = admin.list_repo_refs("admin/m", include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [("refs/pr/1", pr.oid)]

    details = admin.get_discussion_details("admin/m", 1)
    assert details.is_pull_request and details.status == "open" and details.author == "bob"
    assert details.title == "Add b" and details.target_branch == "refs/heads/main"
    kinds = [(e.type, getattr(e, "oid", None)) for e in details.events]
    assert kinds == [("comment", None), ("commit", pr.oid)], kinds
    assert "Please take b." in details.events[0].content

    # Comments: add, edit by the author, hide; others may not edit.
    c = as_eve.comment_discussion("admin/m", 1, "Looks good?")
    assert c.content == "Looks good?" and c.author == "eve"
    edited = as_eve.edit_discussion_comment("admin/m", 1, c.id, "Looks good!")
    assert edited.edited and edited.content == "Looks good!"
    with pytest.raises(HfHubHTTPError) as e:
        as_bob.edit_discussion_comment("admin/m", 1, c.id, "hijack")
    assert e.value.response.status_code == 403
    with pytest.warns(UserWarning):
        hidden = admin.hide_discussion_comment("admin/m", 1, c.id)
    assert hidden.hidden

    # Title and status: the author or a writer; not a stranger.
    with pytest.raises(HfHubHTTPError):
        as_eve.rename_discussion("admin/m", 1, "Stolen")
    renamed = as_bob.rename_discussion("admin/m", 1, "Add b.txt")
    assert (renamed.old_title, renamed.new_title) == ("Add b", "Add b.txt")
    as_bob.change_discussion_status("admin/m", 1, "closed", comment="on second thought")
    assert admin.get_discussion_details("admin/m", 1).status == "closed"
    as_bob.change_discussion_status("admin/m", 1, "open")

    # A plain discussion, and listing with filters (API and `hf discussions list`).
    d = as_eve.create_discussion("admin/m", title="Question", description="How?")
    assert d.num == 2 and not d.is_pull_request
    every = list(admin.get_repo_discussions("admin/m"))
    assert [x.num for x in every] == [2, 1]
    assert [x.num for x in admin.get_repo_discussions("admin/m", discussion_type="pull_request")] == [1]
    assert [x.num for x in admin.get_repo_discussions("admin/m", author="eve")] == [2]
    listed = json.loads(hf(node, node.admin_token, "discussions", "list", "admin/m", "--json",
                           home=tmp_path / "hf"))
    assert sorted(x["num"] for x in listed) == [1, 2], listed

    # git sees the pull request's head.
    remote = f"{node.url}/admin/m"
    assert f"{pr.oid}\trefs/pr/1" in git("ls-remote", remote)
    clone = tmp_path / "clone"
    git("clone", "-q", remote, str(clone))
    git("fetch", "-q", "origin", "refs/pr/1:pr1", cwd=clone)
    assert git("rev-parse", "pr1", cwd=clone).strip() == pr.oid

    # Merge: not by bob (no write access); by the admin, a fast-forward.
    with pytest.raises(HfHubHTTPError) as e:
        as_bob.merge_pull_request("admin/m", 1)
    assert e.value.response.status_code == 403
    admin.merge_pull_request("admin/m", 1, comment="thanks")
    assert admin.model_info("admin/m").sha == pr.oid
    merged = admin.get_discussion_details("admin/m", 1)
    assert merged.status == "merged" and merged.merge_commit_oid == pr.oid
    with pytest.raises(HfHubHTTPError) as e:
        admin.merge_pull_request("admin/m", 1)
    assert e.value.response.status_code == 409

    # main moved meanwhile: a merge commit with both parents; then a conflict is refused.
    pr2 = as_bob.create_commit("admin/m", [CommitOperationAdd("c.txt", b"c\n")],
                               commit_message="Add c", create_pr=True)
    admin.create_commit("admin/m", [CommitOperationAdd("d.txt", b"d\n")], commit_message="d")
    admin.merge_pull_request("admin/m", pr2.pr_num)
    assert {"a.txt", "b.txt", "c.txt", "d.txt"} <= set(admin.list_repo_files("admin/m"))
    pr3 = as_bob.create_commit("admin/m", [CommitOperationAdd("a.txt", b"theirs\n")],
                               commit_message="Change a", create_pr=True)
    admin.create_commit("admin/m", [CommitOperationAdd("a.txt", b"ours\n")], commit_message="ours")
    before = admin.model_info("admin/m").sha
    with pytest.raises(HfHubHTTPError) as e:
        admin.merge_pull_request("admin/m", pr3.pr_num)
    assert e.value.response.status_code == 409 and "a.txt" in str(e.value)
    assert admin.model_info("admin/m").sha == before
    # A discussion that does not exist.
    with pytest.raises(HfHubHTTPError) as e:
        admin.get_discussion_details("admin/m", 99)
    assert e.value.response.status_code == 404

    # Nobody may push the hub's own refs: a new refs/pr/N or the discussions' records.
    git("config", "user.email", "a@b", cwd=clone)
    git("config", "user.name", "a", cwd=clone)
    push_url = f"http://admin:{node.admin_token}@{node.info['http']}/admin/m"
    refs_before = git("ls-remote", remote)
    assert "refs/hub/discussions" in refs_before
    for target in ["HEAD:refs/hub/discussions", "HEAD:refs/pr/9"]:
        out = subprocess.run(["git", "push", "--force", push_url, target],
                             cwd=clone, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0, out.stderr
    assert git("ls-remote", remote) == refs_before
    # An open pull request's head takes a push (as on the Hub: `git push origin HEAD:refs/pr/N`).
    git("fetch", "-q", "origin", f"refs/pr/{pr3.pr_num}:pr3", cwd=clone)
    git("checkout", "-q", "pr3", cwd=clone)
    (clone / "e.txt").write_text("e\n")
    git("add", "e.txt", cwd=clone)
    git("commit", "-q", "-m", "Add e", cwd=clone)
    pushed = git("rev-parse", "HEAD", cwd=clone).strip()
    git("push", "-q", push_url, f"HEAD:refs/pr/{pr3.pr_num}", cwd=clone)
    assert f"{pushed}\trefs/pr/{pr3.pr_num}" in git("ls-remote", remote)
    assert "e.txt" in admin.list_repo_files("admin/m", revision=f"refs/pr/{pr3.pr_num}")


def test_a_discussion_opened_on_a_shows_on_b(node_factory):
    a = node_factory("a", "--admin", "alice")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    on_a = HfApi(endpoint=a.url, token=a.admin_token)
    on_b = HfApi(endpoint=b.url, token=False)
    on_a.create_repo("alice/shared")
    on_a.create_commit("alice/shared", [CommitOperationAdd("x.txt", b"x")], commit_message="x")
    d = on_a.create_discussion("alice/shared", title="Hello from A", description="first")
    on_a.comment_discussion("alice/shared", d.num, "second")
    pr = on_a.create_commit("alice/shared", [CommitOperationAdd("y.txt", b"y")],
                            commit_message="Add y", create_pr=True)

    def replicated():
        ds = list(on_b.get_repo_discussions("alice/shared"))
        return ds if len(ds) == 2 else None

    wait_for("discussions on B", replicated, b)

    def thread_on_b():
        got = on_b.get_discussion_details("alice/shared", d.num)
        return got if len(got.events) == 2 else None

    got = wait_for("the whole thread on B", thread_on_b, b)
    assert got.title == "Hello from A" and got.author == "alice"
    assert [e.content for e in got.events] == ["first", "second"]
    # The pull request's head follows (its thread and its commit replicate as later updates).
    wait_for(
        "the pull request's head on B",
        lambda: on_b.model_info("alice/shared", revision=pr.pr_revision).sha == pr.oid,
        b,
    )
    pr_on_b = wait_for(
        "the pull request's thread on B",
        lambda: (lambda x: x if len(x.events) == 2 else None)(
            on_b.get_discussion_details("alice/shared", pr.pr_num)
        ),
        b,
    )
    assert pr_on_b.is_pull_request and pr_on_b.events[1].oid == pr.oid
    # The raw endpoint answers the same on B.
    with urllib.request.urlopen(f"{b.url}/api/models/alice/shared/discussions/{d.num}") as r:
        assert json.loads(r.read())["title"] == "Hello from A"
