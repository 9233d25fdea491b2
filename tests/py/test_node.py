"""The node as the real `huggingface_hub` client sees it."""

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError


def test_health_answers(node):
    with urllib.request.urlopen(f"{node.url}/health", timeout=10) as resp:
        assert resp.status == 200
        body = json.load(resp)
    assert body["status"] == "ok"
    assert body["peer_id"] == node.info["peer_id"]


def test_whoami_with_the_admin_token(node):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    me = api.whoami()
    assert me["name"] == "admin"
    assert me["auth"]["accessToken"]["role"] == "write"


def test_whoami_with_hf_endpoint_and_hf_token(node, tmp_path):
    # How users point the client at a node (the README quickstart): environment variables,
    # no code change. huggingface_hub reads HF_ENDPOINT at import, so use a fresh interpreter.
    env = {
        **os.environ,
        "HF_ENDPOINT": node.url,
        "HF_TOKEN": node.admin_token,
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    out = subprocess.run(
        [sys.executable, "-c", 'from huggingface_hub import HfApi; print(HfApi().whoami()["name"])'],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "admin"


def test_bad_token_is_invalid_user_token(node):
    api = HfApi(endpoint=node.url, token="hf_notavalidtoken")
    with pytest.raises(HfHubHTTPError) as err:
        api.whoami()
    assert err.value.response.status_code == 401
    assert "Invalid user token" in str(err.value)


def test_token_never_logged(node):
    HfApi(endpoint=node.url, token=node.admin_token).whoami()
    assert node.admin_token not in node.log()
    assert os.stat(node.data / "admin.token").st_mode & 0o777 == 0o600


def test_sigterm_and_restart_keep_identity(node_factory):
    a = node_factory("a")
    peer_id, token = a.info["peer_id"], a.admin_token
    assert a.terminate() == 0
    b = node_factory("a")  # same data directory
    assert b.info["peer_id"] == peer_id
    assert HfApi(endpoint=b.url, token=token).whoami()["name"] == "admin"
