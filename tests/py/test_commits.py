"""Writers to one branch with the real huggingface_hub client: concurrent commits all land (or
get a clear conflict), and a ref lock left by a crash does not block later commits."""

import concurrent.futures

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError


def test_concurrent_commits_to_one_branch_queue(node):
    api = HfApi(endpoint=node.url, token=node.admin_token)
    repo = api.create_repo("busy").repo_id
    head = api.model_info(repo).sha

    def commit(i, parent=None):
        return api.create_commit(repo, [CommitOperationAdd(f"f{i}.txt", f"{i}".encode())],
                                 commit_message=f"writer {i}", parent_commit=parent)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(commit, range(16)))
    assert len({r.oid for r in results}) == 16
    files = api.list_repo_files(repo)
    assert all(f"f{i}.txt" in files for i in range(16)), files
    assert len(api.list_repo_commits(repo)) == 1 + 16

    # All against the same parent: one wins, the others are conflicts, never a 500.
    head = api.model_info(repo).sha
    def racing(i):
        try:
            commit(100 + i, parent=head)
            return 200
        except HfHubHTTPError as e:
            return e.response.status_code
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(racing, range(8)))
    assert statuses.count(200) == 1, statuses
    assert all(s in (200, 409, 412) for s in statuses), statuses


def test_a_stale_ref_lock_is_cleared_at_start(node_factory):
    node = node_factory()
    api = HfApi(endpoint=node.url, token=node.admin_token)
    repo = api.create_repo("crashed").repo_id
    node.kill()
    git_dir = node.data / "repos" / "models" / repo.split("/")[0] / "crashed.git"
    assert (git_dir / "HEAD").is_file(), git_dir
    # What a writer killed between taking the ref's lock and committing leaves.
    (git_dir / "refs" / "heads" / "main.lock").write_text("0" * 40 + "\n")
    (git_dir / "packed-refs.lock").write_text("")
    node = node_factory()  # the same data directory, restarted
    api = HfApi(endpoint=node.url, token=node.admin_token)
    api.create_commit(repo, [CommitOperationAdd("after.txt", b"x")], commit_message="after")
    assert "after.txt" in api.list_repo_files(repo)
    assert not (git_dir / "refs" / "heads" / "main.lock").exists()
