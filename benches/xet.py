"""Xet vs LFS (issue 15): one 1 GiB safetensors file uploaded with `upload_file` and downloaded
with `hf_hub_download` by huggingface_hub 2.4.0, once through Xet (hf_xet, the default) and once
through the LFS batch API (HF_HUB_DISABLE_XET=1), each against a fresh node, in one run.
Reports wall time, the client's peak RSS (VmHWM), the bytes the node received through Xet and
what the store holds afterwards. A third path, Xet with hf_xet's upload concurrency capped at 1
(`HF_XET_CLIENT_AC_MAX_UPLOAD_CONCURRENCY=1`), shows how much of the client's memory is its own
in-flight xorbs. The paths alternate, `--rounds` times (the machine is shared: compare within a
round), with the load average before each run.

    python benches/xet.py [HUBMESH_BIN] [--size-mib 1024] [--rounds 2] [--no-floor] [--no-capped] [--baseline OTHER_HUBMESH_BIN]   → benches/results/xet.md

Each round also runs `hf_xet` on its own (unless `--no-floor`): the same upload commit
`upload_file` makes, against a hubmesh node, against `benches/null_cas.py` (a do-nothing CAS
answering every xorb at once), and against the same with 3 s per xorb: what the client's
memory is whatever the server answers, and how it grows with the server's latency.

Also reports CPU seconds of the upload, client and node apart (both share the machine's cores).
For 1 GiB it asserts the default Xet path's client peak RSS stays under 600 MiB (measured
349–457 MiB; ADR 0002's inline path took 1.24 GiB for 300 MB): the issue's 300 MiB is not
reached — with its upload concurrency capped at 1, hf_xet alone still peaks at 298–321 MiB
(ADR 0010) — and the node's peak RSS under 448 MiB.
"""
import hashlib, json, os, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))
os.environ.setdefault("RUST_LOG", "warn")
import conftest  # noqa: E402
from test_xet import write_safetensors, metric  # noqa: E402

MIB = 1024**2

UPLOAD = """
import json, resource, sys, time
from huggingface_hub import HfApi
api = HfApi()
api.create_repo("big")
t0 = time.monotonic()
api.upload_file(path_or_fileobj=sys.argv[1], path_in_repo="model.safetensors", repo_id="admin/big")
rss = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"upload_s": time.monotonic() - t0, "rss_up": rss, "client_cpu_up": ru.ru_utime + ru.ru_stime}))
"""

DOWNLOAD = """
import hashlib, json, time
from huggingface_hub import hf_hub_download
t0 = time.monotonic()
path = hf_hub_download("admin/big", "model.safetensors")
t1 = time.monotonic()
h = hashlib.sha256()
with open(path, "rb") as f:
    while chunk := f.read(16 << 20):
        h.update(chunk)
rss = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"download_s": t1 - t0, "sha": h.hexdigest(), "rss_down": rss}))
"""


# hf_xet on its own (no huggingface_hub upload machinery, only its import, so the baseline
# RSS matches): one upload commit of one file, as `upload_file` makes it.
XET_ONLY = """
import json, resource, sys, time
import huggingface_hub, hf_xet
path, refresh_url, token = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.monotonic()
session = hf_xet.XetSession()
headers = {"authorization": f"Bearer {token}"} if token else {}
with session.new_upload_commit(token_refresh_url=refresh_url, token_refresh_headers=headers) as commit:
    handle = commit.start_upload_file(path, sha256=hf_xet.COMPUTE_SHA256)
sha = handle.result().xet_info.sha256
rss = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"upload_s": time.monotonic() - t0, "rss_up": rss, "client_cpu_up": ru.ru_utime + ru.ru_stime, "sha": sha}))
"""


def run_xet_only(src, sha, target, delay_ms=0):
    """hf_xet alone uploading `src` to a fresh hubmesh node (`target == "hubmesh"`) or to the
    do-nothing CAS of `benches/null_cas.py` (answering each xorb after `delay_ms`)."""
    d = Path(tempfile.mkdtemp(prefix="xet-bench-"))
    node = server = None
    try:
        env = {**os.environ, "HF_HOME": str(d / "hf"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        if target == "hubmesh":
            node = conftest.start_node(d / "n")
            env.update(HF_ENDPOINT=node.url, HF_TOKEN=node.admin_token)
            subprocess.run([sys.executable, "-c", "from huggingface_hub import HfApi; HfApi().create_repo('big')"],
                           env=env, check=True, timeout=300)
            url, token = f"{node.url}/api/models/admin/big/xet-write-token/main", node.admin_token
        else:
            port_file = d / "port"
            server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("null_cas.py")), str(port_file),
                                       "--delay-ms", str(delay_ms)])
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text()):
                assert time.monotonic() < deadline and server.poll() is None, "null CAS did not start"
                time.sleep(0.05)
            url, token = f"http://127.0.0.1:{port_file.read_text()}/api/models/x/y/xet-write-token/main", ""
        out = subprocess.run([sys.executable, "-c", XET_ONLY, str(src), url, token], env=env,
                             capture_output=True, text=True, timeout=3600)
        assert out.returncode == 0, out.stderr[-3000:] + (node.log()[-3000:] if node else "")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        assert r.pop("sha") == sha
        if node:
            r["received"] = metric(node, "xet_received_bytes_total")
            r["node_rss_up"] = node_rss(node.proc.pid)
            r["node_cpu_up"] = node_cpu(node.proc.pid)
        else:
            import urllib.request
            r["received"] = json.load(urllib.request.urlopen(url.split("/api/")[0] + "/stats"))["received"]
        return r
    finally:
        if node:
            node.kill()
        if server:
            server.kill()
            server.wait()
        subprocess.run(["rm", "-rf", str(d)])


def node_cpu(pid):
    """CPU seconds (user + system) the node process used so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_rss(pid):
    return [int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM:")][0]


def run(src, sha, xet, extra_env=None, binary=None):
    if binary:
        # Another build (`--baseline`): this run's node and store stats use it.
        saved = os.environ["HUBMESH_BIN"] if "HUBMESH_BIN" in os.environ else None
        os.environ["HUBMESH_BIN"] = binary
        try:
            return run(src, sha, xet, extra_env)
        finally:
            if saved is None:
                del os.environ["HUBMESH_BIN"]
            else:
                os.environ["HUBMESH_BIN"] = saved
    d = Path(tempfile.mkdtemp(prefix="xet-bench-"))
    node = conftest.start_node(d / "n")
    try:
        env = {**os.environ, "HF_ENDPOINT": node.url, "HF_TOKEN": node.admin_token,
               "HF_HOME": str(d / "hf"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        env.pop("HF_HUB_DISABLE_XET", None)
        if not xet:
            env["HF_HUB_DISABLE_XET"] = "1"
        env.update(extra_env or {})
        r = {}
        for code, arg in ((UPLOAD, [str(src)]), (DOWNLOAD, [])):
            out = subprocess.run([sys.executable, "-c", code, *arg], env=env, capture_output=True, text=True, timeout=3600)
            assert out.returncode == 0, out.stderr[-3000:] + node.log()[-3000:]
            r.update(json.loads(out.stdout.strip().splitlines()[-1]))
            if code is UPLOAD:
                r["node_rss_up"] = node_rss(node.proc.pid)
                r["node_cpu_up"] = node_cpu(node.proc.pid)
        assert r["sha"] == sha
        r["received"] = metric(node, "xet_received_bytes_total")
        r["node_rss"] = node_rss(node.proc.pid)
        node.terminate()
        stats = json.loads(subprocess.run([str(conftest.hubmesh_bin()), "store", "stats", "--data", str(node.data), "--json"],
                                          capture_output=True, text=True, check=True).stdout)
        r["stats"] = stats
        return r
    finally:
        node.kill()
        subprocess.run(["rm", "-rf", str(d)])


def main():
    args = sys.argv[1:]
    size = 1024
    if "--size-mib" in args:
        i = args.index("--size-mib")
        size = int(args[i + 1])
        del args[i : i + 2]
    rounds = 2
    if "--rounds" in args:
        i = args.index("--rounds")
        rounds = int(args[i + 1])
        del args[i : i + 2]
    baseline = None
    if "--baseline" in args:
        i = args.index("--baseline")
        baseline = args[i + 1]
        del args[i : i + 2]
    floor = "--no-floor" not in args
    if not floor:
        args.remove("--no-floor")
    if "--no-capped" in args:
        args.remove("--no-capped")
    if args:
        os.environ["HUBMESH_BIN"] = args[0]
    work = Path(tempfile.mkdtemp(prefix="xet-bench-src-"))
    src = work / "model.safetensors"
    half = size * MIB // 2
    sha = write_safetensors(src, {"a": os.urandom(half), "b": os.urandom(half)})
    slow_ms = 3000
    rows, floor_rows = [], []
    try:
        capped = {"HF_XET_CLIENT_AC_INITIAL_UPLOAD_CONCURRENCY": "1",
                  "HF_XET_CLIENT_AC_MAX_UPLOAD_CONCURRENCY": "1"}
        paths = (("Xet (hf_xet)", True, None), ("LFS batch (HF_HUB_DISABLE_XET=1)", False, None),
                 ("Xet, client upload concurrency 1", True, capped))
        if "--no-capped" in sys.argv:
            paths = paths[:2]
        if baseline:
            paths += (("Xet (hf_xet), baseline build", True, None),)
        floor_paths = (("hf_xet alone → hubmesh", "hubmesh", 0),
                       ("hf_xet alone → do-nothing CAS", "null", 0),
                       (f"hf_xet alone → do-nothing CAS, {slow_ms} ms per xorb", "null", slow_ms))
        for round_ in range(1, rounds + 1):
            for name, xet, extra in paths:
                load = " ".join(open("/proc/loadavg").read().split()[:3])
                r = run(src, sha, xet, extra, baseline if name.endswith("baseline build") else None)
                r["load"], r["round"] = load, round_
                print(name, json.dumps(r), flush=True)
                rows.append((name, r))
            for name, target, delay in floor_paths if floor else ():
                load = " ".join(open("/proc/loadavg").read().split()[:3])
                r = run_xet_only(src, sha, target, delay)
                r["load"], r["round"] = load, round_
                print(name, json.dumps(r), flush=True)
                floor_rows.append((name, r))
    finally:
        subprocess.run(["rm", "-rf", str(work)])
    load = open("/proc/loadavg").read().split()[:3]
    lines = [
        "# Xet vs LFS: 1 file, upload_file + hf_hub_download (huggingface_hub 2.4.0)",
        "",
        f"`python benches/xet.py` — {size} MiB safetensors (random tensors), "
        f"{'release' if '/release/' in str(conftest.hubmesh_bin()) else 'debug'} `hubmesh` build, "
        f"{os.cpu_count()} cores shared with other engineers' builds (load average at the end {' '.join(load)}); "
        "numbers from a loaded machine: compare paths within a round.",
        "",
        "| round | load before | path | upload s | upload CPU s client / node | download s | client peak RSS MiB (upload / download) | node peak RSS MiB (after upload / after download) | Xet bytes received MiB | store files | store bytes MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        s = r["stats"]
        stored = s.get("stored_bytes", s.get("bytes", 0))
        lines.append(
            f"| {r['round']} | {r['load']} | {name} | {r['upload_s']:.1f} | {r['client_cpu_up']:.1f} / {r['node_cpu_up']:.1f} | {r['download_s']:.1f} | {r['rss_up'] / MIB:.0f} / {r['rss_down'] / MIB:.0f} "
            f"| {r['node_rss_up'] / MIB:.0f} / {r['node_rss'] / MIB:.0f} "
            f"| {r['received'] / MIB:.0f} | {s.get('files')} | {stored / MIB:.0f} |"
        )
    if floor_rows:
        lines += [
            "",
            "**hf_xet alone** (`XetSession().new_upload_commit()` + `start_upload_file`, the calls `upload_file` makes, "
            "in a process that imports huggingface_hub too), against a hubmesh node and against `benches/null_cas.py`, "
            "a do-nothing CAS that drops each body and answers at once (or after a fixed delay per xorb): "
            "what the client costs whatever the server does.",
            "",
            "| round | load before | path | upload s | client CPU s | client peak RSS MiB | bytes received MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in floor_rows:
            lines.append(f"| {r['round']} | {r['load']} | {name} | {r['upload_s']:.1f} | {r['client_cpu_up']:.1f} "
                         f"| {r['rss_up'] / MIB:.0f} | {r['received'] / MIB:.0f} |")
    if baseline:
        lines += ["", f"Baseline build (`--baseline`): `{baseline}`."]
    lines += ["", "Raw store stats:", "", "```"] + [f"{n}: {json.dumps(r['stats'])}" for n, r in rows] + ["```", ""]
    out = Path(__file__).resolve().parent / "results" / "xet.md"
    out.write_text("\n".join(lines))
    print(out.read_text())
    if size == 1024:
        for name, r in rows:
            if name == "Xet (hf_xet)":
                assert r["rss_up"] < 600 * MIB, f"client peak RSS {r['rss_up'] / MIB:.0f} MiB for a 1 GiB Xet upload"
                assert r["node_rss"] < 448 * MIB, f"node peak RSS {r['node_rss'] / MIB:.0f} MiB for a 1 GiB Xet upload"


if __name__ == "__main__":
    main()
