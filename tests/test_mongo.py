"""The protocol end to end with the MongoDB store selected, over a real wire connection.

The store contract (test_store_contract.py) proves the Mongo backend behaves
like SQLite through the Store interface; these tests prove the whole server
does, plus what only a networked store has: outages and recovery, durability
across a collab restart, and the real CLI pointed at a ``mongodb://`` URL.

Every test gets a fresh database on the session's Mongo server (nx-27017, or
``COLLAB_TEST_MONGODB_URL``); the outage test starts a server of its own,
since stopping the shared one would break every other test.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pymongo
import pytest
import socketio
import tornado.httpclient
from harness import SECRET, Client, Harness, cancel_leftover_tasks, make_settings
from process import CollabProcess
from services import MongoServer, with_database

from collab.config import Settings
from collab.server import Server

pytestmark = pytest.mark.mongo

#: an outage must be answered this fast (server selection times out after 1 s)
QUICKLY = 5.0


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def settings(mongo_db: str) -> Settings:
    """Overrides conftest's ``settings``, so its ``server`` fixture runs on Mongo."""
    return make_settings(storage_url=mongo_db, mongodb_server_selection_timeout_ms=1000)


class Servers:
    """Collab servers started and stopped inside a test; whatever still runs stops at the end."""

    def __init__(self) -> None:
        self.running: list[Harness] = []

    async def start(self, settings: Settings) -> Harness:
        harness = Harness(await Server.start(settings))
        self.running.append(harness)
        return harness

    async def stop(self, harness: Harness) -> None:
        self.running.remove(harness)
        await harness.close_clients()
        await harness.server.stop()

    async def stop_all(self) -> None:
        for harness in list(self.running):
            await self.stop(harness)
        await cancel_leftover_tasks()


@pytest.fixture
def servers(io_loop) -> Iterator[Servers]:
    servers = Servers()
    yield servers
    io_loop.run_sync(servers.stop_all)


# -- helpers -------------------------------------------------------------------


async def new_chat(owner: Client, chat_id: str = "c1", members: list[str] | None = None) -> dict:
    ack = await owner.ok("chat:create", {"chat_id": chat_id, "members": members or []})
    return ack["chat"]


async def post(client: Client, content: str, chat_id: str = "c1", **extra) -> dict:
    ack = await client.ok("chat:message", {"chat_id": chat_id, "content": content, **extra})
    return ack["message"]


def seqs(messages: list[dict]) -> list[int]:
    return [m["seq"] for m in messages]


async def readyz(harness: Harness) -> tuple[int, dict, float]:
    """``(status, body, seconds taken)`` of GET /readyz."""
    start = time.monotonic()
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        harness.url + "/readyz", raise_error=False, request_timeout=30
    )
    return response.code, json.loads(response.body), time.monotonic() - start


async def unavailable(client: Client, event: str, data: dict) -> None:
    """``event`` fails with UNAVAILABLE (ack and ``error`` event), and quickly."""
    start = time.monotonic()
    ack = await client.call(event, data, timeout=30)
    elapsed = time.monotonic() - start
    assert ack["ok"] is False, (event, ack)
    assert ack["error"]["code"] == "UNAVAILABLE", (event, ack)
    assert await client.next("error") == ack["error"]
    assert elapsed < QUICKLY, f"{event} took {elapsed:.1f}s to answer UNAVAILABLE"


async def in_thread(fn: Callable[[], object]) -> None:
    """Run a blocking call (starting or stopping a service) off the event loop."""
    await asyncio.get_running_loop().run_in_executor(None, fn)


# -- documents -------------------------------------------------------------------


async def test_a_connection_keeps_document_roles_read_from_the_primary(server):
    assert server.app.store.role_reads_current is True


async def test_document_create_join_update(server):
    alice = await server.connect("alice")
    created = (await alice.ok("documents:create", {"document_id": "d1", "content": "v0"}))
    assert created["document"]["version"] == 0
    await alice.ok("documents:share", {"document_id": "d1", "user_id": "bob", "role": "editor"})
    bob = await server.connect("bob")
    joined = await bob.ok("documents:join", {"document_id": "d1"})
    assert joined["document"] == created["document"]
    assert joined["users"] == ["bob"]

    await alice.ok("documents:join", {"document_id": "d1"})
    assert await bob.next("user:joined") == {"user_id": "alice", "document_id": "d1"}
    ack = await alice.ok("documents:update", {"document_id": "d1", "content": "v1", "version": 1})
    document = ack["document"]
    assert (document["content"], document["version"], document["updated_by"]) == (
        "v1", 1, "alice"
    )
    assert await bob.next("documents:updated") == {"document": document, "user_id": "alice"}
    assert (await bob.ok("documents:join", {"document_id": "d1"}))["document"] == document


async def test_document_create_with_a_taken_id(server):
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "d1"})
    await alice.fails("documents:create", {"document_id": "d1"}, "ALREADY_EXISTS")


async def test_stale_update_is_a_version_conflict(server):
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "d1", "content": "v0"})
    ack = await alice.ok("documents:update", {"document_id": "d1", "content": "v1", "version": 1})
    error = await alice.fails(
        "documents:update", {"document_id": "d1", "content": "stale", "version": 1},
        "VERSION_CONFLICT",
    )
    assert error["details"] == {"current_version": 1, "document": ack["document"]}


async def test_concurrent_updates_of_one_version_exactly_one_wins(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await alice.ok("documents:create", {"document_id": "d1", "content": "v0"})
    await alice.ok("documents:share", {"document_id": "d1", "user_id": "bob", "role": "editor"})

    acks = await asyncio.gather(
        alice.call("documents:update", {"document_id": "d1", "content": "A", "version": 1}),
        bob.call("documents:update", {"document_id": "d1", "content": "B", "version": 1}),
    )
    winners = [ack for ack in acks if ack["ok"]]
    losers = [ack for ack in acks if not ack["ok"]]
    assert len(winners) == len(losers) == 1, acks
    winner = winners[0]["document"]
    assert winner["version"] == 1
    assert losers[0]["error"]["code"] == "VERSION_CONFLICT"
    assert losers[0]["error"]["details"] == {"current_version": 1, "document": winner}
    assert (await alice.ok("documents:join", {"document_id": "d1"}))["document"] == winner


# -- chat ------------------------------------------------------------------------


async def test_chat_create_join_message_history(server):
    alice = await server.connect("alice")
    chat = await new_chat(alice, members=["bob"])
    assert chat["members"] == ["alice", "bob"]
    await alice.ok("chat:join", {"chat_id": "c1"})
    bob = await server.connect("bob")
    joined = await bob.ok("chat:join", {"chat_id": "c1"})
    assert joined["chat"] == chat
    assert sorted(joined["users"]) == ["alice", "bob"]
    assert joined["messages"] == []

    sent = [await post(alice, f"m{i}") for i in range(1, 6)]
    assert seqs(sent) == [1, 2, 3, 4, 5]
    assert [(await bob.next("chat:message"))["message"] for _ in sent] == sent

    page = await bob.ok("chat:history", {"chat_id": "c1", "limit": 2})
    assert (page["messages"], page["has_more"]) == (sent[3:], True)
    page = await bob.ok("chat:history", {"chat_id": "c1", "before_seq": 4, "limit": 10})
    assert (page["messages"], page["has_more"]) == (sent[:3], False)
    rejoined = await bob.ok("chat:join", {"chat_id": "c1", "since_seq": 2})
    assert rejoined["messages"] == sent[2:]
    latest = await bob.ok("chat:join", {"chat_id": "c1"})
    assert latest["messages"] == sent


async def test_non_member_cannot_join_or_post(server):
    alice = await server.connect("alice")
    await new_chat(alice)
    eve = await server.connect("eve")
    await eve.fails("chat:join", {"chat_id": "c1"}, "NOT_FOUND")
    await eve.fails("chat:message", {"chat_id": "c1", "content": "hi"}, "NOT_FOUND")


async def test_client_id_retry_returns_the_stored_message(server):
    alice = await server.connect("alice")
    await new_chat(alice)
    await alice.ok("chat:join", {"chat_id": "c1"})
    first = await post(alice, "hello", client_id="k1")
    assert first["client_id"] == "k1"
    assert alice.pending("chat:message") == [{"message": first}]

    again = await post(alice, "hello (resent)", client_id="k1")
    assert again == first
    assert alice.pending("chat:message") == []  # not broadcast again
    other_tab = await server.connect("alice")
    assert await post(other_tab, "hello", client_id="k1") == first
    assert seqs([await post(alice, "next")]) == [2]  # the retries took no seq


async def test_50_messages_from_10_connections_get_seqs_1_to_50_in_order(server):
    users = [f"user{i}" for i in range(5)]
    owner = await server.connect("user0")
    await new_chat(owner, members=users)

    async def joined(user_id: str) -> Client:
        client = await server.connect(user_id)
        await client.ok("chat:join", {"chat_id": "c1"})
        return client

    clients = await asyncio.gather(*(joined(u) for u in users * 2))

    async def send_five(client: Client) -> list[dict]:
        return await asyncio.gather(*(
            client.call("chat:message", {"chat_id": "c1", "content": f"{client.sid}/{i}"})
            for i in range(5)
        ))

    acks = [ack for batch in await asyncio.gather(*map(send_five, clients)) for ack in batch]
    assert all(ack["ok"] for ack in acks), [ack for ack in acks if not ack["ok"]]
    stored = sorted((ack["message"] for ack in acks), key=lambda m: m["seq"])
    assert seqs(stored) == list(range(1, 51))

    for client in clients:
        received = [(await client.next("chat:message"))["message"] for _ in range(50)]
        assert received == stored
    history = await owner.ok("chat:history", {"chat_id": "c1", "limit": 50})
    assert (history["messages"], history["has_more"]) == (stored, False)


async def test_one_connections_messages_sent_at_once_are_stored_in_the_order_sent(server):
    """Mongo places a message (its seq) inside the call, not in call order: the
    messages of one connection are not in the store together here, and keep their
    order (on SQLite they are, collab/pipeline.py)."""
    assert not server.app.store.writes_in_call_order
    owner = await server.connect("alice")
    await new_chat(owner)
    acks = await asyncio.gather(*(
        owner.call("chat:message", {"chat_id": "c1", "content": str(i)}) for i in range(20)))
    assert [(ack["message"]["seq"], ack["message"]["content"]) for ack in acks] == \
        [(i + 1, str(i)) for i in range(20)]


# -- durability across a collab restart ------------------------------------------


async def test_acknowledged_writes_survive_a_collab_restart(settings, servers):
    first = await servers.start(settings)
    alice = await first.connect("alice")
    await alice.ok("documents:create", {"document_id": "d1", "content": "v0"})
    await alice.ok("documents:share", {"document_id": "d1", "user_id": "bob", "role": "viewer"})
    document = (await alice.ok(
        "documents:update", {"document_id": "d1", "content": "v1", "version": 1}
    ))["document"]
    chat = await new_chat(alice, members=["bob"])
    sent = [await post(alice, f"m{i}", client_id=f"k{i}") for i in range(1, 4)]
    await servers.stop(first)

    second = await servers.start(settings)
    bob = await second.connect("bob")
    assert (await bob.ok("documents:join", {"document_id": "d1"}))["document"] == document
    await bob.fails(  # the viewer role survived too
        "documents:update", {"document_id": "d1", "content": "x", "version": 2},
        "PERMISSION_DENIED",
    )
    joined = await bob.ok("chat:join", {"chat_id": "c1"})
    assert (joined["chat"], joined["messages"]) == (chat, sent)
    alice = await second.connect("alice")
    assert await post(alice, "m1 again", client_id="k1") == sent[0]
    assert seqs([await post(alice, "m4")]) == [4]


# -- settings --------------------------------------------------------------------


async def test_production_write_concern_and_read_preference_settings(mongo_db, servers):
    harness = await servers.start(make_settings(
        storage_url=mongo_db,
        mongodb_write_concern="majority",
        mongodb_read_preference="secondaryPreferred",
    ))
    alice = await harness.connect("alice")
    await alice.ok("documents:create", {"document_id": "d1"})
    # role reads may come from a secondary: a connection keeps no document role
    assert harness.app.store.role_reads_current is False
    reads = []
    read_role = harness.app.store.get_document_role

    async def counted(document_id: str, user_id: str) -> str | None:
        reads.append(document_id)
        return await read_role(document_id, user_id)

    harness.app.store.get_document_role = counted
    ack = await alice.ok("documents:update", {"document_id": "d1", "content": "x", "version": 1})
    await alice.ok("documents:get", {"document_id": "d1"})
    assert reads == ["d1", "d1"]
    assert (await alice.ok("documents:join", {"document_id": "d1"}))["document"] == ack["document"]
    await new_chat(alice)
    message = await post(alice, "hi", client_id="k1")
    assert await post(alice, "hi", client_id="k1") == message
    assert (await alice.ok("chat:history", {"chat_id": "c1"}))["messages"] == [message]


# -- outage ----------------------------------------------------------------------


@pytest.mark.skipif(
    bool(os.environ.get("COLLAB_TEST_MONGODB_URL")),
    reason="an external MongoDB cannot be stopped by the tests",
)
class TestOutage:
    """A Mongo server of our own, stopped and started again under a running collab."""

    @pytest.fixture
    def mongo(self, tmp_path: Path) -> Iterator[MongoServer]:
        with MongoServer(tmp_path) as mongo:
            yield mongo

    @pytest.fixture
    def settings(self, mongo: MongoServer) -> Settings:
        return make_settings(
            storage_url=with_database(mongo.url, "outage"),
            mongodb_server_selection_timeout_ms=1000,
        )

    async def test_events_answer_unavailable_then_recover_without_a_restart(self, server, mongo):
        alice = await server.connect("alice")
        await alice.ok("documents:create", {"document_id": "d1", "content": "v0"})
        await new_chat(alice)
        await alice.ok("chat:join", {"chat_id": "c1"})
        before = await post(alice, "before")
        assert (await readyz(server))[:2] == (200, {"status": "ok", "failed": []})

        await in_thread(mongo.stop)
        await unavailable(alice, "documents:update",
                          {"document_id": "d1", "content": "lost", "version": 1})
        await unavailable(alice, "chat:message",
                          {"chat_id": "c1", "content": "during", "client_id": "k1"})
        await unavailable(alice, "documents:create", {"document_id": "d2"})
        await unavailable(alice, "chat:history", {"chat_id": "c1"})
        assert alice.pending("chat:message") == [{"message": before}]  # nothing broadcast
        status, body, elapsed = await readyz(server)
        assert (status, body) == (503, {"status": "unavailable", "failed": ["store"]})
        assert elapsed < QUICKLY, f"/readyz took {elapsed:.1f}s while Mongo was down"

        await in_thread(mongo.start)  # same port, same data
        deadline = time.monotonic() + 15
        while (await readyz(server))[0] != 200:  # the driver reconnects on its own
            assert time.monotonic() < deadline, "collab did not recover after Mongo returned"
            await asyncio.sleep(0.1)
        # Nothing of the failed events was written: version 1, seq 2 and d2 are all free.
        updated = await alice.ok(
            "documents:update", {"document_id": "d1", "content": "after", "version": 1}
        )
        assert updated["document"]["content"] == "after"
        retried = await post(alice, "during", client_id="k1")
        assert retried["seq"] == 2
        assert alice.pending("chat:message") == [{"message": retried}]
        await alice.ok("documents:create", {"document_id": "d2"})
        history = await alice.ok("chat:history", {"chat_id": "c1"})
        assert history["messages"] == [before, retried]


# -- the real CLI ----------------------------------------------------------------


@pytest.fixture
def node(mongo_db: str, tmp_path: Path) -> Iterator[CollabProcess]:
    """``collab serve`` configured as an operator would to run it on MongoDB."""
    proc = CollabProcess(tmp_path, {
        "COLLAB_STORAGE_URL": mongo_db,
        "COLLAB_JWT_SECRET": SECRET,
        "COLLAB_LOG_LEVEL": "WARNING",
    })
    yield proc
    proc.kill()


async def test_cli_serves_on_mongo_and_exits_cleanly_on_sigterm(node, mongo_db):
    node.start()
    token = node.token("alice")
    sio = socketio.AsyncClient(reconnection=False)
    try:
        await sio.connect(node.url, auth={"token": token}, transports=["websocket"],
                          wait_timeout=5)
        ack = await sio.call("documents:create", {"document_id": "cli-doc"}, timeout=5)
        assert ack["ok"] is True, ack
        assert ack["document"]["created_by"] == "alice"
        with pymongo.MongoClient(mongo_db, serverSelectionTimeoutMS=2000) as client:
            assert client.get_default_database().documents.find_one({"_id": "cli-doc"})

        start = time.monotonic()
        code = await asyncio.get_running_loop().run_in_executor(None, node.terminate, 10)
        assert code == 0, node.output()
        assert time.monotonic() - start < 10
    finally:
        if sio.connected:
            await sio.disconnect()
        await cancel_leftover_tasks()
