"""Live documents (PROTOCOL v2 "Live documents: Yjs" and "Document history"): pycrdt
clients over real Socket.IO beside v1 string clients, on the SQLite store and on the Mongo
wire server.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from harness import (
    DELETE_FIRST,
    WAIT,
    CollabProcess,
    Harness,
    PycrdtPeer,
    document,
    make_settings,
    nested_arrays,
    versions_by_user,
)

from collab.awareness import Entry, decode_update, encode_update
from collab.livedocs import LiveDocuments
from collab.typedepth import MAX_TYPE_DEPTH


@pytest.fixture(params=["sqlite", "mongodb"])
def settings(request, tmp_path):
    url = (f"sqlite:///{tmp_path}/collab.db" if request.param == "sqlite"
           else request.getfixturevalue("mongo_db"))
    return make_settings(storage_url=url, rate_limit_per_second=0, max_loaded_documents=2,
                         document_unload_after=0)


async def test_a_live_join_syncs_the_document_and_says_the_role(server):
    alice = await server.connect("alice")
    await document(alice, "hello 👋 wörld", bob="viewer")
    bob = PycrdtPeer(await server.connect("bob"), "doc")
    ack = await bob.join()
    assert ack["role"] == "viewer"
    assert bob.content == "hello 👋 wörld" == ack["document"]["content"]
    assert ack["document"]["version"] == 0
    assert isinstance(ack["awareness"], bytes) and ack["users"] == ["bob"]


async def test_an_update_reaches_live_members_as_yupdate_and_plain_ones_as_updated(server):
    alice = await server.connect("alice")
    await document(alice, "abc", bob="editor", carol="viewer")
    bob, carol = PycrdtPeer(alice, "doc"), PycrdtPeer(await server.connect("carol"), "doc")
    await bob.join()
    await carol.join()
    dave = await server.connect("dave")  # plain v1 member (an admin reads anything)
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "dave",
                                       "role": "viewer"})
    await dave.ok("documents:join", {"document_id": "doc"})

    update = bob.edit(lambda t: t.insert(3, "def"))
    assert (await bob.send(update))["version"] == 1
    got = await carol.receive()
    assert got["version"] == 1 and got["user_id"] == "alice" and carol.content == "abcdef"
    plain = await dave.next("documents:updated")
    assert plain["document"]["content"] == "abcdef" and plain["document"]["version"] == 1
    assert alice.pending("documents:yupdate") == []  # not back to its author
    stored = (await dave.ok("documents:get", {"document_id": "doc"}))["document"]
    assert (stored["content"], stored["version"]) == ("abcdef", 1)


@pytest.mark.parametrize("new", [
    "abc😀def", "a\u0301bc", "日本語のテキスト", "👨‍👩‍👧 family", "x" * 3 + "🇫🇷" + "é" * 3, "",
])
async def test_a_v1_update_is_the_smallest_edit_and_round_trips_exactly(server, new):
    alice = await server.connect("alice")
    await document(alice, "abc😀 mixed 日本 e\u0301 text")
    live = PycrdtPeer(await server.connect("alice"), "doc")
    await live.join()
    untouched = live.edit(lambda t: None)  # (nothing)
    assert untouched == b"\x00\x00"
    ack = await alice.ok("documents:update", {"document_id": "doc", "content": new,
                                              "version": 1})
    assert ack["document"]["content"] == new
    await live.receive()
    assert live.content == new


async def test_a_v1_update_with_the_same_content_still_makes_a_version(server):
    alice = await server.connect("alice")
    await document(alice, "same")
    live = PycrdtPeer(await server.connect("alice"), "doc")
    await live.join()
    ack = await alice.ok("documents:update", {"document_id": "doc", "content": "same",
                                              "version": 1})
    assert ack["document"]["version"] == 1
    assert (await live.receive())["version"] == 1 and live.content == "same"
    await alice.fails("documents:update", {"document_id": "doc", "content": "x",
                                           "version": 1}, "VERSION_CONFLICT")


async def test_an_update_with_nothing_new_is_acked_and_neither_stored_nor_sent(server):
    alice = await server.connect("alice")
    await document(alice, "x")
    a, b = PycrdtPeer(alice, "doc"), PycrdtPeer(await server.connect("alice"), "doc")
    await a.join()
    await b.join()
    update = a.edit(lambda t: t.insert(1, "y"))
    assert (await a.send(update))["version"] == 1
    await b.receive()
    assert (await a.send(update))["version"] == 1  # again: nothing new
    assert (await b.send(b.doc.get_update()))["version"] == 1  # everything it has: nothing
    history = await alice.ok("documents:history", {"document_id": "doc"})
    assert [v["version"] for v in history["versions"]] == [0, 1]
    marker = a.edit(lambda t: t.insert(0, "!"))
    await a.send(marker)
    assert (await b.receive())["version"] == 2  # the next thing b got: version 2


@pytest.mark.parametrize("update", [
    b"", b"\x00", b"\xff" * 20, b"\x01\x01\xff\xff\xff\xff\x0f", bytes(range(256)),
])
async def test_undecodable_updates_are_invalid_input_and_store_nothing(server, update):
    alice = await server.connect("alice")
    await document(alice, "keep")
    live = PycrdtPeer(alice, "doc")
    await live.join()
    await alice.fails("documents:yupdate", {"document_id": "doc", "update": update},
                      "INVALID_INPUT")
    stored = (await alice.ok("documents:get", {"document_id": "doc"}))["document"]
    assert (stored["content"], stored["version"]) == ("keep", 0)
    ok = live.edit(lambda t: t.insert(4, "!"))  # and the document still takes changes
    assert (await live.send(ok))["version"] == 1


async def test_a_yjs_update_splitting_a_surrogate_pair_is_invalid_input(server, yjs):
    # Yjs and Yrs disagree about it (Yjs makes both halves U+FFFD): refused, not stored,
    # not sent, and the document goes on as before
    alice = await server.connect("alice")
    await document(alice, "a😀b", bob="editor")
    live, other = PycrdtPeer(alice, "doc"), PycrdtPeer(await server.connect("bob"), "doc")
    await live.join()
    await other.join()
    for n, (op, fields) in enumerate([("insert", {"index": 2, "text": "X"}),
                                      ("delete", {"index": 1, "length": 1}),
                                      ("delete", {"index": 2, "length": 2})]):
        name = f"splitter-{n}"
        yjs.call("new", doc=name, client_id=6000 + n)
        yjs.call("apply", doc=name, update=live.doc.get_update())  # as the server sent it
        split = yjs.call(op, doc=name, **fields)
        assert "\ufffd" in split["text"]
        error = await alice.fails("documents:yupdate", {"document_id": "doc",
                                                        "update": split["update"]},
                                  "INVALID_INPUT")
        assert "surrogate pair" in error["message"]
    stored = (await alice.ok("documents:get", {"document_id": "doc"}))["document"]
    assert (stored["content"], stored["version"]) == ("a😀b", 0)
    history = await alice.ok("documents:history", {"document_id": "doc"})
    assert [v["version"] for v in history["versions"]] == [0]
    # a normal edit beside the emoji still goes through, and is the first thing bob gets
    assert (await live.send(live.edit(lambda t: t.insert(len(t), "😀!"))))["version"] == 1
    assert (await other.receive())["version"] == 1
    assert other.content == live.content == "a😀b😀!"


async def test_refusals_change_nothing(server):
    alice = await server.connect("alice")
    await document(alice, "v", bob="viewer")
    bob = PycrdtPeer(await server.connect("bob"), "doc")
    await bob.join()
    update = bob.edit(lambda t: t.insert(0, "x"))
    await bob.client.fails("documents:yupdate", {"document_id": "doc", "update": update},
                           "PERMISSION_DENIED")
    plain = await server.connect("alice")
    await plain.ok("documents:join", {"document_id": "doc"})
    for event in ("documents:yupdate", "documents:awareness"):
        await plain.fails(event, {"document_id": "doc", "update": update}, "INVALID_INPUT")
        await plain.fails(event, {"document_id": "doc", "update": "not bytes"},
                          "INVALID_INPUT")
    big = PycrdtPeer(alice, "doc")
    await big.join()
    too_much = big.edit(lambda t: t.insert(0, "x" * (512 * 1024)))
    await alice.fails("documents:yupdate", {"document_id": "doc", "update": too_much},
                      "PAYLOAD_TOO_LARGE")
    stored = (await alice.ok("documents:get", {"document_id": "doc"}))["document"]
    assert (stored["content"], stored["version"]) == ("v", 0)


async def test_a_type_nested_too_deep_is_refused_and_the_server_serves_on(tmp_path):
    # the reported crash, against a collab process of its own: had the chain reached
    # Yrs, deleting its root would have killed the process and every connection with it
    proc = CollabProcess(tmp_path)
    proc.start()
    harness = Harness(proc)
    try:
        alice = await harness.connect("alice")
        await document(alice, "keep", bob="editor")
        live, bob = PycrdtPeer(alice, "doc"), PycrdtPeer(await harness.connect("bob"), "doc")
        await live.join()
        await bob.join()
        for too_deep in (nested_arrays(60_000), nested_arrays(MAX_TYPE_DEPTH + 1)):
            error = await alice.fails("documents:yupdate", {"document_id": "doc",
                                                            "update": too_deep},
                                      "PAYLOAD_TOO_LARGE")
            assert error["details"] == {"limit": MAX_TYPE_DEPTH}
            assert "nesting" in error["message"]
        await alice.fails("documents:yupdate", {"document_id": "doc", "update": DELETE_FIRST},
                          "INVALID_INPUT")  # nothing of the chain is there to delete
        history = await alice.ok("documents:history", {"document_id": "doc"})
        assert [v["version"] for v in history["versions"]] == [0]

        # at the limit: accepted and relayed; one level more refused; its root deleted
        chain = nested_arrays(MAX_TYPE_DEPTH)
        live.doc.apply_update(chain)
        assert (await live.send(chain))["version"] == 1
        assert (await bob.receive())["version"] == 1
        await alice.fails("documents:yupdate", {"document_id": "doc", "update": nested_arrays(
            1, clock=MAX_TYPE_DEPTH, parent=(1, MAX_TYPE_DEPTH - 1))}, "PAYLOAD_TOO_LARGE")
        live.doc.apply_update(DELETE_FIRST)
        assert (await live.send(DELETE_FIRST))["version"] == 2
        assert (await bob.receive())["version"] == 2

        # and the process serves on: a newcomer's join, others' edits
        newcomer = PycrdtPeer(await harness.connect("bob"), "doc")
        assert (await newcomer.join())["document"]["version"] == 2
        assert newcomer.content == "keep"
        assert (await bob.send(bob.edit(lambda t: t.insert(4, "!"))))["version"] == 3
        assert (await newcomer.receive())["version"] == 3 and newcomer.content == "keep!"
        assert proc.running
    finally:
        await harness.close_clients()
        proc.stop()


async def test_awareness_is_relayed_and_removed_when_its_connection_leaves(server):
    alice = await server.connect("alice")
    await document(alice, bob="editor")
    a, b = PycrdtPeer(alice, "doc"), PycrdtPeer(await server.connect("bob"), "doc")
    await a.join()
    await b.join()
    cursor = encode_update([Entry(a.doc.client_id, 1, '{"cursor":3}')])
    await alice.ok("documents:awareness", {"document_id": "doc", "update": cursor})
    got = await b.client.next("documents:awareness")
    assert decode_update(got["update"]) == [Entry(a.doc.client_id, 1, '{"cursor":3}')]
    c = PycrdtPeer(await server.connect("bob"), "doc")
    joined = await c.join()  # a newcomer sees the others' cursors at once
    assert decode_update(joined["awareness"]) == [Entry(a.doc.client_id, 1, '{"cursor":3}')]
    await alice.disconnect()
    removed = await b.client.next("documents:awareness")
    assert decode_update(removed["update"]) == [Entry(a.doc.client_id, 1, None)]


async def test_a_member_cannot_replace_or_remove_another_users_cursor(server):
    """bob sends entries for alice's client id, newer and null: his ack is ok, nobody
    hears of them, and a newcomer still gets alice's cursor as she set it."""
    alice = await server.connect("alice")
    await document(alice, bob="editor", carol="viewer")
    a, b = PycrdtPeer(alice, "doc"), PycrdtPeer(await server.connect("bob"), "doc")
    c = PycrdtPeer(await server.connect("carol"), "doc")
    for peer in (a, b, c):
        await peer.join()
    mine = a.doc.client_id
    await alice.ok("documents:awareness", {"document_id": "doc", "update": encode_update(
        [Entry(mine, 1, '{"name":"alice"}')])})
    assert decode_update((await c.client.next("documents:awareness"))["update"]) == \
        [Entry(mine, 1, '{"name":"alice"}')]
    for entry in (Entry(mine, 9, '{"name":"bob, as alice"}'), Entry(mine, 1, None)):
        await b.client.ok("documents:awareness",
                          {"document_id": "doc", "update": encode_update([entry])})
    await b.client.ok("documents:awareness", {"document_id": "doc", "update": encode_update(
        [Entry(b.doc.client_id, 1, '{"name":"bob"}')])})  # (his own: that one is heard)
    assert decode_update((await c.client.next("documents:awareness"))["update"]) == \
        [Entry(b.doc.client_id, 1, '{"name":"bob"}')]
    late = PycrdtPeer(await server.connect("carol"), "doc")
    states = decode_update((await late.join())["awareness"])
    assert sorted(states, key=lambda e: e.client_id) == sorted(
        [Entry(mine, 1, '{"name":"alice"}'), Entry(b.doc.client_id, 1, '{"name":"bob"}')],
        key=lambda e: e.client_id)


class TestAwarenessExpiry:
    """awareness_timeout=0.6 (y-protocols' 30 s, shortened): a state not renewed in time
    is removed, and the room's live members are told."""

    TIMEOUT = 0.6

    @pytest.fixture
    def settings(self):
        return make_settings(awareness_timeout=self.TIMEOUT)

    async def test_a_state_not_renewed_in_time_is_removed_and_a_renewed_one_kept(self,
                                                                              server):
        alice = await server.connect("alice")
        await document(alice, bob="editor")
        a, b = PycrdtPeer(alice, "doc"), PycrdtPeer(await server.connect("bob"), "doc")
        await a.join()
        await b.join()
        mine, theirs = a.doc.client_id, b.doc.client_id
        await alice.ok("documents:awareness", {"document_id": "doc", "update": encode_update(
            [Entry(mine, 1, '{"cursor":1}')])})
        start = asyncio.get_running_loop().time()
        assert decode_update((await b.client.next("documents:awareness"))["update"]) == \
            [Entry(mine, 1, '{"cursor":1}')]
        renewals = 0

        async def renew() -> None:  # as y-protocols does: the same state, a newer clock
            nonlocal renewals
            while True:
                renewals += 1
                await b.client.ok("documents:awareness", {
                    "document_id": "doc",
                    "update": encode_update([Entry(theirs, renewals, '{"cursor":2}')])})
                await asyncio.sleep(self.TIMEOUT / 4)

        renewing = asyncio.ensure_future(renew())
        try:
            removed = await alice.next("documents:awareness")
            while decode_update(removed["update"])[0].client_id == theirs:  # bob's renewals
                removed = await alice.next("documents:awareness")
            assert decode_update(removed["update"]) == [Entry(mine, 1, None)]
            assert asyncio.get_running_loop().time() - start >= self.TIMEOUT * 0.9
            got = await b.client.next("documents:awareness")
            assert decode_update(got["update"]) == [Entry(mine, 1, None)]
            late = PycrdtPeer(await server.connect("bob"), "doc")
            joined = decode_update((await late.join())["awareness"])
            assert [e.client_id for e in joined] == [theirs]  # renewed: still there
        finally:
            renewing.cancel()
        assert renewals >= 3  # (it lived past the timeout by its renewals)


    async def test_a_failed_sweep_does_not_end_the_expiry(self, server):
        """A pass of the sweep that fails is logged, and the next one still expires."""
        calls = 0

        def has_members(document_id: str) -> bool:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a broken pass")
            return True

        expired: asyncio.Queue[bytes] = asyncio.Queue()

        async def told(document_id: str, removal: bytes) -> None:
            expired.put_nowait(removal)

        documents = LiveDocuments(server.app.raw_store, server.app.settings, has_members,
                                  expired=told)
        documents.awareness("doc").apply("conn", encode_update([Entry(7, 1, "{}")]))
        documents.start()
        try:
            removal = await asyncio.wait_for(expired.get(), self.TIMEOUT * 5)
        finally:
            await documents.close()
        assert decode_update(removal) == [Entry(7, 1, None)]
        assert calls > 1


async def test_history_get_at_a_version_and_restore(server):
    alice = await server.connect("alice")
    await document(alice, "one")
    for version, content in ((1, "two"), (2, "three")):
        await alice.ok("documents:update", {"document_id": "doc", "content": content,
                                            "version": version})
    history = await alice.ok("documents:history", {"document_id": "doc", "limit": 2})
    assert [v["version"] for v in history["versions"]] == [1, 2] and history["has_more"]
    older = await alice.ok("documents:history", {"document_id": "doc", "before_version": 1})
    assert [(v["version"], v["user_id"]) for v in older["versions"]] == [(0, "alice")]
    assert not older["has_more"]
    at = (await alice.ok("documents:get", {"document_id": "doc", "version": 1}))["document"]
    assert (at["content"], at["version"], at["updated_by"]) == ("two", 1, "alice")
    await alice.fails("documents:get", {"document_id": "doc", "version": 9}, "NOT_FOUND")

    live = PycrdtPeer(await server.connect("alice"), "doc")
    await live.join()
    restored = (await alice.ok("documents:restore", {"document_id": "doc", "version": 0}))
    assert (restored["document"]["content"], restored["document"]["version"]) == ("one", 3)
    await live.receive()
    assert live.content == "one"
    again = await alice.ok("documents:restore", {"document_id": "doc", "version": 0})
    assert again["document"]["version"] == 3  # already that content: no version


async def test_a_live_member_gets_its_own_restore_and_v1_update(server):
    """Unlike its own documents:yupdate, a live member's copy lacks a restore or a v1
    update it made: the change reaches it as documents:yupdate too (exactly once)."""
    alice = await server.connect("alice")
    await document(alice, "one")
    live = PycrdtPeer(await server.connect("alice"), "doc")
    await live.join()
    await live.client.ok("documents:update", {"document_id": "doc", "content": "two",
                                              "version": 1})
    await live.receive()
    assert (live.content, live.version) == ("two", 1)
    restored = await live.client.ok("documents:restore", {"document_id": "doc", "version": 0})
    assert restored["document"]["version"] == 2
    await live.receive()
    assert (live.content, live.version) == ("one", 2)
    ack = await live.send(live.edit(lambda text: text.insert(0, "!")))
    assert ack["version"] == 3
    await live.client.ok("documents:update", {"document_id": "doc", "content": "!one.",
                                              "version": 4})
    got = await live.receive()  # the next to arrive is version 4: its own 3 never came back
    assert (got["version"], live.content) == (4, "!one.")


async def test_three_editors_converge_under_interleaved_concurrent_edits(server, settings):
    alice = await server.connect("alice")
    await document(alice, "start", bob="editor", carol="editor")
    peers = [PycrdtPeer(alice, "doc"), PycrdtPeer(await server.connect("bob"), "doc"),
             PycrdtPeer(await server.connect("carol"), "doc")]
    for peer in peers:
        await peer.join()
    rng = random.Random(7)

    async def typist(peer: PycrdtPeer) -> None:
        for _ in range(200):
            n = len(peer.text)  # (pycrdt counts UTF-8 bytes: ASCII here)
            if n and rng.random() < 0.3:
                start = rng.randrange(n)
                update = peer.edit(lambda t, s=start: t.__delitem__(slice(s, s + 1)))
            else:
                at = rng.randrange(n + 1)
                update = peer.edit(lambda t, a=at: t.insert(a, rng.choice("abcxyz ")))
            await peer.send(update)
            while peer.waiting and rng.random() < 0.7:
                await peer.receive()  # take some of the others' in, leave some for later

    await asyncio.gather(*(typist(p) for p in peers))
    stored = (await alice.ok("documents:get", {"document_id": "doc"}))["document"]
    made = await versions_by_user(alice, "doc")
    assert sorted(made) == list(range(stored["version"] + 1))
    for peer, user in zip(peers, ("alice", "bob", "carol"), strict=True):
        # every version the others made comes from the room (an ack of an update that
        # brought nothing new names the current version: maybe one still on its way)
        others = {v for v, by in made.items() if by != user and v > 0}
        while not others <= set(peer.received):
            try:
                await peer.receive()
            except asyncio.TimeoutError:
                raise AssertionError(f"peer {peers.index(peer)} never got "
                                     f"{sorted(others - set(peer.received))[:20]}") from None
    assert len({p.content for p in peers}) == 1
    assert peers[0].content == stored["content"]
    # one version per update that changed something (a deletion of a character another
    # editor deleted first brings nothing new: acked, neither stored nor sent)
    assert 500 < stored["version"] <= 600
    assert len((await alice.ok("documents:history", {"document_id": "doc",
                                                      "limit": 200}))["versions"]) == 200
    return peers[0].content


async def test_live_edits_survive_a_restart_and_load_from_a_snapshot(settings):
    from harness import Harness

    from collab import livedocs
    from collab.server import Server

    first = Harness(await Server.start(settings))
    try:
        alice = await first.connect("alice")
        await document(alice, "")
        peer = PycrdtPeer(alice, "doc")
        await peer.join()
        for i in range(livedocs.SNAPSHOT_EVERY + 5):  # past a snapshot
            await peer.send(peer.edit(lambda t, i=i: t.insert(len(t), "ab"[i % 2])))
        expected = peer.content
    finally:
        await first.close_clients()
        await first.server.stop()
    again = Harness(await Server.start(settings))
    try:
        snapshot = await again.app.raw_store.document_snapshot("doc")
        assert snapshot.version == livedocs.SNAPSHOT_EVERY  # loading replays 5 updates
        fresh = PycrdtPeer(await again.connect("alice"), "doc")
        ack = await fresh.join()
        assert fresh.content == expected == ack["document"]["content"]
        assert ack["document"]["version"] == livedocs.SNAPSHOT_EVERY + 5
    finally:
        await again.close_clients()
        await again.server.stop()


async def test_documents_are_unloaded_when_their_room_empties_and_capped(server):
    app = server.app
    alice = await server.connect("alice")
    peers = []
    for i in range(2):
        await alice.ok("documents:create", {"document_id": f"d{i}", "content": "x"})
        peer = PycrdtPeer(await server.connect("alice"), f"d{i}")
        await peer.join()
        peers.append(peer)
    app.documents.sweep()
    assert len(app.documents) == 2  # every room has its member here
    await peers[0].client.ok("documents:leave", {"document_id": "d0"})
    app.documents.sweep()  # starts d0's grace period (document_unload_after: 0 here)
    app.documents.sweep()
    assert "d0" not in app.documents and len(app.documents) == 1
    # past the cap the least recently used goes first, preferring a room nobody is in
    assert app.settings.max_loaded_documents == 2
    await alice.ok("documents:create", {"document_id": "d3", "content": "x"})
    await PycrdtPeer(await server.connect("alice"), "d3").join()
    await PycrdtPeer(await server.connect("alice"), "d0").join()
    assert len(app.documents) == 2 and "d3" in app.documents  # d1 (least recent) went
    # and one that was unloaded while edited elsewhere loads again, current
    stored = await alice.ok("documents:update", {"document_id": "d1", "content": "new",
                                                 "version": 1})
    assert stored["document"]["content"] == "new"


async def test_a_catch_up_skips_what_another_nodes_broadcast_brought_meanwhile(server):
    """A copy catching up from the store while another node's announcement of a version
    arrives (and is applied) takes the versions after it too, rather than stopping."""
    alice = await server.connect("alice")
    await document(alice, "ab")
    here = server.app.documents
    loaded = await here.get("doc")
    elsewhere = LiveDocuments(server.app.raw_store, server.app.settings, lambda _: True)

    async def unheard(change) -> None:  # noqa: ANN001 - (the broadcast is played by hand)
        return None

    first = await elsewhere.change("doc", lambda d: d.replace_content("abc"), "bob",
                                   announce=unheard)
    await elsewhere.change("doc", lambda d: d.replace_content("abcd"), "bob",
                           announce=unheard)
    catching_up = asyncio.ensure_future(here.catch_up(loaded))
    await asyncio.sleep(0)  # (it is reading the store now)
    await here.observed("doc", first.version, first.update)  # the broadcast of version 1
    assert loaded.version == 1
    await catching_up
    assert (loaded.version, loaded.doc.content) == (2, "abcd")


async def until_queued(documents, document_id: str, queued: int) -> None:
    """Until ``queued`` changes wait in the copy's queue for its next batch (a store that
    appends in batches). Nothing signals that a change has queued: this polls, bounded."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while len(documents.peek(document_id).queued) < queued:
        assert asyncio.get_running_loop().time() < deadline, "the changes never queued"
        await asyncio.sleep(0.005)


class QueueingLock(asyncio.Lock):
    """A lock that tells who came to wait for it (``waiting``: one item a waiter)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: asyncio.Queue[None] = asyncio.Queue()

    async def acquire(self) -> bool:
        if self.locked():
            self.waiting.put_nowait(None)
        return await super().acquire()


async def test_what_waited_behind_a_refused_change_neither_stores_nor_shows_it(
        server, monkeypatch):
    """A change the store refuses leaves its edit in the loaded copy, which is dropped.
    Whatever waited for that copy's lock meanwhile must take the document as stored, not
    go on with the dropped copy: a change made from it stored content no update holds,
    and a join sent the refused edit in its update."""
    from collab.errors import Unavailable

    alice = await server.connect("alice")
    await document(alice, "keep")
    x, y = PycrdtPeer(alice, "doc"), PycrdtPeer(await server.connect("alice"), "doc")
    z = PycrdtPeer(await server.connect("alice"), "doc")
    await x.join()
    await y.join()
    store = server.app.store
    name = "append_document_updates" if store.appends_in_batches else "append_document_update"
    append = getattr(store, name)
    entered, release = asyncio.Event(), asyncio.Event()

    async def refuse_the_first(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not entered.is_set():
            entered.set()
            await release.wait()
            raise Unavailable("The store is away")
        return await append(*args, **kwargs)

    monkeypatch.setattr(store, name, refuse_the_first)
    lock = server.app.documents.peek("doc").lock = QueueingLock()
    lost = x.edit(lambda t: t.insert(0, "LOST "))
    refused = asyncio.ensure_future(alice.call("documents:yupdate",
                                               {"document_id": "doc", "update": lost}))
    await entered.wait()  # x's change holds the copy, its store call pending
    kept = y.edit(lambda t: t.insert(4, "!"))
    accepted = asyncio.ensure_future(y.client.call("documents:yupdate",
                                                   {"document_id": "doc", "update": kept}))
    joined = asyncio.ensure_future(z.join())
    # y's change and z's join wait for the copy: for its lock, or y's change in its
    # queue on a store that appends in batches
    for _ in range(1 if store.appends_in_batches else 2):
        await asyncio.wait_for(lock.waiting.get(), WAIT)
    if store.appends_in_batches:
        await until_queued(server.app.documents, "doc", 1)
    release.set()

    assert (await refused)["error"]["code"] == "UNAVAILABLE"
    assert (await accepted) == {"ok": True, "version": 1}
    await joined
    assert "LOST" not in z.content
    stored = (await alice.ok("documents:get", {"document_id": "doc"}))["document"]
    assert (stored["content"], stored["version"]) == ("keep!", 1)
    fresh = PycrdtPeer(await server.connect("alice"), "doc")
    await fresh.join()
    assert fresh.content == "keep!"


# -- a document's writes: batched where the store can, one at a time elsewhere ----------


class HeldWrite:
    """The store's document write (``append_document_updates`` on a store that appends
    in batches, else ``append_document_update``), with its first call held until
    :meth:`release`; ``before_first`` runs then, before the real write."""

    def __init__(self, store, monkeypatch, before_first=None, fail_first=None) -> None:
        self.batched = store.appends_in_batches
        name = "append_document_updates" if self.batched else "append_document_update"
        self.real = getattr(store, name)
        self.calls: list[tuple] = []
        self.entered = asyncio.Event()
        self._release = asyncio.Event()
        self._before_first = before_first
        self._fail_first = fail_first
        monkeypatch.setattr(store, name, self._write)

    async def _write(self, *args, **kwargs):
        self.calls.append(args)
        if len(self.calls) == 1:
            self.entered.set()
            await self._release.wait()
            if self._before_first is not None:
                await self._before_first()
            if self._fail_first is not None:
                raise self._fail_first
        return await self.real(*args, **kwargs)

    async def release_when_queued(self, documents, document_id: str, queued: int) -> None:
        """Release the first write once ``queued`` changes wait behind it (on a store that
        batches; elsewhere they wait for the document's lock, which tells nothing)."""
        if self.batched:
            await until_queued(documents, document_id, queued)
        self._release.set()


async def test_changes_queued_behind_a_write_share_the_next_one(server, monkeypatch):
    """(A connection's events run one at a time: changes queue from several connections.)"""
    alice = await server.connect("alice")
    names = [f"e{i}" for i in range(8)]
    await document(alice, "", carol="viewer", **dict.fromkeys(names, "editor"))
    alice_peer = PycrdtPeer(alice, "doc")
    editors = [PycrdtPeer(await server.connect(name), "doc") for name in names]
    carol = PycrdtPeer(await server.connect("carol"), "doc")
    for peer in (alice_peer, *editors, carol):
        await peer.join()
    held = HeldWrite(server.app.store, monkeypatch)
    first = asyncio.ensure_future(alice_peer.send(alice_peer.edit(lambda t: t.insert(0, "a"))))
    await held.entered.wait()
    rest = [asyncio.ensure_future(peer.send(peer.edit(lambda t: t.insert(0, "x"))))
            for peer in editors]
    await held.release_when_queued(server.app.documents, "doc", len(rest))
    acks = await asyncio.gather(first, *rest)
    assert sorted(a["version"] for a in acks) == list(range(1, 10))
    # one write for the first, one for the eight that queued behind it (else one each)
    assert len(held.calls) == (2 if held.batched else 9)
    got = [await carol.receive() for _ in range(9)]
    assert [g["version"] for g in got] == list(range(1, 10))  # in version order, once each
    await carol.client.ok("documents:history", {"document_id": "doc", "limit": 1})
    assert carol.client.pending("documents:yupdate") == []
    stored = (await alice.ok("documents:get", {"document_id": "doc"}))["document"]
    assert stored["version"] == 9 and stored["content"] == carol.content
    assert sorted(carol.content) == sorted("a" + "x" * 8)
    # every version's content is the merge of the versions up to it
    history = [(await alice.ok("documents:get", {"document_id": "doc", "version": v}))
               ["document"]["content"] for v in range(1, 10)]
    assert [len(content) for content in history] == list(range(1, 10))


async def test_a_failed_write_refuses_its_changes_and_what_depended_on_them(server, monkeypatch):
    from collab.errors import Unavailable
    alice = await server.connect("alice")
    await document(alice, "", bob="editor", carol="viewer")
    alice_peer, bob = PycrdtPeer(alice, "doc"), PycrdtPeer(await server.connect("bob"), "doc")
    carol = PycrdtPeer(await server.connect("carol"), "doc")
    for peer in (alice_peer, bob, carol):
        await peer.join()
    held = HeldWrite(server.app.store, monkeypatch, fail_first=Unavailable("store down"))

    def send(peer, change):
        return asyncio.ensure_future(peer.client.call(
            "documents:yupdate", {"document_id": "doc", "update": peer.edit(change)}))

    again = PycrdtPeer(await server.connect("alice"), "doc")  # alice in a second tab
    await again.join()
    lost = send(alice_peer, lambda t: t.insert(0, "a"))
    await held.entered.wait()
    again.doc.apply_update(alice_peer.doc.get_update())  # the second tab saw the "a"
    after_lost = send(again, lambda t: t.insert(1, "b"))  # right after the lost "a"
    independent = send(bob, lambda t: t.insert(0, "z"))
    await held.release_when_queued(server.app.documents, "doc", 2)
    acks = await asyncio.gather(lost, after_lost, independent)
    assert acks[0]["error"]["code"] == "UNAVAILABLE"
    assert acks[1]["error"]["code"] == "INVALID_INPUT"  # depends on what was not stored
    assert acks[2]["ok"] is True and acks[2]["version"] == 1
    got = await carol.receive()
    assert got["version"] == 1 and carol.content == "z"
    stored = (await alice.ok("documents:get", {"document_id": "doc"}))["document"]
    assert (stored["version"], stored["content"]) == (1, "z")
    assert carol.client.pending("documents:yupdate") == []


async def test_a_batch_whose_version_another_node_took_is_rebuilt_on_it(server, monkeypatch):
    store = server.app.store
    alice = await server.connect("alice")
    await document(alice, "", bob="editor", erin="editor", dave="editor")
    alice_peer, bob = PycrdtPeer(alice, "doc"), PycrdtPeer(await server.connect("bob"), "doc")
    erin = PycrdtPeer(await server.connect("erin"), "doc")
    elsewhere = PycrdtPeer(await server.connect("dave"), "doc")  # edits "on another node"
    for peer in (alice_peer, bob, erin, elsewhere):
        await peer.join()
    foreign = elsewhere.edit(lambda t: t.insert(0, "X"))

    async def another_node_writes() -> None:  # straight to the store: version 1 is taken
        write = store.append_document_update if held.batched else held.real
        await write("doc", foreign, "X", "dave", expected_version=0)

    held = HeldWrite(store, monkeypatch, before_first=another_node_writes)
    first = asyncio.ensure_future(alice_peer.send(alice_peer.edit(lambda t: t.insert(0, "a"))))
    await held.entered.wait()
    rest = [asyncio.ensure_future(peer.send(peer.edit(lambda t, c=c: t.insert(0, c))))
            for peer, c in [(bob, "b"), (erin, "c")]]
    await held.release_when_queued(server.app.documents, "doc", 2)
    acks = await asyncio.gather(first, *rest)
    assert sorted(a["version"] for a in acks) == [2, 3, 4]
    versions = [(await alice.ok("documents:get", {"document_id": "doc", "version": v}))
                ["document"] for v in range(1, 5)]
    assert versions[0]["content"] == "X" and versions[0]["updated_by"] == "dave"
    # each version's content is the merge of everything up to it, the other node's too
    assert [len(v["content"]) for v in versions] == [1, 2, 3, 4]
    # (bob's and erin's edits come on two connections: either may queue first)
    letters = {"dave": "X", "alice": "a", "bob": "b", "erin": "c"}
    assert [v["updated_by"] for v in versions[:2]] == ["dave", "alice"]
    assert sorted(v["updated_by"] for v in versions[2:]) == ["bob", "erin"]
    for n, v in enumerate(versions):
        assert set(v["content"]) == {letters[w["updated_by"]] for w in versions[:n + 1]}
    head = (await alice.ok("documents:get", {"document_id": "doc"}))["document"]
    assert head["version"] == 4 and head["content"] == versions[-1]["content"]
