"""Spaces on the mesh with three real nodes on 127.0.0.1: A runs no Spaces (`--spaces off`),
B and C run them for peers (`--spaces mesh`) and advertise their Space slots. Spaces created
on A are placed on B or C (the host fetches the repo over the mesh, builds and starts it),
reached through A's URL by real clients (httpx, `gradio_client`, `websocket-client`), and
placed on the other node when their host is killed.

The gradio environment is shared with `test_spaces.py` (the same cache dir and pins), so a
warm run builds nothing.
"""

from __future__ import annotations

import io
import time

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi

from conftest import wait_for
from test_spaces import APP, GRADIO_README, START_TIMEOUT, WS_APP, env_cache


@pytest.fixture
def trio(node_factory, tmp_path):
    config = tmp_path / "mesh.toml"
    # Adverts every 2 s, so placement sees slots and departures quickly.
    config.write_text("[inference]\nadvert_period_secs = 2\n\n[spaces]\nslots = 4\n")
    common = ("--config", str(config), "--spaces-env-dir", str(env_cache()))
    b = node_factory("b", "--admin", "bob", "--spaces", "mesh", *common)
    c = node_factory("c", "--admin", "carol", "--spaces", "mesh", *common,
                     "--bootstrap", b.info["p2p"][0])
    a = node_factory("a", "--admin", "alice", "--spaces", "off", *common,
                     "--bootstrap", b.info["p2p"][0], "--bootstrap", c.info["p2p"][0])
    # A sees both hosts' Space slots in their signed adverts; its own advert offers none.
    for host in (b, c):
        wait_for(f"{host.data.name}'s Space slots at A", lambda host=host: (
            slots_of(a, host.info["peer_id"]) or {}).get("slots_free") == 4, node=a, timeout=60)
    own = httpx.get(f"{a.url}/api/mesh/compute").json()["local"]["spaces"]
    assert own["mode"] == "off" and own["slots_total"] == 0, own
    entry = slots_of(a, b.info["peer_id"])
    assert entry["mode"] == "mesh" and entry["slots_total"] == 4 and entry["cpus"] >= 1, entry
    assert entry["memory_per_slot_bytes"] == 4096 << 20, entry
    return a, b, c


def slots_of(node, peer_id: str) -> dict | None:
    table = httpx.get(f"{node.url}/api/mesh/compute").json()["table"]["nodes"]
    return next((n["spaces"] for n in table if n["peer_id"] == peer_id), None)


def make_space(api: HfApi, repo: str, sdk: str, files: dict[str, str]) -> None:
    api.create_repo(repo, repo_type="space", space_sdk=sdk)
    api.create_commit(repo, repo_type="space", commit_message="app", operations=[
        CommitOperationAdd(path, io.BytesIO(text.encode())) for path, text in files.items()])


def running_on(api: HfApi, repo: str, hosts: set[str], timeout: float) -> tuple[str, list[str]]:
    """Polls A's runtime until the Space is RUNNING on one of `hosts`; that host, and the
    stages seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            runtime = api.get_space_runtime(repo)
            stage, node = str(runtime.stage), runtime.raw.get("node")
        except Exception as e:  # 503 while no node took it yet
            stage, node = f"error {e}"[:120], None
        if not seen or seen[-1] != stage:
            seen.append(stage)
        if stage == "RUNNING" and node in hosts:
            return node, seen
        assert stage not in ("BUILD_ERROR", "RUNTIME_ERROR"), (repo, seen, runtime.raw)
        assert time.monotonic() < deadline, f"{repo}: stages {seen}, node {node}"
        time.sleep(0.3)


def test_spaces_are_placed_on_peers_proxied_and_re_placed(trio):
    import websocket
    from gradio_client import Client

    a, b, c = trio
    hosts = {b.info["peer_id"]: b, c.info["peer_id"]: c}
    api = HfApi(endpoint=a.url, token=a.admin_token)

    # A static Space: placed on a peer, its files served through A.
    make_space(api, "alice/site", "static", {
        "README.md": "---\nsdk: static\n---\n", "index.html": "<h1>from the mesh</h1>"})
    site_host, _ = running_on(api, "alice/site", set(hosts), 60)
    r = httpx.get(f"{a.url}/spaces/alice/site/app/")
    assert r.status_code == 200 and r.text == "<h1>from the mesh</h1>", r.text
    assert r.headers["x-hubmesh-served-by"] == site_host
    # The hosting node holds the repo now (replicated), A runs nothing.
    assert httpx.get(f"{hosts[site_host].url}/api/spaces/alice/site").status_code == 200

    # A gradio Space: built and started on a peer, gradio_client talks to it through A.
    make_space(api, "alice/reverse", "gradio",
               {"README.md": GRADIO_README, "app.py": APP.format(version="1")})
    started = time.monotonic()
    first, seen = running_on(api, "alice/reverse", set(hosts), START_TIMEOUT)
    print(f"\ngradio Space placed on a peer, create to RUNNING through A: "
          f"{time.monotonic() - started:.1f}s (stages {seen})")
    # The host's own runtime API shows the same: running there.
    on_host = httpx.get(f"{hosts[first].url}/api/spaces/alice/reverse/runtime").json()
    assert on_host["stage"] == "RUNNING" and on_host["node"] == first, on_host
    url = f"{a.url}/spaces/alice/reverse/app/"
    client = Client(url, verbose=False)
    assert client.predict("hello", api_name="/reverse") == "olleh"
    # A streaming (generator) endpoint: SSE relayed through the tunnel.
    assert list(client.submit("n", api_name="/count")) == ["n1", "n2", "n3"]
    assert client.predict("SPACE_ID", api_name="/env") == "alice/reverse"

    # A websocket app: the upgrade and the frames both ways go through the tunnel.
    make_space(api, "alice/ws-echo", "gradio", {"README.md": GRADIO_README, "app.py": WS_APP})
    running_on(api, "alice/ws-echo", set(hosts), START_TIMEOUT)
    ws = websocket.create_connection(f"ws://{a.info['http']}/spaces/alice/ws-echo/app/echo",
                                     timeout=30)
    try:
        for text in ("hello", "x" * 300):
            ws.send(text)
            assert ws.recv() == f"echo:{text[::-1]}:/echo"
    finally:
        ws.close()

    # The host of the gradio Space dies: the next queries place it on the other node, and
    # the same URL on A answers again (a fresh instance: a re-placed Space starts from its
    # repo, as a Hub Space without persistent storage).
    other = next(p for p in hosts if p != first)
    hosts[first].kill()
    killed = time.monotonic()
    second, seen = running_on(api, "alice/reverse", {other}, START_TIMEOUT)
    print(f"re-placed after its host was killed: RUNNING on the other node "
          f"{time.monotonic() - killed:.1f}s later (stages {seen})")
    client = Client(url, verbose=False)
    assert client.predict("again", api_name="/reverse") == "niaga"
    assert list(client.submit("m", api_name="/count")) == ["m1", "m2", "m3"]
    r = httpx.get(f"{a.url}/spaces/alice/site/app/")
    assert r.status_code == 200 and r.text == "<h1>from the mesh</h1>"
    assert r.headers["x-hubmesh-served-by"] == other
