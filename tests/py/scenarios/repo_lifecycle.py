"""create_repo (and 409 with exist_ok), repo_info, repo_exists, delete_repo (missing_ok)."""
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

api = HfApi()
user = api.whoami()["name"]
url = api.create_repo("m1")
assert str(url).endswith(f"/{user}/m1"), url
again = api.create_repo("m1", exist_ok=True)
assert str(again) == str(url)
try:
    api.create_repo("m1")
    raise SystemExit("a second create without exist_ok must fail")
except HfHubHTTPError as e:
    assert e.response.status_code == 409
info = api.model_info(f"{user}/m1")
assert info.id == f"{user}/m1" and len(info.sha) == 40
assert [s.rfilename for s in info.siblings] == [".gitattributes"]
assert api.repo_exists(f"{user}/m1")
assert not api.repo_exists(f"{user}/nope")
ds = api.create_repo("d1", repo_type="dataset")
assert "/datasets/" in str(ds), ds
assert api.dataset_info(f"{user}/d1").id == f"{user}/d1"
api.delete_repo(f"{user}/m1")
assert not api.repo_exists(f"{user}/m1")
try:
    api.model_info(f"{user}/m1")
    raise SystemExit("deleted repo must be gone")
except RepositoryNotFoundError:
    pass
api.delete_repo(f"{user}/m1", missing_ok=True)

# Private repos: visible to the owner, the same RepositoryNotFoundError as a missing repo to
# anyone else, on every route; visibility can be changed.
priv = f"{user}/ds-private"
api.create_repo(priv, repo_type="dataset", private=True)
assert api.dataset_info(priv).private is True
anon = HfApi(token=False)
for call in (
    lambda: anon.dataset_info(priv),
    lambda: anon.list_repo_files(priv, repo_type="dataset"),
    lambda: anon.list_repo_refs(priv, repo_type="dataset"),
    lambda: anon.list_repo_commits(priv, repo_type="dataset"),
):
    try:
        call()
        raise SystemExit("private repo leaked to an anonymous caller")
    except RepositoryNotFoundError:
        pass
assert not anon.repo_exists(priv, repo_type="dataset")
api.update_repo_settings(priv, repo_type="dataset", private=False)
assert anon.dataset_info(priv).private is False
api.update_repo_settings(priv, repo_type="dataset", private=True)
assert not anon.repo_exists(priv, repo_type="dataset")
print("ok")
