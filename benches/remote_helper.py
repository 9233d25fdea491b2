"""git through `git-remote-hubmesh` vs. git's own smart HTTP against the same node (issue 20):
clone (2000 files, git only), LFS download of one large object (the custom transfer agent vs.
git-lfs's basic transfer through the batch API), and a push of one small commit. Medians of
alternating runs, one node, loopback.

    python benches/remote_helper.py [--runs 5] [--lfs-mib 64] [--out benches/results/remote-helper.md]

Needs HUBMESH_BIN (or the debug build under CARGO_TARGET_DIR), git-remote-hubmesh beside it
(or in HUBMESH_HELPER_DIR, e.g. the release build), git and git-lfs.
"""
import argparse, base64, json, os, statistics, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))
os.environ.setdefault("RUST_LOG", "warn")
import conftest

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--lfs-mib", type=int, default=64)
ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "remote-helper.md"))
args = ap.parse_args()

work = Path(tempfile.mkdtemp(prefix="hubmesh-bench-rh-"))
home = work / "home"
home.mkdir()
helper_dir = Path(os.environ.get("HUBMESH_HELPER_DIR", conftest.hubmesh_bin().parent))
env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
       "PATH": f"{helper_dir}{os.pathsep}{os.environ['PATH']}",
       "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
       "GIT_COMMITTER_EMAIL": "b@b"}


def git(*a, cwd=None, extra=None):
    subprocess.run(["git", *a], cwd=cwd or work, env={**env, **(extra or {})}, check=True,
                   capture_output=True, timeout=600)


def timed(f):
    t = time.monotonic()
    f()
    return time.monotonic() - t


git("lfs", "install", "--skip-repo")
node = conftest.start_node(work / "node", "--admin", "alice")
try:
    token = node.admin_token
    h = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    urllib.request.urlopen(urllib.request.Request(
        f"{node.url}/api/repos/create", data=json.dumps({"name": "bench"}).encode(), headers=h),
        timeout=60).read()
    lines = [json.dumps({"key": "header", "value": {"summary": "files"}})]
    for i in range(2000):
        content = os.urandom(750).hex().encode()  # text: regular git files, not LFS
        lines.append(json.dumps({"key": "file", "value": {
            "path": f"d{i % 40}/f{i}.txt", "content": base64.b64encode(content).decode(),
            "encoding": "base64"}}))
    urllib.request.urlopen(urllib.request.Request(
        f"{node.url}/api/models/alice/bench/commit/main", data=("\n".join(lines) + "\n").encode(),
        headers={**h, "content-type": "application/x-ndjson"}), timeout=300).read()
    # 200 small binary files: LFS objects (the node's rules store binary content as LFS).
    lines = [json.dumps({"key": "header", "value": {"summary": "small LFS objects"}})]
    for i in range(200):
        lines.append(json.dumps({"key": "file", "value": {
            "path": f"bin/b{i}.bin", "content": base64.b64encode(os.urandom(1500)).decode(),
            "encoding": "base64"}}))
    urllib.request.urlopen(urllib.request.Request(
        f"{node.url}/api/models/alice/bench/commit/main", data=("\n".join(lines) + "\n").encode(),
        headers={**h, "content-type": "application/x-ndjson"}), timeout=300).read()
    from huggingface_hub import HfApi
    big = os.urandom(args.lfs_mib << 20)
    HfApi(endpoint=node.url, token=token).upload_file(
        path_or_fileobj=big, path_in_repo="weights.bin", repo_id="alice/bench")

    http_url = f"{node.url}/alice/bench"
    mesh_env = {"HUBMESH_NODE": node.url, "HUBMESH_TOKEN": token, "GIT_LFS_SKIP_SMUDGE": "1"}
    rows = {}

    def clone(kind, n):
        dest = work / f"clone-{kind}-{n}"
        url = http_url if kind == "http" else "hubmesh://alice/bench"
        git("clone", "-q", url, str(dest), extra=mesh_env)
        return dest

    for n in range(args.runs):
        for kind in ("http", "hubmesh"):
            rows.setdefault(f"clone ({kind})", []).append(timed(lambda: clone(kind, n)))

    # LFS: one object, fetched into a fresh object directory each run.
    lfs_repo = {k: clone(k, "lfs") for k in ("http", "hubmesh")}
    git("config", "remote.origin.url", f"http://alice:{token}@{node.info['http']}/alice/bench",
        cwd=lfs_repo["http"])
    for n in range(args.runs):
        for kind, repo in lfs_repo.items():
            subprocess.run(["rm", "-rf", str(repo / ".git" / "lfs" / "objects")], check=True)
            rows.setdefault(f"`git lfs fetch`: 1 × {args.lfs_mib} MiB + 200 × 1.5 KB ({kind})", []).append(
                timed(lambda: git("lfs", "fetch", "origin", "main", cwd=repo, extra=mesh_env)))

    # Push of one small commit each run.
    git("config", "remote.origin.url", f"http://alice:{token}@{node.info['http']}/alice/bench",
        cwd=work / "clone-http-0")
    for n in range(args.runs):
        for kind in ("http", "hubmesh"):
            repo = work / f"clone-{kind}-0"
            git("pull", "-q", "--rebase", cwd=repo, extra=mesh_env)
            (repo / f"push-{kind}-{n}.txt").write_text(f"{kind} {n}\n")
            git("add", ".", cwd=repo)
            git("commit", "-q", "-m", f"{kind} {n}", cwd=repo)
            rows.setdefault(f"push of one small commit ({kind})", []).append(
                timed(lambda: git("push", "-q", "origin", "main", cwd=repo, extra=mesh_env)))

    load = open("/proc/loadavg").read().split()[:3]
    out = ["# git through `git-remote-hubmesh` vs. git's smart HTTP (same node)", "",
           f"`python benches/remote_helper.py --runs {args.runs} --lfs-mib {args.lfs_mib}`: one "
           f"debug-build node on loopback, helper from `{helper_dir}`, a repo of 2000 text files (3 MB) in git, one large LFS object and 200 small ones; "
           f"medians of {args.runs} alternating runs; load average at the end {' '.join(load)} "
           f"on {os.cpu_count()} cores (shared machine).", "",
           "| What | median | min | max |", "|---|---|---|---|"]
    for name, ts in rows.items():
        out.append(f"| {name} | {statistics.median(ts)*1000:.0f} ms | {min(ts)*1000:.0f} ms | "
                   f"{max(ts)*1000:.0f} ms |")
    text = "\n".join(out) + "\n"
    Path(args.out).write_text(text)
    print(text)
finally:
    node.kill()
    subprocess.run(["rm", "-rf", str(work)])
