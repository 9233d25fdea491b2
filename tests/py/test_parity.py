"""Hub parity: the endpoints and fields clients call, through the real `huggingface_hub`
2.4.0 client and its `hf` CLI against a real node: auth-check, duplicate, super-squash, LFS
files, the storage listing, preupload's `oid` and `shouldIgnore`, model_info's
`safetensors`/`gguf`/`config`, `lastCommit` in expanded trees, formatted commits, a Space's
default README, org names in whoami, the tags in use by type and a dataset card's
`task_categories` as tags; case-insensitive ids and the redirects of a moved repo (API,
resolve, git), the Hub's 409/412/400 texts, `model-index` validation, `transformersInfo`,
`widgetData`, security statuses, and `gated` in listings."""

import json
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import SECRETS_SEEN, cli, hf, hubmesh_bin
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from test_git import git, gitenv  # noqa: F401  (fixtures: git with a throwaway HOME)



def safetensors_bytes(tensors):
    """A safetensors file: {name: (dtype, shape, bytes per element)}, zero-filled."""
    header, offset = {}, 0
    for name, (dtype, shape, width) in tensors.items():
        n = width
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def gguf_bytes():
    def s(text):
        return struct.pack("<Q", len(text)) + text.encode()

    out = b"GGUF" + struct.pack("<IQQ", 3, 1, 2)
    out += s("general.architecture") + struct.pack("<I", 8) + s("llama")
    out += s("llama.context_length") + struct.pack("<II", 4, 4096)
    out += s("tok_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 8, 4)
    out += struct.pack("<IQ", 0, 0)
    return out + b"\0" * 128


def test_auth_check_duplicate_squash_and_lfs_files(node, tmp_path):
    cli(node, "user", "add", "bob")
    bob = cli(node, "token", "create", "bob", "--scope", "write")
    api = HfApi(endpoint=node.url, token=node.admin_token)
    as_bob = HfApi(endpoint=node.url, token=bob)
    anon = HfApi(endpoint=node.url, token=False)
    api.create_repo("admin/src")
    weights = os.urandom(300_000)
    for i in range(3):
        api.create_commit(
            "admin/src",
            [CommitOperationAdd(f"f{i}.txt", f"v{i}".encode()), CommitOperationAdd("w.bin", weights)],
            commit_message=f"commit {i}",
        )

    # auth-check: read for everyone on a public repo, write for who may commit.
    api.auth_check("admin/src", write=True)
    as_bob.auth_check("admin/src")
    anon.auth_check("admin/src")
    with pytest.raises(HfHubHTTPError) as e:
        as_bob.auth_check("admin/src", write=True)
    assert e.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError):
        as_bob.auth_check("admin/nope")

    # duplicate (API and `hf repos duplicate`): same history and files, LFS content included.
    url = as_bob.duplicate_repo("admin/src", to_id="bob/copy", private=True)
    assert url.repo_id == "bob/copy"
    info = as_bob.model_info("bob/copy", files_metadata=True)
    assert info.private and info.sha == api.model_info("admin/src").sha
    assert Path(as_bob.hf_hub_download("bob/copy", "w.bin", cache_dir=tmp_path / "c1")).read_bytes() == weights
    with pytest.raises(RepositoryNotFoundError):
        anon.model_info("bob/copy")
    with pytest.raises(HfHubHTTPError) as e:
        as_bob.duplicate_repo("admin/src", to_id="bob/copy")
    assert e.value.response.status_code == 409
    assert as_bob.duplicate_repo("admin/src", to_id="bob/copy", exist_ok=True).repo_id == "bob/copy"
    hf(node, bob, "repos", "duplicate", "admin/src", "bob/cli-copy", home=tmp_path / "hf")
    assert as_bob.model_info("bob/cli-copy").sha == info.sha

    # LFS files: the object with the path and the commit that put it there.
    lfs = list(api.list_lfs_files("admin/src"))
    assert [(f.filename, f.size, f.ref) for f in lfs] == [("w.bin", len(weights), "refs/heads/main")]
    first = list(api.list_repo_commits("admin/src"))[-2]
    assert lfs[0].pushed_at == first.created_at
    with pytest.raises(HfHubHTTPError):
        list(as_bob.list_lfs_files("admin/src"))

    # super-squash: one commit, same files; tags refused; bob (no rights) refused.
    api.create_tag("admin/src", tag="v1")
    files_before = sorted(api.list_repo_files("admin/src"))
    with pytest.raises(HfHubHTTPError):
        as_bob.super_squash_history("admin/src")
    with pytest.raises(HfHubHTTPError) as e:
        api.super_squash_history("admin/src", branch="v1")
    assert e.value.response.status_code == 400
    with pytest.raises(RevisionNotFoundError):
        api.super_squash_history("admin/src", branch="nope")
    api.super_squash_history("admin/src", commit_message="squashed")
    commits = list(api.list_repo_commits("admin/src"))
    assert [c.title for c in commits] == ["squashed"]
    assert sorted(api.list_repo_files("admin/src")) == files_before
    assert len(list(api.list_repo_commits("admin/src", revision="v1"))) == 4

    # Permanent LFS deletion: refused while a ref's tip holds the file, then allowed.
    old = list(api.list_lfs_files("admin/src"))
    with pytest.raises(HfHubHTTPError) as e:
        api.permanently_delete_lfs_files("admin/src", old)
    assert e.value.response.status_code == 409 and "w.bin" in str(e.value)
    api.upload_file(path_or_fileobj=os.urandom(1000), path_in_repo="w.bin", repo_id="admin/src")
    api.delete_tag("admin/src", tag="v1")
    with pytest.raises(HfHubHTTPError):
        as_bob.permanently_delete_lfs_files("admin/src", old)
    api.permanently_delete_lfs_files("admin/src", old)
    left = list(api.list_lfs_files("admin/src"))
    assert len(left) == 1 and left[0].file_oid != old[0].file_oid
    # The copy holds its own: it still serves the deleted object.
    assert Path(as_bob.hf_hub_download("bob/copy", "w.bin", cache_dir=tmp_path / "c2")).read_bytes() == weights


def test_storage_listing_and_org_names(node, tmp_path):
    cli(node, "org", "add", "acme")
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo("admin/m", private=True)
    api.create_repo("admin/d", repo_type="dataset")
    api.create_repo("acme/team")
    payload = os.urandom(200_000)
    api.create_commit("admin/m", [CommitOperationAdd("w.bin", payload)], commit_message="w")
    repos = {r.id: r for r in api.list_user_repos()}
    assert set(repos) == {"admin/m", "admin/d"}
    assert repos["admin/m"].type == "model" and repos["admin/m"].visibility == "private"
    assert repos["admin/d"].type == "dataset" and repos["admin/d"].visibility == "public"
    assert repos["admin/m"].storage >= len(payload) > repos["admin/d"].storage > 0
    assert [r.id for r in api.list_user_repos(namespace="acme")] == ["acme/team"]
    out = json.loads(hf(node, node.admin_token, "repos", "ls", "--json", home=tmp_path / "hf"))
    assert sorted(r["id"] for r in out) == ["admin/d", "admin/m"], out

    cli(node, "org", "member", "add", "acme", "admin", "--role", "write")
    me = api.whoami()
    assert me["orgs"] == [{"type": "org", "name": "acme", "fullname": "acme", "roleInOrg": "write"}]


def test_preupload_skips_unchanged_files_and_honours_gitignore(node, tmp_path):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo("admin/up")
    folder = tmp_path / "folder"
    (folder / "logs").mkdir(parents=True)
    (folder / "a.txt").write_text("hello")
    (folder / "w.bin").write_bytes(os.urandom(50_000))
    (folder / "logs" / "run.log").write_text("noise")
    (folder / "keep.log").write_text("kept")
    (folder / ".gitignore").write_text("logs/\n*.log\n!keep.log\n")
    api.upload_folder(repo_id="admin/up", folder_path=folder)
    files = set(api.list_repo_files("admin/up"))
    assert {"a.txt", "w.bin", "keep.log", ".gitignore"} <= files
    assert "logs/run.log" not in files
    head = api.model_info("admin/up").sha

    # Nothing changed: the client skips every file and makes no commit.
    again = api.upload_folder(repo_id="admin/up", folder_path=folder)
    assert again.oid == head
    assert api.model_info("admin/up").sha == head
    # One file changed: the commit holds only that one.
    (folder / "a.txt").write_text("hello again")
    api.upload_folder(repo_id="admin/up", folder_path=folder)
    latest = list(api.list_repo_commits("admin/up"))[0]
    changed = api.list_repo_tree("admin/up", expand=True)
    last = {e.path: e.last_commit["oid"] for e in changed}
    assert last["a.txt"] == latest.commit_id
    assert last["w.bin"] == head
    # The repo's own .gitignore counts too, with no .gitignore in the commit.
    api.create_commit(
        "admin/up",
        [CommitOperationAdd("logs/new.log", b"x"), CommitOperationAdd("b.txt", b"b")],
        commit_message="more",
    )
    files = api.list_repo_files("admin/up")
    assert "b.txt" in files and "logs/new.log" not in files


def test_model_info_fields_tree_expand_and_formatted_commits(node):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo("admin/facts")
    st = safetensors_bytes({"a": ("F32", [4, 8], 4), "b": ("BF16", [16], 2), "c": ("F32", [2], 4)})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8}
    api.create_commit(
        "admin/facts",
        [
            CommitOperationAdd("model.safetensors", st),
            CommitOperationAdd("config.json", json.dumps(config).encode()),
            CommitOperationAdd("tiny.gguf", gguf_bytes()),
        ],
        commit_message="Add <weights> & config",
    )
    info = api.model_info("admin/facts")
    assert info.safetensors.parameters == {"F32": 34, "BF16": 16}
    assert info.safetensors.total == 50
    assert info.config == config
    assert info.gguf == {"total": 32, "architecture": "llama", "context_length": 4096}

    # expand=true on tree and paths-info: lastCommit per entry.
    api.create_commit("admin/facts", [CommitOperationAdd("sub/x.txt", b"x")], commit_message="sub")
    commits = list(api.list_repo_commits("admin/facts"))
    entries = {e.path: e for e in api.list_repo_tree("admin/facts", expand=True)}
    assert entries["config.json"].last_commit["oid"] == commits[1].commit_id
    assert entries["config.json"].last_commit["title"] == "Add <weights> & config"
    assert entries["sub"].last_commit["oid"] == commits[0].commit_id
    infos = api.get_paths_info("admin/facts", ["sub/x.txt", ".gitattributes"], expand=True)
    by = {i.path: i.last_commit["oid"] for i in infos}
    assert by == {"sub/x.txt": commits[0].commit_id, ".gitattributes": commits[-1].commit_id}

    # Expanded listings come in smaller pages, followed through Link like the others.
    many = [CommitOperationAdd(f"many/{i:03}.txt", str(i).encode()) for i in range(120)]
    api.create_commit("admin/facts", many, commit_message="many")
    expanded = list(api.list_repo_tree("admin/facts", path_in_repo="many", expand=True))
    assert len(expanded) == 120 and all(e.last_commit is not None for e in expanded)

    # formatted commits: HTML-escaped title and message.
    formatted = list(api.list_repo_commits("admin/facts", formatted=True))
    assert formatted[2].formatted_title == "Add &lt;weights&gt; &amp; config"
    assert list(api.list_repo_commits("admin/facts"))[2].formatted_title is None


def test_a_new_space_starts_with_its_readme(node):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo("admin/app", repo_type="space", space_sdk="gradio")
    info = api.space_info("admin/app")
    assert info.sdk == "gradio" and info.card_data["sdk"] == "gradio"
    assert "README.md" in api.list_repo_files("admin/app", repo_type="space")
    # The client checks the sdk itself; a raw request with an unknown one is refused whole.
    req = urllib.request.Request(
        f"{node.url}/api/repos/create",
        data=json.dumps({"name": "bad", "type": "space", "sdk": "php"}).encode(),
        headers={"authorization": f"Bearer {node.admin_token}", "content-type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400
    assert not api.repo_exists("admin/bad", repo_type="space")


def like(node, token, repo):
    """POST …/like: the client (2.4.0) only unlikes; the Hub's web page likes."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"{node.url}/api/models/{repo}/like", method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status


def test_likes(node):
    cli(node, "user", "add", "bob")
    bob = cli(node, "token", "create", "bob", "--scope", "write")
    api = HfApi(endpoint=node.url, token=node.admin_token)
    as_bob = HfApi(endpoint=node.url, token=bob)
    api.create_repo("admin/liked")
    api.create_repo("admin/hidden", private=True)
    assert api.model_info("admin/liked").likes == 0
    assert like(node, bob, "admin/liked") == 200
    assert like(node, bob, "admin/liked") == 200
    assert like(node, node.admin_token, "admin/liked") == 200
    assert api.model_info("admin/liked").likes == 2
    assert sorted(u.username for u in api.list_repo_likers("admin/liked")) == ["admin", "bob"]
    assert as_bob.list_liked_repos("bob").models == ["admin/liked"]
    with pytest.raises(urllib.error.HTTPError) as e:
        like(node, bob, "admin/hidden")
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        like(node, None, "admin/liked")
    assert e.value.code == 401
    as_bob.unlike("admin/liked")
    assert [u.username for u in api.list_repo_likers("admin/liked")] == ["admin"]
    assert as_bob.list_liked_repos("bob").total == 0
    assert api.model_info("admin/liked").likes == 1


def test_tags_by_type_and_dataset_task_categories(node):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo("admin/cls", repo_type="dataset")
    card = (b"---\nlicense: mit\ntask_categories:\n- text-classification\ntask_ids:\n- sentiment-analysis\n"
            b"size_categories:\n- n<1K\n---\n# Data\n")
    api.create_commit("admin/cls", [CommitOperationAdd("README.md", card)],
                      commit_message="card", repo_type="dataset")
    tags = api.dataset_info("admin/cls").tags
    for tag in ["task_categories:text-classification", "task_ids:sentiment-analysis",
                "size_categories:n<1K", "license:mit"]:
        assert tag in tags
    assert [d.id for d in api.list_datasets(filter="task_categories:text-classification")] == ["admin/cls"]
    by_type = api.get_dataset_tags()
    assert {"id": "task_categories:text-classification", "label": "text-classification",
            "type": "task_categories"} in by_type["task_categories"]
    assert [t["label"] for t in by_type["license"]] == ["mit"]
    api.create_repo("admin/gen")
    api.create_commit("admin/gen", [CommitOperationAdd(
        "README.md", b"---\npipeline_tag: text-generation\nlibrary_name: transformers\n---\n")],
        commit_message="card")
    models = api.get_model_tags()
    assert {"id": "text-generation", "label": "Text Generation", "type": "pipeline_tag"} in models["pipeline_tag"]
    assert [t["id"] for t in models["library"]] == ["transformers"]
    # A private repo's tags are not shown.
    api.create_repo("admin/hidden", private=True)
    api.create_commit("admin/hidden", [CommitOperationAdd("README.md", b"---\nlibrary_name: secretlib\n---\n")],
                      commit_message="card")
    assert [t["id"] for t in api.get_model_tags()["library"]] == ["transformers"]


def test_ids_are_case_insensitive_and_a_moved_repo_redirects(node, git, tmp_path):
    """Repo and user ids compare without case, as the Hub's do; after `move_repo` the old id
    answers 307 to the new one for the API, resolve and git, and every client follows it."""
    import http.client
    from urllib.parse import urlparse

    from huggingface_hub import hf_hub_download
    from test_git import remote

    api = HfApi(endpoint=node.url, token=node.admin_token)
    url = api.create_repo("admin/MyModel")
    assert url.endswith("/admin/MyModel")
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="admin/MyModel")
    # Another spelling names the same repo, under its stored spelling.
    assert api.model_info("ADMIN/mymodel").id == "admin/MyModel"
    got = hf_hub_download("admin/mymodel", "a.txt", endpoint=node.url, token=node.admin_token,
                          cache_dir=tmp_path / "cache1")
    assert Path(got).read_bytes() == b"hello"
    # Creating a name that differs only in case is refused with the Hub's 409 text, and
    # `exist_ok` gets the existing repo's URL.
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("admin/mymodel")
    assert e.value.response.status_code == 409
    assert e.value.response.headers["X-Error-Message"] == "You already created this model repo"
    assert api.create_repo("admin/MYMODEL", exist_ok=True).endswith("/admin/MyModel")
    # A namespace spelled in another case is the account's own.
    assert api.create_repo("Admin/second").endswith("/admin/second")
    # User names too: `Bob` is taken once `bob` exists.
    cli(node, "user", "add", "bob")
    taken = subprocess.run([str(hubmesh_bin()), "user", "add", "BOB", "--data", str(node.data)],
                           capture_output=True, text=True, timeout=60)
    assert taken.returncode != 0 and "bob" in taken.stderr.lower()

    # A move: the old id redirects (307 with the new location) for API, resolve and git.
    api.move_repo("admin/MyModel", "admin/moved")
    conn = http.client.HTTPConnection(urlparse(node.url).netloc, timeout=30)
    conn.request("GET", "/api/models/admin/MyModel/revision/main?blobs=true")
    r = conn.getresponse()
    r.read()
    assert (r.status, r.getheader("Location")) == (307, "/api/models/admin/moved/revision/main?blobs=true")
    conn.request("GET", "/admin/mymodel/resolve/main/a.txt")
    r = conn.getresponse()
    r.read()
    assert (r.status, r.getheader("Location")) == (307, "/admin/moved/resolve/main/a.txt")
    conn.close()
    assert api.model_info("admin/MyModel").id == "admin/moved"
    got = hf_hub_download("admin/MyModel", "a.txt", endpoint=node.url, token=node.admin_token,
                          cache_dir=tmp_path / "cache2")
    assert Path(got).read_bytes() == b"hello"
    clone = tmp_path / "clone"
    git.run("clone", remote(node, "admin/MyModel"), str(clone))
    assert (clone / "a.txt").read_bytes() == b"hello"
    # A push through the old URL lands on the new repo.
    (clone / "b.txt").write_bytes(b"b")
    git.run("add", "b.txt", cwd=clone)
    git.run("commit", "-m", "b", cwd=clone)
    git.run("push", "origin", "main", cwd=clone)
    assert "b.txt" in api.list_repo_files("admin/moved")
    # A private repo's new id is told only to those who may read it.
    api.create_repo("admin/secret", private=True)
    api.move_repo("admin/secret", "admin/secret2")
    assert api.model_info("admin/secret").id == "admin/secret2"
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=node.url, token=False).model_info("admin/secret")
    # A repo created at the old id takes the name back.
    api.create_repo("admin/MyModel")
    assert api.model_info("admin/MyModel").id == "admin/MyModel"


def test_the_hubs_error_texts_and_model_index_validation(node):
    """The texts and headers clients show: 412 for a stale `parent_commit`, 409 for an id
    that is taken, 400 with the Hub's messages for invalid metadata (`model-index`, YAML)."""
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo("admin/errs")
    first = api.create_commit("admin/errs", [CommitOperationAdd("a.txt", b"a")], commit_message="a")
    api.create_commit("admin/errs", [CommitOperationAdd("b.txt", b"b")], commit_message="b")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit("admin/errs", [CommitOperationAdd("c.txt", b"c")], commit_message="c",
                          parent_commit=first.oid)
    assert e.value.response.status_code == 412
    text = "A commit has happened since. Please refresh and try again."
    assert e.value.server_message == text and e.value.response.headers["X-Error-Message"] == text
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("admin/errs")
    assert e.value.response.status_code == 409 and e.value.server_message == "You already created this model repo"
    # Moving onto an id that is taken (in any case) is the same 409.
    api.create_repo("admin/other")
    with pytest.raises(HfHubHTTPError) as e:
        api.move_repo("admin/other", "admin/ERRS")
    assert e.value.response.status_code == 409 and "You already created this model repo" in str(e.value)

    index = ("---\nlicense: mit\nmodel-index:\n- name: m\n  results:\n  - task: {type: text-generation}\n"
             "    metrics:\n    - {type: perplexity, value: 3.2}\n---\n# m\n")
    with pytest.raises(ValueError, match=r'"model-index\[0\]\.results\[0\]\.dataset" is required'):
        api.upload_file(path_or_fileobj=index.encode(), path_in_repo="README.md", repo_id="admin/errs")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(path_or_fileobj=b"---\na: [\n---\n", path_in_repo="README.md", repo_id="admin/errs")
    good = index.replace("  - task: {type: text-generation}\n",
                         "  - task: {type: text-generation}\n    dataset: {type: wikitext, name: WikiText}\n")
    api.upload_file(path_or_fileobj=good.encode(), path_in_repo="README.md", repo_id="admin/errs")
    info = api.model_info("admin/errs")
    assert info.model_index[0]["results"][0]["dataset"]["name"] == "WikiText"
    assert info.model_index[0]["results"][0]["metrics"][0]["value"] == 3.2


def test_transformers_info_widget_data_security_and_gated_listings(node):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_repo("admin/llm")
    api.create_commit("admin/llm", [
        CommitOperationAdd("config.json", json.dumps({"architectures": ["LlamaForCausalLM"]}).encode()),
        CommitOperationAdd("tokenizer.json", b"{}"),
        CommitOperationAdd("pytorch_model.bin", os.urandom(2000)),
        CommitOperationAdd("model.safetensors", safetensors_bytes({"w": ("F32", [4], 4)})),
    ], commit_message="model")
    info = api.model_info("admin/llm")
    assert info.transformers_info.auto_model == "AutoModelForCausalLM"
    assert (info.transformers_info.pipeline_tag, info.transformers_info.processor) == ("text-generation", "AutoTokenizer")
    assert info.pipeline_tag == "text-generation"
    assert info.widget_data[0]["text"] == "My name is Julien and I like to"
    assert info.security_repo_status["unscannedFiles"] == ["pytorch_model.bin"]
    # `expand=` answers exactly the fields asked for.
    only = api.model_info("admin/llm", expand=["transformersInfo", "widgetData"])
    assert only.transformers_info.auto_model == "AutoModelForCausalLM" and only.widget_data
    assert only.siblings is None and only.sha is None
    # Expanded trees and paths-info carry each file's security status.
    tree = {f.path: f for f in api.list_repo_tree("admin/llm", expand=True)}
    assert tree["model.safetensors"].security["status"] == "safe"
    assert tree["pytorch_model.bin"].security["status"] == "unscanned"
    assert tree["pytorch_model.bin"].security["safe"] is False
    [paths] = api.get_paths_info("admin/llm", ["config.json"], expand=True)
    assert paths.security["status"] == "safe"

    # `gated` in listings, and `list_models(gated=…)`.
    api.create_repo("admin/open")
    api.update_repo_settings("admin/llm", gated="manual")
    gated = list(api.list_models(author="admin", gated=True))
    assert [m.id for m in gated] == ["admin/llm"] and gated[0].gated == "manual"
    assert [m.id for m in api.list_models(author="admin", gated=False)] == ["admin/open"]
    assert {m.id: m.gated for m in api.list_models(author="admin")} == {"admin/llm": "manual", "admin/open": False}
    api.update_repo_settings("admin/llm", gated=False)
    assert [m.id for m in api.list_models(author="admin", gated=True)] == []
