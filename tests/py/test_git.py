"""git smart HTTP with the real `git` and `git lfs` binaries against a real node: clone,
fetch, pull, push (with LFS), shallow clones, and pushes the node must refuse without
changing the repository."""

import base64
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest
from conftest import SECRETS_SEEN, cli, hubmesh_bin
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

MIB = 1024 * 1024


@pytest.fixture
def gitenv(tmp_path):
    """An environment where git reads no config but ours: a throwaway HOME with git-lfs
    installed into it, no system config, no prompts."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "LANG": "C",
    }
    subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True, capture_output=True)
    subprocess.run(["git", "config", "--global", "init.defaultBranch", "main"], env=env, check=True)
    return env


class Git:
    def __init__(self, env):
        self.env = env

    def run(self, *args, cwd=None, check=True, input=None):
        out = subprocess.run(
            ["git", "-c", "credential.helper=", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            input=input,
            timeout=300,
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"git {' '.join(args)} failed ({out.returncode}):\n{out.stderr.decode(errors='replace')}"
            )
        return out

    def out(self, *args, cwd=None):
        return self.run(*args, cwd=cwd).stdout.decode().strip()


@pytest.fixture
def git(gitenv):
    return Git(gitenv)


def remote(node, repo, user="admin", token=None, prefix=""):
    token = token or node.admin_token
    return node.url.replace("http://", f"http://{user}:{token}@") + "/" + prefix + repo


def server_git_dir(node, repo, kind="models"):
    ns, name = repo.split("/")
    found = list(node.data.rglob(f"{kind}/{ns}/{name}.git"))
    assert len(found) == 1, found
    return found[0]


def server_has_object(node, repo, oid):
    out = subprocess.run(
        ["git", "--git-dir", str(server_git_dir(node, repo)), "cat-file", "-e", oid],
        capture_output=True,
    )
    return out.returncode == 0


def test_scenario_10_api_upload_clone_push_api_sees_it(node, git, tmp_path):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "admin/git"
    api.create_repo(rid, exist_ok=True)
    data = os.urandom(2048)
    api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id=rid)
    d = tmp_path / "clone"
    git.run("clone", remote(node, rid), str(d))
    assert (d / "w.bin").read_bytes() == data
    assert git.out("rev-parse", "HEAD", cwd=d) == api.model_info(rid).sha
    (d / "new.txt").write_text("x")
    git.run("add", ".", cwd=d)
    git.run("commit", "-m", "p", cwd=d)
    git.run("push", "origin", "HEAD:main", cwd=d)
    assert "new.txt" in api.list_repo_files(rid)
    assert api.model_info(rid).sha == git.out("rev-parse", "HEAD", cwd=d)
    # The pushed file resolves through the Hub API too.
    assert api.hf_hub_download(rid, "new.txt", cache_dir=str(tmp_path / "c")).endswith("new.txt")


def test_push_100mib_lfs_file_then_clone_elsewhere(node, git, tmp_path):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "admin/big"
    api.create_repo(rid)
    a = tmp_path / "a"
    git.run("clone", remote(node, rid), str(a))
    git.run("lfs", "install", "--local", cwd=a)
    big = os.urandom(100 * MIB)
    (a / "model.bin").write_bytes(big)
    git.run("add", "model.bin", cwd=a)
    git.run("commit", "-m", "big", cwd=a)
    # The blob in git is a pointer, not the content.
    assert "oid sha256:" in git.out("show", "HEAD:model.bin", cwd=a)
    # A plain push: git-lfs uploads through the batch API (PUT to a signed URL, then verify
    # with the header the batch answer gives it), then git pushes the refs.
    git.run("push", "origin", "main", cwd=a)
    b = tmp_path / "b"
    git.run("clone", remote(node, rid), str(b))
    assert hashlib.sha256((b / "model.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
    info = api.model_info(rid, files_metadata=True)
    assert info.sha == git.out("rev-parse", "HEAD", cwd=a)
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["model.bin"] == 100 * MIB


@pytest.mark.parametrize("version", ["0", "2"])
def test_shallow_clone(node, git, tmp_path, version):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "admin/shallow"
    api.create_repo(rid)
    for i in range(3):
        api.create_commit(rid, [CommitOperationAdd(f"f{i}.txt", b"%d" % i)], commit_message=f"c{i}")
    d = tmp_path / "s"
    git.run("-c", f"protocol.version={version}", "clone", "--depth", "1", remote(node, rid), str(d))
    assert git.out("rev-list", "--count", "HEAD", cwd=d) == "1"
    assert git.out("rev-parse", "HEAD", cwd=d) == api.model_info(rid).sha
    assert (d / "f2.txt").read_text() == "2"
    # Deepen it again.
    git.run("-c", f"protocol.version={version}", "fetch", "--unshallow", cwd=d)
    assert git.out("rev-list", "--count", "HEAD", cwd=d) == "4"


def test_pull_after_api_commit(node, git, tmp_path):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "admin/pull"
    api.create_repo(rid)
    d = tmp_path / "p"
    git.run("clone", remote(node, rid), str(d))
    api.create_commit(rid, [CommitOperationAdd("api.txt", b"from api")], commit_message="api")
    git.run("pull", "--ff-only", cwd=d)
    assert (d / "api.txt").read_text() == "from api"
    assert git.out("rev-parse", "HEAD", cwd=d) == api.model_info(rid).sha


def test_push_after_api_commit_needs_fetch_rebase(node, git, tmp_path):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "admin/rebase"
    api.create_repo(rid)
    d = tmp_path / "r"
    git.run("clone", remote(node, rid), str(d))
    (d / "local.txt").write_text("local")
    git.run("add", ".", cwd=d)
    git.run("commit", "-m", "local", cwd=d)
    api.create_commit(rid, [CommitOperationAdd("api.txt", b"api")], commit_message="api")
    before = api.model_info(rid).sha
    refused = git.run("push", "origin", "main", cwd=d, check=False)
    assert refused.returncode != 0
    assert api.model_info(rid).sha == before
    git.run("pull", "--rebase", cwd=d)
    git.run("push", "origin", "main", cwd=d)
    files = api.list_repo_files(rid)
    assert "local.txt" in files and "api.txt" in files
    assert api.model_info(rid).sha == git.out("rev-parse", "HEAD", cwd=d)


def raw_tree(git, cwd, entries):
    """Writes a tree object from raw `(mode, name, oid)` entries, bypassing git's checks."""
    body = b"".join(
        mode.encode() + b" " + name + b"\0" + bytes.fromhex(oid) for mode, name, oid in entries
    )
    return git.run("hash-object", "-t", "tree", "-w", "--literally", "--stdin", cwd=cwd, input=body).stdout.decode().strip()


def blob(git, cwd, data: bytes):
    return git.run("hash-object", "-w", "--stdin", cwd=cwd, input=data).stdout.decode().strip()


BAD_TREES = {
    "dotdot": lambda git, d, b, t: [("40000", b"..", t)],
    "dot_git": lambda git, d, b, t: [("40000", b".git", t)],
    "dot_git_upper": lambda git, d, b, t: [("40000", b".GIT", t)],
    "git_8dot3": lambda git, d, b, t: [("40000", b"git~1", t)],
    "dot_git_trailing_dot": lambda git, d, b, t: [("40000", b".git.", t)],
    "slash_in_name": lambda git, d, b, t: [("100644", b"a/b", b)],
    "duplicate": lambda git, d, b, t: [("100644", b"a", b), ("100644", b"a", b)],
    "gitlink": lambda git, d, b, t: [("160000", b"sub", b)],
    "bad_mode": lambda git, d, b, t: [("100664", b"a", b)],
}

REASONS = {
    "dotdot": "invalid path",
    "dot_git": "invalid path",
    "dot_git_upper": "invalid path",
    "git_8dot3": "invalid path",
    "dot_git_trailing_dot": "invalid path",
    "slash_in_name": "invalid path",
    "duplicate": "duplicate entry",
    "gitlink": "submodule",
    "bad_mode": "bad file mode",
}


@pytest.fixture
def seeded(node, git, tmp_path):
    """A repo with one API commit and a clone of it."""
    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "admin/guarded"
    api.create_repo(rid)
    api.create_commit(rid, [CommitOperationAdd("ok.txt", b"ok")], commit_message="seed")
    d = tmp_path / "g"
    git.run("clone", remote(node, rid), str(d))
    return api, rid, d


def assert_refused(node, git, api, rid, d, push_args, reason, new_oids=()):
    before = api.model_info(rid).sha
    refs_before = git.out("ls-remote", "origin", cwd=d)
    out = git.run("push", *push_args, cwd=d, check=False)
    err = out.stderr.decode(errors="replace")
    assert out.returncode != 0, err
    assert reason in err, err
    assert api.model_info(rid).sha == before
    assert git.out("ls-remote", "origin", cwd=d) == refs_before
    for oid in new_oids:
        assert not server_has_object(node, rid, oid), oid
    return err


@pytest.mark.parametrize("case", sorted(BAD_TREES))
def test_push_with_bad_tree_is_refused(node, git, seeded, case):
    api, rid, d = seeded
    b = blob(git, d, b"payload %s\n" % case.encode())
    inner = raw_tree(git, d, [("100644", b"x", b)])
    tree = raw_tree(git, d, BAD_TREES[case](git, d, b, inner))
    parent = git.out("rev-parse", "HEAD", cwd=d)
    commit = git.out("commit-tree", tree, "-p", parent, "-m", f"bad {case}", cwd=d)
    err = assert_refused(
        node, git, api, rid, d, ["origin", f"{commit}:refs/heads/main"], REASONS[case], [commit, tree]
    )
    assert "-> main" in err


def test_push_with_lfs_pointer_to_missing_object_is_refused(node, git, seeded):
    api, rid, d = seeded
    oid = hashlib.sha256(b"never uploaded").hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 14\n"
    (d / "ghost.dat").write_text(pointer)
    git.run("add", "ghost.dat", cwd=d)
    git.run("commit", "-m", "ghost", cwd=d)
    commit = git.out("rev-parse", "HEAD", cwd=d)
    err = assert_refused(node, git, api, rid, d, ["origin", "main"], "missing LFS object", [commit])
    assert oid in err


def test_deleting_main_is_refused(node, git, seeded):
    api, rid, d = seeded
    assert_refused(node, git, api, rid, d, ["origin", ":main"], "deleting the default branch")


def test_push_with_read_token_is_refused(node, git, seeded, tmp_path):
    api, rid, d = seeded
    cli(node, "user", "add", "bob")
    read = cli(node, "token", "create", "bob", "--scope", "read")
    git.run("remote", "set-url", "origin", remote(node, rid, user="bob", token=read), cwd=d)
    (d / "n.txt").write_text("n")
    git.run("add", ".", cwd=d)
    git.run("commit", "-m", "n", cwd=d)
    before = api.model_info(rid).sha
    out = git.run("push", "origin", "main", cwd=d, check=False)
    assert out.returncode != 0
    assert b"403" in out.stderr, out.stderr
    assert api.model_info(rid).sha == before


def test_force_push_needs_force_rights(node, git, tmp_path):
    cli(node, "user", "add", "bob")
    cli(node, "org", "add", "acme")
    cli(node, "org", "member", "add", "acme", "bob", "--role", "contributor")
    bob = cli(node, "token", "create", "bob", "--scope", "write")
    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "acme/team"
    api.create_repo(rid, private=True)
    api.create_commit(rid, [CommitOperationAdd("a.txt", b"a")], commit_message="a")
    d = tmp_path / "t"
    git.run("clone", remote(node, rid, user="bob", token=bob), str(d))
    # A contributor may push a fast-forward...
    (d / "b.txt").write_text("b")
    git.run("add", ".", cwd=d)
    git.run("commit", "-m", "b", cwd=d)
    git.run("push", "origin", "main", cwd=d)
    # ...but not rewrite history.
    git.run("commit", "--amend", "-m", "rewritten", cwd=d)
    rewritten = git.out("rev-parse", "HEAD", cwd=d)
    assert_refused(node, git, api, rid, d, ["--force", "origin", "main"], "non-fast-forward", [rewritten])
    # The namespace's owner (the admin) may.
    git.run("remote", "set-url", "origin", remote(node, rid), cwd=d)
    git.run("push", "--force", "origin", "main", cwd=d)
    assert api.model_info(rid).sha == rewritten


def test_private_repo_visibility(node, git, tmp_path):
    cli(node, "user", "add", "bob")
    bob = cli(node, "token", "create", "bob", "--scope", "write")
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo("admin/secret", private=True)
    anon = node.url + "/admin/secret"
    out = git.run("clone", anon, str(tmp_path / "a"), check=False)
    assert out.returncode != 0
    # Anonymous: challenged for credentials (and told nothing about the repo).
    assert b"could not read Username" in out.stderr, out.stderr
    out = git.run("clone", remote(node, "admin/secret", user="bob", token=bob), str(tmp_path / "b"), check=False)
    assert out.returncode != 0
    assert b"not found" in out.stderr.lower() or b"404" in out.stderr, out.stderr
    git.run("clone", remote(node, "admin/secret"), str(tmp_path / "c"))


def test_datasets_and_git_suffix(node, git, tmp_path):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo("admin/ds", repo_type="dataset")
    api.create_commit(
        "admin/ds", [CommitOperationAdd("data.csv", b"a,b\n")], commit_message="d", repo_type="dataset"
    )
    d = tmp_path / "d"
    git.run("clone", remote(node, "admin/ds.git", prefix="datasets/"), str(d))
    assert (d / "data.csv").read_text() == "a,b\n"
    (d / "more.csv").write_text("c,d\n")
    git.run("add", ".", cwd=d)
    git.run("commit", "-m", "more", cwd=d)
    git.run("push", cwd=d)
    assert "more.csv" in api.list_repo_files("admin/ds", repo_type="dataset")


def pkt_line(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def http(method, url, token=None, body=None, headers=None):
    """(status, body) of one raw request; the token goes as HTTP Basic, as git sends it."""
    h = dict(headers or {})
    if token:
        h["authorization"] = "Basic " + base64.b64encode(f"x:{token}".encode()).decode()
    req = urllib.request.Request(url, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_unreferenced_pushed_commit_cannot_expose_another_repos_private_lfs_object(node, git, tmp_path):
    """Issue 14, item 1: bob knows only the SHA-256 of alice's private LFS object. He pushes to
    his own public repo a harmless update of main, in a pack that also carries a commit no ref
    reaches, whose tree points at alice's object. Before every pushed object was checked, the
    push was accepted, and `resolve/<that commit>/weights.bin` served alice's bytes to anyone."""
    cli(node, "user", "add", "alice")
    cli(node, "user", "add", "bob")
    alice = HfApi(endpoint=node.url, token=cli(node, "token", "create", "alice", "--scope", "write"))
    bob_token = cli(node, "token", "create", "bob", "--scope", "write")
    bob = HfApi(endpoint=node.url, token=bob_token)
    secret = b"alice's private weights\n" + os.urandom(8192)
    sha = hashlib.sha256(secret).hexdigest()
    alice.create_repo("alice/private", private=True)
    alice.upload_file(path_or_fileobj=secret, path_in_repo="weights.bin", repo_id="alice/private")
    [stored] = alice.get_paths_info("alice/private", ["weights.bin"])
    assert stored.lfs is not None and stored.lfs.sha256 == sha

    rid = "bob/innocent"
    bob.create_repo(rid)
    d = tmp_path / "bob"
    git.run("clone", remote(node, rid, user="bob", token=bob_token), str(d))
    base = git.out("rev-parse", "HEAD", cwd=d)
    pointer = blob(
        git, d, f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(secret)}\n".encode()
    )
    tree = git.run("mktree", cwd=d, input=f"100644 blob {pointer}\tweights.bin\n".encode()).stdout.decode().strip()
    evil = git.out("commit-tree", tree, "-m", "on no branch", cwd=d)
    (d / "README.md").write_text("harmless\n")
    git.run("add", "README.md", cwd=d)
    git.run("commit", "-m", "harmless", cwd=d)
    tip = git.out("rev-parse", "HEAD", cwd=d)
    pack = git.run(
        "pack-objects", "--stdout", "--revs", "-q", cwd=d, input=f"{tip}\n{evil}\n^{base}\n".encode()
    ).stdout
    request = pkt_line(f"{base} {tip} refs/heads/main\0report-status agent=git/2.43\n".encode()) + b"0000" + pack
    status, report = http(
        "POST",
        f"{node.url}/{rid}/git-receive-pack",
        bob_token,
        request,
        {"content-type": "application/x-git-receive-pack-request"},
    )
    assert status == 200, report
    report = report.decode(errors="replace")

    # Nothing of alice's is served, to anyone, by the commit's id.
    url = f"{node.url}/{rid}/resolve/{evil}/weights.bin"
    for token in (None, bob_token):
        status, body = http("GET", url, token)
        assert secret[:24] not in body
        assert status == 404, (status, body[:200])
    assert "ng refs/heads/main" in report and "missing LFS object" in report, report
    assert sha in report, report
    assert not server_has_object(node, rid, evil)
    assert bob.model_info(rid).sha == base
    status, _ = http("GET", f"{node.url}/api/models/{rid}/tree/{evil}")
    assert status == 404
    # Nor can a branch, or a push through real git, make it reachable.
    with pytest.raises(HfHubHTTPError):
        bob.create_branch(rid, branch="leak", revision=evil)
    out = git.run("push", "origin", f"{evil}:refs/heads/leak", cwd=d, check=False)
    assert out.returncode != 0 and b"missing LFS object" in out.stderr, out.stderr
    for rev in (evil, "leak"):
        status, body = http("GET", f"{node.url}/{rid}/resolve/{rev}/weights.bin")
        assert status == 404 and secret[:24] not in body
    # alice still reads her own file.
    path = alice.hf_hub_download("alice/private", "weights.bin", cache_dir=str(tmp_path / "c"))
    assert open(path, "rb").read() == secret


def test_push_of_a_pack_over_post_buffer(node, git, tmp_path):
    """A pack larger than `http.postBuffer` (1 MiB by default) makes git probe the
    receive-pack URL with a flush-only body (`0000`) before it streams the pack chunked; the
    probe must get 200, as `git http-backend` answers it. Once with one incompressible
    3 MiB file (not LFS), once with many files."""
    api = HfApi(endpoint=node.url, token=node.admin_token)
    rid = "admin/bigpack"
    api.create_repo(rid)
    a = tmp_path / "a"
    git.run("clone", remote(node, rid), str(a))
    big = os.urandom(3 * MIB)
    # Not a pattern of the default .gitattributes: the content goes into the pack, not LFS.
    (a / "random.raw").write_bytes(big)
    git.run("add", "random.raw", cwd=a)
    git.run("commit", "-m", "3 MiB of random bytes", cwd=a)
    assert git.out("cat-file", "-s", "HEAD:random.raw", cwd=a) == str(3 * MIB)
    git.run("push", "origin", "main", cwd=a)
    assert api.model_info(rid).sha == git.out("rev-parse", "HEAD", cwd=a)

    files = {f"many/{i:04d}.txt": os.urandom(1024).hex().encode() for i in range(1500)}
    for name, data in files.items():
        (a / name).parent.mkdir(exist_ok=True)
        (a / name).write_bytes(data)
    git.run("add", "many", cwd=a)
    git.run("commit", "-m", "1500 files", cwd=a)
    git.run("push", "origin", "main", cwd=a)
    head = git.out("rev-parse", "HEAD", cwd=a)
    assert api.model_info(rid).sha == head

    b = tmp_path / "b"
    git.run("clone", remote(node, rid), str(b))
    assert git.out("rev-parse", "HEAD", cwd=b) == head
    assert (b / "random.raw").read_bytes() == big
    for name, data in files.items():
        assert (b / name).read_bytes() == data, name
