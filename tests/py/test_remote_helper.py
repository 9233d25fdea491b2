"""Issue #20: the git remote helper `git-remote-hubmesh` (`git clone hubmesh://ns/name`) and
its git-lfs custom transfer agent, with real git and git-lfs against real node processes.

Node A hosts `alice` (its admin); the other nodes bootstrap from A. Every git command runs
with the helper's directory first on PATH (the one that holds the `hubmesh` binary under
test), a HOME of its own where `git lfs install` set up the LFS filters, and no token in any
URL: the node comes from HUBMESH_NODE, the token from HUBMESH_TOKEN.
"""

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

from conftest import SECRETS_SEEN, cli, hubmesh_bin
from test_mesh_gateway import local_sha, mesh_repo, wait_heard
from test_replication import safetensors_bytes, wait_for

GIT_TIMEOUT = 120


@pytest.fixture
def git_env(tmp_path, monkeypatch):
    """The environment of every git command: the helper on PATH, a private HOME with the
    LFS filters installed, no system config, no prompts; run from the test's own directory
    (never from inside this repository)."""
    monkeypatch.chdir(tmp_path)
    helper = hubmesh_bin().parent / "git-remote-hubmesh"
    assert helper.is_file(), f"no helper at {helper}: cargo build --workspace --all-targets"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "PATH": f"{helper.parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for key in ("HUBMESH_NODE", "HUBMESH_TOKEN", "GIT_DIR", "GIT_WORK_TREE"):
        env.pop(key, None)
    subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True,
                   capture_output=True, timeout=GIT_TIMEOUT)
    subprocess.run(["git", "config", "--global", "init.defaultBranch", "main"], env=env,
                   check=True, timeout=GIT_TIMEOUT)
    return env


def git(env, *args, node=None, token=None, cwd=None, check=True):
    """Runs git through `node` (HUBMESH_NODE) with `token` (HUBMESH_TOKEN)."""
    env = dict(env)
    if node is not None:
        env["HUBMESH_NODE"] = node.url if not isinstance(node, str) else node
    if token is not None:
        env["HUBMESH_TOKEN"] = token
    out = subprocess.run(["git", *args], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=GIT_TIMEOUT)
    if check:
        assert out.returncode == 0, f"git {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def rev(env, repo, what):
    return git(env, "-C", str(repo), "rev-parse", what).stdout.strip()


def lfs_object(repo: Path, data: bytes) -> Path:
    import hashlib
    oid = hashlib.sha256(data).hexdigest()
    return repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid


def test_clone_fetch_and_lfs_through_a_node_that_does_not_hold_the_repo(
        node_factory, git_env, tmp_path):
    a = node_factory("a", "--admin", "alice")
    c = node_factory("c", "--bootstrap", a.info["p2p"][0])
    api = HfApi(endpoint=a.url, token=a.admin_token)
    weights = safetensors_bytes(2)
    config = b'{"model_type": "tiny"}\n'
    api.create_repo("alice/tiny")
    api.create_commit("alice/tiny", [
        CommitOperationAdd(path_in_repo="model.safetensors", path_or_fileobj=weights),
        CommitOperationAdd(path_in_repo="config.json", path_or_fileobj=config),
    ], commit_message="weights")
    sha1 = api.model_info("alice/tiny").sha
    wait_heard(c, a, "alice/tiny")
    assert mesh_repo(c, "alice/tiny")["local"] is False

    # Clone through C, anonymously: C fetches the repo from A on demand, the LFS file is
    # smudged through the agent (C fetches its chunks from A), progress is shown.
    clone = tmp_path / "clone"
    out = git(git_env, "clone", "--progress", "hubmesh://alice/tiny", str(clone), node=c)
    assert "Receiving objects: 100%" in out.stderr, out.stderr
    assert rev(git_env, clone, "HEAD") == sha1
    assert (clone / "config.json").read_bytes() == config
    assert (clone / "model.safetensors").read_bytes() == weights
    assert git(git_env, "-C", str(clone), "config", "lfs.standalonetransferagent").stdout.strip() == "hubmesh"
    assert "hubmesh://alice/tiny" == git(git_env, "-C", str(clone), "remote", "get-url", "origin").stdout.strip()
    assert mesh_repo(c, "alice/tiny")["local"] is True

    # The same through the URL that names the hosting node, and a shallow clone.
    shallow = tmp_path / "shallow"
    git(git_env, "clone", "--depth", "1", f"hubmesh://{a.info['peer_id']}/alice/tiny",
        str(shallow), node=c)
    assert (shallow / "model.safetensors").read_bytes() == weights
    assert git(git_env, "-C", str(shallow), "rev-parse", "--is-shallow-repository").stdout.strip() == "true"

    # A new commit on A (new weights): `git fetch` through C brings it once C follows A,
    # and `git lfs fetch --all` brings every LFS object of every ref through the agent.
    weights2 = safetensors_bytes(1)
    api.upload_file(path_or_fileobj=weights2, path_in_repo="model.safetensors",
                    repo_id="alice/tiny")
    sha2 = api.model_info("alice/tiny").sha
    wait_for("C to follow A", lambda: local_sha(c, "alice/tiny") == sha2, c)
    git(git_env, "-C", str(clone), "fetch", "--progress", node=c)
    assert rev(git_env, clone, "origin/main") == sha2
    assert not lfs_object(clone, weights2).exists()
    # GIT_TRACE shows the agent's messages: its progress events reach git-lfs.
    out = git({**git_env, "GIT_TRACE": "1", "GIT_TRANSFER_TRACE": "1"}, "-C", str(clone), "lfs",
              "fetch", "--all", node=c)
    assert "ssh" not in out.stderr, "git-lfs tried SSH for a hubmesh:// remote"
    assert re.search(r'received response: \{"bytesSinceLast":\d+,"bytesSoFar":\d+,'
                     r'"event":"progress"', out.stderr), out.stderr[-3000:]
    assert lfs_object(clone, weights2).read_bytes() == weights2
    assert lfs_object(clone, weights).read_bytes() == weights
    git(git_env, "-C", str(clone), "merge", "--ff-only", "origin/main")
    assert (clone / "model.safetensors").read_bytes() == weights2

    # A dataset and the error for a node that is not there.
    api.create_repo("alice/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n", path_in_repo="data.csv", repo_id="alice/data",
                    repo_type="dataset")
    wait_heard_dataset = lambda: (mesh_repo_typed(c, "dataset", "alice/data") or {}).get("last_seq")
    wait_for("C to hear of alice/data", wait_heard_dataset, c)
    ds = tmp_path / "ds"
    git(git_env, "clone", "hubmesh://datasets/alice/data", str(ds), node=c)
    assert (ds / "data.csv").read_bytes() == b"a,b\n"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    out = git(git_env, "clone", "hubmesh://alice/tiny", str(tmp_path / "none"), node=closed,
              check=False)
    assert out.returncode != 0
    assert f"cannot reach the hubmesh node at http://{closed}" in out.stderr, out.stderr


def mesh_repo_typed(node, kind, repo):
    from test_mesh_gateway import request
    status, _, body = request("GET", f"{node.url}/api/mesh/repos/{kind}/{repo}")
    return body if status == 200 else None


def test_push_through_the_hosting_node_and_what_it_refuses(node_factory, git_env, tmp_path):
    a = node_factory("a", "--admin", "alice")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*")
    api = HfApi(endpoint=a.url, token=a.admin_token)
    api.create_repo("alice/proj")
    api.upload_file(path_or_fileobj=b"one\n", path_in_repo="notes.txt", repo_id="alice/proj")
    clone = tmp_path / "proj"
    git(git_env, "clone", "hubmesh://alice/proj", str(clone), node=a, token=a.admin_token)
    git(git_env, "-C", str(clone), "lfs", "install", "--local")

    # A push with an LFS file: the pre-push hook uploads it through the agent, the helper
    # pushes the commit; B, seeding alice/*, replicates both.
    git(git_env, "-C", str(clone), "lfs", "track", "*.bin")
    blob = os.urandom(300_000)
    (clone / "w.bin").write_bytes(blob)
    (clone / "notes.txt").write_text("two\n")
    git(git_env, "-C", str(clone), "add", ".")
    git(git_env, "-C", str(clone), "commit", "-q", "-m", "two")
    out = git(git_env, "-C", str(clone), "push", "--progress", "origin", "main", node=a,
              token=a.admin_token)
    assert "Counting objects: 100%" in out.stderr, out.stderr
    head = rev(git_env, clone, "HEAD")
    assert api.model_info("alice/proj").sha == head
    assert rev(git_env, clone, "origin/main") == head
    wait_for("B to replicate the push", lambda: local_sha(b, "alice/proj") == head, b)
    got = hf_hub_download("alice/proj", "w.bin", endpoint=b.url, token=False,
                          cache_dir=tmp_path / "hf")
    assert Path(got).read_bytes() == blob

    # A commit whose tree holds `.git/config` is refused, and nothing moves.
    def plumbing(*args, stdin):
        return subprocess.run(["git", "-C", str(clone), *args], input=stdin, env=git_env,
                              capture_output=True, text=True, check=True).stdout.strip()

    evil_blob = plumbing("hash-object", "-w", "--stdin", stdin="[core]\n")
    inner = plumbing("mktree", stdin=f"100644 blob {evil_blob}\tconfig\n")
    tree = plumbing("mktree", stdin=f"040000 tree {inner}\t.git\n")
    evil = git(git_env, "-C", str(clone), "commit-tree", tree, "-p", head, "-m", "evil").stdout.strip()
    out = git(git_env, "-C", str(clone), "push", "origin", f"{evil}:refs/heads/evil", node=a,
              token=a.admin_token, check=False)
    assert out.returncode != 0
    assert re.search(r"\[remote rejected\] .*evil.*\.git", out.stderr), out.stderr
    assert "evil" not in {r.name for r in api.list_repo_refs("alice/proj").branches}

    # Non-fast-forward: A moved on; a push of a commit on the old tip is refused.
    api.upload_file(path_or_fileobj=b"from the api\n", path_in_repo="api.txt",
                    repo_id="alice/proj")
    moved = api.model_info("alice/proj").sha
    (clone / "local.txt").write_text("local\n")
    git(git_env, "-C", str(clone), "add", ".")
    git(git_env, "-C", str(clone), "commit", "-q", "-m", "local")
    out = git(git_env, "-C", str(clone), "push", "origin", "main", node=a, token=a.admin_token,
              check=False)
    assert out.returncode != 0 and "rejected" in out.stderr, out.stderr
    assert api.model_info("alice/proj").sha == moved
    # After a fetch git knows it is not a fast-forward; the helper and the node agree.
    git(git_env, "-C", str(clone), "fetch", node=a, token=a.admin_token)
    out = git(git_env, "-C", str(clone), "push", "origin", "main", node=a, token=a.admin_token,
              check=False)
    assert out.returncode != 0 and "non-fast-forward" in out.stderr, out.stderr
    assert api.model_info("alice/proj").sha == moved

    # Rights missing: bob may read alice/proj but not write to it.
    cli(a, "user", "add", "bob")
    bob = cli(a, "token", "create", "bob", "--scope", "write")
    git(git_env, "-C", str(clone), "rebase", "-q", "origin/main")
    out = git(git_env, "-C", str(clone), "push", "origin", "main", node=a, token=bob,
              check=False)
    assert out.returncode != 0, out.stderr
    assert "rights to write to alice/proj" in out.stderr, out.stderr
    # No token at all.
    out = git(git_env, "-C", str(clone), "push", "origin", "main", node=a, check=False)
    assert out.returncode != 0 and "needs a token" in out.stderr, out.stderr
    assert api.model_info("alice/proj").sha == moved

    # Through B, which does not host alice: refused per ref, naming A.
    wait_for("B to follow A", lambda: local_sha(b, "alice/proj") == moved, b)
    out = git(git_env, "-C", str(clone), "push", "origin", "main", node=b,
              token=b.admin_token, check=False)
    assert out.returncode != 0
    assert re.search(r"\[remote rejected\] main -> main \(.*hosted by node " + a.info["peer_id"],
                     out.stderr), out.stderr
    # A URL naming A as the host, pushed through B: refused before anything is sent.
    git(git_env, "-C", str(clone), "remote", "add", "at-a",
        f"hubmesh://{a.info['peer_id']}/alice/proj")
    out = git(git_env, "-C", str(clone), "push", "at-a", "main", node=b, token=b.admin_token,
              check=False)
    assert out.returncode != 0 and a.info["peer_id"] in out.stderr, out.stderr

    # Push options: the node takes none, and says so per ref rather than dropping them.
    out = git(git_env, "-C", str(clone), "push", "-o", "ci.skip", "origin", "main", node=a,
              token=a.admin_token, check=False)
    assert out.returncode != 0 and "the node does not take push options" in out.stderr, out.stderr
    assert api.model_info("alice/proj").sha == moved

    # And through A it goes; a dry run sends nothing; a branch is created and deleted (a
    # push without a pack); `git ls-remote` lists what the node has.
    git(git_env, "-C", str(clone), "push", "--dry-run", "origin", "main", node=a,
        token=a.admin_token)
    assert api.model_info("alice/proj").sha == moved
    git(git_env, "-C", str(clone), "push", "origin", "main", "main:refs/heads/topic", node=a,
        token=a.admin_token)
    assert api.model_info("alice/proj").sha == rev(git_env, clone, "HEAD")
    assert "topic" in {r.name for r in api.list_repo_refs("alice/proj").branches}
    git(git_env, "-C", str(clone), "push", "origin", "--delete", "topic", node=a,
        token=a.admin_token)
    assert "topic" not in {r.name for r in api.list_repo_refs("alice/proj").branches}
    # ls-remote of a bare URL from inside another repository lists, and leaves that
    # repository's config alone.
    other = tmp_path / "other"
    git(git_env, "init", "-q", str(other))
    listed = git(git_env, "ls-remote", "hubmesh://alice/proj", node=a, cwd=other).stdout
    assert f"{rev(git_env, clone, 'HEAD')}\trefs/heads/main" in listed, listed
    assert "lfs" not in (other / ".git" / "config").read_text()


def test_missing_and_private_repos_read_alike(node_factory, git_env, tmp_path):
    a = node_factory("a", "--admin", "alice")
    api = HfApi(endpoint=a.url, token=a.admin_token)
    api.create_repo("alice/secret", private=True)
    api.upload_file(path_or_fileobj=b"private\n", path_in_repo="x.txt", repo_id="alice/secret")
    cli(a, "user", "add", "bob")
    bob = cli(a, "token", "create", "bob", "--scope", "write")

    def clone_error(name, token):
        out = git(git_env, "clone", f"hubmesh://alice/{name}", str(tmp_path / f"c-{name}-{bool(token)}"),
                  node=a, token=token, check=False)
        assert out.returncode != 0
        errors = [line for line in out.stderr.splitlines() if line.startswith("error: hubmesh:")]
        assert len(errors) == 1, out.stderr
        return errors[0].replace(name, "NAME")

    private, missing = clone_error("secret", bob), clone_error("nothing", bob)
    assert "not found on the hubmesh node" in private, private
    assert private == missing
    # Anonymous (no credential helper answers): the same.
    assert clone_error("secret", None) == clone_error("nothing", None) == private
    # A token the node does not know is named as the problem.
    out = git(git_env, "clone", "hubmesh://alice/secret", str(tmp_path / "bogus"), node=a,
              token="hf_not_a_token_of_this_node", check=False)
    assert out.returncode != 0
    assert "does not accept the token from HUBMESH_TOKEN" in out.stderr, out.stderr
    # The owner clones it.
    git(git_env, "clone", "hubmesh://alice/secret", str(tmp_path / "mine"), node=a,
        token=a.admin_token)
    assert (tmp_path / "mine" / "x.txt").read_bytes() == b"private\n"

    # The node and token from git config instead of the environment.
    cfg = {**git_env, "GIT_CONFIG_GLOBAL": str(tmp_path / "gitconfig-hubmesh")}
    (tmp_path / "gitconfig-hubmesh").write_text(
        (Path(git_env["HOME"]) / ".gitconfig").read_text()
        + f"[hubmesh]\n\tnode = {a.info['http']}\n\ttoken = {a.admin_token}\n")
    git(cfg, "clone", "hubmesh://alice/secret", str(tmp_path / "by-config"))
    assert (tmp_path / "by-config" / "x.txt").read_bytes() == b"private\n"
    # The token from a git credential helper, asked only once the node wants one.
    store = tmp_path / "credentials"
    store.write_text(f"http://alice:{a.admin_token}@{a.info['http']}\n")
    cred = {**git_env, "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "credential.helper",
            "GIT_CONFIG_VALUE_0": f"store --file={store}"}
    git(cred, "clone", "hubmesh://alice/secret", str(tmp_path / "by-credential"), node=a)
    assert (tmp_path / "by-credential" / "x.txt").read_bytes() == b"private\n"

    # A token in the URL is refused before anything is sent.
    out = git(git_env, "clone", f"hubmesh://alice:{a.admin_token}@alice/secret",
              str(tmp_path / "t"), node=a, check=False)
    assert out.returncode != 0 and "credentials do not go in a hubmesh:// URL" in out.stderr

    # An LFS object the node does not have: a clear error from the agent.
    repo = tmp_path / "mine"
    pointer = ("version https://git-lfs.github.com/spec/v1\n"
               f"oid sha256:{'ab' * 32}\nsize 12\n")
    (repo / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (repo / "gone.bin").write_text(pointer)
    env = {**git_env, "GIT_LFS_SKIP_SMUDGE": "1"}
    git(env, "-C", str(repo), "add", ".gitattributes")
    blob = subprocess.run(["git", "-C", str(repo), "hash-object", "-w", "gone.bin", "--no-filters"],
                          capture_output=True, text=True, env=env, check=True).stdout.strip()
    git(env, "-C", str(repo), "update-index", "--add", "--cacheinfo", f"100644,{blob},gone.bin")
    git(env, "-C", str(repo), "commit", "-q", "-m", "dangling pointer")
    out = git(git_env, "-C", str(repo), "lfs", "fetch", "origin", "HEAD", node=a,
              token=a.admin_token, check=False)
    assert out.returncode != 0
    assert f"LFS object {'ab' * 32} (12 bytes) of alice/secret is not on the node" in \
        out.stdout + out.stderr, out.stdout + out.stderr
