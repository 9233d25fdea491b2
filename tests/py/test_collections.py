"""Collections through the real `huggingface_hub` client and the `hf` CLI: create (409 and
`exists_ok`), get, list (owner, item, truncation to 4 items), metadata (title, slug, theme,
visibility, position), items (add with notes, 409 and `exists_ok`, move, delete, missing),
private collections invisible to others, and who may change what."""

import re

import pytest
from conftest import cli, hf
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError


def status(call):
    try:
        call()
    except HfHubHTTPError as e:
        return e.response.status_code
    return 200


def test_collections(node, tmp_path):
    cli(node, "user", "add", "bob")
    bob_token = cli(node, "token", "create", "bob", "--scope", "write")
    admin = HfApi(endpoint=node.url, token=node.admin_token)
    bob = HfApi(endpoint=node.url, token=bob_token)
    anon = HfApi(endpoint=node.url, token=False)
    for i in range(6):
        admin.create_repo(f"admin/m{i}")
    admin.create_repo("admin/data", repo_type="dataset")
    admin.create_repo("admin/hidden", private=True)

    c = admin.create_collection("ICCV 2023", description="Portfolio", namespace="admin")
    assert re.fullmatch(r"admin/iccv-2023-[0-9a-f]{24}", c.slug), c.slug
    assert c.title == "ICCV 2023" and c.description == "Portfolio" and not c.private
    assert c.owner["name"] == "admin" and c.items == [] and c.url == f"{node.url}/collections/{c.slug}"
    # The same title again: 409, or the existing one with exists_ok.
    assert status(lambda: admin.create_collection("ICCV 2023")) == 409
    assert admin.create_collection("ICCV 2023", exists_ok=True).slug == c.slug
    # Others may not create in admin's namespace.
    assert status(lambda: bob.create_collection("Mine", namespace="admin")) == 403

    # Items: repos the caller can read, papers, other collections; notes; 409 on a repeat.
    c = admin.add_collection_item(c.slug, "admin/m0", "model", note="the first")
    admin.add_collection_item(c.slug, "admin/data", "dataset")
    admin.add_collection_item(c.slug, "2307.09288", "paper")
    other = admin.create_collection("Other")
    admin.add_collection_item(c.slug, other.slug, "collection")
    for i in range(1, 6):
        admin.add_collection_item(c.slug, f"admin/m{i}", "model")
    assert status(lambda: admin.add_collection_item(c.slug, "admin/m0", "model")) == 409
    assert len(admin.add_collection_item(c.slug, "admin/m0", "model", exists_ok=True).items) == 9
    assert status(lambda: admin.add_collection_item(c.slug, "admin/nope", "model")) == 404
    assert status(lambda: bob.add_collection_item(c.slug, "admin/m0", "model")) == 403

    got = anon.get_collection(c.slug)
    assert [(i.item_id, i.item_type, i.position) for i in got.items[:4]] == [
        ("admin/m0", "model", 0), ("admin/data", "dataset", 1),
        ("2307.09288", "paper", 2), (other.slug, "collection", 3),
    ]
    assert got.items[0].note == "the first"

    # Move the paper to the front and change its note; delete an item.
    paper = got.items[2]
    admin.update_collection_item(c.slug, paper.item_object_id, position=0, note="read me")
    got = admin.get_collection(c.slug)
    assert [i.item_id for i in got.items[:3]] == ["2307.09288", "admin/m0", "admin/data"]
    assert [i.position for i in got.items] == list(range(9))
    assert got.items[0].note == "read me"
    admin.delete_collection_item(c.slug, got.items[1].item_object_id)
    assert "admin/m0" not in [i.item_id for i in admin.get_collection(c.slug).items]
    assert status(lambda: admin.delete_collection_item(c.slug, got.items[1].item_object_id)) == 404
    admin.delete_collection_item(c.slug, got.items[1].item_object_id, missing_ok=True)

    # Listing: by owner and by item, at most 4 items each.
    listed = {x.slug: x for x in anon.list_collections(owner="admin")}
    assert set(listed) == {c.slug, other.slug}
    assert len(listed[c.slug].items) == 4
    assert [x.slug for x in anon.list_collections(item="datasets/admin/data")] == [c.slug]
    assert list(anon.list_collections(owner="bob")) == []

    # Metadata: a new title changes the slug's words, not its id; theme; position.
    updated = admin.update_collection_metadata(c.slug, title="ICCV Oct 2023", theme="green", position=0)
    assert updated.slug == c.slug.replace("iccv-2023", "iccv-oct-2023") and updated.theme == "green"
    assert updated.position == 0
    assert admin.get_collection(c.slug).title == "ICCV Oct 2023"  # the old slug still works
    assert status(lambda: admin.update_collection_metadata(c.slug, theme="plaid")) == 400
    assert status(lambda: bob.update_collection_metadata(c.slug, title="mine")) == 403

    # Private: invisible to others, in get and list.
    admin.update_collection_metadata(other.slug, private=True)
    assert status(lambda: anon.get_collection(other.slug)) == 404
    assert status(lambda: bob.get_collection(other.slug)) == 404
    assert [x.slug for x in bob.list_collections(owner="admin")] == [updated.slug]
    assert admin.get_collection(other.slug).private

    # The hf CLI: create, add an item, list, delete.
    home = tmp_path / "hf"
    out = hf(node, bob_token, "collections", "create", "Bob's picks", home=home)
    slug = re.search(r"bob/bob-s-picks-[0-9a-f]{24}", out).group(0)
    hf(node, bob_token, "collections", "add-item", slug, "admin/m1", "model", home=home)
    assert "admin/m1" in hf(node, bob_token, "collections", "info", slug, home=home)
    assert slug in hf(node, bob_token, "collections", "ls", "--owner", "bob", "--format", "json", home=home)
    hf(node, bob_token, "collections", "delete", slug, home=home)
    assert status(lambda: bob.get_collection(slug)) == 404

    # A private repo others cannot read cannot be added by them either.
    mine = bob.create_collection("Bob 2")
    assert status(lambda: bob.add_collection_item(mine.slug, "admin/hidden", "model")) == 404
    admin.delete_collection(c.slug)
    assert status(lambda: anon.get_collection(c.slug)) == 404
    admin.delete_collection(c.slug, missing_ok=True)
    with pytest.raises(HfHubHTTPError):
        admin.delete_collection(c.slug)
