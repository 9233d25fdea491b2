"""Pull-through mirroring and air-gap bundles (issue 19).

An upstream `hubmesh up` holds one repo with a SIZE MiB random LFS file. Each round, in this
order, measures: (a) a direct GET of the file's resolve URL from the upstream, (b) the same GET
through a fresh mirror (`hubmesh up --upstream`) that has nothing cached (cold pull-through:
repo pull + LFS fetch + streaming), with its time to first byte, and (c) the same GET again from
that mirror (warm, served from its store). Then a full `hubmesh bundle export` of the repo and
its `import` into an empty data directory. Every body is hashed and checked.

    python benches/mirror.py [HUBMESH_BIN] [--size-mib 1024] [--rounds 3]
        → benches/results/mirror.md
"""
import hashlib, json, os, shutil, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))
os.environ.setdefault("RUST_LOG", "warn")
import conftest  # noqa: E402

MIB = 1024**2


def load():
    return open("/proc/loadavg").read().split()[0]


def get(url):
    """(seconds to first byte, seconds total, sha256 hex) of a streamed GET."""
    t0 = time.monotonic()
    h = hashlib.sha256()
    first = None
    with urllib.request.urlopen(url, timeout=3600) as r:
        while True:
            chunk = r.read(4 * MIB)
            if first is None:
                first = time.monotonic() - t0
            if not chunk:
                break
            h.update(chunk)
    return first, time.monotonic() - t0, h.hexdigest()


def main():
    args = sys.argv[1:]
    if args and not args[0].startswith("--"):
        os.environ["HUBMESH_BIN"] = args.pop(0)
    size_mib = int(args[args.index("--size-mib") + 1]) if "--size-mib" in args else 1024
    rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 3
    work = Path(tempfile.mkdtemp(prefix="mirror-bench-"))
    nodes = []
    try:
        src = work / "w.bin"
        h = hashlib.sha256()
        with open(src, "wb") as f:
            for i in range(size_mib):
                block = os.urandom(MIB)
                h.update(block)
                f.write(block)
        sha = h.hexdigest()
        up = conftest.start_node(work / "up", "--admin", "alice")
        nodes.append(up)
        env = {**os.environ, "HF_ENDPOINT": up.url, "HF_TOKEN": up.admin_token,
               "HF_HOME": str(work / "hf"), "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1"}
        code = ("import sys; from huggingface_hub import HfApi; a = HfApi(); a.create_repo('alice/big'); "
                "a.upload_file(path_or_fileobj=sys.argv[1], path_in_repo='w.bin', repo_id='alice/big')")
        subprocess.run([sys.executable, "-c", code, str(src)], env=env, check=True, timeout=3600)
        src.unlink()
        path = "/alice/big/resolve/main/w.bin"
        rows = []
        for r in range(rounds):
            la = load()
            _, direct, d_sha = get(up.url + path)
            mirror = conftest.start_node(work / f"mirror{r}", "--upstream", up.url)
            nodes.append(mirror)
            first, cold, c_sha = get(mirror.url + path)
            _, warm, w_sha = get(mirror.url + path)
            assert d_sha == c_sha == w_sha == sha
            mirror.kill()
            shutil.rmtree(mirror.data)
            rows.append((r + 1, la, direct, first, cold, warm))
            print(rows[-1], file=sys.stderr)
        up.terminate()
        bundle = work / "big.bundle"
        la_b = load()
        t0 = time.monotonic()
        subprocess.run([str(conftest.hubmesh_bin()), "bundle", "export", "--data", str(up.data),
                        "--repo", "alice/big", "-o", str(bundle)], check=True, capture_output=True)
        export_s = time.monotonic() - t0
        bundle_bytes = bundle.stat().st_size
        dest = work / "airgap"
        t0 = time.monotonic()
        subprocess.run([str(conftest.hubmesh_bin()), "bundle", "import", str(bundle), "--data", str(dest)],
                       check=True, capture_output=True)
        import_s = time.monotonic() - t0
        mib = size_mib
        out = [
            "# Pull-through mirroring and bundles (issue 19)",
            "",
            f"`python benches/mirror.py --size-mib {size_mib} --rounds {rounds}`: one {mib} MiB random LFS",
            "file; both nodes on loopback on the same machine; debug build of `hubmesh` (hub-store, sha2 and",
            "blake3 at opt-level 3 as in every dev build). **A loaded, shared 2-core machine** (other",
            "engineers' builds ran alongside): the load average (1 min) is given beside each round.",
            "Each round: direct GET from the upstream, then a cold GET through a fresh mirror, then a warm",
            "GET from that mirror, in that order.",
            "",
            "| round | load | direct (s) | mirror cold: first byte (s) | mirror cold (s) | cold / direct speed | mirror warm (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, la, direct, first, cold, warm in rows:
            out.append(f"| {n} | {la} | {direct:.2f} ({mib / direct:.0f} MiB/s) | {first:.3f} | "
                       f"{cold:.2f} ({mib / cold:.0f} MiB/s) | {direct / cold:.2f}× | {warm:.2f} ({mib / warm:.0f} MiB/s) |")
        out += [
            "",
            f"Bundle (load {la_b}): export {export_s:.2f} s ({bundle_bytes / MIB / export_s:.0f} MiB/s, "
            f"{bundle_bytes / MIB:.0f} MiB file), import into an empty data directory {import_s:.2f} s "
            f"({bundle_bytes / MIB / import_s:.0f} MiB/s; signature, every chunk's BLAKE3 and the file's "
            "SHA-256 checked). Both commands include process start and opening the data directory.",
            "",
        ]
        Path(__file__).with_name("results").joinpath("mirror.md").write_text("\n".join(out))
        print("\n".join(out))
    finally:
        for n in nodes:
            n.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
