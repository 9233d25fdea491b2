"""The dataset viewer API (`/datasets-server/…`) against the `datasets` library's reference:
the same files, uploaded with `huggingface_hub` and loaded locally with `load_dataset`, give
the same splits, features and rows (Parquet with snappy and zstd over several row groups,
CSV, JSON Lines, Arrow IPC stream and file), and `search`/`filter` give the rows a plain Python filter over the
reference gives."""

from __future__ import annotations

import json
import math
import os
import urllib.parse
import urllib.request

import pytest

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from huggingface_hub import HfApi  # noqa: E402



@pytest.fixture(autouse=True)
def datasets_offline(monkeypatch):
    """The reference loads local files only; offline for this module's tests alone (set at
    import time it leaked into every later test's client processes)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def get(node, path: str, **params) -> dict:
    url = f"{node.url}/datasets-server/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def all_rows(node, dataset: str, split: str, total: int) -> list[dict]:
    rows = []
    for offset in range(0, total, 100):
        page = get(node, "rows", dataset=dataset, config="default", split=split, offset=offset, length=100)
        assert page["num_rows_total"] == total
        assert [r["row_idx"] for r in page["rows"]] == list(range(offset, min(offset + 100, total)))
        rows += [r["row"] for r in page["rows"]]
    return rows


def check_against_reference(node, tmp_path, dataset: str, folder) -> None:
    ref = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    splits = get(node, "splits", dataset=dataset)["splits"]
    assert sorted(s["split"] for s in splits) == sorted(ref.keys())
    for split, expected in ref.items():
        first = get(node, "first-rows", dataset=dataset, config="default", split=split)
        names = [f["name"] for f in first["features"]]
        assert names == list(expected.features), (split, names)
        for f in first["features"]:
            want = expected.features[f["name"]]
            if isinstance(want, datasets.Value):
                # datasets 5 reads CSV/JSON strings as pyarrow's large_string; the viewer
                # says string for both widths (the same values).
                dtype = "string" if want.dtype == "large_string" else want.dtype
                assert f["type"] == {"dtype": dtype, "_type": "Value"}, (split, f)
        rows = all_rows(node, dataset, split, len(expected))
        for i, (got, want) in enumerate(zip(rows, expected)):
            assert same(got, want), (split, i, got, want)
        size = get(node, "size", dataset=dataset)["size"]
        assert size["dataset"]["num_rows"] == sum(len(s) for s in ref.values())


def test_parquet_rows_match_load_dataset(node, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    n = 1234
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "text": [f"sentence number {i} " + "lorem " * (i % 7) for i in range(n)],
            "score": [i / 7 for i in range(n)],
            "flag": [i % 3 == 0 for i in range(n)],
            "tags": [[f"t{i % 5}", f"u{i % 2}"][: i % 3] for i in range(n)],
            "maybe": [None if i % 4 == 0 else f"m{i}" for i in range(n)],
            "small": pa.array([i % 100 for i in range(n)], pa.int32()),
        }
    )
    pq.write_table(table, folder / "train.parquet", row_group_size=150)  # snappy, 9 groups
    pq.write_table(table.slice(0, 250), folder / "test.parquet", compression="zstd", row_group_size=64)
    hf = HfApi(endpoint=node.url, token=node.admin_token)
    hf.create_repo("admin/pq", repo_type="dataset")
    hf.upload_folder(folder_path=str(folder), repo_id="admin/pq", repo_type="dataset")
    check_against_reference(node, tmp_path, "admin/pq", folder)

    ref = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))["train"]
    # filter: a where clause and an order, against Python over the reference.
    got = get(node, "filter", dataset="admin/pq", config="default", split="train",
              where="flag = true AND score > 100 AND maybe IS NOT NULL", orderby="id DESC", length=20)
    want = sorted((r for r in ref if r["flag"] and r["score"] > 100 and r["maybe"] is not None),
                  key=lambda r: -r["id"])
    assert got["num_rows_total"] == len(want)
    assert [r["row"]["id"] for r in got["rows"]] == [r["id"] for r in want[:20]]
    # search: every word, case-insensitive, over the string columns.
    got = get(node, "search", dataset="admin/pq", config="default", split="train", query="NUMBER 12", length=100)
    want = [r["id"] for r in ref
            if all(w in (r["text"] + "\0" + (r["maybe"] or "")).lower() for w in ["number", "12"])]
    assert [r["row_idx"] for r in got["rows"]] == want[:100]
    assert got["num_rows_total"] == len(want)
    files = get(node, "parquet", dataset="admin/pq")["parquet_files"]
    assert sorted(f["filename"] for f in files) == ["test.parquet", "train.parquet"]
    # The URL the API gives downloads the file.
    with urllib.request.urlopen(files[0]["url"], timeout=30) as r:
        assert r.read()[:4] == b"PAR1"


def test_csv_and_json_lines_rows_match_load_dataset(node, tmp_path):
    hf = HfApi(endpoint=node.url, token=node.admin_token)
    csv_dir = tmp_path / "csv"
    (csv_dir / "data").mkdir(parents=True)
    lines = ["name,age,height,member"]
    lines += [f"person {i},{20 + i % 50},{1.5 + i / 100},{'True' if i % 2 else 'False'}" for i in range(230)]
    lines[7] = "person 6,26,1.56,True"
    (csv_dir / "data" / "train.csv").write_text("\n".join(lines) + "\n")
    (csv_dir / "data" / "validation.csv").write_text("name,age,height,member\n,30,1.8,True\nbo,31,1.9,False\n")
    hf.create_repo("admin/csv", repo_type="dataset")
    hf.upload_folder(folder_path=str(csv_dir), repo_id="admin/csv", repo_type="dataset")
    check_against_reference(node, tmp_path, "admin/csv", csv_dir)

    jl_dir = tmp_path / "jsonl"
    jl_dir.mkdir()
    rows = [{"q": f"question {i}", "n": i, "x": i * 0.5, "tags": ["a", "b"][: i % 3], "meta": {"k": i % 4, "s": str(i)}} for i in range(150)]
    (jl_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    hf.create_repo("admin/jl", repo_type="dataset")
    hf.upload_folder(folder_path=str(jl_dir), repo_id="admin/jl", repo_type="dataset")
    check_against_reference(node, tmp_path, "admin/jl", jl_dir)


def test_arrow_stream_and_file_rows_match_load_dataset(node, tmp_path):
    """`.arrow` files as the Hub's viewer reads them: the stream `datasets` itself writes
    (`save_to_disk`, batches of 1 000 rows, its features in the schema metadata) and the IPC
    file format (small batches, a dictionary-encoded column), paged across batch ends."""
    folder = tmp_path / "arrow"
    folder.mkdir()
    n = 2345
    ds = datasets.Dataset.from_dict({
        "id": list(range(n)),
        "text": [f"row {i} " + "ipsum " * (i % 5) for i in range(n)],
        "score": [i / 3 for i in range(n)],
        "ok": [i % 2 == 0 for i in range(n)],
        "tags": [[f"t{i % 4}"] * (i % 3) for i in range(n)],
        "meta": [{"k": i % 7, "s": None if i % 5 == 0 else str(i)} for i in range(n)],
    })
    ds.save_to_disk(str(tmp_path / "saved"), max_shard_size="1GB")
    (shard,) = (tmp_path / "saved").glob("*.arrow")
    (folder / "train.arrow").write_bytes(shard.read_bytes())
    assert (folder / "train.arrow").read_bytes()[:6] != b"ARROW1"  # the stream format
    # The same columns (a config's splits share its features), 300 rows in the file format.
    table = ds.data.table.slice(0, 300)
    with pa.ipc.new_file(str(folder / "test.arrow"), table.schema) as w:
        for batch in table.to_batches(max_chunksize=64):
            w.write_batch(batch)
    assert (folder / "test.arrow").read_bytes()[:6] == b"ARROW1"
    hf = HfApi(endpoint=node.url, token=node.admin_token)
    hf.create_repo("admin/arrow", repo_type="dataset")
    hf.upload_folder(folder_path=str(folder), repo_id="admin/arrow", repo_type="dataset")
    check_against_reference(node, tmp_path, "admin/arrow", folder)
    # A page that starts inside one batch and ends in the next.
    ref = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    page = get(node, "rows", dataset="admin/arrow", config="default", split="train", offset=990, length=20)
    assert [r["row"] for r in page["rows"]] == [ref["train"][i] for i in range(990, 1010)]
    page = get(node, "rows", dataset="admin/arrow", config="default", split="test", offset=60, length=10)
    assert [r["row"] for r in page["rows"]] == [ref["test"][i] for i in range(60, 70)]
    # The dataset's features as `datasets` saved them.
    first = get(node, "first-rows", dataset="admin/arrow", config="default", split="train")
    kinds = {f["name"]: f["type"] for f in first["features"]}
    assert kinds == ds.features.to_dict()
    # search and filter read Arrow too.
    got = get(node, "filter", dataset="admin/arrow", config="default", split="train",
              where="ok = true AND id >= 2300", orderby="id DESC", length=5)
    assert [r["row"]["id"] for r in got["rows"]] == [2344, 2342, 2340, 2338, 2336]


def test_viewer_errors_are_hub_errors(node):
    hf = HfApi(endpoint=node.url, token=node.admin_token)
    hf.create_repo("admin/private-data", repo_type="dataset", private=True)
    for params in [{"dataset": "admin/private-data"}, {"dataset": "admin/none"}]:
        url = f"{node.url}/datasets-server/splits?{urllib.parse.urlencode(params)}"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=30)
        assert e.value.code == 404
        assert e.value.headers["X-Error-Code"] == "RepoNotFound"
    # The owner's token sees it, with no data files yet.
    req = urllib.request.Request(
        f"{node.url}/datasets-server/is-valid?dataset=admin/private-data",
        headers={"Authorization": f"Bearer {node.admin_token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert json.load(r)["viewer"] is False
