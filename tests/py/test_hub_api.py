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


def run_scenario(node, tmp_path, name, disable_xet):
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
        [sys.executable, str(SCENARIOS / f"{name}.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, f"{name} failed:\n{out.stdout}\n{out.stderr}\n--- node log ---\n{node.log()[-4000:]}"
    return out.stdout


@pytest.mark.parametrize("disable_xet", [False, True], ids=["xet-default", "xet-disabled"])
@pytest.mark.parametrize(
    "name",
    ["repo_lifecycle", "small_file_round_trip", "large_file", "folder_and_snapshot", "branches_and_history", "errors"],
)
def test_scenario(node, tmp_path, name, disable_xet):
    run_scenario(node, tmp_path, name, disable_xet)
