"""Errors map to the client's exception types; bad input changes nothing."""
import json
import os

import _http
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

api = HfApi()
user = api.whoami()["name"]
repo = f"{user}/err"
api.create_repo("err")
api.create_commit(repo, [CommitOperationAdd("a.txt", b"a")], commit_message="a")
sha = api.model_info(repo).sha


def expect(exc, fn):
    try:
        fn()
    except exc:
        return
    raise SystemExit(f"expected {exc.__name__}")


expect(RepositoryNotFoundError, lambda: api.model_info(f"{user}/missing"))
expect(RevisionNotFoundError, lambda: api.model_info(repo, revision="nope"))
expect(EntryNotFoundError, lambda: hf_hub_download(repo, "missing.txt"))
expect(RepositoryNotFoundError, lambda: hf_hub_download(f"{user}/missing", "a.txt"))
expect(RevisionNotFoundError, lambda: hf_hub_download(repo, "a.txt", revision="nope"))
expect(EntryNotFoundError, lambda: api.create_commit(repo, [CommitOperationDelete("zzz.txt")], commit_message="x"))
# A bad token is a 401 (0.x raises requests' HTTPError here, later versions HfHubHTTPError).
try:
    HfApi(token="hf_invalid").whoami()
    raise SystemExit("a bad token must be refused")
except Exception as e:  # noqa: BLE001
    assert getattr(e, "response", None) is not None and e.response.status_code == 401, e

# Raw bad input: each a clear 4xx with a message, nothing written.
h = {"authorization": f"Bearer {os.environ['HF_TOKEN']}", "content-type": "application/x-ndjson"}
base = f"{api.endpoint}/api/models/{repo}/commit/main"
header = '{"key":"header","value":{"summary":"evil"}}\n'
bad_paths = ["../x", "/etc/x", "a/../../x", ".git/config", "a\u0000b", "bill\u202etxt.exe", "d\u2066/x"]
for path in bad_paths:
    body = header + json.dumps({"key": "file", "value": {"path": path, "content": "eA==", "encoding": "base64"}}) + "\n"
    r = _http.post(base, data=body.encode(), headers=h)
    # A path the Hub refuses: 422, as the Hub answers.
    assert r.status_code == 422, (path, r.status_code, r.text)
    assert "error" in r.json()
# Bidirectional controls are refused by every path-taking operation, deletes included.
for key, value in [
    ("deletedFile", {"path": "a\u202e.txt"}),
    ("deletedFolder", {"path": "\u2067sub"}),
]:
    body = header + json.dumps({"key": key, "value": value}) + "\n"
    r = _http.post(base, data=body.encode(), headers=h)
    assert r.status_code == 422 and "bidirectional" in r.json()["error"], (key, r.status_code, r.text)
expect(HfHubHTTPError, lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x\u200f.txt", repo_id=repo))
truncated = header + '{"key":"file","value":{"path":"t.txt","cont'
r = _http.post(base, data=truncated.encode(), headers=h)
assert r.status_code == 400, r.text
missing = header + json.dumps({"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "ab" * 32, "size": 10}}) + "\n"
r = _http.post(base, data=missing.encode(), headers=h)
assert r.status_code == 400 and "has not been uploaded" in r.json()["error"], r.text
for bad_id in ["bad..name", "x" * 97, "-lead"]:
    r = _http.get(f"{api.endpoint}/api/models/{user}/{bad_id}")
    assert r.status_code == 404 and r.headers.get("x-error-code") == "RepoNotFound", (bad_id, r.status_code)
r = _http.post(f"{api.endpoint}/api/repos/create", json_body={"name": "..", "organization": None}, headers={"authorization": h["authorization"]})
assert r.status_code == 400, r.text
assert api.model_info(repo).sha == sha, "repo unchanged"
assert sorted(api.list_repo_files(repo)) == [".gitattributes", "a.txt"]
print("ok")
