"""Hub parity: the endpoints and fields clients call, through the real `huggingface_hub`
2.4.0 client and its `hf` CLI against a real node: auth-check, duplicate, super-squash, LFS
files, the storage listing, preupload's `oid` and `shouldIgnore`, model_info's
`safetensors`/`gguf`/`config`, `lastCommit` in expanded trees, formatted commits, a Space's
default README, org names in whoami, the tags in use by type and a dataset card's
`task_categories` as tags."""

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
