"""paths-info with 10 000 paths in 10 000 folders (issue 14, item 23): the node's CPU seconds
(utime + stime from /proc) and wall time for one call, two `hubmesh` binaries side by side on
the same machine, alternating runs.

    python benches/paths_info.py OLD_HUBMESH NEW_HUBMESH
"""
import base64, json, os, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))
os.environ.setdefault("RUST_LOG", "warn")
import conftest

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def run(binary, n=10_000):
    os.environ["HUBMESH_BIN"] = binary
    d = Path(tempfile.mkdtemp())
    node = conftest.start_node(d / "n")
    try:
        h = {"authorization": f"Bearer {node.admin_token}", "content-type": "application/json"}
        urllib.request.urlopen(urllib.request.Request(f"{node.url}/api/repos/create", data=json.dumps({"name": "m"}).encode(), headers=h), timeout=60).read()
        lines = [json.dumps({"key": "header", "value": {"summary": "s"}})]
        for i in range(n):
            lines.append(json.dumps({"key": "file", "value": {"path": f"d{i}/f.txt", "content": base64.b64encode(b"x").decode(), "encoding": "base64"}}))
        body = ("\n".join(lines) + "\n").encode()
        urllib.request.urlopen(urllib.request.Request(f"{node.url}/api/models/admin/m/commit/main", data=body, headers={**h, "content-type": "application/x-ndjson"}), timeout=300).read()
        form = "&".join(f"paths=d{i}%2Ff.txt" for i in range(n)).encode()
        c0 = cpu(node.proc.pid); t0 = time.monotonic()
        r = urllib.request.urlopen(urllib.request.Request(f"{node.url}/api/models/admin/m/paths-info/main", data=form, headers={"content-type": "application/x-www-form-urlencoded"}), timeout=300)
        got = len(json.loads(r.read()))
        return got, cpu(node.proc.pid) - c0, time.monotonic() - t0
    finally:
        node.kill()
        subprocess.run(["rm", "-rf", str(d)])

old, new = sys.argv[1], sys.argv[2]
for rnd in range(2):
    for name, b in (("old", old), ("new", new)):
        got, c, w = run(b)
        print(f"{name} run{rnd}: entries={got} cpu={c:.2f}s wall={w:.2f}s", flush=True)
