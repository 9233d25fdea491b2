"""list_models / list_datasets: author, search, filter, sort, limit, cardData, across several
Link-paginated pages (the node under test serves 2 items per page)."""
import time

from huggingface_hub import CommitOperationAdd, HfApi

api = HfApi()
user = api.whoami()["name"]
for i in range(5):
    api.create_repo(f"{user}/list-{i}")
api.create_repo(f"{user}/other")
api.create_repo(f"{user}/ds", repo_type="dataset")
card = "---\nlicense: mit\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [tiny, test]\ndatasets: [squad]\nlanguage: [en]\n---\n# Tiny\n"
api.create_commit(f"{user}/list-3", [CommitOperationAdd("README.md", card.encode())], commit_message="card")
time.sleep(1.1)  # lastModified has one-second resolution; make list-0 the newest
api.create_commit(f"{user}/list-0", [CommitOperationAdd("a.txt", b"a")], commit_message="touch")


def ids(items):
    return [m.id for m in items]


def all_listed():
    got = set(ids(api.list_models(author=user, search="list-")))
    assert got == {f"{user}/list-{i}" for i in range(5)}, got


all_listed()
assert len(list(api.list_models(search="list-", limit=3))) == 3
assert ids(api.list_models(search="LIST-0", sort="last_modified"))[0] == f"{user}/list-0"


def newest_first():
    assert ids(api.list_models(author=user, sort="last_modified"))[0] == f"{user}/list-0"


newest_first()


def filtered():
    got = list(api.list_models(filter=["license:mit", "text-generation"], cardData=True))
    assert ids(got) == [f"{user}/list-3"], ids(got)
    m = got[0]
    assert m.card_data["license"] == "mit"
    assert {"tiny", "dataset:squad", "en", "transformers"} <= set(m.tags), m.tags
    assert m.pipeline_tag == "text-generation"


filtered()
info = api.model_info(f"{user}/list-3")
assert info.card_data["library_name"] == "transformers" and "license:mit" in info.tags
assert ids(api.list_datasets(author=user)) == [f"{user}/ds"]
assert ids(api.list_models(search="no-such-thing")) == []
print("ok")
