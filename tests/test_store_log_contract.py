# ruff: noqa: F811 - the backend fixtures are imported from test_store_contract, and
# pytest passes them to the tests by parameter name, which F811 reads as a redefinition
"""The store contract, v2: documents' update log, snapshots, history, compaction, listing.

Runs on every backend of test_store_contract.BACKENDS, with its fixtures.
The store never interprets Yjs bytes, so these tests use a stand-in that makes
"loading" checkable byte for byte: a document's state at version v is the
concatenation of the update bytes of versions 0..v. Loading (newest snapshot
plus the entries after it) must give back exactly what was appended, in order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_store_contract import BACKENDS, _url_for, backend, store, store_url  # noqa: F401

import collab.store.mongodb
import collab.store.sqlite
from collab.errors import AlreadyExists, InvalidInput, NotFound, VersionConflict
from collab.store import Store, open_store
from collab.store.base import Compacted, NewVersion, Snapshot, Update
from collab.store.cursor import ListCursor

EVERY_BYTE = bytes(range(256))


@pytest.fixture
def node2(backend: str, store_url: str, store: Store, io_loop) -> Iterator[Store]:
    """A second store on the same data: another process (SQLite file) or node (Mongo)."""
    if not BACKENDS[backend].durable:
        pytest.skip(f"{backend} cannot be shared by two stores")
    other = open_store(store_url)
    io_loop.run_sync(other.open)
    yield other
    io_loop.run_sync(other.close)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stores' clock, set by the test: ``clock[0]`` is what now_iso() returns."""
    now = ["2026-03-04T05:06:07.089Z"]
    for module in (collab.store.sqlite, collab.store.mongodb):
        monkeypatch.setattr(module, "now_iso", lambda: now[0])
    return now


async def load(store: Store, document_id: str) -> bytes:
    """The stand-in state: newest snapshot plus every entry after it."""
    snapshot = await store.document_snapshot(document_id)
    assert snapshot is not None
    later = await store.document_updates(document_id, snapshot.version)
    versions = [u.version for u in later]
    assert versions == list(range(snapshot.version + 1, snapshot.version + 1 + len(later)))
    return snapshot.state + b"".join(u.update for u in later)


async def state_at(store: Store, document_id: str, version: int) -> bytes | None:
    """The stand-in state at ``version`` from what the store kept, or None if it cannot."""
    snapshot = await store.document_snapshot(document_id, at_most=version)
    if snapshot is None:
        return None
    between = await store.document_updates(document_id, snapshot.version, up_to=version)
    if [u.version for u in between] != list(range(snapshot.version + 1, version + 1)):
        return None
    return snapshot.state + b"".join(u.update for u in between)


async def make_document(store: Store, count: int, state: bytes = b"s0|") -> list[bytes]:
    """``d1`` with versions 1..count; returns every version's bytes, version 0's first."""
    await store.create_document("d1", "T", "", "alice", state=state)
    appended = [state]
    for v in range(1, count + 1):
        data = f"u{v}|".encode()
        await store.append_document_update("d1", data, f"c{v}", "alice")
        appended.append(data)
    return appended


# -- create and append ---------------------------------------------------------------


async def test_create_writes_version_zero_with_the_initial_state(store: Store) -> None:
    doc = await store.create_document("d1", "T", "hello", "alice", state=b"\x01\x00state")
    assert await store.document_updates("d1", -1) == [
        Update(0, "alice", doc["created_at"], b"\x01\x00state")
    ]
    assert await store.document_snapshot("d1") == Snapshot(0, b"\x01\x00state")
    assert await store.document_snapshot("d1", at_most=0) == Snapshot(0, b"\x01\x00state")
    assert await store.document_history("d1", None, 50) == (
        [{"version": 0, "user_id": "alice", "created_at": doc["created_at"]}], False
    )


async def test_create_without_state_keeps_empty_bytes(store: Store) -> None:
    await store.create_document("d1", "T", "hello", "alice")
    assert [u.update for u in await store.document_updates("d1", -1)] == [b""]
    assert await store.document_snapshot("d1") == Snapshot(0, b"")


async def test_duplicate_create_leaves_the_log_alone(store: Store) -> None:
    await store.create_document("d1", "T", "one", "alice", state=b"first")
    with pytest.raises(AlreadyExists):
        await store.create_document("d1", "T", "two", "bob", state=b"second")
    assert [(u.user_id, u.update) for u in await store.document_updates("d1", -1)] == [
        ("alice", b"first")
    ]


async def test_append_stores_the_entry_and_the_head(store: Store) -> None:
    created = await store.create_document("d1", "T", "v0", "alice")
    doc = await store.append_document_update("d1", b"\x00delta\xff", "v1", "bob")
    assert doc["version"] == 1 and doc["content"] == "v1" and doc["updated_by"] == "bob"
    assert doc["updated_at"] >= created["updated_at"]
    assert {k: doc[k] for k in ("id", "title", "created_by", "created_at")} == {
        k: created[k] for k in ("id", "title", "created_by", "created_at")
    }
    assert await store.get_document("d1") == doc
    assert await store.document_updates("d1", 0) == [
        Update(1, "bob", doc["updated_at"], b"\x00delta\xff")
    ]
    doc2 = await store.append_document_update("d1", b"two", "v2", "carol", expected_version=1)
    assert doc2["version"] == 2 and doc2["updated_by"] == "carol"
    assert await store.get_document("d1") == doc2


@pytest.mark.parametrize("expected", [0, 2, 5, -1])
async def test_append_with_a_stale_version_is_conflict_and_writes_nothing(
    store: Store, expected: int
) -> None:
    await store.create_document("d1", "T", "v0", "alice")
    current = await store.append_document_update("d1", b"one", "v1", "alice")
    with pytest.raises(VersionConflict) as info:
        await store.append_document_update("d1", b"lost", "lost", "bob", expected_version=expected)
    assert info.value.current == current
    assert info.value.details == {"current_version": 1, "document": current}
    assert await store.get_document("d1") == current
    assert [u.update for u in await store.document_updates("d1", -1)] == [b"", b"one"]


async def test_append_to_a_missing_document_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.append_document_update("missing", b"x", "x", "alice")
    with pytest.raises(NotFound):
        await store.append_document_update("missing", b"x", "x", "alice", expected_version=0)
    assert await store.document_updates("missing", -1) == []
    assert await store.get_document("missing") is None


async def test_batched_appends_store_each_version_in_order_or_none(store: Store) -> None:
    created = await store.create_document("d1", "T", "", "alice")
    batch = [NewVersion(b"u1|", "c1", "alice"), NewVersion(b"u2|", "c2", "bob")]
    if not store.appends_in_batches:  # such a store says so, and writes nothing
        with pytest.raises(NotImplementedError):
            await store.append_document_updates("d1", batch, expected_version=0)
        assert await store.get_document("d1") == created
        return
    heads = await store.append_document_updates("d1", batch, expected_version=0)
    assert [(h["version"], h["content"], h["updated_by"]) for h in heads] == [
        (1, "c1", "alice"), (2, "c2", "bob")]
    assert await store.get_document("d1") == heads[-1]
    assert [(u.version, u.user_id, u.update) for u in await store.document_updates("d1", 0)] \
        == [(1, "alice", b"u1|"), (2, "bob", b"u2|")]
    with pytest.raises(VersionConflict) as info:  # all or none
        await store.append_document_updates(
            "d1", [NewVersion(b"x", "x", "carol"), NewVersion(b"y", "y", "carol")],
            expected_version=1)
    assert info.value.current == heads[-1]
    assert len(await store.document_updates("d1", -1)) == 3
    single = await store.append_document_update("d1", b"u3|", "c3", "carol", expected_version=2)
    assert single["version"] == 3
    with pytest.raises(NotFound):
        await store.append_document_updates("missing", batch, expected_version=0)


async def test_update_document_is_a_version_with_no_yjs_update(store: Store) -> None:
    await store.create_document("d1", "T", "v0", "alice")
    doc = await store.update_document("d1", "v1", 1, "bob")
    assert await store.document_updates("d1", 0) == [Update(1, "bob", doc["updated_at"], b"")]
    with pytest.raises(VersionConflict):
        await store.update_document("d1", "stale", 1, "carol")
    assert len(await store.document_updates("d1", -1)) == 2


async def test_every_byte_value_round_trips(store: Store) -> None:
    big = random.Random(7).randbytes(300 * 1024)
    await store.create_document("d1", "T", "", "alice", state=EVERY_BYTE)
    await store.append_document_update("d1", EVERY_BYTE[::-1], "x", "alice")
    await store.append_document_update("d1", big, "y", "alice")
    await store.append_document_update("d1", b"\x00", "z", "alice")
    await store.append_document_update("d1", b"", "z", "alice")
    await store.save_document_snapshot("d1", 2, EVERY_BYTE * 4)
    assert [u.update for u in await store.document_updates("d1", -1)] == [
        EVERY_BYTE, EVERY_BYTE[::-1], big, b"\x00", b""
    ]
    assert await store.document_snapshot("d1") == Snapshot(2, EVERY_BYTE * 4)
    assert await store.document_snapshot("d1", at_most=1) == Snapshot(0, EVERY_BYTE)
    assert all(isinstance(u.update, bytes) for u in await store.document_updates("d1", -1))


async def test_appends_accept_bytes_like_updates(store: Store) -> None:
    await store.create_document("d1", "T", "", "alice", state=bytearray(b"ba"))
    await store.append_document_update("d1", memoryview(b"mv"), "x", "alice")
    assert [u.update for u in await store.document_updates("d1", -1)] == [b"ba", b"mv"]


# -- concurrency ---------------------------------------------------------------------------


def check_versions(log: list[Update], sent: dict[bytes, int]) -> None:
    """Versions 1..n, each once, each holding the bytes of the append that got it."""
    assert [u.version for u in log] == list(range(len(log)))
    assert len(log) - 1 == len(sent)
    assert {u.update: u.version for u in log[1:]} == sent


async def test_concurrent_appends_take_each_version_once(store: Store) -> None:
    await store.create_document("d1", "T", "", "alice")
    docs = await asyncio.gather(
        *(store.append_document_update("d1", f"u{i}".encode(), f"c{i}", "alice")
          for i in range(50))
    )
    sent = {f"u{i}".encode(): doc["version"] for i, doc in enumerate(docs)}
    check_versions(await store.document_updates("d1", -1), sent)
    head = await store.get_document("d1")
    last = max(docs, key=lambda d: d["version"])
    assert head == last and head["version"] == 50
    # the head's content is the content of the append that made version 50
    assert head["content"] == f"c{list(sent.values()).index(50)}"


async def test_concurrent_appends_on_the_same_version_one_wins(store: Store) -> None:
    await store.create_document("d1", "T", "", "alice")
    results = await asyncio.gather(
        *(store.append_document_update("d1", f"u{i}".encode(), f"c{i}", "alice",
                                       expected_version=0) for i in range(10)),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, dict)]
    conflicts = [r for r in results if isinstance(r, VersionConflict)]
    assert len(wins) == 1 and len(conflicts) == 9, results
    assert all(c.current == wins[0] for c in conflicts)
    log = await store.document_updates("d1", -1)
    assert [u.version for u in log] == [0, 1]
    assert log[1].update == f"u{results.index(wins[0])}".encode()


async def writer(store: Store, name: str, count: int, known: int) -> list[int]:
    """Appends ``count`` updates with expected_version, retrying conflicts as a client would."""
    got = []
    for i in range(count):
        while True:
            try:
                doc = await store.append_document_update(
                    "d1", f"{name}-{i}".encode(), f"{name}-{i}", name, expected_version=known)
            except VersionConflict as conflict:
                known = conflict.current["version"]
                continue
            known = doc["version"]
            got.append(known)
            break
    return got


async def test_concurrent_appends_with_expected_version_retrying(store: Store) -> None:
    await store.create_document("d1", "T", "", "alice")
    results = await asyncio.gather(*(writer(store, f"w{w}", 5, 0) for w in range(10)))
    sent = {f"w{w}-{i}".encode(): results[w][i] for w in range(10) for i in range(5)}
    check_versions(await store.document_updates("d1", -1), sent)
    assert (await store.get_document("d1"))["version"] == 50


async def test_two_nodes_appending_at_once(store: Store, node2: Store) -> None:
    await store.create_document("d1", "T", "", "alice")
    docs = await asyncio.gather(
        *(s.append_document_update("d1", f"{n}-{i}".encode(), "c", "alice")
          for i in range(25) for n, s in (("a", store), ("b", node2)))
    )
    sent = {f"{n}-{i}".encode(): 0 for i in range(25) for n in "ab"}
    for key, doc in zip(sent, docs, strict=True):
        sent[key] = doc["version"]
    check_versions(await store.document_updates("d1", -1), sent)
    assert await node2.document_updates("d1", -1) == await store.document_updates("d1", -1)
    assert await store.get_document("d1") == await node2.get_document("d1")


async def test_two_nodes_appending_with_expected_version(store: Store, node2: Store) -> None:
    await store.create_document("d1", "T", "", "alice")
    results = await asyncio.gather(
        *(writer(s, f"{n}{w}", 5, 0) for w in range(5) for n, s in (("a", store), ("b", node2)))
    )
    names = [f"{n}{w}" for w in range(5) for n in "ab"]
    sent = {f"{name}-{i}".encode(): results[k][i] for k, name in enumerate(names)
            for i in range(5)}
    check_versions(await node2.document_updates("d1", -1), sent)


async def test_a_node_sees_the_other_nodes_appends(store: Store, node2: Store) -> None:
    """The per-node shortcuts (the Mongo head cache) never hide another node's version."""
    await store.create_document("d1", "T", "", "alice")
    await store.append_document_update("d1", b"a1", "a1", "alice")
    await node2.append_document_update("d1", b"b2", "b2", "bob")
    doc = await store.append_document_update("d1", b"a3", "a3", "alice")
    assert doc["version"] == 3
    with pytest.raises(VersionConflict) as info:
        await node2.append_document_update("d1", b"stale", "x", "bob", expected_version=2)
    assert info.value.current == doc
    assert [u.update for u in await node2.document_updates("d1", 0)] == [b"a1", b"b2", b"a3"]


# -- reading the log ---------------------------------------------------------------------


async def test_document_updates_ranges(store: Store) -> None:
    appended = await make_document(store, 10)
    every = await store.document_updates("d1", -1)
    assert [u.update for u in every] == appended
    assert await store.document_updates("d1", 3) == every[4:]
    assert await store.document_updates("d1", 3, up_to=6) == every[4:7]
    assert await store.document_updates("d1", 3, limit=2) == every[4:6]
    assert await store.document_updates("d1", 3, up_to=5, limit=10) == every[4:6]
    assert await store.document_updates("d1", 3, up_to=100) == every[4:]
    assert await store.document_updates("d1", 10) == []
    assert await store.document_updates("d1", 6, up_to=6) == []
    assert await store.document_updates("d1", 6, up_to=2) == []
    assert await store.document_updates("d1", 0, limit=0) == []
    assert await store.document_updates("missing", -1) == []


async def test_document_history_pages_like_chat_history(store: Store) -> None:
    await make_document(store, 9)
    every = [{"version": u.version, "user_id": u.user_id, "created_at": u.created_at}
             for u in await store.document_updates("d1", -1)]
    assert len(every) == 10
    assert await store.document_history("d1", None, 3) == (every[7:], True)
    assert await store.document_history("d1", 8, 3) == (every[5:8], True)
    assert await store.document_history("d1", 3, 3) == (every[0:3], False)
    assert await store.document_history("d1", 4, 3) == (every[1:4], True)
    assert await store.document_history("d1", 1, 3) == (every[:1], False)
    assert await store.document_history("d1", 0, 3) == ([], False)
    assert await store.document_history("d1", None, 10) == (every, False)
    assert await store.document_history("d1", None, 50) == (every, False)
    assert await store.document_history("d1", 100, 2) == (every[8:], True)
    assert await store.document_history("d1", None, 0) == ([], True)
    assert await store.document_history("missing", None, 50) == ([], False)


# -- snapshots -------------------------------------------------------------------------------


async def test_snapshots(store: Store) -> None:
    appended = await make_document(store, 10)
    state = b"".join
    await store.save_document_snapshot("d1", 4, state(appended[:5]))
    await store.save_document_snapshot("d1", 8, state(appended[:9]))
    assert await store.document_snapshot("d1") == Snapshot(8, state(appended[:9]))
    assert await store.document_snapshot("d1", at_most=10) == Snapshot(8, state(appended[:9]))
    assert await store.document_snapshot("d1", at_most=8) == Snapshot(8, state(appended[:9]))
    assert await store.document_snapshot("d1", at_most=7) == Snapshot(4, state(appended[:5]))
    assert await store.document_snapshot("d1", at_most=3) == Snapshot(0, appended[0])
    assert await store.document_snapshot("d1", at_most=-1) is None
    assert await store.document_snapshot("missing") is None
    assert await load(store, "d1") == state(appended)
    for v in range(11):
        assert await state_at(store, "d1", v) == state(appended[: v + 1])
    # saving a version again replaces its state
    await store.save_document_snapshot("d1", 8, b"again")
    assert await store.document_snapshot("d1") == Snapshot(8, b"again")


async def test_snapshot_at_the_head_and_at_zero(store: Store) -> None:
    appended = await make_document(store, 3)
    await store.save_document_snapshot("d1", 3, b"".join(appended))
    assert await store.document_snapshot("d1") == Snapshot(3, b"".join(appended))
    assert await store.document_updates("d1", 3) == []
    await store.save_document_snapshot("d1", 0, b"zero")
    assert await store.document_snapshot("d1", at_most=2) == Snapshot(0, b"zero")


@pytest.mark.parametrize("version", [-1, 4, 100])
async def test_snapshot_outside_the_versions_is_refused(store: Store, version: int) -> None:
    await make_document(store, 3)
    with pytest.raises(ValueError):
        await store.save_document_snapshot("d1", version, b"x")
    assert await store.document_snapshot("d1") == Snapshot(0, b"s0|")


async def test_snapshot_of_a_missing_document_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.save_document_snapshot("missing", 0, b"x")
    assert await store.document_snapshot("missing") is None


# -- compaction and retention ------------------------------------------------------------------


async def test_compaction_without_a_cutoff_drops_nothing(store: Store) -> None:
    appended = await make_document(store, 10)
    await store.save_document_snapshot("d1", 9, b"".join(appended[:10]))
    assert await store.compact_document("d1", None) == Compacted(0, 0)
    assert len(await store.document_updates("d1", -1)) == 11
    assert await store.document_snapshot("d1", at_most=5) == Snapshot(0, appended[0])


async def test_compaction_without_snapshots_drops_nothing(store: Store) -> None:
    appended = await make_document(store, 10)
    assert await store.compact_document("d1", "2999-01-01T00:00:00.000Z") == Compacted(0, 0)
    assert [u.update for u in await store.document_updates("d1", -1)] == appended


async def test_compaction_of_everything_old_keeps_what_loading_needs(store: Store) -> None:
    appended = await make_document(store, 30)
    await store.save_document_snapshot("d1", 10, b"".join(appended[:11]))
    await store.save_document_snapshot("d1", 20, b"".join(appended[:21]))
    assert await store.compact_document("d1", "2999-01-01T00:00:00.000Z") == Compacted(
        updates=21, snapshots=1
    )
    assert await store.document_snapshot("d1") == Snapshot(20, b"".join(appended[:21]))
    assert [u.version for u in await store.document_updates("d1", -1)] == list(range(21, 31))
    assert await load(store, "d1") == b"".join(appended)
    # below the retention: nothing to show, nothing to rebuild from
    assert await store.document_snapshot("d1", at_most=19) is None
    assert await store.document_history("d1", 21, 50) == ([], False)
    assert await state_at(store, "d1", 15) is None
    # the log goes on
    await store.append_document_update("d1", b"u31|", "c31", "alice")
    assert await load(store, "d1") == b"".join(appended) + b"u31|"


async def test_compaction_keeps_the_head_versions_entry(store: Store) -> None:
    appended = await make_document(store, 5)
    await store.save_document_snapshot("d1", 5, b"".join(appended))
    await store.compact_document("d1", "2999-01-01T00:00:00.000Z")
    head = await store.get_document("d1")
    assert [u.version for u in await store.document_updates("d1", -1)] == [5]
    assert await store.document_history("d1", None, 50) == (
        [{"version": 5, "user_id": "alice", "created_at": head["updated_at"]}], False
    )
    assert await load(store, "d1") == b"".join(appended)


async def test_retention_boundary(store: Store, clock: list[str]) -> None:
    """Versions made at or after the cutoff stay listed and rebuildable; older ones go
    once a snapshot covers them."""
    await store.create_document("d1", "T", "", "alice", state=b"s0|")
    appended = [b"s0|"]
    for v in range(1, 21):
        clock[0] = f"2026-03-04T05:06:{v:02d}.000Z"
        data = f"u{v}|".encode()
        await store.append_document_update("d1", data, "c", "alice")
        appended.append(data)
    await store.save_document_snapshot("d1", 5, b"".join(appended[:6]))
    await store.save_document_snapshot("d1", 15, b"".join(appended[:16]))
    cut = "2026-03-04T05:06:11.000Z"  # version 11's time: 11..20 are within the retention

    # 6..10 are older but still needed to rebuild 11 from snapshot 5
    assert await store.compact_document("d1", cut) == Compacted(updates=6, snapshots=0)
    assert (await store.document_history("d1", None, 50))[0][0]["version"] == 6
    assert await store.document_snapshot("d1", at_most=4) is None
    for v in range(5, 21):
        assert await state_at(store, "d1", v) == b"".join(appended[: v + 1]), v

    # a snapshot at the last version before the cutoff lets the rest go
    await store.save_document_snapshot("d1", 10, b"".join(appended[:11]))
    assert await store.compact_document("d1", cut) == Compacted(updates=5, snapshots=1)
    history, has_more = await store.document_history("d1", None, 50)
    assert [e["version"] for e in history] == list(range(11, 21)) and not has_more
    assert await store.document_history("d1", 11, 50) == ([], False)
    assert await store.document_snapshot("d1", at_most=9) is None
    assert await state_at(store, "d1", 9) is None
    for v in range(10, 21):
        assert await state_at(store, "d1", v) == b"".join(appended[: v + 1]), v
    assert await load(store, "d1") == b"".join(appended)
    # the same cutoff again has nothing left to drop
    assert await store.compact_document("d1", cut) == Compacted(0, 0)


async def test_compaction_never_loses_an_acknowledged_change(store: Store) -> None:
    """Random appends, snapshots and compactions with cutoffs taken from the log's own
    times: after each, loading gives back every appended byte in order, and every version
    made at or after the cutoff can still be rebuilt."""
    rng = random.Random(12)
    await store.create_document("d1", "T", "", "alice", state=b"s0|")
    appended = [b"s0|"]
    for step in range(60):
        action = rng.random()
        if action < 0.6:
            data = f"u{len(appended)}.{rng.randbytes(3).hex()}|".encode()
            await store.append_document_update("d1", data, "c", "alice")
            appended.append(data)
        elif action < 0.8:
            v = rng.randrange(len(appended))
            await store.save_document_snapshot("d1", v, b"".join(appended[: v + 1]))
        else:
            log = await store.document_updates("d1", -1)
            cut = rng.choice(log).created_at if log and rng.random() < 0.8 else (
                "2999-01-01T00:00:00.000Z")
            keep = [u.version for u in log if u.created_at >= cut]
            await store.compact_document("d1", cut)
            for v in keep:
                assert await state_at(store, "d1", v) == b"".join(appended[: v + 1]), (step, v)
            kept = {e["version"] for e in (await store.document_history("d1", None, 1000))[0]}
            assert set(keep) <= kept
        assert await load(store, "d1") == b"".join(appended), step


async def test_compaction_checks_its_input(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.compact_document("missing", "2026-01-01T00:00:00.000Z")
    await make_document(store, 1)
    with pytest.raises(ValueError):
        await store.compact_document("d1", "last tuesday")


# -- durability ------------------------------------------------------------------------------


async def test_log_snapshots_and_listing_survive_reopen(
    store: Store, store_url: str, backend: str
) -> None:
    if not BACKENDS[backend].durable:
        pytest.skip(f"{backend} keeps nothing across a reopen")
    appended = await make_document(store, 20, state=EVERY_BYTE)
    await store.save_document_snapshot("d1", 12, b"".join(appended[:13]))
    head = await store.get_document("d1")
    history = await store.document_history("d1", None, 100)
    await store.create_chat("c1", "Room", "alice", ["bob"])
    message, _ = await store.add_message("c1", "bob", "hi")
    documents = await store.list_documents("alice", None, 10)
    chats = await store.list_chats("bob", None, 10)
    await store.close()

    reopened = open_store(store_url)
    await reopened.open()
    try:
        assert await reopened.get_document("d1") == head
        assert await reopened.document_history("d1", None, 100) == history
        assert await load(reopened, "d1") == b"".join(appended)
        assert await reopened.document_snapshot("d1") == Snapshot(12, b"".join(appended[:13]))
        assert await reopened.list_documents("alice", None, 10) == documents
        assert await reopened.list_chats("bob", None, 10) == chats
        assert chats[0][0]["last_seq"] == 1
        assert chats[0][0]["last_message_at"] == message["created_at"]
        doc = await reopened.append_document_update("d1", b"more", "c", "alice",
                                                   expected_version=20)
        assert doc["version"] == 21
    finally:
        await reopened.close()


# -- listing ---------------------------------------------------------------------------------


def positions(rows: list[dict], key: str) -> list[tuple[str, str]]:
    return [(row[key], row["id"]) for row in rows]


async def list_all(store: Store, user_id: str, limit: int, kind: str = "documents") -> list:
    listing = store.list_documents if kind == "documents" else store.list_chats
    rows, cursor = await listing(user_id, None, limit)
    pages = [rows]
    while cursor is not None:
        rows, cursor = await listing(user_id, cursor, limit)
        assert rows, "a cursor is only handed out when more rows follow"
        pages.append(rows)
    return [row for p in pages for row in p]


async def test_list_documents_shows_only_the_users_roles(store: Store) -> None:
    await store.create_document("a1", "Alice's", "", "alice")
    await store.create_document("b1", "Bob's", "", "bob")
    await store.create_document("c1", "Carol's", "", "carol")
    await store.set_document_role("b1", "alice", "viewer")
    await store.set_document_role("c1", "alice", "editor")
    await store.set_document_role("c1", "alice", None)
    b1 = await store.append_document_update("b1", b"x", "x", "bob")
    rows, cursor = await store.list_documents("alice", None, 10)
    assert cursor is None
    assert rows == [
        {"id": "b1", "title": "Bob's", "role": "viewer", "version": 1,
         "updated_at": b1["updated_at"]},
        {"id": "a1", "title": "Alice's", "role": "owner", "version": 0,
         "updated_at": (await store.get_document("a1"))["updated_at"]},
    ]
    assert [r["id"] for r in (await store.list_documents("bob", None, 10))[0]] == ["b1"]
    assert await store.list_documents("nobody", None, 10) == ([], None)
    await store.set_document_role("b1", "alice", "editor")
    assert (await store.list_documents("alice", None, 10))[0][0]["role"] == "editor"


async def test_list_documents_newest_first_ties_by_id(store: Store, clock: list[str]) -> None:
    for i, doc_id in enumerate(["m", "b", "z", "a", "k"]):
        clock[0] = f"2026-03-04T05:06:0{i // 2}.000Z"  # pairs share a time
        await store.create_document(doc_id, doc_id, "", "alice")
    clock[0] = "2026-03-04T05:07:00.000Z"
    await store.append_document_update("m", b"x", "x", "alice")
    rows = await list_all(store, "alice", 2)
    assert [r["id"] for r in rows] == ["m", "k", "z", "a", "b"]
    assert positions(rows, "updated_at") == sorted(positions(rows, "updated_at"), reverse=True)


async def test_list_documents_pages(store: Store) -> None:
    for i in range(7):
        await store.create_document(f"d{i}", "T", "", "alice")
    everything, cursor = await store.list_documents("alice", None, 100)
    assert len(everything) == 7 and cursor is None
    pages = []
    rows, cursor = await store.list_documents("alice", None, 3)
    pages.append(rows)
    while cursor is not None:
        rows, cursor = await store.list_documents("alice", cursor, 3)
        pages.append(rows)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [r for p in pages for r in p] == everything
    # exactly a page's worth: no cursor to an empty page
    rows, cursor = await store.list_documents("alice", None, 7)
    assert rows == everything and cursor is None


async def test_list_documents_paging_is_stable_while_others_change(
    store: Store, clock: list[str]
) -> None:
    for i in range(9):
        clock[0] = f"2026-03-04T05:06:0{i}.000Z"
        await store.create_document(f"d{i}", "T", "", "alice")
    before = [r["id"] for r in (await store.list_documents("alice", None, 100))[0]]
    first, cursor = await store.list_documents("alice", None, 3)
    seen, unseen = before[0], before[6]
    # between pages: one already listed and one not yet listed change, a new one appears
    clock[0] = "2026-03-04T05:07:01.000Z"
    await store.append_document_update(seen, b"x", "x", "alice")
    clock[0] = "2026-03-04T05:07:02.000Z"
    await store.append_document_update(unseen, b"x", "x", "alice")
    clock[0] = "2026-03-04T05:07:03.000Z"
    await store.create_document("new", "T", "", "alice")
    rest = []
    while cursor is not None:
        rows, cursor = await store.list_documents("alice", cursor, 3)
        rest += rows
    listed = [r["id"] for r in first + rest]
    assert len(listed) == len(set(listed)), "no duplicates"
    unchanged = [d for d in before if d not in (seen, unseen)]
    assert [d for d in listed if d in unchanged] == unchanged, "no skips, same order"
    assert "new" not in listed  # it is above the cursor: a fresh first page shows it
    top = [r["id"] for r in (await store.list_documents("alice", None, 3))[0]]
    assert top == ["new", unseen, seen]


async def test_list_documents_takes_the_limit_as_given(store: Store) -> None:
    for i in range(250):
        await store.create_document(f"d{i:03d}", "T", "", "alice")
    rows, cursor = await store.list_documents("alice", None, 500)
    assert len(rows) == 250 and cursor is None
    rows, cursor = await store.list_documents("alice", None, 1)
    assert len(rows) == 1 and cursor is not None
    for bad in (0, -1):
        with pytest.raises(ValueError):
            await store.list_documents("alice", None, bad)


async def test_list_chats(store: Store, clock: list[str]) -> None:
    clock[0] = "2026-03-04T05:06:01.000Z"
    await store.create_chat("quiet", "Quiet", "alice", [])
    clock[0] = "2026-03-04T05:06:02.000Z"
    await store.create_chat("busy", "Busy", "bob", ["alice"])
    clock[0] = "2026-03-04T05:06:03.000Z"
    await store.create_chat("newest", "Newest", "carol", [])
    await store.create_chat("other", "Other", "carol", [])
    rows, cursor = await store.list_chats("alice", None, 10)
    assert cursor is None
    assert rows == [
        {"id": "busy", "title": "Busy", "role": "member", "last_seq": 0, "last_message_at": None},
        {"id": "quiet", "title": "Quiet", "role": "owner", "last_seq": 0,
         "last_message_at": None},
    ]
    clock[0] = "2026-03-04T05:06:04.000Z"
    await store.add_message("quiet", "alice", "one")
    clock[0] = "2026-03-04T05:06:05.000Z"
    message, _ = await store.add_message("quiet", "alice", "two")
    await store.add_chat_member("newest", "alice")
    rows = await list_all(store, "alice", 1, kind="chats")
    assert rows == [
        {"id": "quiet", "title": "Quiet", "role": "owner", "last_seq": 2,
         "last_message_at": message["created_at"]},
        {"id": "newest", "title": "Newest", "role": "member", "last_seq": 0,
         "last_message_at": None},
        {"id": "busy", "title": "Busy", "role": "member", "last_seq": 0, "last_message_at": None},
    ]
    # a retried client_id changes nothing
    clock[0] = "2026-03-04T05:06:06.000Z"
    await store.add_message("busy", "alice", "hi", client_id="k")
    clock[0] = "2026-03-04T05:06:09.000Z"
    await store.add_message("busy", "alice", "hi", client_id="k")
    top = (await store.list_chats("alice", None, 1))[0][0]
    assert top["id"] == "busy" and top["last_seq"] == 1
    assert top["last_message_at"] == "2026-03-04T05:06:06.000Z"


async def test_list_chats_paging_is_stable_while_others_change(
    store: Store, clock: list[str]
) -> None:
    for i in range(9):
        clock[0] = f"2026-03-04T05:06:0{i}.000Z"
        await store.create_chat(f"c{i}", "T", "alice", [])
    before = [r["id"] for r in await list_all(store, "alice", 100, kind="chats")]
    first, cursor = await store.list_chats("alice", None, 4)
    clock[0] = "2026-03-04T05:07:00.000Z"
    await store.add_message(before[6], "alice", "moves it up")
    rest = []
    while cursor is not None:
        rows, cursor = await store.list_chats("alice", cursor, 4)
        rest += rows
    listed = [r["id"] for r in first + rest]
    assert len(listed) == len(set(listed))
    assert [c for c in listed if c != before[6]] == [c for c in before if c != before[6]]
    assert (await store.list_chats("alice", None, 1))[0][0]["id"] == before[6]


async def test_concurrent_messages_keep_last_seq(store: Store) -> None:
    await store.create_chat("c1", "Room", "alice", [])
    await asyncio.gather(*(store.add_message("c1", "alice", f"m{i}") for i in range(50)))
    (row,), _ = await store.list_chats("alice", None, 10)
    last = (await store.messages_before("c1", None, 1))[0][0]
    assert row["last_seq"] == 50 and row["last_message_at"] == last["created_at"]


def _encoded(fields: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")


BAD_CURSORS = [
    "",
    "!!!",
    "not-base64-at-all~",
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    _encoded({"a": 1}),
    _encoded(["documents", "alice", "2026-03-04T05:06:07.089Z"]),
    _encoded(["documents", "alice", "2026-03-04T05:06:07.089Z", 5]),
    _encoded(["documents", "alice", "yesterday", "d1"]),
    _encoded(["documents", "alice", "2026-03-04T05:06:07.089Z", "bad id!"]),
    _encoded(["documents", "alice", "2026-03-04T05:06:07.089Z", ""]),
    "A" * 5000,
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_garbage_cursors_are_invalid_input(store: Store, cursor: str) -> None:
    await store.create_document("d1", "T", "", "alice")
    with pytest.raises(InvalidInput):
        await store.list_documents("alice", cursor, 10)
    with pytest.raises(InvalidInput):
        await store.list_chats("alice", cursor, 10)


async def test_a_cursor_belongs_to_its_user_and_list(store: Store) -> None:
    for i in range(3):
        await store.create_document(f"d{i}", "T", "", "alice")
        await store.set_document_role(f"d{i}", "bob", "viewer")
        await store.create_chat(f"c{i}", "T", "alice", ["bob"])
    _, alices = await store.list_documents("alice", None, 1)
    _, chats = await store.list_chats("alice", None, 1)
    assert alices is not None and chats is not None
    with pytest.raises(InvalidInput):
        await store.list_documents("bob", alices, 10)
    with pytest.raises(InvalidInput):
        await store.list_chats("alice", alices, 10)
    with pytest.raises(InvalidInput):
        await store.list_documents("alice", chats, 10)
    # a well-formed cursor of our own making pages from its position
    made = ListCursor("documents", "alice", "2999-01-01T00:00:00.000Z", "zzz").encode()
    assert len((await store.list_documents("alice", made, 10))[0]) == 3


# -- backend-specific: migration and the Mongo crash window ------------------------------------


OLD_SQLITE_SCHEMA = """
CREATE TABLE documents (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, content TEXT NOT NULL, version INTEGER NOT NULL,
    created_by TEXT NOT NULL, created_at TEXT NOT NULL,
    updated_by TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE document_roles (
    document_id TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL, role TEXT NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    PRIMARY KEY (document_id, user_id)) WITHOUT ROWID;
CREATE TABLE chats (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, created_by TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE chat_members (
    chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL, role TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    position INTEGER NOT NULL, PRIMARY KEY (chat_id, user_id)) WITHOUT ROWID;
CREATE TABLE messages (
    id TEXT PRIMARY KEY, chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL, user_id TEXT NOT NULL, content TEXT NOT NULL,
    created_at TEXT NOT NULL, client_id TEXT, UNIQUE (chat_id, seq));
INSERT INTO documents VALUES ('old', 'Old', 'text', 7, 'alice', '2025-01-01T00:00:00.000Z',
    'bob', '2025-01-02T00:00:00.000Z');
INSERT INTO document_roles VALUES ('old', 'alice', 'owner'), ('old', 'bob', 'editor');
INSERT INTO chats VALUES ('talk', 'Talk', 'alice', '2025-01-01T00:00:00.000Z'),
    ('silent', 'Silent', 'alice', '2025-01-03T00:00:00.000Z');
INSERT INTO chat_members VALUES ('talk', 'alice', 'owner', 0), ('silent', 'alice', 'owner', 0);
INSERT INTO messages VALUES ('m1', 'talk', 1, 'alice', 'a', '2025-01-04T00:00:00.000Z', NULL),
    ('m2', 'talk', 2, 'alice', 'b', '2025-01-05T00:00:00.000Z', NULL);
"""


async def check_migrated(store: Store) -> None:
    """What check both backends' migrations: old data listed, and its log starts now."""
    assert await store.list_chats("alice", None, 10) == ([
        {"id": "talk", "title": "Talk", "role": "owner", "last_seq": 2,
         "last_message_at": "2025-01-05T00:00:00.000Z"},
        {"id": "silent", "title": "Silent", "role": "owner", "last_seq": 0,
         "last_message_at": None},
    ], None)
    assert await store.list_documents("bob", None, 10) == ([
        {"id": "old", "title": "Old", "role": "editor", "version": 7,
         "updated_at": "2025-01-02T00:00:00.000Z"},
    ], None)
    # stored before the log: no entries and no snapshot until the layer above saves one
    assert await store.document_snapshot("old") is None
    assert await store.document_history("old", None, 10) == ([], False)
    doc = await store.append_document_update("old", b"u8", "text!", "bob", expected_version=7)
    assert doc["version"] == 8
    assert [u.version for u in await store.document_updates("old", -1)] == [8]
    await store.save_document_snapshot("old", 8, b"state")
    assert await store.document_snapshot("old") == Snapshot(8, b"state")
    message, _ = await store.add_message("talk", "alice", "c")
    assert message["seq"] == 3
    assert (await store.list_chats("alice", None, 1))[0][0]["last_seq"] == 3


async def test_sqlite_file_from_before_the_log_is_migrated(tmp_path: Path, io_loop) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SQLITE_SCHEMA)
    first, second = open_store(f"sqlite:///{path}"), open_store(f"sqlite:///{path}")
    await asyncio.gather(first.open(), second.open())  # two processes: one migrates
    try:
        await check_migrated(first)
        assert await second.list_documents("alice", None, 10) == await first.list_documents(
            "alice", None, 10)
    finally:
        await first.close()
        await second.close()


@pytest.fixture
def mongo_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url_for("mongodb", request, tmp_path)


@pytest.mark.mongo
async def test_mongo_database_from_before_the_log_is_migrated(mongo_url: str, io_loop) -> None:
    import pymongo

    with pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=2000) as client:
        db = client.get_default_database()
        db.documents.insert_one({
            "_id": "old", "title": "Old", "content": "text", "version": 7, "created_by": "alice",
            "created_at": "2025-01-01T00:00:00.000Z", "updated_by": "bob",
            "updated_at": "2025-01-02T00:00:00.000Z",
            "acl": {"u_alice": "owner", "u_bob": "editor"},
        })
        db.chats.insert_many([
            {"_id": "talk", "title": "Talk", "created_by": "alice",
             "created_at": "2025-01-01T00:00:00.000Z", "members": ["alice"],
             "roles": {"u_alice": "owner"}},
            {"_id": "silent", "title": "Silent", "created_by": "alice",
             "created_at": "2025-01-03T00:00:00.000Z", "members": ["alice"],
             "roles": {"u_alice": "owner"}},
        ])
        db.messages.insert_many([
            {"_id": "m1", "chat_id": "talk", "seq": 1, "user_id": "alice", "content": "a",
             "created_at": "2025-01-04T00:00:00.000Z"},
            {"_id": "m2", "chat_id": "talk", "seq": 2, "user_id": "alice", "content": "b",
             "created_at": "2025-01-05T00:00:00.000Z"},
        ])
    store = open_store(mongo_url)
    await store.open()
    try:
        await check_migrated(store)
    finally:
        await store.close()
    again = open_store(mongo_url)
    await again.open()  # the marker: nothing is redone
    try:
        assert (await again.list_chats("alice", None, 1))[0][0]["last_seq"] == 3
    finally:
        await again.close()


@pytest.mark.mongo
async def test_mongo_crash_between_head_and_log(mongo_url: str, io_loop) -> None:
    """A node that stored the head (the change is acked) and died before copying its
    entry into the log: readers still see the version, the next writer on any node copies
    it, and its bytes are the acked ones."""
    import pymongo

    store, other = open_store(mongo_url), open_store(mongo_url)
    await store.open()
    await other.open()
    try:
        await store.create_document("d1", "T", "", "alice", state=b"s0")
        await store.append_document_update("d1", b"u1", "c1", "alice")
        acked = await store.append_document_update("d1", EVERY_BYTE, "c2", "bob")
        with pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=2000) as client:
            log = client.get_default_database().document_updates
            # what the log holds if the node died right after the head write
            assert log.delete_one({"document_id": "d1", "version": 2}).deleted_count == 1
            expected = [Update(2, "bob", acked["updated_at"], EVERY_BYTE)]
            assert await other.document_updates("d1", 1) == expected
            assert (await other.document_history("d1", None, 1))[0] == [
                {"version": 2, "user_id": "bob", "created_at": acked["updated_at"]}
            ]
            with pytest.raises(VersionConflict):  # a stale writer changes nothing
                await other.append_document_update("d1", b"x", "x", "carol", expected_version=1)
            assert log.count_documents({"document_id": "d1", "version": 2}) == 0
            await other.append_document_update("d1", b"u3", "c3", "carol")
            assert log.find_one({"document_id": "d1", "version": 2})["update"] == EVERY_BYTE
        assert [u.update for u in await store.document_updates("d1", -1)] == [
            b"s0", b"u1", EVERY_BYTE, b"u3"
        ]
        # a create that died before its version 0 entry reached the log
        await store.create_document("d2", "T", "", "alice", state=b"initial")
        with pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=2000) as client:
            client.get_default_database().document_updates.delete_one({"document_id": "d2"})
        assert await other.document_snapshot("d2") == Snapshot(0, b"initial")
    finally:
        await store.close()
        await other.close()


# -- backend-specific: SQLite group commit -------------------------------------------------


async def test_sqlite_appends_share_a_commit_and_write_the_head_once(
    tmp_path: Path, io_loop
) -> None:
    from test_store_contract import database_thread_held

    url = f"sqlite:///{tmp_path}/c.db"
    store = open_store(url)
    await store.open()
    try:
        await store.create_document("d1", "T", "", "alice")
        await store.create_document("d2", "T", "", "alice")
        heads = []
        store._conn.set_trace_callback(
            lambda sql: heads.append(sql) if sql.startswith("UPDATE documents") else None)
        before = store.commits
        with database_thread_held(store):
            appends = asyncio.gather(
                *(store.append_document_update(d, f"{d}-{i}".encode(), f"{d}-{i}", "alice")
                  for i in range(20) for d in ("d1", "d2")),
                store.append_document_update("d1", b"stale", "stale", "bob", expected_version=3),
                return_exceptions=True,
            )
        results = await appends
        assert store.commits - before == 1
        assert len(heads) == 2, heads  # one head write per document in the commit
        assert isinstance(results[-1], VersionConflict)
        assert results[-1].current["version"] == 20  # the batch's own head, not the file's
        assert [r["version"] for r in results[:-1:2]] == list(range(1, 21))
    finally:
        await store.close()
    reopened = open_store(url)
    await reopened.open()
    try:
        for d in ("d1", "d2"):
            doc = await reopened.get_document(d)
            assert doc["version"] == 20 and doc["content"] == f"{d}-19"
            assert [u.update for u in await reopened.document_updates(d, 0)] == [
                f"{d}-{i}".encode() for i in range(20)
            ]
    finally:
        await reopened.close()
