"""Pull-through mirroring and air-gap bundles (issue 19).

An upstream `hubmesh up` holds one repo with a SIZE MiB random LFS file. Each round measures
`huggingface_hub.snapshot_download` of the repo (into a fresh cache) straight from the upstream
and through a fresh mirror (`hubmesh up --upstream`) that has nothing cached (cold pull-through:
repo pull + LFS fetch + streaming), alternating which goes first from round to round, then the
same download again from that mirror (warm, from its store). Then a raw GET of the file's resolve
URL, direct and through another fresh mirror (time to first byte). Then a full
`hubmesh bundle export` of the repo and its `import` into an empty data directory. Every file is
hashed and checked. Xet is off in the client (`HF_HUB_DISABLE_XET`): the mirror never offers it,
so both sides download over plain HTTP.

    python benches/mirror.py [HUBMESH_BIN] [--size-mib 1024] [--rounds 3] [--build release|debug]
                             [--baseline-bin OTHER_HUBMESH]
        → benches/results/mirror.md

With `--baseline-bin`, each round also runs a cold pull-through through a fresh mirror of that
other binary (an older build, say), in the same rotation, so both mirrors are measured in the
same run against the same direct downloads.
"""
import hashlib, json, os, shutil, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))
os.environ.setdefault("RUST_LOG", "warn")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
import conftest  # noqa: E402
from huggingface_hub import snapshot_download  # noqa: E402

MIB = 1024**2


def hf_version():
    import huggingface_hub
    return huggingface_hub.__version__


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


def snapshot(url, cache):
    """(seconds, sha256 hex of w.bin) of a snapshot_download into the fresh `cache`."""
    t0 = time.monotonic()
    d = snapshot_download("alice/big", endpoint=url, cache_dir=cache)
    took = time.monotonic() - t0
    h = hashlib.sha256()
    with open(os.path.join(d, "w.bin"), "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    shutil.rmtree(cache)
    return took, h.hexdigest()


def main():
    args = sys.argv[1:]
    if args and not args[0].startswith("--"):
        os.environ["HUBMESH_BIN"] = args.pop(0)
    size_mib = int(args[args.index("--size-mib") + 1]) if "--size-mib" in args else 1024
    rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 3
    build = args[args.index("--build") + 1] if "--build" in args else "debug"
    baseline_bin = args[args.index("--baseline-bin") + 1] if "--baseline-bin" in args else None
    main_bin = str(conftest.hubmesh_bin())

    def start_mirror(data, binary=None):
        os.environ["HUBMESH_BIN"] = binary or main_bin
        try:
            return conftest.start_node(data, "--upstream", up.url)
        finally:
            os.environ["HUBMESH_BIN"] = main_bin
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
            mirror = start_mirror(work / f"mirror{r}")
            nodes.append(mirror)
            kinds = ["direct", "mirror"] + (["baseline"] if baseline_bin else [])
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            took = {}
            for which in order:
                if which == "baseline":
                    base = start_mirror(work / f"baseline{r}", baseline_bin)
                    nodes.append(base)
                    took[which], got = snapshot(base.url, work / "cache-baseline")
                    base.kill()
                    shutil.rmtree(base.data)
                else:
                    url = up.url if which == "direct" else mirror.url
                    took[which], got = snapshot(url, work / f"cache-{which}")
                assert got == sha, which
            warm, got = snapshot(mirror.url, work / "cache-warm")
            assert got == sha
            mirror.kill()
            shutil.rmtree(mirror.data)
            rows.append((r + 1, la, "→".join(order), took["direct"], took["mirror"], warm, took.get("baseline")))
            print(rows[-1], file=sys.stderr)
        la_get = load()
        _, direct_get, d_sha = get(up.url + path)
        mirror = start_mirror(work / "mirror-get")
        nodes.append(mirror)
        first, cold_get, c_sha = get(mirror.url + path)
        assert d_sha == c_sha == sha
        mirror.kill()
        shutil.rmtree(mirror.data)
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
            f"file; upstream, mirror and client (`huggingface_hub` {hf_version()}, Xet off) on loopback on the",
            f"same machine; **{build} build** of `hubmesh`. Load average (1 min) at the start of each",
            "round beside it. Each round: `snapshot_download` straight from the upstream and through a",
            "fresh, empty mirror (cold: repo pull + LFS fetch, streamed), alternating which runs first,",
            "then again from that mirror (warm). Every file's SHA-256 checked.",
            "",
            "| round | load | order | direct (s) | mirror cold (s) | cold / direct speed | mirror warm (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, la, order, direct, cold, warm, _ in rows:
            out.append(f"| {n} | {la} | {order} | {direct:.2f} ({mib / direct:.0f} MiB/s) | "
                       f"{cold:.2f} ({mib / cold:.0f} MiB/s) | {direct / cold:.2f}× | {warm:.2f} ({mib / warm:.0f} MiB/s) |")
        ratios = sorted(d / c for _, _, _, d, c, _, _ in rows)
        out += [
            "",
            f"Cold / direct: median {ratios[len(ratios) // 2]:.2f}×, range {ratios[0]:.2f}–{ratios[-1]:.2f}×.",
        ]
        if baseline_bin:
            base = sorted(d / b for _, _, _, d, _, _, b in rows)
            out += [
                "",
                f"Baseline mirror (`{baseline_bin}`), cold, same rounds: "
                + ", ".join(f"{b:.2f} s ({d / b:.2f}×)" for _, _, _, d, _, _, b in rows)
                + f"; median {base[len(base) // 2]:.2f}× direct.",
            ]
        out += [
            "",
            f"Raw GET of the resolve URL (load {la_get}): direct {direct_get:.2f} s, through a cold mirror "
            f"{cold_get:.2f} s ({direct_get / cold_get:.2f}×), first byte after {first:.3f} s (includes the "
            "repo's git pull).",
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
