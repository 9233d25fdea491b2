"""Spaces end to end: real nodes build and run Space apps in the sandbox, and real clients
(`huggingface_hub`, `gradio_client`) use them through the node's URL.

One node serves the whole module (the gradio environment is built once per content hash;
its cache lives under the cargo target dir, so a second run starts at once). Every Space of
the module pins the same gradio version with no requirements, so they share one environment.
"""

from __future__ import annotations

import io
import json
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

import gradio as gr

VERSION = "{version}"


def reverse(text):
    return text[::-1] if VERSION == "1" else text.upper()


def count(text):
    for i in range(1, 4):
        yield f"{{text}}{{i}}"


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
    for fn in (count, env, probe, write, whoami, forkbomb):
        gr.Button(fn.__name__).click(fn, box, out, api_name=fn.__name__)

demo.queue().launch()
'''


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
    client = client_for(space_node, gradio_space)
    assert client.predict("abc", api_name="/reverse") == "cba"
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
    assert api.get_space_runtime(gradio_space).stage == "RUNNING"


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
