"""Page latency for a repo with 1 000 files (issue 24): p50/p95 of the card page, the file
browser (1 000 rows, each with its last commit), a file, the history and a commit's diff,
over sequential requests to one `hubmesh` node, plus the JSON tree API (plain, and with
`expand=true`, whose last commits come from the same walk as the file browser's) measured in
the same run. Writes benches/results/pages.md.

    python benches/pages.py [HUBMESH_BIN] [--requests 200]
"""
import base64, json, os, statistics, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))
os.environ.setdefault("RUST_LOG", "warn")
import conftest  # noqa: E402

args = sys.argv[1:]
requests = 200
if "--requests" in args:
    i = args.index("--requests")
    requests = int(args[i + 1])
    del args[i : i + 2]
if args:
    os.environ["HUBMESH_BIN"] = args[0]


def post(url, body, headers):
    return urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=300).read()


def main():
    d = Path(tempfile.mkdtemp())
    node = conftest.start_node(d / "n")
    try:
        h = {"authorization": f"Bearer {node.admin_token}", "content-type": "application/json"}
        post(f"{node.url}/api/repos/create", json.dumps({"name": "many"}).encode(), h)
        card = "---\nlicense: mit\ntags: [bench]\n---\n# Many files\n\n" + "Some *text*.\n\n" * 50
        files = [("README.md", card.encode())] + [(f"f{i:04}.txt", f"file {i}\n".encode()) for i in range(1000)]
        commits = [files] + [[(f"f{i:04}.txt", f"changed {i}\n".encode())] for i in range(20)]
        for n, ops in enumerate(commits):
            lines = [json.dumps({"key": "header", "value": {"summary": f"commit {n}"}})]
            lines += [json.dumps({"key": "file", "value": {"path": p, "content": base64.b64encode(b).decode(), "encoding": "base64"}}) for p, b in ops]
            post(f"{node.url}/api/models/admin/many/commit/main", ("\n".join(lines) + "\n").encode(), {**h, "content-type": "application/x-ndjson"})
        head = json.load(urllib.request.urlopen(f"{node.url}/api/models/admin/many/revision/main", timeout=60))["sha"]
        rows = []
        for label, path in [
            ("card page", "/admin/many"),
            ("file browser, 1 000 files in one folder", "/admin/many/tree/main"),
            ("file view", "/admin/many/blob/main/f0500.txt"),
            ("commit history (21 commits)", "/admin/many/commits/main"),
            ("one commit's diff", f"/admin/many/commit/{head}"),
            ("baseline: JSON tree API, same folder", "/api/models/admin/many/tree/main"),
            ("JSON tree API with lastCommit (expand, first page)", "/api/models/admin/many/tree/main?expand=true"),
        ]:
            for _ in range(5):
                urllib.request.urlopen(f"{node.url}{path}", timeout=60).read()
            times = []
            for _ in range(requests):
                t0 = time.perf_counter()
                urllib.request.urlopen(f"{node.url}{path}", timeout=60).read()
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            p50, p95 = statistics.median(times), times[int(len(times) * 0.95) - 1]
            rows.append((label, path, p50, p95))
            print(f"{label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms", flush=True)
        return rows
    finally:
        node.kill()
        subprocess.run(["rm", "-rf", str(d)])


rows = main()
binary = os.environ.get("HUBMESH_BIN", "target/debug/hubmesh")
load = open("/proc/loadavg").read().split()[:3]
out = Path(__file__).resolve().parent / "results" / "pages.md"
lines = [
    "# Page latency for a repo with 1 000 files",
    "",
    f"`python benches/pages.py` — binary `{binary}`, {requests} sequential requests per page after 5 warm-up ones,",
    f"one node on loopback, 2-core machine, load average at the end {' '.join(load)}.",
    "The repo: a README card and 1 000 files in its root folder, then 20 commits that each change one of them.",
    "",
    "| page | path | p50 (ms) | p95 (ms) |",
    "|---|---|---:|---:|",
]
lines += [f"| {label} | `{path}` | {p50:.1f} | {p95:.1f} |" for label, path, p50, p95 in rows]
out.write_text("\n".join(lines) + "\n")
print(f"wrote {out}")
