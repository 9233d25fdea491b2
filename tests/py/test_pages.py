"""The web pages in a real browser (headless Chromium over DevTools) against a real node,
with repos made by the real client (`huggingface_hub`): the card's heading, the file list,
a private repo absent for an anonymous visitor, signing in and creating a repo through the
form, the dataset table's paging, and a page's p95 latency for a repo with 1 000 files."""

from __future__ import annotations

import statistics
import time
import urllib.request

import pytest
from huggingface_hub import CommitOperationAdd, HfApi

from browser import Browser

CARD = """---
license: mit
pipeline_tag: text-generation
tags: [tiny]
---
# Tiny model card

A card with <script>document.title='pwned'</script> a script and a [bad link](javascript:alert(1)).
"""


@pytest.fixture
def browser():
    b = Browser()
    yield b
    b.close()


def api(node) -> HfApi:
    return HfApi(endpoint=node.url, token=node.admin_token)


def test_card_files_privacy_and_dataset_paging_in_a_browser(node, browser, tmp_path):
    hf = api(node)
    hf.create_repo("admin/tiny")
    hf.create_commit(
        "admin/tiny",
        operations=[
            CommitOperationAdd("README.md", CARD.encode()),
            CommitOperationAdd("config.json", b'{"model_type": "llama"}'),
            CommitOperationAdd("weights/model.bin", bytes(range(256)) * 64),
        ],
        commit_message="add files",
    )
    hf.create_repo("admin/hidden-model", private=True)
    hf.create_repo("admin/rows", repo_type="dataset")
    csv = "idx,word\n" + "".join(f"{i},word-{i}\n" for i in range(55))
    hf.upload_file(path_or_fileobj=csv.encode(), path_in_repo="train.csv", repo_id="admin/rows", repo_type="dataset")

    # The card: its heading rendered, its script inert.
    browser.goto(f"{node.url}/admin/tiny")
    assert browser.text("#card h1") == "Tiny model card"
    assert browser.js("document.title") != "pwned"
    assert browser.js("document.querySelectorAll('#card script').length") == 0
    assert "javascript:" not in (browser.js("document.getElementById('card').innerHTML") or "")
    assert "mit" in browser.texts("#metadata .tag")
    png = browser.screenshot(tmp_path / "card.png")
    assert png.startswith(b"\x89PNG") and len(png) > 2_000

    # The file list, with the folder and sizes.
    browser.goto(f"{node.url}/admin/tiny/tree/main")
    names = browser.texts("#files tbody td:first-child a")
    assert {"README.md", "config.json", "weights/"} <= set(names), names
    browser.goto(f"{node.url}/admin/tiny/tree/main/weights")
    assert browser.texts("#files tbody td:first-child a") == ["model.bin"]
    assert browser.texts("#files tbody td.num") == ["16.4 kB"]

    # Anonymous: the private repo is not listed, and its page is a 404.
    browser.goto(f"{node.url}/?search=model")
    listed = browser.texts("#repo-list a")
    assert "admin/hidden-model" not in listed
    browser.goto(f"{node.url}/admin")
    assert "admin/tiny" in browser.texts("ul.repos a")
    assert "admin/hidden-model" not in browser.texts("ul.repos a")
    browser.goto(f"{node.url}/admin/hidden-model")
    assert browser.text("h1") == "404"

    # The dataset table pages by 20 rows.
    browser.goto(f"{node.url}/datasets/admin/rows")
    assert browser.text("#rows-range").strip() == "Rows 1–20 of 55"
    first = browser.texts("#rows tbody tr td:nth-child(3)")
    assert first[0] == "word-0" and first[-1] == "word-19"
    browser.events.clear()
    browser.js("document.getElementById('rows-next').click()")
    browser.wait_event("Page.loadEventFired")
    assert browser.text("#rows-range").strip() == "Rows 21–40 of 55"
    assert browser.texts("#rows tbody tr td:nth-child(3)")[0] == "word-20"
    browser.goto(f"{node.url}/datasets/admin/rows?offset=40")
    assert len(browser.texts("#rows tbody tr")) == 15
    assert browser.js("document.getElementById('rows-next')") is None


def test_sign_in_with_a_token_then_create_a_repo_through_the_form(node, browser):
    browser.goto(f"{node.url}/login")
    browser.submit("#login", {"token": "hf_not_a_token"})
    assert "not valid" in browser.text("#error")
    browser.submit("#login", {"token": node.admin_token})
    assert browser.url() == f"{node.url}/admin"
    assert browser.text("#me") == "admin"
    # The cookie is HttpOnly: the page cannot read it.
    assert browser.js("document.cookie") == ""

    browser.goto(f"{node.url}/new")
    browser.submit("#new", {"type": "model", "owner": "admin", "name": "made-in-browser", "private": "1"})
    assert browser.url() == f"{node.url}/admin/made-in-browser"
    assert "private" in browser.text("h1.repo-id")
    # The client sees what the form made.
    info = api(node).model_info("admin/made-in-browser")
    assert info.private is True
    # An anonymous visitor does not: a fresh browser has no session.
    other = Browser()
    try:
        other.goto(f"{node.url}/admin/made-in-browser")
        assert other.text("h1") == "404"
    finally:
        other.close()


def test_page_p95_for_a_repo_with_1000_files(node):
    hf = api(node)
    hf.create_repo("admin/many")
    ops = [CommitOperationAdd(f"f{i:04}.txt", f"file {i}\n".encode()) for i in range(1000)]
    hf.create_commit("admin/many", operations=ops, commit_message="1000 files")
    for i in range(3):
        hf.upload_file(path_or_fileobj=f"change {i}\n".encode(), path_in_repo=f"f{i:04}.txt", repo_id="admin/many", commit_message=f"change {i}")
    results = {}
    for path in ["/admin/many", "/admin/many/tree/main", "/admin/many/commits/main"]:
        times = []
        for _ in range(40):
            start = time.perf_counter()
            with urllib.request.urlopen(f"{node.url}{path}", timeout=30) as r:
                body = r.read()
                assert r.status == 200
            times.append(time.perf_counter() - start)
        if path.endswith("tree/main"):
            assert body.count(b'class="file"') == 1001  # and .gitattributes
            assert b"change 2" in body
        times.sort()
        results[path] = (statistics.median(times) * 1000, times[int(len(times) * 0.95) - 1] * 1000)
    for path, (p50, p95) in results.items():
        print(f"page {path}: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    # The goal is 50 ms on this machine (release build, idle); the debug build under
    # a shared machine's load gets a wide margin here: the number is written down, not gated.
    assert all(p95 < 2000 for _, p95 in results.values()), results
