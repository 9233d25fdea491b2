"""Webhooks through the real `huggingface_hub` client and the `hf` CLI, delivering to receivers
the test starts on 127.0.0.1: create/list/get/update/enable/disable/delete, the Hub's payloads
(repo create, repo.content with `updatedRefs`, repo.config, discussion, discussion.comment)
with `X-Webhook-Secret`, a receiver that fails first and then succeeds (the retry and the
delivery log, kept across a restart), disabled webhooks sending nothing, others' webhooks
invisible, the payloads' `url` objects and the `move` event (parsed by `huggingface_hub`'s own
`WebhookPayload` model), and the SSRF filter (a node refuses loopback receivers unless its
config allows them, and metadata addresses always); and a webhook on node B firing once for a
commit that arrived by replication from node A.

The nodes that deliver to the test's receivers on 127.0.0.1 are started with
`[gateway] webhooks_allow_local = true`."""

import json
import queue
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import cli, hf
from huggingface_hub import CommitOperationAdd, HfApi, WebhookPayload
from huggingface_hub.errors import HfHubHTTPError

WAIT = 30.0


def local_hooks(tmp_path):
    """The flags of a node whose webhooks may deliver to loopback (the test's receivers)."""
    path = tmp_path / "hooks.toml"
    path.write_text("[gateway]\nwebhooks_allow_local = true\n")
    return ("--config", str(path))


class Receiver:
    """An HTTP server on 127.0.0.1 recording each POST; `/flaky` answers 500 to its first."""

    def __init__(self):
        self.got: queue.Queue = queue.Queue()
        self.flaky_calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = 200
                if self.path == "/flaky":
                    receiver.flaky_calls += 1
                    status = 500 if receiver.flaky_calls == 1 else 200
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.got.put((self.path, headers, json.loads(body), status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def next(self, scope):
        """The next delivery of `scope` (others are skipped), within WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                got = self.got.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {scope} delivery within {WAIT}s")
            if got[2]["event"]["scope"] == scope:
                return got

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_webhooks(node_factory, receiver, tmp_path):
    node = node_factory("node", *local_hooks(tmp_path))
    cli(node, "user", "add", "bob")
    bob = HfApi(endpoint=node.url, token=cli(node, "token", "create", "bob", "--scope", "write"))
    admin = HfApi(endpoint=node.url, token=node.admin_token)

    hook = admin.create_webhook(url=receiver.url("/ok"), watched=[{"type": "user", "name": "admin"}],
                                secret="s3cret")
    assert hook.domains == ["repo", "discussion"] and not hook.disabled and hook.secret == "s3cret"
    assert [h.id for h in admin.list_webhooks()] == [hook.id]
    assert admin.get_webhook(hook.id).url == receiver.url("/ok")
    # Others neither see nor change it.
    assert bob.list_webhooks() == []
    with pytest.raises(HfHubHTTPError) as e:
        bob.get_webhook(hook.id)
    assert e.value.response.status_code == 404
    with pytest.raises(HfHubHTTPError) as e:
        admin.create_webhook(url="ftp://nowhere", watched=[{"type": "user", "name": "admin"}])
    assert e.value.response.status_code == 400

    # Repo events.
    admin.create_repo("admin/hooked")
    path, headers, body, _ = receiver.next("repo")
    assert path == "/ok" and headers["x-webhook-secret"] == "s3cret"
    assert body["event"] == {"action": "create", "scope": "repo"}
    assert body["repo"]["name"] == "admin/hooked" and body["repo"]["type"] == "model"
    assert body["webhook"] == {"id": hook.id, "version": 3}
    # The client's own payload model parses it; `url` is under the endpoint the owner used.
    parsed = WebhookPayload.model_validate(body)
    assert parsed.repo.url.web == f"{node.url}/admin/hooked"
    assert parsed.repo.url.api == f"{node.url}/api/models/admin/hooked"
    before = admin.model_info("admin/hooked").sha
    commit = admin.create_commit("admin/hooked", [CommitOperationAdd("a.txt", b"a")], commit_message="a")
    _, _, body, _ = receiver.next("repo.content")
    assert body["event"]["action"] == "update" and body["repo"]["headSha"] == commit.oid
    assert body["updatedRefs"] == [{"ref": "refs/heads/main", "oldSha": before, "newSha": commit.oid}]
    admin.update_repo_settings("admin/hooked", private=True)
    _, _, body, _ = receiver.next("repo.config")
    assert body["updatedConfig"] == {"private": True} and body["repo"]["private"] is True

    # Discussion events.
    d = admin.create_discussion("admin/hooked", title="Hi", description="first")
    _, _, body, _ = receiver.next("discussion")
    assert body["event"]["action"] == "create"
    assert body["discussion"]["num"] == d.num and body["discussion"]["title"] == "Hi"
    admin.comment_discussion("admin/hooked", d.num, "second")
    _, _, body, _ = receiver.next("discussion.comment")
    assert body["comment"]["content"] == "second" and body["comment"]["author"]["id"] == "admin"
    assert body["discussion"]["url"]["web"] == f"{node.url}/admin/hooked/discussions/{d.num}"
    assert WebhookPayload.model_validate(body).comment.content == "second"

    # Update to a receiver that fails once: retried, and the log shows both attempts.
    hook = admin.update_webhook(hook.id, url=receiver.url("/flaky"), domains=["repo"])
    assert hook.watched[0].name == "admin" and hook.domains == ["repo"]
    second = admin.create_commit("admin/hooked", [CommitOperationAdd("b.txt", b"b")], commit_message="b")
    path, _, body, status = receiver.next("repo.content")
    assert (path, status, body["repo"]["headSha"]) == ("/flaky", 500, second.oid)
    path, _, body, status = receiver.next("repo.content")
    assert (path, status, body["repo"]["headSha"]) == ("/flaky", 200, second.oid)

    def log():
        with urllib.request.urlopen(urllib.request.Request(
                f"{node.url}/api/settings/webhooks/{hook.id}/logs",
                headers={"Authorization": f"Bearer {node.admin_token}"})) as r:
            return json.loads(r.read())

    deadline = time.monotonic() + WAIT
    while not (entries := [e for e in log() if e["event"]["scope"] == "repo.content"][-2:]) \
            or not entries[-1]["ok"]:
        assert time.monotonic() < deadline, log()
        time.sleep(0.05)
    assert [(e["attempt"], e["status"], e["ok"]) for e in entries] == [(1, 500, False), (2, 200, True)]

    # Disabled: the commit made meanwhile is never delivered; enabled again: the next is.
    assert admin.disable_webhook(hook.id).disabled
    hidden = admin.create_commit("admin/hooked", [CommitOperationAdd("c.txt", b"c")], commit_message="c")
    assert not admin.enable_webhook(hook.id).disabled
    shown = admin.create_commit("admin/hooked", [CommitOperationAdd("d.txt", b"d")], commit_message="d")
    _, _, body, _ = receiver.next("repo.content")
    assert body["updatedRefs"][0]["oldSha"] == hidden.oid and body["repo"]["headSha"] == shown.oid

    # A move is one `move` event naming the new id (no delete and create).
    admin.move_repo("admin/hooked", "admin/renamed")
    _, _, body, _ = receiver.next("repo")
    moved = WebhookPayload.model_validate(body)
    assert (moved.event.action, moved.repo.name, moved.movedTo.name) == ("move", "admin/hooked", "admin/renamed")
    assert moved.movedTo.owner.id == "admin"

    # The delivery log outlives a restart (it is kept on disk, bounded per webhook).
    deadline = time.monotonic() + WAIT
    while True:
        before_restart = log()
        if any(e["event"]["action"] == "move" and e["ok"] for e in before_restart):
            break
        assert time.monotonic() < deadline, before_restart
        time.sleep(0.05)
    assert node.terminate() == 0
    node = node_factory("node", *local_hooks(tmp_path))  # the same data directory
    admin = HfApi(endpoint=node.url, token=node.admin_token)
    assert log() == before_restart and len(before_restart) >= 5

    # The hf CLI lists it; deleting stops deliveries and it is gone.
    out = hf(node, node.admin_token, "webhooks", "ls", "--format", "json", home=tmp_path / "hf")
    assert hook.id in out
    admin.delete_webhook(hook.id)
    assert admin.list_webhooks() == []
    with pytest.raises(HfHubHTTPError) as e:
        admin.get_webhook(hook.id)
    assert e.value.response.status_code == 404


def test_a_webhook_on_b_fires_for_a_commit_replicated_from_a(node_factory, receiver, tmp_path):
    a = node_factory("a", "--admin", "alice")
    b = node_factory("b", "--bootstrap", a.info["p2p"][0], "--seed", "alice/*", *local_hooks(tmp_path))
    on_a = HfApi(endpoint=a.url, token=a.admin_token)
    on_b = HfApi(endpoint=b.url, token=b.admin_token)
    on_a.create_repo("alice/watched")
    first = on_a.create_commit("alice/watched", [CommitOperationAdd("a.txt", b"a")], commit_message="a")
    # B's webhook watches a namespace that A hosts: it fires when A's update arrives on B.
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if on_b.model_info("alice/watched").sha == first.oid:
                break
        except HfHubHTTPError:
            pass
        assert time.monotonic() < deadline, b.log()[-4000:]
        time.sleep(0.1)
    hook = on_b.create_webhook(url=receiver.url("/b"), watched=[{"type": "user", "name": "alice"}],
                               domains=["repo"], secret="on-b")
    second = on_a.create_commit("alice/watched", [CommitOperationAdd("b.txt", b"b")], commit_message="b")
    path, headers, body, _ = receiver.next("repo.content")
    assert path == "/b" and headers["x-webhook-secret"] == "on-b" and body["webhook"]["id"] == hook.id
    assert body["updatedRefs"] == [{"ref": "refs/heads/main", "oldSha": first.oid, "newSha": second.oid}]
    # Once: the next delivery is the next change, not the same one again.
    third = on_a.create_commit("alice/watched", [CommitOperationAdd("c.txt", b"c")], commit_message="c")
    _, _, body, _ = receiver.next("repo.content")
    assert body["updatedRefs"] == [{"ref": "refs/heads/main", "oldSha": second.oid, "newSha": third.oid}]


def test_receivers_on_local_and_metadata_addresses_are_refused(node):
    """The SSRF filter: a node with the default config refuses webhooks to loopback, private
    and link-local (cloud metadata) addresses, at creation and at update."""
    admin = HfApi(endpoint=node.url, token=node.admin_token)
    watched = [{"type": "user", "name": "admin"}]
    for url in ["http://127.0.0.1:9/h", "http://localhost:9/h", "http://169.254.169.254/latest/meta-data",
                "http://10.0.0.1/h", "http://[::1]:9/h", "http://[fe80::1]/h"]:
        with pytest.raises(HfHubHTTPError) as e:
            admin.create_webhook(url=url, watched=watched)
        assert e.value.response.status_code == 400, url
        assert "not allowed" in str(e.value), url
    hook = admin.create_webhook(url="http://93.184.216.34/h", watched=watched)
    with pytest.raises(HfHubHTTPError) as e:
        admin.update_webhook(hook.id, url="http://169.254.169.254/")
    assert e.value.response.status_code == 400
