"""Hub API scenarios with the real `huggingface_hub` client against a real node.

Each scenario runs twice: with the default client (hf_xet installed, Xet enabled) and with
HF_HUB_DISABLE_XET=1. The client reads HF_HUB_DISABLE_XET at import, so each scenario runs in
a fresh interpreter: the scenario scripts live in `scenarios/` and get the node's URL and token
through the environment.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).parent / "scenarios"


REPO = Path(__file__).resolve().parents[2]

# (client, xet): the current client with Xet on (its default) and off, and the 0.x client.
CLIENTS = [("2.4.0", "xet-default"), ("2.4.0", "xet-disabled"), ("0.36.2", "default")]


def client_python(version):
    if version == "2.4.0":
        return sys.executable
    python = os.environ.get("HFH036_PYTHON", str(REPO / ".venv-hfh036" / "bin" / "python"))
    assert Path(python).exists(), f"{python} missing: run ./scripts/test, which creates it"
    return python


def run_scenario(node, tmp_path, name, disable_xet, python=sys.executable):
    env = {
        **os.environ,
        "HF_ENDPOINT": node.url,
        "HF_TOKEN": node.admin_token,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "SCENARIO_WORKDIR": str(tmp_path / "work"),
    }
    if disable_xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    else:
        env.pop("HF_HUB_DISABLE_XET", None)
    (tmp_path / "work").mkdir(exist_ok=True)
    out = subprocess.run(
        [python, str(SCENARIOS / f"{name}.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, f"{name} failed:\n{out.stdout}\n{out.stderr}\n--- node log ---\n{node.log()[-4000:]}"
    return out.stdout


@pytest.mark.parametrize("client", CLIENTS, ids=["-".join(c) for c in CLIENTS])
@pytest.mark.parametrize(
    "name",
    [
        "repo_lifecycle",
        "small_file_round_trip",
        "large_file",
        "folder_and_snapshot",
        "branches_and_history",
        "errors",
        "listing",
        "delete_in_folders",
    ],
)
def test_scenario(paging_node, tmp_path, name, client):
    version, xet = client
    run_scenario(paging_node, tmp_path, name, xet == "xet-disabled", client_python(version))
    if name == "large_file":
        # Preupload says `lfs`: 2.x clients with hf_xet upload through Xet (xorbs and a shard),
        # 0.x clients and 2.x without Xet through the LFS batch API (PUT, then verify).
        via_xet = "Xet shard stored" in paging_node.log()
        via_batch = "LFS object stored" in paging_node.log()
        expect_xet = version != "0.36.2" and xet != "xet-disabled"
        assert (via_xet, via_batch) == (expect_xet, not expect_xet), paging_node.log()[-3000:]


@pytest.fixture
def paging_node(node_factory, tmp_path):
    """A node that lists 2 repos per page, so listings span several Link-paginated pages."""
    config = tmp_path / "hubmesh.toml"
    config.write_text("[gateway]\nlist_page_size = 2\n")
    return node_factory("node", "--config", str(config))


def test_everyday_paths_the_last_round_broke(node):
    """create_pr opens a pull request (main does not move), paths-info answers a JSON body as a form
    one, every response names its request, and repo ids without a namespace are
    RepoNotFound, through the real client."""
    import json
    import urllib.request

    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo("admin/everyday")
    api.create_commit("admin/everyday", [CommitOperationAdd("sub/a.txt", b"a")], commit_message="a")
    head = api.model_info("admin/everyday").sha
    pr = api.create_commit(
        "admin/everyday", [CommitOperationAdd("b.txt", b"b")], commit_message="pr", create_pr=True
    )
    assert pr.pr_num == 1 and pr.pr_revision == "refs/pr/1"
    assert api.model_info("admin/everyday").sha == head
    with pytest.raises(HfHubHTTPError) as e:
        api.create_branch("admin/everyday", branch="bad..name")
    assert e.value.response.headers.get("x-request-id")

    req = urllib.request.Request(
        f"{node.url}/api/models/admin/everyday/paths-info/main",
        data=json.dumps({"paths": ["sub/a.txt", "sub", "nope"], "expand": False}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        got = sorted((e["path"], e["type"]) for e in json.loads(r.read()))
    assert got == [("sub", "directory"), ("sub/a.txt", "file")]
    infos = api.get_paths_info("admin/everyday", ["sub/a.txt", "sub", "nope"])
    assert sorted(i.path for i in infos) == ["sub", "sub/a.txt"]

    with pytest.raises(RepositoryNotFoundError):
        api.model_info("gpt2")
