"""Spaces end to end: real nodes build and run Space apps in the sandbox, and real clients
(`huggingface_hub`, `gradio_client`) use them through the node's URL.

One node serves the whole module (the gradio environment is built once per content hash;
its cache lives under the cargo target dir, so a second run starts at once). Every Space of
the module pins the same gradio version with no requirements, so they share one environment.
"""

from __future__ import annotations

import io
import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi

from conftest import REPO, start_node

GRADIO_VERSION = "6.31.0"
STREAMLIT_VERSION = "1.67.0"
# Cold builds download gradio and its dependencies.
BUILD_TIMEOUT = 900.0
START_TIMEOUT = 180.0

GRADIO_README = f"""---
title: Reverse
sdk: gradio
sdk_version: {GRADIO_VERSION}
app_file: app.py
---
A test Space.
"""

APP = '''
import os
import subprocess
import time

import gradio as gr

VERSION = "{version}"


def reverse(text):
    return text[::-1] if VERSION == "1" else text.upper()


def count(text):
    for i in range(1, 4):
        yield f"{{text}}{{i}}"


STORE = {{}}


def remember(text, request: gr.Request):
    STORE[request.session_hash] = text
    return VERSION


def recall(_, request: gr.Request):
    return VERSION + ":" + STORE.get(request.session_hash, "<none>")


def ticks(n):
    for i in range(int(n)):
        time.sleep(0.25)
        yield f"{{VERSION}}:{{i}}"


def env(name):
    return os.environ.get(name, "<unset>")


def probe(path):
    try:
        with open(path) as f:
            return "READ:" + f.read()[:200]
    except Exception as e:
        return "DENIED:" + type(e).__name__


def write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "WROTE"
    except Exception as e:
        return "DENIED:" + type(e).__name__


def whoami(_):
    return f"{{os.getuid()}} {{os.getpid()}}"


def forkbomb(_):
    procs, err = [], ""
    try:
        for _ in range(5000):
            procs.append(subprocess.Popen(["sleep", "60"]))
    except OSError as e:
        err = str(e)
    n = len(procs)
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()
    return f"{{n}} {{err}}"


with gr.Blocks() as demo:
    gr.Interface(reverse, "text", "text", api_name="reverse")
    box, out = gr.Textbox(), gr.Textbox()
    for fn in (count, remember, recall, ticks, env, probe, write, whoami, forkbomb):
        gr.Button(fn.__name__).click(fn, box, out, api_name=fn.__name__)

demo.queue().launch()
'''


# A Space app need not use its SDK: this one is a websocket echo server on the standard
# library alone (in the gradio environment, so no other build), which the sandbox runs as
# it runs any app.
WS_APP = r"""
import asyncio, base64, hashlib, os, struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode, payload):
    n = len(payload)
    head = bytes([0x80 | opcode, n]) if n < 126 else bytes([0x80 | opcode, 126]) + struct.pack(">H", n)
    return head + payload


async def handle(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except Exception:
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    if headers.get("upgrade", "").lower() != "websocket":
        body = f"plain {path} host={headers.get('x-forwarded-host', '')}".encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                     + b"content-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()
        return
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 + b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    await writer.drain()
    while True:
        try:
            b0, b1 = await reader.readexactly(2)
        except asyncio.IncompleteReadError:
            break
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", await reader.readexactly(8))[0]
        mask = await reader.readexactly(4) if b1 & 0x80 else bytes(4)
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(n)))
        if b0 & 0x0F == 8:
            writer.write(frame(8, b""))
            await writer.drain()
            break
        writer.write(frame(1, ("echo:" + data.decode()[::-1] + ":" + path).encode()))
        await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(os.environ["GRADIO_SERVER_PORT"]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


def env_cache() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return Path(os.environ.get("HUBMESH_TEST_SPACE_ENVS", target / "space-envs"))


@pytest.fixture(scope="module")
def space_node(tmp_path_factory):
    data = tmp_path_factory.mktemp("spaces") / "node"
    node = start_node(
        data,
        "--spaces", "local",
        "--spaces-env-dir", str(env_cache()),
    )
    yield node
    node.kill()
    log = node.log()
    assert node.admin_token not in log


def api_for(node) -> HfApi:
    return HfApi(endpoint=node.url, token=node.admin_token)


def wait_stage(api: HfApi, repo: str, want: set[str], timeout: float) -> tuple[str, list[str]]:
    """Polls the runtime until its stage is in `want`; returns it and every stage seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        runtime = api.get_space_runtime(repo)
        stage = str(runtime.stage.value if hasattr(runtime.stage, "value") else runtime.stage)
        if not seen or seen[-1] != stage:
            seen.append(stage)
        if stage in want:
            return stage, seen
        assert time.monotonic() < deadline, f"{repo}: stages {seen}, wanted {want}: {runtime.raw}"
        time.sleep(0.2)


def make_space(api: HfApi, name: str, files: dict[str, str]) -> str:
    repo = f"admin/{name}"
    api.create_repo(repo, repo_type="space", space_sdk="gradio")
    api.create_commit(
        repo,
        repo_type="space",
        operations=[
            CommitOperationAdd(path, io.BytesIO(text.encode())) for path, text in files.items()
        ],
        commit_message="app",
    )
    return repo


def app_url(node, repo: str) -> str:
    return f"{node.url}/spaces/{repo}/app/"


@pytest.fixture(scope="module")
def gradio_space(space_node):
    api = api_for(space_node)
    repo = make_space(
        api, "reverse", {"README.md": GRADIO_README, "app.py": APP.format(version="1")}
    )
    started = time.monotonic()
    stage, seen = wait_stage(api, repo, {"RUNNING", "BUILD_ERROR", "RUNTIME_ERROR"}, BUILD_TIMEOUT)
    elapsed = time.monotonic() - started
    if stage != "RUNNING":
        build = "".join(api.fetch_space_logs(repo, build=True))
        run = "".join(api.fetch_space_logs(repo))
        raise AssertionError(f"{seen}\n--- build log ---\n{build[-3000:]}\n--- run log ---\n{run[-3000:]}")
    # The first query found it never started: the build was seen, then the start.
    assert seen[0] == "BUILDING", seen
    print(f"\ngradio Space from create to RUNNING: {elapsed:.1f}s (stages {seen})")
    return repo


def port_of(node) -> str:
    return node.info["http"].rsplit(":", 1)[1]


def client_for(node, repo):
    from gradio_client import Client

    return Client(app_url(node, repo), verbose=False)


def test_static_space_is_served(space_node):
    api = api_for(space_node)
    repo = "admin/static-site"
    api.create_repo(repo, repo_type="space", space_sdk="static")
    api.create_commit(
        repo,
        repo_type="space",
        operations=[
            CommitOperationAdd("README.md", io.BytesIO(b"---\nsdk: static\n---\n")),
            CommitOperationAdd("index.html", io.BytesIO(b"<h1>hello static</h1>")),
            CommitOperationAdd("css/site.css", io.BytesIO(b"h1 { color: red }")),
        ],
        commit_message="site",
    )
    stage, _ = wait_stage(api, repo, {"RUNNING"}, 30)
    r = httpx.get(app_url(space_node, repo))
    assert r.status_code == 200 and r.text == "<h1>hello static</h1>"
    assert r.headers["content-type"].startswith("text/html")
    r = httpx.get(app_url(space_node, repo) + "css/site.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert httpx.get(app_url(space_node, repo) + "missing.js").status_code == 404
    # Without the slash: redirected to the app's root.
    r = httpx.get(f"{space_node.url}/spaces/{repo}/app")
    assert r.status_code == 307 and r.headers["location"].endswith(f"/spaces/{repo}/app/")
    # By host name, NS-NAME.<node host>: the Space's files at the root, and only them.
    host = {"host": f"admin-static-site.localhost:{port_of(space_node)}"}
    r = httpx.get(f"{space_node.url}/", headers=host)
    assert r.status_code == 200 and r.text == "<h1>hello static</h1>"
    r = httpx.get(f"{space_node.url}/css/site.css", headers=host)
    assert r.status_code == 200 and r.text == "h1 { color: red }"
    assert httpx.get(f"{space_node.url}/api/whoami-v2", headers=host).status_code == 404
    # A host that names no Space, or another domain, is the node itself.
    for other in ("admin-nothing-here.localhost", "admin-static-site.example.org"):
        r = httpx.get(f"{space_node.url}/api/spaces/{repo}", headers={"host": other})
        assert r.status_code == 200 and r.json()["id"] == repo, (other, r.text)


def test_gradio_space_answers_gradio_client_with_streaming(space_node, gradio_space):
    client = client_for(space_node, gradio_space)
    assert client.predict("hello", api_name="/reverse") == "olleh"
    job = client.submit("n", api_name="/count")
    outputs = list(job)
    assert outputs == ["n1", "n2", "n3"], outputs
    # The app knows it is a Space and where it is served.
    assert client.predict("SPACE_ID", api_name="/env") == gradio_space


def test_secret_reaches_the_app_and_is_never_returned(space_node, gradio_space):
    api = api_for(space_node)
    secret = "s3cr3t-" + os.urandom(8).hex()
    api.add_space_secret(gradio_space, "MY_SECRET", secret, description="test")
    api.add_space_variable(gradio_space, "MY_VAR", "visible")
    # A changed secret restarts the app.
    wait_stage(api, gradio_space, {"RUNNING"}, START_TIMEOUT)
    client = client_for(space_node, gradio_space)
    assert client.predict("MY_SECRET", api_name="/env") == secret
    assert client.predict("MY_VAR", api_name="/env") == "visible"
    variables = api.get_space_variables(gradio_space)
    assert variables["MY_VAR"].value == "visible"
    headers = {"authorization": f"Bearer {space_node.admin_token}"}
    for path in ("runtime", "secrets", "variables"):
        r = httpx.get(f"{space_node.url}/api/spaces/{gradio_space}/{path}", headers=headers)
        assert r.status_code == 200, r.text
        assert secret not in r.text
    assert "MY_SECRET" in httpx.get(f"{space_node.url}/api/spaces/{gradio_space}/secrets", headers=headers).json()
    # Nobody without write access reads the settings.
    r = httpx.get(f"{space_node.url}/api/spaces/{gradio_space}/secrets")
    assert r.status_code == 401, r.text
    assert secret not in space_node.log()


def test_pause_answers_503_and_restart_runs_again(space_node, gradio_space):
    api = api_for(space_node)
    runtime = api.pause_space(gradio_space)
    assert runtime.stage == "PAUSED"
    r = httpx.get(app_url(space_node, gradio_space) + "config")
    assert r.status_code == 503
    assert r.headers["x-space-stage"] == "PAUSED" and "PAUSED" in r.json()["error"]
    # Still paused: a request does not start it.
    assert api.get_space_runtime(gradio_space).stage == "PAUSED"
    api.restart_space(gradio_space)
    wait_stage(api, gradio_space, {"RUNNING"}, START_TIMEOUT)
    assert client_for(space_node, gradio_space).predict("ab", api_name="/reverse") == "ba"


def test_sleeps_when_idle_and_wakes_on_request(space_node, gradio_space):
    api = api_for(space_node)
    with pytest.warns(UserWarning):
        api.set_space_sleep_time(gradio_space, 2)
    stage, seen = wait_stage(api, gradio_space, {"SLEEPING"}, 30)
    assert api.get_space_runtime(gradio_space).raw["gcTimeout"] == 2
    # A request wakes it and waits for it rather than failing.
    started = time.monotonic()
    r = httpx.get(app_url(space_node, gradio_space) + "config", timeout=120)
    wake = time.monotonic() - started
    assert r.status_code == 200, r.text
    print(f"\nwake from SLEEPING to the first answer: {wake:.2f}s")
    with pytest.warns(UserWarning):
        api.set_space_sleep_time(gradio_space, 3600)
    assert api.get_space_runtime(gradio_space).stage == "RUNNING"


def test_escape_attempts_are_contained(space_node, gradio_space):
    api = api_for(space_node)
    client = client_for(space_node, gradio_space)
    token_path = str(space_node.data.resolve() / "admin.token")
    assert client.predict(token_path, api_name="/probe").startswith("DENIED:")
    # Another Space's settings (with its secrets) and files.
    other = make_space(
        api, "other", {"README.md": GRADIO_README, "app.py": APP.format(version="1")}
    )
    api.add_space_secret(other, "OTHER_SECRET", "other-secret-value")
    settings = space_node.data.resolve() / "spaces" / "settings" / "admin" / "other.json"
    assert settings.exists()
    assert client.predict(str(settings), api_name="/probe").startswith("DENIED:")
    checkouts = space_node.data.resolve() / "spaces" / "checkouts" / "admin" / "reverse"
    mine = next(checkouts.iterdir()) / "app.py"
    assert client.predict(str(mine), api_name="/probe").startswith("DENIED:")
    # Its own checkout is read-only at /app; its scratch is writable.
    assert client.predict("/app/app.py", api_name="/probe").startswith("READ:")
    assert client.predict("/app/evil.py", api_name="/write").startswith("DENIED:")
    assert client.predict("/tmp/scratch", api_name="/write") == "WROTE"
    # Not the node's key, nor the node's processes.
    assert client.predict("/proc/1/environ", api_name="/probe").startswith(("DENIED:", "READ:"))
    assert "HF_TOKEN" not in client.predict("/proc/1/environ", api_name="/probe")
    uid, pid = client.predict("", api_name="/whoami").split()
    if os.geteuid() == 0:
        assert int(uid) != 0
    # A fork bomb stops at the process limit, inside the Space.
    count, _, err = client.predict("", api_name="/forkbomb").partition(" ")
    assert int(count) < 300 and "Resource temporarily unavailable" in err, (count, err)
    assert httpx.get(f"{space_node.url}/health").status_code == 200
    assert client.predict("xy", api_name="/reverse") == "yx"


def test_build_error_is_reported_with_its_log(space_node):
    api = api_for(space_node)
    repo = make_space(
        api,
        "broken",
        {
            "README.md": GRADIO_README,
            "app.py": APP.format(version="1"),
            "requirements.txt": "hubmesh-no-such-package-xyz==0.0.1\n",
        },
    )
    stage, seen = wait_stage(api, repo, {"BUILD_ERROR", "RUNNING"}, BUILD_TIMEOUT)
    assert stage == "BUILD_ERROR", seen
    runtime = api.get_space_runtime(repo)
    assert "pip install" in runtime.raw["errorMessage"]
    log = "".join(api.fetch_space_logs(repo, build=True))
    assert "hubmesh-no-such-package-xyz" in log, log
    r = httpx.get(app_url(space_node, repo))
    assert r.status_code == 503 and r.headers["x-space-stage"] == "BUILD_ERROR"


def test_config_error_and_missing_app_file(space_node):
    api = api_for(space_node)
    repo = make_space(api, "no-sdk", {"README.md": "---\ntitle: x\n---\n"})
    stage, _ = wait_stage(api, repo, {"CONFIG_ERROR"}, 30)
    assert "sdk" in api.get_space_runtime(repo).raw["errorMessage"]
    repo = make_space(api, "no-app", {"README.md": GRADIO_README})
    wait_stage(api, repo, {"NO_APP_FILE"}, 30)


def test_new_commit_rebuilds_and_swaps_without_a_gap(space_node, gradio_space):
    api = api_for(space_node)
    old_sha = api.get_space_runtime(gradio_space).raw["sha"]
    client = client_for(space_node, gradio_space)
    assert client.predict("abc", api_name="/reverse") == "cba"
    # A session that started on the old commit, and a stream running across the swap.
    assert client.predict("kept", api_name="/remember") == "1"
    ticking = client.submit("720", api_name="/ticks")  # 0.25 s a tick: 3 minutes at most
    wait_for_outputs(ticking, 1)
    api.upload_file(
        path_or_fileobj=APP.format(version="2").encode(),
        path_in_repo="app.py",
        repo_id=gradio_space,
        repo_type="space",
    )
    deadline = time.monotonic() + START_TIMEOUT
    answers = []
    while True:
        r = httpx.get(app_url(space_node, gradio_space) + "config", timeout=60)
        assert r.status_code == 200, (r.status_code, r.text)
        answer = client_for(space_node, gradio_space).predict("abc", api_name="/reverse")
        answers.append(answer)
        assert answer in ("cba", "ABC"), answers
        if answer == "ABC":
            break
        assert time.monotonic() < deadline, answers
    runtime = api.get_space_runtime(gradio_space)
    assert runtime.stage == "RUNNING" and runtime.raw["sha"] != old_sha
    # The new commit serves new sessions; the old session still reaches the instance it
    # started on (its state is there), and the stream it opened before the swap goes on.
    assert client_for(space_node, gradio_space).predict("", api_name="/recall") == "2:<none>"
    assert client.predict("", api_name="/recall") == "1:kept"
    seen = len(ticking.outputs())
    outputs = wait_for_outputs(ticking, seen + 4)
    assert all(o.startswith("1:") for o in outputs), outputs
    assert not ticking.done(), ticking.outputs()[-3:]
    ticking.cancel()
    client.close()


def wait_for_outputs(job, n: int, timeout: float = 60.0) -> list:
    deadline = time.monotonic() + timeout
    while len(job.outputs()) < n:
        assert not job.done() or len(job.outputs()) >= n, (job.status(), job.outputs()[-3:])
        assert time.monotonic() < deadline, (job.status(), job.outputs()[-3:])
        time.sleep(0.1)
    return job.outputs()


def test_duplicate_space_with_the_0x_client(space_node, gradio_space, tmp_path):
    python = os.environ.get("HFH036_PYTHON", str(REPO / ".venv-hfh036" / "bin" / "python"))
    script = (
        "import os\n"
        "from huggingface_hub import HfApi\n"
        "api = HfApi(endpoint=os.environ['HF_ENDPOINT'], token=os.environ['HF_TOKEN'])\n"
        "url = api.duplicate_space(os.environ['FROM'], to_id='admin/copied',"
        " secrets=[{'key': 'DUP_SECRET', 'value': 'dup'}])\n"
        "print(url.repo_id)\n"
        "print(api.get_space_runtime('admin/copied').stage)\n"
    )
    out = subprocess.run(
        [python, "-c", script],
        env={
            **os.environ,
            "HF_ENDPOINT": space_node.url,
            "HF_TOKEN": space_node.admin_token,
            "HF_HOME": str(tmp_path / "hf"),
            "FROM": gradio_space,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "admin/copied"
    api = api_for(space_node)
    files = api.list_repo_files("admin/copied", repo_type="space")
    assert {"README.md", "app.py"} <= set(files)
    wait_stage(api, "admin/copied", {"RUNNING"}, START_TIMEOUT)
    assert client_for(space_node, "admin/copied").predict("DUP_SECRET", api_name="/env") == "dup"


def test_websocket_app_by_path_and_by_host(space_node):
    import websocket

    api = api_for(space_node)
    repo = make_space(api, "ws-echo", {"README.md": GRADIO_README, "app.py": WS_APP})
    wait_stage(api, repo, {"RUNNING"}, START_TIMEOUT)
    netloc = space_node.info["http"]
    ws = websocket.create_connection(f"ws://{netloc}/spaces/{repo}/app/echo", timeout=30)
    try:
        for text in ("hello", "x" * 300, "done"):
            ws.send(text)
            assert ws.recv() == f"echo:{text[::-1]}:/echo"
    finally:
        ws.close()
    # The same app by its host name: plain HTTP and a websocket.
    host = f"admin-ws-echo.localhost:{port_of(space_node)}"
    r = httpx.get(f"http://{netloc}/some/path?x=1", headers={"host": host})
    assert r.status_code == 200 and r.text == f"plain /some/path?x=1 host={host}", r.text
    ws = websocket.create_connection(f"ws://{netloc}/sock", host=host, timeout=30)
    try:
        ws.send("abc")
        assert ws.recv() == "echo:cba:/sock"
    finally:
        ws.close()
    # A gradio queue/join body is read whole for its session: bounded, with a Hub error.
    r = httpx.post(
        f"http://{netloc}/spaces/{repo}/app/gradio_api/queue/join",
        content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413 and r.headers["x-error-code"] == "SpaceRequestTooLarge", r.text[:300]


def test_streamlit_space_page_loads(space_node):
    api = api_for(space_node)
    repo = "admin/hello-streamlit"
    api.create_repo(repo, repo_type="space", space_sdk="streamlit")
    readme = f"---\nsdk: streamlit\nsdk_version: {STREAMLIT_VERSION}\napp_file: app.py\n---\n"
    api.create_commit(
        repo,
        repo_type="space",
        operations=[
            CommitOperationAdd("README.md", io.BytesIO(readme.encode())),
            CommitOperationAdd("app.py", io.BytesIO(b"import streamlit as st\nst.title('hello streamlit')\n")),
        ],
        commit_message="app",
    )
    started = time.monotonic()
    stage, seen = wait_stage(api, repo, {"RUNNING", "BUILD_ERROR", "RUNTIME_ERROR"}, BUILD_TIMEOUT)
    if stage != "RUNNING":
        build = "".join(api.fetch_space_logs(repo, build=True))
        run = "".join(api.fetch_space_logs(repo))
        raise AssertionError(f"{seen}\n--- build ---\n{build[-3000:]}\n--- run ---\n{run[-3000:]}")
    print(f"\nstreamlit Space from create to RUNNING: {time.monotonic() - started:.1f}s")
    # The page, the script it loads (relative to the app's path), the health check, and the
    # websocket the page talks to the script over.
    page = httpx.get(app_url(space_node, repo), timeout=60)
    assert page.status_code == 200 and "streamlit" in page.text.lower(), page.text[:300]
    script = re.search(r'src="\./(static/js/[^"]+\.js)"', page.text)
    assert script, page.text[:1000]
    r = httpx.get(app_url(space_node, repo) + script.group(1), timeout=60)
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert httpx.get(app_url(space_node, repo) + "_stcore/health").text == "ok"
    import websocket

    ws = websocket.create_connection(
        f"ws://{space_node.info['http']}/spaces/{repo}/app/_stcore/stream", timeout=30
    )
    assert ws.status == 101
    ws.close()
