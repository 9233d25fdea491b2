"""Xet: huggingface_hub 2.4.0 with hf_xet uploads and downloads through the node's own Xet CAS
(xorbs, shards, reconstructions; ADR 0010), and what it uploaded is an ordinary LFS object:
resolve, git-lfs and `hf cp` serve it. Bad xorbs, shards and tokens are refused and leave
nothing behind."""

import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request

from conftest import SECRETS_SEEN, hubmesh_bin

MIB = 1024**2
CLIENT_RSS_LIMIT = 300 * MIB


def write_safetensors(path, tensors):
    """A safetensors file of F32 tensors {name: bytes}; returns its sha256."""
    meta, offset = {}, 0
    for name, data in tensors.items():
        meta[name] = {"dtype": "F32", "shape": [len(data) // 4], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    header = json.dumps(meta).encode()
    header += b" " * (-len(header) % 8)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for part in (struct.pack("<Q", len(header)), header, *tensors.values()):
            f.write(part)
            h.update(part)
    return h.hexdigest()


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            h.update(chunk)
    return h.hexdigest()


def run_client(node, tmp_path, code, token=None, home="hf-home"):
    """Runs `code` in a fresh client process (Xet on) with `HF_HOME` = tmp_path/home (hf_xet's
    local shard cache lives there); returns the JSON its last line prints."""
    env = {
        **os.environ,
        "HF_ENDPOINT": node.url,
        "HF_TOKEN": token or node.admin_token,
        "HF_HOME": str(tmp_path / home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    env.pop("HF_HUB_DISABLE_XET", None)
    prelude = "import hashlib, json\nfrom huggingface_hub import HfApi, hf_hub_download\napi = HfApi()\n"
    peak = "\nprint(json.dumps({**out, 'rss': [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]}))\n"
    out = subprocess.run([sys.executable, "-c", prelude + code + peak], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{node.log()[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def request(method, url, token=None, body=None, headers=None):
    """(status, headers, body) of one raw request."""
    h = dict(headers or {})
    if token:
        h["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def metric(node, name):
    _, _, body = request("GET", f"{node.url}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def xet_token(node, repo, right, token=None):
    status, _, body = request("GET", f"{node.url}/api/models/{repo}/xet-{right}-token/main", token or node.admin_token)
    assert status == 200, body
    info = json.loads(body)
    assert info["casUrl"] == node.url and info["exp"] > 0
    SECRETS_SEEN.add(info["accessToken"])
    return info["accessToken"]


def reconstruct(node, token, xet_hash, start, end):
    """Bytes [start, end] of a file, rebuilt from the reconstruction API and xorb fetches."""
    status, _, body = request(
        "GET", f"{node.url}/v1/reconstructions/{xet_hash}", token, headers={"range": f"bytes={start}-{end}"}
    )
    assert status == 200, body
    rec = json.loads(body)
    out = b""
    for term in rec["terms"]:
        fetch = [f for f in rec["fetch_info"][term["hash"]] if f["range"] == term["range"]][0]
        a, b = fetch["url_range"]["start"], fetch["url_range"]["end"]
        status, _, data = request("GET", fetch["url"], headers={"range": f"bytes={a}-{b}"})
        assert status == 206 and len(data) == b - a + 1
        at, n = 0, 0
        while at < len(data):
            length = int.from_bytes(data[at + 1 : at + 4], "little")
            out += data[at + 8 : at + 8 + length]
            at += 8 + length
            n += 1
        assert n == term["range"]["end"] - term["range"]["start"]
    skip = rec["offset_into_first_range"]
    return out[skip : skip + end - start + 1]


def test_upload_file_through_xet_downloads_the_same_bytes_every_way(node, tmp_path):
    src = tmp_path / "model.safetensors"
    sha = write_safetensors(src, {"a": os.urandom(48 * MIB), "b": os.urandom(48 * MIB)})
    received = metric(node, "xet_received_bytes_total")
    out = run_client(node, tmp_path, f"""
api.create_repo("xm")
api.upload_file(path_or_fileobj={str(src)!r}, path_in_repo="model.safetensors", repo_id="admin/xm")
info = api.get_paths_info("admin/xm", ["model.safetensors"])[0]
path = hf_hub_download("admin/xm", "model.safetensors")
h = hashlib.sha256(open(path, "rb").read()).hexdigest()
out = {{"xet_hash": info.xet_hash, "lfs": info.lfs.sha256, "downloaded": h}}
""")
    log = node.log()
    assert "Xet shard stored" in log and "LFS object stored" not in log, log[-3000:]
    assert out["lfs"] == sha and out["downloaded"] == sha
    assert len(out["xet_hash"]) == 64
    assert out["rss"] < CLIENT_RSS_LIMIT, f"client peak RSS {out['rss'] / MIB:.0f} MiB"
    # The node received the file once (random tensors do not compress), not base64 in a commit.
    assert 96 * MIB <= metric(node, "xet_received_bytes_total") - received < 100 * MIB
    print(f"96 MiB upload_file + hf_xet download: client peak RSS {out['rss'] / MIB:.0f} MiB")

    # Plain resolve (no Xet) gives the same bytes; its headers point at this node only.
    url = f"{node.url}/admin/xm/resolve/main/model.safetensors"
    status, headers, body = request("GET", url)
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha
    assert headers["x-xet-hash"] == out["xet_hash"]
    assert f'<{node.url}/api/models/admin/xm/xet-read-token/main>; rel="xet-auth"' in headers["link"]
    assert "http" not in headers["link"].replace(node.url, "")

    # Ranges through the reconstruction API: across the tensor boundary and inside a chunk.
    token = xet_token(node, "admin/xm", "read")
    data = open(src, "rb").read()
    for a, b in [(0, 99), (48 * MIB - 5000, 48 * MIB + 70_000), (len(data) - 10, len(data) - 1)]:
        assert reconstruct(node, token, out["xet_hash"], a, b) == data[a : b + 1]

    # git-lfs fetches the same object through the batch API.
    clone, home = tmp_path / "clone", tmp_path / "git-home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True, capture_output=True)
    git = subprocess.run(["git", "clone", "-q", f"{node.url}/admin/xm", str(clone)], env=env, capture_output=True, text=True, timeout=300)
    assert git.returncode == 0, git.stderr
    assert sha256_of(clone / "model.safetensors") == sha


def test_a_fine_tune_uploads_only_the_changed_tensor(node, tmp_path):
    tensors = {f"layer{i}": os.urandom(8 * MIB) for i in range(4)}
    src = tmp_path / "model.safetensors"
    write_safetensors(src, tensors)
    code = f"""
api.create_repo("ft", exist_ok=True)
api.upload_file(path_or_fileobj={str(src)!r}, path_in_repo="model.safetensors", repo_id="admin/ft")
out = {{}}
"""
    before = metric(node, "xet_received_bytes_total")
    run_client(node, tmp_path, code)
    first = metric(node, "xet_received_bytes_total") - before
    tensors["layer2"] = os.urandom(8 * MIB)
    sha = write_safetensors(src, tensors)
    run_client(node, tmp_path, code)
    second = metric(node, "xet_received_bytes_total") - before - first
    print(f"fine-tune: first upload {first / MIB:.1f} MiB, changed tensor re-upload {second / MIB:.1f} MiB")
    assert first >= 32 * MIB
    assert 8 * MIB <= second < 10 * MIB, second
    status, _, body = request("GET", f"{node.url}/admin/ft/resolve/main/model.safetensors")
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha


def dedup_queries(node):
    """(answered, refused) global-dedup queries so far, from the node's request metrics."""
    route = 'http_requests_total{method="GET",route="/v1/chunks/{prefix}/{hash}",status="%d"}'
    return int(metric(node, route % 200)), int(metric(node, route % 404))


def new_user(node, name):
    """Creates user `name` through the node's CLI; a write token of theirs."""
    subprocess.run([str(hubmesh_bin()), "user", "add", name, "--data", str(node.data)], check=True, capture_output=True)
    token = subprocess.run([str(hubmesh_bin()), "token", "create", name, "--scope", "write", "--data", str(node.data)],
                           check=True, capture_output=True, text=True).stdout.strip()
    SECRETS_SEEN.add(token)
    return token


def test_global_dedup_sends_only_what_is_new_and_never_reveals_a_private_repo(node, tmp_path):
    """Global dedup (`/v1/chunks/…`): bob's fine-tune of alice's public model, uploaded from
    another machine (no local shard cache of alice's upload), sends about the changed tensor;
    the same bytes as carol's private model are sent whole by bob, as the node reveals no
    chunk of a repository he cannot read. Bytes counted at the node."""
    alice, bob, carol = new_user(node, "alice"), new_user(node, "bob"), new_user(node, "carol")
    tensors = {f"layer{i}": os.urandom(8 * MIB) for i in range(4)}
    src = tmp_path / "model.safetensors"

    def upload(token, home, repo, private=False):
        before = metric(node, "xet_received_bytes_total")
        run_client(node, tmp_path, f"""
api.create_repo({repo!r}, private={private!r})
api.upload_file(path_or_fileobj={str(src)!r}, path_in_repo="model.safetensors", repo_id={repo!r})
out = {{}}
""", token=token, home=home)
        return metric(node, "xet_received_bytes_total") - before

    write_safetensors(src, tensors)
    base = upload(alice, "alice-home", "alice/base")
    q0 = dedup_queries(node)
    tensors["layer2"] = os.urandom(8 * MIB)
    sha = write_safetensors(src, tensors)
    tuned = upload(bob, "bob-home", "bob/tuned")
    q1 = dedup_queries(node)
    print(f"global dedup: alice's model {base / MIB:.1f} MiB, bob's fine-tune {tuned / MIB:.1f} MiB")
    assert base >= 32 * MIB
    assert 8 * MIB <= tuned < 10 * MIB, tuned
    status, _, body = request("GET", f"{node.url}/bob/tuned/resolve/main/model.safetensors", bob)
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha

    secret = {f"layer{i}": os.urandom(8 * MIB) for i in range(4)}
    sha = write_safetensors(src, secret)
    private = upload(carol, "carol-home", "carol/secret", private=True)
    q2 = dedup_queries(node)
    copied = upload(bob, "bob-home-2", "bob/copy")
    q3 = dedup_queries(node)
    print(f"global dedup: carol's private model {private / MIB:.1f} MiB, bob's identical copy {copied / MIB:.1f} MiB")
    assert private >= 32 * MIB and copied >= 32 * MIB, (private, copied)
    status, _, body = request("GET", f"{node.url}/bob/copy/resolve/main/model.safetensors", bob)
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha
    # The client asked the node each time (it queries a file's first chunk): answered for
    # alice's public model, refused (404) for carol's private one.
    assert q1[0] > q0[0], (q0, q1)
    assert q3[1] > q2[1] and q3[0] == q2[0], (q2, q3)


def test_dataset_push_to_hub_through_xet_then_load_dataset(node, tmp_path):
    """The issue's failing case: `datasets` deletes its temporary Parquet shard before a
    `regular` commit would read it. Through Xet the shard is uploaded first, then committed."""
    code = """
import datasets
ds = datasets.Dataset.from_dict({"x": list(range(50000)), "t": ["row %d" % i for i in range(50000)]})
ds.push_to_hub("admin/ds")
back = datasets.load_dataset("admin/ds", split="train")
assert back["x"] == ds["x"] and back["t"] == ds["t"], "rows differ"
files = [f for f in api.list_repo_files("admin/ds", repo_type="dataset") if f.endswith(".parquet")]
out = {"rows": len(back), "files": files}
"""
    before = metric(node, "xet_received_bytes_total")
    out = run_client(node, tmp_path, code)
    assert out["rows"] == 50000 and out["files"], out
    assert metric(node, "xet_received_bytes_total") > before, "the Parquet shard did not go through Xet"


def test_upload_folder_and_hf_cp_between_repos(node, tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# hi\n")
    big = os.urandom(12 * MIB)
    (folder / "sub" / "big.bin").write_bytes(big)
    sha = write_safetensors(folder / "weights.safetensors", {"w": os.urandom(6 * MIB)})
    out = run_client(node, tmp_path, f"""
api.create_repo("folder")
api.create_repo("copy")
api.upload_folder(folder_path={str(folder)!r}, repo_id="admin/folder")
files = {{s.rfilename: s for s in api.model_info("admin/folder", files_metadata=True).siblings}}
out = {{"lfs": sorted(n for n, s in files.items() if s.lfs)}}
""")
    assert out["lfs"] == ["sub/big.bin", "weights.safetensors"]
    cp = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "hf"), "cp",
         "hf://admin/folder/weights.safetensors", "hf://admin/copy/weights.safetensors"],
        env={**os.environ, "HF_ENDPOINT": node.url, "HF_TOKEN": node.admin_token, "HF_HOME": str(tmp_path / "hf-home")},
        capture_output=True, text=True, timeout=300,
    )
    assert cp.returncode == 0, f"{cp.stdout}\n{cp.stderr}\n{node.log()[-3000:]}"
    status, headers, body = request("GET", f"{node.url}/admin/copy/resolve/main/weights.safetensors")
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha
    status, _, body = request("GET", f"{node.url}/admin/folder/resolve/main/sub/big.bin")
    assert status == 200 and body == big


def xorb_of(chunks):
    """A xorb of uncompressed chunks (no footer)."""
    out = b""
    for c in chunks:
        n = len(c).to_bytes(3, "little")
        out += b"\0" + n + b"\0" + n + c
    return out


def shard_of(file_hash_hex, segments, sha256_hex):
    """A shard's header and file-info section: one file of `segments` (xorb hex, start, end,
    bytes) with its SHA-256."""
    def raw(hex_hash):  # Xet's text form: four little-endian u64s.
        return b"".join(int(hex_hash[i : i + 16], 16).to_bytes(8, "little") for i in range(0, 64, 16))
    tag = b"HFRepoMetaData\x00" + bytes([85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169])
    out = tag + struct.pack("<QQ", 2, 200)
    out += raw(file_hash_hex) + struct.pack("<II", 1 << 30, len(segments)) + b"\0" * 8
    for xorb, start, end, size in segments:
        out += raw(xorb) + struct.pack("<IIII", 0, size, start, end)
    out += raw(sha256_hex) + b"\0" * 16
    return out + b"\xff" * 32 + b"\0" * 16


def test_bad_xet_input_is_refused_and_leaves_the_store_clean(node, tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(3 * MIB))
    out = run_client(node, tmp_path, f"""
api.create_repo("good")
api.create_repo("other")
api.upload_file(path_or_fileobj={str(src)!r}, path_in_repo="w.bin", repo_id="admin/good")
out = {{"xet_hash": api.get_paths_info("admin/good", ["w.bin"])[0].xet_hash}}
""")
    xet_hash = out["xet_hash"]
    write = xet_token(node, "admin/good", "write")
    read = xet_token(node, "admin/good", "read")
    other = xet_token(node, "admin/other", "read")
    status, _, body = request("GET", f"{node.url}/v1/reconstructions/{xet_hash}", read)
    assert status == 200
    rec = json.loads(body)
    term = rec["terms"][0]
    files_before = store_stats(node)

    u = node.url
    some_hash = "ab" * 32
    # A xorb that does not hash to its name, and a truncated one.
    status, headers, body = request("POST", f"{u}/v1/xorbs/default/{some_hash}", write, xorb_of([b"x" * 1000, b"y" * 500]))
    assert status == 400 and b"hash mismatch" in body, body
    assert headers["x-error-message"]
    assert request("HEAD", f"{u}/v1/xorbs/default/{some_hash}", write)[0] == 404
    assert request("POST", f"{u}/v1/xorbs/default/{some_hash}", write, xorb_of([b"x" * 1000])[:700])[0] == 400
    # A shard naming a xorb never uploaded.
    status, _, body = request("POST", f"{u}/v1/shards", write, shard_of(some_hash, [(some_hash, 0, 1, 1000)], "00" * 32))
    assert status == 400 and b"never uploaded" in body, body
    # A shard re-declaring the uploaded file with another SHA-256.
    seg = (term["hash"], term["range"]["start"], term["range"]["end"], term["unpacked_length"])
    status, _, body = request("POST", f"{u}/v1/shards", write, shard_of(xet_hash, [seg], "11" * 32))
    assert status == 400, body
    # Tokens: none, forged, read-only for a write, another repository's, a read-only user's.
    assert request("POST", f"{u}/v1/shards", None, b"")[0] == 401
    assert request("POST", f"{u}/v1/shards", "xet1.00.00", b"")[0] == 401
    assert request("POST", f"{u}/v1/xorbs/default/{some_hash}", read, xorb_of([b"z"]))[0] == 403
    assert request("GET", f"{u}/v1/reconstructions/{xet_hash}", other)[0] == 404
    subprocess.run([str(hubmesh_bin()), "user", "add", "bob", "--data", str(node.data)], check=True, capture_output=True)
    bob = subprocess.run([str(hubmesh_bin()), "token", "create", "bob", "--scope", "write", "--data", str(node.data)],
                         check=True, capture_output=True, text=True).stdout.strip()
    SECRETS_SEEN.add(bob)
    assert request("GET", f"{u}/api/models/admin/good/xet-write-token/main", bob)[0] == 403
    assert request("GET", f"{u}/api/models/admin/good/xet-read-token/main", bob)[0] == 200
    assert request("GET", f"{u}/api/models/admin/good/xet-write-token/main")[0] == 401

    # Nothing was stored or recorded; the good file is intact.
    assert store_stats(node) == files_before
    again = json.loads(request("GET", f"{u}/v1/reconstructions/{xet_hash}", read)[2])
    assert again["terms"] == rec["terms"]
    node.terminate()
    fsck = store_cli(node, "fsck")
    assert fsck["corrupt_blocks"] == [], fsck


def store_cli(node, *args):
    out = subprocess.run([str(hubmesh_bin()), "store", *args, "--data", str(node.data), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def store_stats(node):
    """Files and blocks in the store, read through the live node's listing of its files."""
    blocks = sorted(p.name for p in (node.data / "store" / "blocks").rglob("*") if p.is_file())
    return blocks
