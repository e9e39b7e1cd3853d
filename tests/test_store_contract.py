"""The store contract: every backend behaves the same through the Store interface.

Each test runs once per entry in BACKENDS. To add a backend, add one entry:
a factory ``(request, tmp_path) -> url`` (it may use other fixtures through
``request.getfixturevalue`` and register cleanup with ``request.addfinalizer``),
whether data survives a close and reopen, and marks for its parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymongo
import pytest
from services import with_database

from collab.errors import AlreadyExists, ErrorCode, NotFound, Unavailable, VersionConflict
from collab.store import Store, open_store
from collab.store.sqlite import sqlite_path


@dataclass(frozen=True)
class Backend:
    url: Callable[[pytest.FixtureRequest, Path], str]
    durable: bool  # data survives close() and a new store opened on the same URL
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())


def _mongodb(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database per test on the session's Mongo server, dropped afterwards."""
    name = "contract_" + uuid.uuid4().hex[:16]
    url = with_database(request.getfixturevalue("mongodb_url"), name)

    def drop() -> None:
        with pymongo.MongoClient(url, serverSelectionTimeoutMS=2000) as client:
            client.drop_database(name)

    request.addfinalizer(drop)
    return url


BACKENDS: dict[str, Backend] = {
    "sqlite-memory": Backend(lambda request, tmp_path: "sqlite://:memory:", durable=False),
    "sqlite-file": Backend(lambda request, tmp_path: f"sqlite:///{tmp_path}/c.db", durable=True),
    "mongodb": Backend(_mongodb, durable=True, marks=(pytest.mark.mongo,)),
    # Further backends go here, one line each.
}


def _url_for(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return BACKENDS[backend].url(request, tmp_path)


@pytest.fixture(params=[pytest.param(name, marks=b.marks) for name, b in BACKENDS.items()])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url_for(backend, request, tmp_path)


@pytest.fixture
def store(store_url: str, io_loop) -> Iterator[Store]:
    store = open_store(store_url)
    io_loop.run_sync(store.open)
    yield store
    io_loop.run_sync(store.close)


# -- documents -------------------------------------------------------------


async def test_create_and_get_document(store: Store) -> None:
    doc = await store.create_document("d1", "Title", "hello", "alice")
    assert set(doc) == {
        "id", "title", "content", "version", "created_by", "created_at", "updated_by", "updated_at"
    }
    assert doc["id"] == "d1" and doc["title"] == "Title" and doc["content"] == "hello"
    assert doc["version"] == 0
    assert doc["created_by"] == doc["updated_by"] == "alice"
    assert doc["created_at"] == doc["updated_at"]
    assert doc["created_at"].endswith("Z")
    assert await store.get_document("d1") == doc
    assert await store.get_document("missing") is None


async def test_create_duplicate_document_is_already_exists(store: Store) -> None:
    original = await store.create_document("d1", "First", "one", "alice")
    with pytest.raises(AlreadyExists):
        await store.create_document("d1", "Second", "two", "bob")
    assert await store.get_document("d1") == original
    assert await store.get_document_acl("d1") == {"alice": "owner"}


async def test_update_with_next_version(store: Store) -> None:
    created = await store.create_document("d1", "T", "v0", "alice")
    doc = await store.update_document("d1", "v1", 1, "bob")
    assert doc["version"] == 1 and doc["content"] == "v1"
    assert doc["updated_by"] == "bob" and doc["updated_at"] >= created["updated_at"]
    assert {k: doc[k] for k in ("id", "title", "created_by", "created_at")} == {
        k: created[k] for k in ("id", "title", "created_by", "created_at")
    }
    assert await store.get_document("d1") == doc
    doc2 = await store.update_document("d1", "v2", 2, "alice")
    assert doc2["version"] == 2 and doc2["content"] == "v2" and doc2["updated_by"] == "alice"


# stored version is 1: 1 is stale (based on 0 again), 3 and 10 skip ahead, 0 is never valid
@pytest.mark.parametrize("version", [0, 1, 3, 10])
async def test_update_with_wrong_version_is_conflict(store: Store, version: int) -> None:
    await store.create_document("d1", "T", "v0", "alice")
    current = await store.update_document("d1", "v1", 1, "alice")
    with pytest.raises(VersionConflict) as info:
        await store.update_document("d1", "lost", version, "bob")
    err = info.value
    assert err.code is ErrorCode.VERSION_CONFLICT
    assert err.current == current
    assert err.details == {"current_version": 1, "document": current}
    assert await store.get_document("d1") == current


async def test_update_missing_document_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.update_document("missing", "x", 1, "alice")
    assert await store.get_document("missing") is None


async def test_concurrent_updates_with_same_version_one_wins(store: Store) -> None:
    await store.create_document("d1", "T", "v0", "alice")
    results = await asyncio.gather(
        *(store.update_document("d1", f"from-{u}", 1, u) for u in ("alice", "bob", "carol")),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, dict)]
    conflicts = [r for r in results if isinstance(r, VersionConflict)]
    assert len(wins) == 1 and len(conflicts) == 2, results
    stored = await store.get_document("d1")
    assert stored == wins[0] and stored["version"] == 1
    assert all(c.current == stored for c in conflicts)


# -- document roles ----------------------------------------------------------


async def test_document_roles(store: Store) -> None:
    await store.create_document("d1", "T", "", "alice")
    assert await store.get_document_role("d1", "alice") == "owner"
    assert await store.get_document_role("d1", "bob") is None
    assert await store.get_document_acl("d1") == {"alice": "owner"}

    assert await store.set_document_role("d1", "bob", "editor") == {
        "alice": "owner", "bob": "editor"
    }
    assert await store.set_document_role("d1", "carol", "viewer") == {
        "alice": "owner", "bob": "editor", "carol": "viewer"
    }
    assert await store.get_document_role("d1", "bob") == "editor"

    # changing a role replaces it
    assert (await store.set_document_role("d1", "bob", "viewer"))["bob"] == "viewer"
    assert await store.get_document_role("d1", "bob") == "viewer"

    # revoking removes it; revoking again is a no-op
    assert await store.set_document_role("d1", "bob", None) == {
        "alice": "owner", "carol": "viewer"
    }
    assert await store.set_document_role("d1", "bob", None) == {
        "alice": "owner", "carol": "viewer"
    }
    assert await store.get_document_role("d1", "bob") is None
    assert await store.get_document_acl("d1") == {"alice": "owner", "carol": "viewer"}


async def test_roles_are_per_document(store: Store) -> None:
    await store.create_document("d1", "T", "", "alice")
    await store.create_document("d2", "T", "", "bob")
    await store.set_document_role("d1", "carol", "editor")
    assert await store.get_document_acl("d2") == {"bob": "owner"}
    assert await store.get_document_role("d2", "carol") is None
    assert await store.get_document_role("d2", "alice") is None
    assert await store.get_document_acl("missing") == {}


# -- chats -------------------------------------------------------------------


async def test_create_chat_with_members(store: Store) -> None:
    # ids deliberately out of alphabetical order: members keep the order they were added
    chat = await store.create_chat("c1", "Room", "zoe", ["mia", "bob", "mia", "zoe", "ann"])
    assert set(chat) == {"id", "title", "created_by", "created_at", "members"}
    assert chat["id"] == "c1" and chat["title"] == "Room" and chat["created_by"] == "zoe"
    assert chat["created_at"].endswith("Z")
    assert chat["members"] == ["zoe", "mia", "bob", "ann"]
    assert await store.get_chat("c1") == chat
    assert await store.get_chat("missing") is None
    assert await store.get_chat_role("c1", "zoe") == "owner"
    assert await store.get_chat_role("c1", "mia") == "member"
    assert await store.get_chat_role("c1", "ann") == "member"
    assert await store.get_chat_role("c1", "dave") is None
    assert await store.get_chat_role("missing", "zoe") is None


async def test_create_duplicate_chat_is_already_exists(store: Store) -> None:
    original = await store.create_chat("c1", "Room", "alice", ["bob"])
    with pytest.raises(AlreadyExists):
        await store.create_chat("c1", "Other", "mallory", ["eve"])
    assert await store.get_chat("c1") == original
    assert await store.get_chat_role("c1", "mallory") is None
    assert await store.get_chat_role("c1", "eve") is None


async def test_add_chat_member_is_idempotent(store: Store) -> None:
    await store.create_chat("c1", "Room", "zoe", ["mia"])
    chat = await store.add_chat_member("c1", "dave")
    assert chat["members"] == ["zoe", "mia", "dave"]
    assert await store.add_chat_member("c1", "dave") == chat
    assert await store.add_chat_member("c1", "mia") == chat
    assert await store.add_chat_member("c1", "zoe") == chat
    assert await store.get_chat_role("c1", "zoe") == "owner"
    assert await store.get_chat_role("c1", "dave") == "member"
    chat = await store.add_chat_member("c1", "al")
    assert chat["members"] == ["zoe", "mia", "dave", "al"]
    assert await store.get_chat("c1") == chat


async def test_add_member_to_missing_chat_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.add_chat_member("missing", "bob")
    assert await store.get_chat("missing") is None


# -- messages ----------------------------------------------------------------


async def test_add_message_shape(store: Store) -> None:
    await store.create_chat("c1", "Room", "alice", [])
    message, created = await store.add_message("c1", "alice", "hello")
    assert created is True
    assert set(message) == {"id", "chat_id", "seq", "user_id", "content", "created_at"}
    assert message["chat_id"] == "c1" and message["seq"] == 1
    assert message["user_id"] == "alice" and message["content"] == "hello"
    with_client_id, created = await store.add_message("c1", "alice", "again", client_id="k1")
    assert created is True and with_client_id["client_id"] == "k1" and with_client_id["seq"] == 2
    assert message["id"] != with_client_id["id"]
    assert await store.messages_after("c1", 0, 10) == [message, with_client_id]


async def test_concurrent_messages_get_gapless_seqs(store: Store) -> None:
    await store.create_chat("c1", "Room", "alice", ["bob"])
    results = await asyncio.gather(
        *(store.add_message("c1", ("alice", "bob")[i % 2], f"m{i}") for i in range(50))
    )
    assert all(created for _, created in results)
    assert sorted(m["seq"] for m, _ in results) == list(range(1, 51))
    stored = await store.messages_after("c1", 0, 100)
    assert [m["seq"] for m in stored] == list(range(1, 51))
    assert sorted(m["content"] for m in stored) == sorted(f"m{i}" for i in range(50))
    assert len({m["id"] for m in stored}) == 50
    assert sorted(stored, key=lambda m: m["seq"]) == sorted(
        (m for m, _ in results), key=lambda m: m["seq"]
    )


async def test_client_id_dedupes(store: Store) -> None:
    await store.create_chat("c1", "Room", "alice", ["bob"])
    first, created = await store.add_message("c1", "alice", "hi", client_id="k1")
    assert created is True
    again, created = await store.add_message("c1", "alice", "hi (retry)", client_id="k1")
    assert created is False
    assert again == first
    nxt, _ = await store.add_message("c1", "alice", "next")
    assert nxt["seq"] == 2  # the retry did not use up a seq
    assert [m["content"] for m in await store.messages_after("c1", 0, 10)] == ["hi", "next"]


async def test_concurrent_retries_store_one_message(store: Store) -> None:
    await store.create_chat("c1", "Room", "alice", [])
    results = await asyncio.gather(
        *(store.add_message("c1", "alice", "hi", client_id="k1") for _ in range(10))
    )
    assert [created for _, created in results].count(True) == 1
    assert len({m["id"] for m, _ in results}) == 1
    assert len(await store.messages_after("c1", 0, 100)) == 1


async def test_client_id_is_scoped_to_user_and_chat(store: Store) -> None:
    await store.create_chat("c1", "Room", "alice", ["bob"])
    await store.create_chat("c2", "Other", "alice", [])
    a, _ = await store.add_message("c1", "alice", "a", client_id="k1")
    b, created_b = await store.add_message("c1", "bob", "b", client_id="k1")
    c, created_c = await store.add_message("c2", "alice", "c", client_id="k1")
    assert created_b and created_c
    assert len({a["id"], b["id"], c["id"]}) == 3
    assert (a["seq"], b["seq"], c["seq"]) == (1, 2, 1)
    assert b["client_id"] == c["client_id"] == "k1"


async def test_seqs_are_per_chat(store: Store) -> None:
    await store.create_chat("c1", "Room", "alice", [])
    await store.create_chat("c2", "Other", "alice", [])
    for i in range(3):
        await store.add_message("c1", "alice", f"c1-{i}")
    m, _ = await store.add_message("c2", "alice", "c2-0")
    assert m["seq"] == 1
    assert [m["content"] for m in await store.messages_after("c2", 0, 10)] == ["c2-0"]
    assert len(await store.messages_after("c1", 0, 10)) == 3


async def _post(store: Store, count: int) -> list[dict]:
    await store.create_chat("c1", "Room", "alice", [])
    return [(await store.add_message("c1", "alice", f"m{i}"))[0] for i in range(1, count + 1)]


async def test_messages_after(store: Store) -> None:
    posted = await _post(store, 10)
    assert await store.messages_after("c1", 0, 100) == posted
    assert await store.messages_after("c1", 3, 2) == posted[3:5]
    assert await store.messages_after("c1", 8, 100) == posted[8:]
    assert await store.messages_after("c1", 10, 100) == []
    assert await store.messages_after("empty", 0, 100) == []


async def test_messages_before(store: Store) -> None:
    posted = await _post(store, 10)
    assert await store.messages_before("c1", None, 3) == (posted[7:], True)
    assert await store.messages_before("c1", 8, 3) == (posted[4:7], True)
    assert await store.messages_before("c1", 5, 3) == (posted[1:4], True)
    assert await store.messages_before("c1", 4, 3) == (posted[0:3], False)
    assert await store.messages_before("c1", 3, 3) == (posted[0:2], False)
    assert await store.messages_before("c1", 1, 3) == ([], False)
    assert await store.messages_before("c1", None, 10) == (posted, False)
    assert await store.messages_before("c1", None, 50) == (posted, False)
    assert await store.messages_before("c1", 11, 9) == (posted[1:], True)
    assert await store.messages_before("empty", None, 50) == ([], False)


# -- health and durability -----------------------------------------------------


async def test_ping(store: Store) -> None:
    await store.ping()
    assert store.display_url


async def test_data_survives_reopen(store: Store, store_url: str, backend: str) -> None:
    if not BACKENDS[backend].durable:
        pytest.skip(f"{backend} keeps nothing across a reopen")
    await store.create_document("d1", "T", "v0", "alice")
    doc = await store.update_document("d1", "v1", 1, "alice")
    acl = await store.set_document_role("d1", "bob", "editor")
    chat = await store.create_chat("c1", "Room", "alice", ["bob"])
    chat = await store.add_chat_member("c1", "carol")
    keyed, _ = await store.add_message("c1", "bob", "hi", client_id="k1")
    plain, _ = await store.add_message("c1", "alice", "hello")
    await store.close()

    reopened = open_store(store_url)
    await reopened.open()
    try:
        assert await reopened.get_document("d1") == doc
        assert await reopened.get_document_acl("d1") == acl
        assert await reopened.get_chat("c1") == chat
        assert await reopened.get_chat_role("c1", "carol") == "member"
        assert await reopened.messages_after("c1", 0, 10) == [keyed, plain]
        assert await reopened.add_message("c1", "bob", "retry", client_id="k1") == (keyed, False)
        nxt, _ = await reopened.add_message("c1", "alice", "after reopen")
        assert nxt["seq"] == 3
        assert (await reopened.update_document("d1", "v2", 2, "bob"))["version"] == 2
    finally:
        await reopened.close()


# -- backend selection and the sqlite backend ------------------------------------


def test_open_store_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match=r"'postgres'.*sqlite.*mongodb"):
        open_store("postgres://user:secret@host/db")
    with pytest.raises(ValueError):
        open_store("collab.db")


def test_sqlite_url_paths() -> None:
    assert sqlite_path("sqlite:///data/collab.db") == "data/collab.db"
    assert sqlite_path("sqlite:////abs/path.db") == "/abs/path.db"
    assert sqlite_path("sqlite://:memory:") == ":memory:"
    assert sqlite_path("sqlite://") == ":memory:"
    with pytest.raises(ValueError):
        sqlite_path("sqlite://host/path.db")


async def test_sqlite_relative_path_creates_parent_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, io_loop
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///data/nested/collab.db")
    await store.open()
    try:
        await store.create_document("d1", "T", "", "alice")
    finally:
        await store.close()
    assert os.path.isfile(tmp_path / "data" / "nested" / "collab.db")


async def test_sqlite_closed_store_is_unavailable(tmp_path: Path, io_loop) -> None:
    store = open_store(f"sqlite:///{tmp_path}/c.db")
    await store.open()
    await store.close()
    with pytest.raises(Unavailable):
        await store.ping()
    with pytest.raises(Unavailable):
        await store.get_document("d1")


async def test_sqlite_two_stores_on_one_file_share_seqs(tmp_path: Path, io_loop) -> None:
    """Two connections to one file (like two processes) still number messages without gaps."""
    url = f"sqlite:///{tmp_path}/c.db"
    first, second = open_store(url), open_store(url)
    await first.open()
    await second.open()
    try:
        await first.create_chat("c1", "Room", "alice", [])
        results = await asyncio.gather(
            *(s.add_message("c1", "alice", "x", client_id=f"k{i % 15}")
              for i in range(30) for s in (first, second))
        )
        assert sum(created for _, created in results) == 15
        stored = await second.messages_after("c1", 0, 100)
        assert [m["seq"] for m in stored] == list(range(1, 16))
    finally:
        await first.close()
        await second.close()


@contextlib.contextmanager
def database_thread_held(store: Store) -> Iterator[None]:
    """Keep the SQLite store's thread busy until the block ends (and the loop has
    run once, so the calls started in the block reach the store)."""
    free = threading.Event()
    store._executor.submit(free.wait, 10)
    try:
        yield
    finally:
        asyncio.get_running_loop().call_soon(free.set)


async def test_sqlite_concurrent_writes_share_commits(tmp_path: Path, io_loop) -> None:
    """Group commit: writes that arrive while one commits go together in the next
    transaction; every call still returns only after its own commit."""
    url = f"sqlite:///{tmp_path}/c.db"
    store = open_store(url)
    await store.open()
    try:
        await store.create_chat("c1", "Room", "alice", [])
        before = store.commits
        with database_thread_held(store):  # so all 100 are waiting when it is free
            posts = asyncio.gather(*(store.add_message("c1", "alice", f"m{i}")
                                     for i in range(100)))
        results = await posts
        assert sorted(m["seq"] for m, _ in results) == list(range(1, 101))
        assert store.committed_writes - 1 == 100  # the chat, then the messages
        assert store.commits - before == 1
    finally:
        await store.close()
    reopened = open_store(url)
    await reopened.open()
    try:
        assert len(await reopened.messages_after("c1", 0, 200)) == 100
    finally:
        await reopened.close()


async def test_sqlite_a_failed_write_undoes_only_itself(tmp_path: Path, io_loop) -> None:
    """In a shared transaction each write has its own savepoint: one that wrote and
    then failed leaves nothing behind, and the writes around it are committed."""
    store = open_store(f"sqlite:///{tmp_path}/c.db")
    await store.open()
    try:
        await store.create_chat("c1", "Room", "alice", [])

        def write_then_fail(conn) -> None:
            conn.execute("INSERT INTO chats (id, title, created_by, created_at)"
                         " VALUES ('half', 'T', 'alice', 'now')")
            raise ValueError("changed its mind")

        before = store.commits
        with database_thread_held(store):
            writes = asyncio.gather(
                store.add_message("c1", "alice", "a"),
                store._tx(write_then_fail),
                store.create_chat("c1", "Again", "bob", []),  # AlreadyExists
                store.add_message("c1", "alice", "b"),
                return_exceptions=True,
            )
        results = await writes
        assert store.commits - before == 1  # all four in one transaction
        assert isinstance(results[1], ValueError)
        assert isinstance(results[2], AlreadyExists)
        assert [m["content"] for m in await store.messages_after("c1", 0, 10)] == ["a", "b"]
        assert await store.get_chat("half") is None
        assert (await store.get_chat("c1"))["title"] == "Room"
    finally:
        await store.close()


async def test_sqlite_a_write_that_aborts_the_transaction_fails_alone(
    tmp_path: Path, io_loop
) -> None:
    """Some errors (an interrupt, a full disk) make SQLite roll back the whole
    transaction, other writes' work included: that write fails and the others
    are run again in a new transaction."""
    store = open_store(f"sqlite:///{tmp_path}/c.db")
    await store.open()
    try:
        await store.create_chat("c1", "Room", "alice", [])

        def interrupted(conn) -> None:
            conn.create_function("halt", 0, lambda: conn.interrupt() or 1)
            conn.execute("INSERT INTO chats (id, title, created_by, created_at)"
                         " SELECT 'x' || halt(), 'T', 'alice', 'now'"
                         " FROM (SELECT 1 UNION ALL SELECT 2)")

        runs = {"before": 0, "after": 0}

        def post(which: str):
            def write(conn) -> None:
                runs[which] += 1
                conn.execute("INSERT INTO chats (id, title, created_by, created_at)"
                             " VALUES (?, 'T', 'alice', 'now')", (which,))
            return write

        with database_thread_held(store):
            writes = asyncio.gather(
                store.add_message("c1", "alice", "a"),
                store._tx(post("before")),
                store._tx(interrupted),
                store._tx(post("after")),
                store.add_message("c1", "alice", "b"),
                return_exceptions=True,
            )
        results = await writes
        assert isinstance(results[2], sqlite3.OperationalError)
        assert [m["seq"] for m, _ in (results[0], results[4])] == [1, 2]
        # all five shared a transaction: the ones before the abort ran twice
        assert runs == {"before": 2, "after": 1}
        assert await store.get_chat("before") is not None
        assert await store.get_chat("after") is not None
        assert [m["content"] for m in await store.messages_after("c1", 0, 10)] == ["a", "b"]
        assert await store.get_chat("x1") is None
    finally:
        await store.close()
