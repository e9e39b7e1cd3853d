"""collab.client's live documents (``SocketManager.open_document``): pycrdt docs kept in
sync over real Socket.IO with an in-process server, with a `collab serve` process
killed with SIGKILL and restarted, and beside the stock y-websocket provider (yjs in
Node) on the same document (PROTOCOL "Live documents: Yjs")."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pycrdt
import pytest
from harness import (
    WAIT,
    CollabProcess,
    Gate,
    Harness,
    Recorder,
    YjsProviders,
    make_settings,
    make_token,
    manager,
    scrape,
)

from collab.client import CollabError, LiveDocument, ReadOnlyError, RemoteChange, SocketManager
from collab.server import Server


async def create(owner: SocketManager, content: str = "", document_id: str = "doc",
                 **roles: str) -> str:
    await owner.emit("documents:create", {"document_id": document_id, "content": content})
    for user_id, role in roles.items():
        await owner.emit("documents:share", {"document_id": document_id, "user_id": user_id,
                                             "role": role})
    return document_id


async def stored(m: SocketManager, document_id: str = "doc") -> tuple[str, int]:
    document = (await m.emit("documents:get", {"document_id": document_id}))["document"]
    return document["content"], document["version"]


async def handled(url: str, event: str) -> float:
    """How many ``event`` calls the server has handled, whatever their outcome."""
    return sum(value for series, value in (await scrape(url)).items()
               if series.startswith("collab_events_total{") and f'event="{event}"' in series)


def changes(live: LiveDocument) -> list[RemoteChange]:
    got: list[RemoteChange] = []
    live.on("change", got.append)
    return got


async def awareness_until(live: LiveDocument, ready: Callable[[], bool]) -> None:
    """Wait until ``ready()``, checked at each change of ``live.awareness``."""
    changed = asyncio.Event()
    subscription = live.awareness.observe(lambda topic, change: changed.set())

    async def wait() -> None:
        while not ready():
            changed.clear()
            await changed.wait()

    try:
        await asyncio.wait_for(wait(), WAIT)
    finally:
        live.awareness.unobserve(subscription)


async def test_open_edit_and_the_others_receive_it_live_and_plain(server):
    async with manager(server.url) as alice, manager(server.url, "bob") as bob, \
            manager(server.url, "carol") as carol:
        await create(alice, "hello 👋", bob="editor", carol="viewer")
        a = await alice.open_document("doc")
        assert (a.content, a.version, a.role, a.read_only) == ("hello 👋", 0, "owner", False)
        assert alice.live_documents == ["doc"] and alice.joined_documents == []
        b = await bob.open_document("doc")
        got = changes(b)
        origins: list[Any] = []
        b.text.observe(lambda event: origins.append(event.transaction.origin))
        plain = Recorder(carol, "documents:updated")
        await carol.emit("documents:join", {"document_id": "doc"})  # a v1 client

        a.text += " world"
        assert await a.synced() == 1
        assert await b.wait_for_version(1) == 1 and b.content == "hello 👋 world"
        assert [(c.version, c.user_id, c.recovered) for c in got] == [(1, "alice", False)]
        assert origins == [b]  # applied with the binding as origin, as y-websocket does
        [updated] = await plain.count("documents:updated", 1)
        assert (updated["document"]["content"], updated["user_id"]) == ("hello 👋 world",
                                                                        "alice")

        # a v1 replacement reaches the live copies as the smallest edit; the server does
        # not send it back to alice's connection, so her binding joins again to get it
        await alice.emit("documents:update", {"document_id": "doc", "content": "hi 👋 world",
                                              "version": 2})
        assert a.version == 2 and a.content == "hi 👋 world"
        await b.wait_for_version(2)
        assert b.content == "hi 👋 world"
        assert [(c.version, c.user_id) for c in got] == [(1, "alice"), (2, "alice")]
        # nobody echoed anything back, and joining again sent nothing (alice's copy holds
        # nothing unacked): her one documents:yupdate is the only one
        await b.synced()
        assert await handled(server.url, "documents:yupdate") == 1
        history = await alice.emit("documents:history", {"document_id": "doc"})
        assert [v["version"] for v in history["versions"]] == [0, 1, 2]
        assert await stored(carol) == ("hi 👋 world", 2)
        await a.close()
        await b.close()
        assert alice.live_documents == [] and a.closed


async def test_two_editors_converge_under_concurrent_edits(server):
    async with manager(server.url) as alice, manager(server.url, "bob") as bob:
        await create(alice, "start", bob="editor")
        a, b = await alice.open_document("doc"), await bob.open_document("doc")
        rng = random.Random(3)

        async def typist(live: LiveDocument, letters: str) -> None:
            for i in range(60):
                at = rng.randrange(len(live.text) + 1)  # (ASCII: pycrdt counts bytes)
                live.text.insert(at, letters[i % len(letters)])
                if i % 7 == 0:
                    await asyncio.sleep(0)  # let the sender and the receiver run

        await asyncio.gather(typist(a, "abc"), typist(b, "xyz"))
        await asyncio.gather(a.synced(), b.synced())
        content, version = await stored(alice)
        await asyncio.gather(a.wait_for_version(version), b.wait_for_version(version))
        assert a.content == b.content == content
        assert sorted(content) == sorted("start" + "abc" * 20 + "xyz" * 20)  # nothing lost
        await a.close()
        await b.close()


async def test_offline_edits_are_merged_by_state_vectors_after_a_reconnect(server):
    gate = Gate()
    alice = manager(server.url, token_provider=gate, reconnect_delay=0.01)
    seen = Recorder(alice, "connected", "disconnected")
    await alice.connect()
    async with manager(server.url, "bob") as bob:
        await create(alice, "middle", bob="editor")
        a, b = await alice.open_document("doc"), await bob.open_document("doc")
        recovered = changes(a)

        gate.open.clear()
        await server.app.sio.disconnect(alice.sid)  # the server drops alice
        await seen.count("disconnected", 1)
        assert not a.live
        a.text.insert(0, "alice ")  # offline: an insertion, then a deletion
        with a.doc.transaction():
            del a.text[len("alice mid"):]
        b.text.insert(len(b.text), " bob")  # meanwhile, online
        assert await b.synced() == 1

        gate.open.set()
        await seen.count("connected", 2)
        version = await a.synced()  # what the server lacked went as one update
        assert version == 2 and a.live
        await b.wait_for_version(2)
        assert a.content == b.content == "alice mid bob"
        assert await stored(bob) == ("alice mid bob", 2)
        # bob's change came back with the rejoin, as one recovered change
        assert [(c.version, c.user_id, c.recovered) for c in recovered] == [(1, None, True)]

        b.text.insert(0, ">")  # live again
        await a.wait_for_version(3)
        assert a.content == ">alice mid bob"
        await a.close()
        await b.close()
    await alice.disconnect()


async def test_edits_typed_through_repeated_drops_are_all_kept(server):
    """Alice types on while the server drops her connection three times (sends in flight
    lost, edits queued while reconnecting, rejoins racing with her typing); bob types
    meanwhile. Every character of both ends up in both copies and on the server."""
    alice = manager(server.url, reconnect_delay=0.01, reconnect_delay_max=0.05)
    seen = Recorder(alice, "connected")
    await alice.connect()
    async with manager(server.url, "bob") as bob:
        await create(alice, bob="editor")
        a, b = await alice.open_document("doc"), await bob.open_document("doc")
        drops = {20: 2, 80: 3, 140: 4}  # at keystroke -> then waits for connect number

        async def typist(live: LiveDocument, letter: str, n: int) -> None:
            for i in range(n):
                live.text.insert(len(live.text) if i % 2 else 0, letter)
                await asyncio.sleep(0)  # a keystroke at a time: the others run between

        async def alice_types() -> None:
            for i in range(200):
                a.text.insert(len(a.text) if i % 2 else 0, "a")
                if i in drops:
                    await server.app.sio.disconnect(alice.sid)  # and types on, offline
                if i - 30 in drops:
                    await seen.count("connected", drops[i - 30])  # back: types on, live
                await asyncio.sleep(0)

        await asyncio.gather(alice_types(), typist(b, "b", 100))
        assert len(seen.seen["connected"]) == 4
        await asyncio.gather(a.synced(), b.synced())
        content, version = await stored(bob)
        await asyncio.gather(a.wait_for_version(version), b.wait_for_version(version))
        assert a.content == b.content == content
        assert sorted(content) == ["a"] * 200 + ["b"] * 100
        await a.close()
        await b.close()
    await alice.disconnect()


async def test_offline_edits_survive_a_sigkill_and_restart(tmp_path):
    server = CollabProcess(tmp_path)
    server.start()
    try:
        alice = manager(server.url, reconnect_delay=0.05, reconnect_delay_max=0.2,
                        max_reconnect_attempts=100)
        seen = Recorder(alice, "connected", "disconnected")
        await alice.connect()
        await create(alice, "")
        a = await alice.open_document("doc")
        a.text += "kept"
        assert await a.synced() == 1

        server.kill()
        await seen.count("disconnected", 1)
        a.text += ", and typed offline"
        synced = asyncio.ensure_future(a.synced())  # waits for the reconnection
        await asyncio.to_thread(server.start)  # the same port and SQLite file
        assert await asyncio.wait_for(synced, WAIT) == 2

        async with manager(server.url) as reader:
            assert await stored(reader) == ("kept, and typed offline", 2)
        await a.close()
        await alice.disconnect()
    finally:
        server.stop()


async def test_awareness_is_sent_received_given_to_newcomers_and_removed_on_close(server):
    async with manager(server.url) as alice, manager(server.url, "bob") as bob, \
            manager(server.url, "carol") as carol:
        await create(alice, "x", bob="editor", carol="viewer")
        a, b = await alice.open_document("doc"), await bob.open_document("doc")
        me = a.awareness.client_id
        state = {"user": "Zoë 👋", "cursor": 1}  # non-ASCII: lengths in bytes on the wire
        a.awareness.set_local_state(state)
        await awareness_until(b, lambda: b.awareness.states.get(me) == state)

        c = await carol.open_document("doc")  # a viewer may share a cursor too
        assert c.awareness.states.get(me) == state  # from the join's ack, at once
        c.awareness.set_local_state({"user": "carol"})
        await awareness_until(a, lambda: a.awareness.states.get(c.awareness.client_id)
                              == {"user": "carol"})

        await a.close()  # the server removes alice's state for the others
        await awareness_until(b, lambda: me not in b.awareness.states)
        await awareness_until(c, lambda: me not in c.awareness.states)
        await b.close()
        await c.close()


async def test_after_a_reconnect_awareness_is_announced_again_and_the_departed_dropped(
        server):
    gate = Gate()
    alice = manager(server.url, token_provider=gate, reconnect_delay=0.01)
    seen = Recorder(alice, "connected")
    await alice.connect()
    async with manager(server.url, "bob") as bob, manager(server.url, "carol") as carol:
        await create(alice, bob="editor", carol="editor")
        a, b, c = [await m.open_document("doc") for m in (alice, bob, carol)]
        me, her = a.awareness.client_id, c.awareness.client_id
        a.awareness.set_local_state({"cursor": 0})
        c.awareness.set_local_state({"cursor": 9})
        await awareness_until(b, lambda: b.awareness.states.get(me) == {"cursor": 0})
        await awareness_until(a, lambda: a.awareness.states.get(her) == {"cursor": 9})

        gate.open.clear()
        await server.app.sio.disconnect(alice.sid)
        await awareness_until(b, lambda: me not in b.awareness.states)  # removed at once
        await c.close()  # while alice is away: she gets no removal for carol
        await awareness_until(b, lambda: her not in b.awareness.states)
        assert a.awareness.states.get(her) == {"cursor": 9}
        gate.open.set()
        await seen.count("connected", 2)
        assert her not in a.awareness.states  # not in the rejoin's states: dropped
        await awareness_until(b, lambda: b.awareness.states.get(me) == {"cursor": 0})
        await a.close()
        await b.close()
    await alice.disconnect()


async def test_a_viewers_binding_is_read_only(server):
    async with manager(server.url) as alice, manager(server.url, "bob") as bob:
        await create(alice, "text", bob="viewer")
        a, b = await alice.open_document("doc"), await bob.open_document("doc")
        errors: list[CollabError] = []
        b.on("error", errors.append)
        assert b.role == "viewer" and b.read_only

        # pycrdt raises its observers' errors as one ExceptionGroup (ruff.toml targets py310)
        with pytest.raises(ExceptionGroup) as refused:  # noqa: F821
            b.text.insert(0, "no ")
        [error] = refused.value.exceptions
        assert isinstance(error, ReadOnlyError) and error.code == "PERMISSION_DENIED"
        assert "read-only" in error.message

        a.text += "!"  # the viewer still follows the others' changes
        await b.wait_for_version(1)
        assert await b.synced() == 1  # nothing of its own to send
        assert await stored(alice) == ("text!", 1)
        assert a.content == "text!" and b.content == "no text!"  # the refused edit stays local
        assert errors == [] and not b.closed
        await a.close()
        await b.close()


async def test_a_change_the_server_refuses_closes_the_binding_with_the_error(server):
    async with manager(server.url) as alice, manager(server.url, "bob") as bob:
        await create(alice, "v", bob="editor")
        b = await bob.open_document("doc")
        errors: list[CollabError] = []
        failed = asyncio.Event()

        @b.on("error")
        def record(error: CollabError) -> None:
            errors.append(error)
            failed.set()

        await alice.emit("documents:share", {"document_id": "doc", "user_id": "bob",
                                             "role": "viewer"})
        b.text += "x"  # bob still thinks he is an editor: the server refuses it
        with pytest.raises(CollabError) as refused:
            await b.synced()
        assert refused.value.code == "PERMISSION_DENIED" and b.error is refused.value
        await asyncio.wait_for(failed.wait(), WAIT)
        assert [e.code for e in errors] == ["PERMISSION_DENIED"] and b.closed
        assert bob.live_documents == []
        assert await stored(alice) == ("v", 0)
        again = await bob.open_document("doc")  # open afresh: the server's copy, read-only
        assert (again.content, again.role) == ("v", "viewer")
        await again.close()


async def test_sends_refused_as_rate_limited_are_sent_again_after_the_wait():
    srv = await Server.start(make_settings(rate_limit_per_second=20, rate_limit_burst=5))
    server = Harness(srv)
    try:
        async with manager(server.url) as alice:
            errors = Recorder(alice, "error")
            await create(alice)
            live = await alice.open_document("doc")
            for i in range(30):  # one send per keystroke: faster than 20 a second
                live.text += str(i % 10)
                await asyncio.wait_for(live.synced(), WAIT)
            assert {e["code"] for e in errors.seen["error"]} == {"RATE_LIMITED"}
            assert not live.closed and live.error is None
            expected = "".join(str(i % 10) for i in range(30))
            assert live.content == expected and live.version == 30
            async with manager(server.url) as reader:  # a connection with a full bucket
                assert await stored(reader) == (expected, 30)
            await live.close()
    finally:
        await server.close_clients()
        await srv.stop()


async def test_close_sends_what_is_still_unsent(server):
    async with manager(server.url) as alice:
        await create(alice)
        live = await alice.open_document("doc")
        async with live:
            for word in ("one ", "two ", "three"):
                live.text += word
        assert live.closed
        assert await stored(alice) == ("one two three", live.version)


async def test_open_refuses_what_cannot_be_opened(server):
    async with manager(server.url) as alice, manager(server.url, "bob") as bob:
        await create(alice)
        with pytest.raises(CollabError) as missing:
            await alice.open_document("missing")
        assert missing.value.code in ("NOT_FOUND", "PERMISSION_DENIED")
        with pytest.raises(CollabError) as forbidden:
            await bob.open_document("doc")
        assert forbidden.value.code in ("NOT_FOUND", "PERMISSION_DENIED")
        assert bob.live_documents == []

        live = await alice.open_document("doc")
        with pytest.raises(RuntimeError, match="open already"):
            await alice.open_document("doc")
        for event in ("documents:join", "documents:leave"):  # would take it out of live mode
            with pytest.raises(RuntimeError, match="open live"):
                await alice.emit(event, {"document_id": "doc"})
        await live.close()
        await alice.emit("documents:join", {"document_id": "doc"})
        with pytest.raises(RuntimeError, match="joined plain"):
            await alice.open_document("doc")


async def test_a_doc_with_content_of_its_own_is_merged_at_open(server):
    async with manager(server.url) as alice:
        await create(alice, "server")
        first = await alice.open_document("doc")
        offline = pycrdt.Doc()
        offline.apply_update(first.doc.get_update())  # a copy kept from an earlier session
        await first.close()
        offline.get("content", type=pycrdt.Text).insert(0, "kept ")
        live = await alice.open_document("doc", doc=offline)
        assert live.doc is offline
        assert await live.synced() == 1
        assert await stored(alice) == ("kept server", 1)
    # disconnect() closes the bindings; the doc stays the caller's
    assert live.closed and alice.live_documents == []
    with pytest.raises(CollabError) as closed:
        await live.synced()
    assert closed.value.code == "DISCONNECTED"
    live.text += " (local)"
    assert str(offline.get("content", type=pycrdt.Text)) == "kept server (local)"


async def test_a_python_binding_and_the_stock_yjs_provider_edit_together(server):
    """pycrdt counts UTF-8 bytes, yjs UTF-16 code units: text with emoji round-trips
    between the two, and so do awareness states with non-ASCII text."""
    yws = await YjsProviders.start()
    try:
        async with manager(server.url) as alice:
            await create(alice, "héllo 👋", bob="editor")
            live = await alice.open_document("doc")
            bob_id = await yws.open("bob", server.url, "doc", token=make_token("bob"),
                                    state={"user": "Bøb 🎈"})
            await yws.text_is("bob", "héllo 👋")

            live.text += " wörld 🌍"
            await live.synced()
            await yws.text_is("bob", "héllo 👋 wörld 🌍")
            await yws.call("insert", name="bob", index=len("héllo 👋".encode("utf-16-le")) // 2,
                           text=" 🎉!")
            await live.wait_for_version(2)
            assert live.content == "héllo 👋 🎉! wörld 🌍"

            await awareness_until(live, lambda: live.awareness.states.get(bob_id)
                                  == {"user": "Bøb 🎈"})
            me = str(live.awareness.client_id)
            live.awareness.set_local_state({"user": "Zoë", "cursor": 3})
            await yws.until("bob", "awareness",
                            lambda e: e["states"].get(me) == {"user": "Zoë", "cursor": 3})
            await live.close()
            await yws.until("bob", "awareness", lambda e: me not in e["states"])
    finally:
        await yws.close()
