"""Live documents with real JavaScript clients (PROTOCOL v2 "Live documents: Yjs" and
"Document history"): yjs and y-protocols over socket.io-client v4 in Node
(tests/js/live_peer.mjs, driven by harness.LivePeer) against a running server, beside
v1 string clients and pycrdt live peers.

They need node and ``npm ci --prefix tests/js``; without them they fail in CI (CI=true)
and are skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pycrdt
import pytest
from harness import (
    Client,
    Harness,
    LivePeer,
    PycrdtPeer,
    cancel_leftover_tasks,
    document,
    make_settings,
    make_token,
)

from collab.config import Settings
from collab.server import Server


@pytest.fixture
def settings(tmp_path):
    # a file, so a restarted server reads what the first one stored; no rate limits,
    # since a typist here sends hundreds of updates a second
    return make_settings(storage_url=f"sqlite:///{tmp_path}/collab.db", rate_limit_per_second=0,
                         user_rate_limit_per_second=0)


@pytest.fixture
def peers(io_loop):
    """``await peers(url, user_id)``: a connected :class:`LivePeer`; all closed after."""
    started: list[LivePeer] = []

    async def start(url: str, user_id: str, **options: Any) -> LivePeer:
        peer = await LivePeer.start(url, make_token(user_id), **options)
        started.append(peer)
        return peer

    yield start

    async def close() -> None:
        await asyncio.gather(*(peer.close() for peer in started))

    io_loop.run_sync(close)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Harness]:
    """A server of its own (to restart on the same store, or a second node)."""
    harness = Harness(await Server.start(settings))
    try:
        yield harness
    finally:
        await harness.close_clients()
        await harness.server.stop()


async def stored(client: Client, version: int | None = None) -> dict:
    request = {"document_id": "doc"} if version is None else {"document_id": "doc",
                                                              "version": version}
    return (await client.ok("documents:get", request))["document"]


async def history(client: Client) -> dict[int, str]:
    """Every version of the document -> who made it, paged back from the newest."""
    made: dict[int, str] = {}
    before = None
    while True:
        page = await client.ok("documents:history", {"document_id": "doc", "limit": 200,
                                                     **({"before_version": before}
                                                        if before is not None else {})})
        made.update({v["version"]: v["user_id"] for v in page["versions"]})
        if not page["has_more"]:
            return made
        before = page["versions"][0]["version"]


def own_versions(report: dict) -> tuple[list[int], list[dict]]:
    """The versions a peer's own updates made, and the acks of those that brought
    nothing new: acked with the current version, which is one the room made (received
    then, if not before the ack), one this peer made already, or its last join's."""
    received = set(report["received"])
    joined, made, nothing_new = -1, [], []
    for kind, version, *what in report["timeline"]:
        if kind == "join":
            joined = version
        elif kind == "ack":
            if version in received or version <= joined or version in made:
                nothing_new.append({"kind": what[0], "version": version})
            else:
                made.append(version)
    return made, nothing_new


def utf16(text: str) -> int:
    """Yjs's length of ``text``: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def utf16_splice(text: str, index: int, delete: int = 0, insert: str = "") -> str:
    """``text`` edited at UTF-16 offsets, as a Yjs client edits it."""
    units = text.encode("utf-16-le")
    return (units[:2 * index] + insert.encode("utf-16-le")
            + units[2 * (index + delete):]).decode("utf-16-le")


# -- convergence -------------------------------------------------------------------


async def test_three_js_editors_converge_under_interleaved_edits_and_after_a_restart(
        settings, peers):
    users = ["alice", "bob", "carol"]
    async with running(settings) as first:
        alice = await first.connect("alice")
        await document(alice, "start ✨ 日本", bob="editor", carol="editor")
        js = [await peers(first.url, user) for user in users]
        for peer in js:
            assert (await peer.join("doc"))["ack"]["document"]["version"] == 0
        # 200 each, sent without waiting for the others': they interleave in the room
        runs = await asyncio.gather(*(peer.random_edits(200, seed=11 + i)
                                      for i, peer in enumerate(js)))
        head = await stored(alice)
        texts = [await peer.settled(head["version"]) for peer in js]
        assert texts == [head["content"]] * 3
        assert [await peer.text() for peer in js] == texts
        reports = [await peer.report() for peer in js]
        made_by = await history(alice)

    everything = set(range(1, head["version"] + 1))
    assert sorted(made_by) == [0, *sorted(everything)] and made_by[0] == "alice"
    all_made: list[int] = []
    nothing_new_count = 0
    for user, run, report in zip(users, runs, reports, strict=True):
        assert run["edits"]["insert"] + run["edits"]["delete"] == 200
        assert report["refused"] == [] and report["errors"] == []
        assert len(report["acks"]) == 200
        made, nothing_new = own_versions(report)
        # each change reached every other member once, in version order
        assert report["received"] == sorted(set(report["received"]))
        assert set(report["received"]).isdisjoint(made)
        assert set(report["received"]) | set(made) == everything
        assert made == sorted(made) and all(made_by[v] == user for v in made)
        # an update that brought nothing new can only be a deletion someone else made first
        assert {ack["kind"] for ack in nothing_new} <= {"delete"}
        all_made += made
        nothing_new_count += len(nothing_new)
    # every accepted change exactly one version
    assert sorted(all_made) == sorted(everything)
    assert head["version"] + nothing_new_count == 200 * 3
    assert any(ch in head["content"] for ch in "😀👍🏽é日")

    async with running(settings) as again:  # the same store, read afresh
        reader = await again.connect("bob")
        after = await stored(reader)
        assert (after["content"], after["version"]) == (head["content"], head["version"])
        fresh = await peers(again.url, "carol")
        joined = await fresh.join("doc")
        assert joined["text"] == head["content"]
        assert joined["ack"]["document"]["version"] == head["version"]


async def test_members_joining_during_interleaved_edits_miss_nothing(server, peers):
    alice = await server.connect("alice")
    await document(alice, "x", bob="editor", carol="viewer")
    typists = [await peers(server.url, "alice"), await peers(server.url, "bob")]
    for peer in typists:
        await peer.join("doc")
    late = [await peers(server.url, "carol") for _ in range(4)]  # connected, not joined

    async def join_along() -> None:
        for peer, version in zip(late, (30, 90, 150, 210), strict=True):
            await typists[0].wait_version(version)  # while the two typists go on
            await peer.join("doc")

    await asyncio.gather(*(peer.random_edits(160, seed=i) for i, peer in enumerate(typists)),
                         join_along())
    head = await stored(alice)
    for peer in late:
        assert await peer.settled(head["version"]) == head["content"]
        report = await peer.report()
        [joined] = report["joins"]
        assert 0 < joined < head["version"]
        # every change the ack's update does not hold: once, in order; after the ack
        # nothing else (before it, changes the update holds may come as well, since a
        # join enters the room before it loads: Yjs applies them twice harmlessly)
        timeline = report["timeline"]
        at = timeline.index(["join", joined])
        before, after = [v for _, v in timeline[:at]], [v for _, v in timeline[at + 1:]]
        assert all(v > joined for v in after)
        assert [v for v in before + after if v > joined] == \
            list(range(joined + 1, head["version"] + 1))
        assert before == sorted(set(before))


async def test_a_live_editor_on_long_polling_converges_with_one_on_websocket(server, peers):
    """Polling batches what was buffered while the last POST was out: one POST carries
    many updates (two Engine.IO packets each, the event and its attachment)."""
    alice = await server.connect("alice")
    await document(alice, "", bob="editor")
    polling = await peers(server.url, "alice", transports=("polling",))
    websocket = await peers(server.url, "bob")
    await polling.join("doc")
    await websocket.join("doc")
    await asyncio.gather(polling.random_edits(100, seed=5), websocket.random_edits(100, seed=6))
    head = await stored(alice)
    assert await polling.settled(head["version"]) == head["content"]
    assert await websocket.settled(head["version"]) == head["content"]
    for peer in (polling, websocket):
        report = await peer.report()
        assert report["refused"] == [] and report["errors"] == [] and len(report["acks"]) == 100
        assert report["joins"] == [0]  # never cut off and rejoined
    assert head["version"] > 150


async def test_other_shared_types_are_kept_merged_and_relayed(settings, peers):
    """A ProseMirror binding's Y.XmlFragment, a Y.Map: stored and relayed, untouched by
    v1 updates of the content, there again after a restart."""
    types = {"meta": "map", "prosemirror": "xml", "content": "text"}
    async with running(settings) as first:
        alice = await first.connect("alice")
        await document(alice, "plain", bob="editor")
        a, b = await peers(first.url, "alice"), await peers(first.url, "bob")
        await a.join("doc")
        await b.join("doc")
        assert (await a.call("map_set", name="meta", key="title",
                             value={"text": "Tïtle 📝", "level": 1}))["ack"]["version"] == 1
        assert (await b.call("xml_append", name="prosemirror", tag="paragraph",
                             text="hello 👋"))["ack"]["version"] == 2
        await alice.ok("documents:update", {"document_id": "doc", "content": "plain v1",
                                            "version": 3})
        await a.settled(3)
        await b.settled(3)
        expected = {"meta": {"title": {"text": "Tïtle 📝", "level": 1}},
                    "prosemirror": "<paragraph>hello 👋</paragraph>", "content": "plain v1"}
        for peer in (a, b):
            assert (await peer.call("shared", types=types))["shared"] == expected
        assert (await stored(alice))["content"] == "plain v1"
    async with running(settings) as again:
        fresh = await peers(again.url, "bob")
        await fresh.join("doc")
        assert (await fresh.call("shared", types=types))["shared"] == expected


async def test_editors_on_two_nodes_converge_and_a_refused_one_resyncs(peers, redis_url,
                                                                       mongo_db):
    """Two nodes on one Redis and one Mongo store, an editor on one and two on the
    other, all typing at once. A node that keeps losing the version to the other may
    answer UNAVAILABLE, and the updates that client sent after it then depend on one
    the server never took (INVALID_INPUT); the client syncs again by state vectors and
    nothing it typed is lost."""
    def node_settings() -> Settings:
        return make_settings(registry_url=redis_url, storage_url=mongo_db,
                             node_id=f"node-{uuid.uuid4().hex[:8]}", rate_limit_per_second=0,
                             user_rate_limit_per_second=0)

    async with running(node_settings()) as a, running(node_settings()) as b:
        alice = await a.connect("alice")
        await document(alice, "", bob="editor", carol="editor")
        js = [await peers(a.url, "alice"), await peers(b.url, "bob"),
              await peers(b.url, "carol")]
        for peer in js:
            await peer.join("doc")
        alphabets = [["a", "á"], ["b", "😀"], ["c", "日本"]]  # whose is whose, at the end
        runs = await asyncio.gather(*(
            peer.random_edits(150, seed=21 + i, delete_ratio=0, alphabet=alphabet)
            for i, (peer, alphabet) in enumerate(zip(js, alphabets, strict=True))))
        for peer in js:
            refused = [r["error"]["code"] for r in (await peer.report())["refused"]]
            if refused:
                assert refused[0] == "UNAVAILABLE" and set(refused[1:]) <= {"INVALID_INPUT"}
                assert (await peer.resync())["sent"]["ok"] is True
        head = await stored(alice)
        assert [await peer.settled(head["version"]) for peer in js] == [head["content"]] * 3
        assert (await stored(await b.connect("bob")))["content"] == head["content"]
        # nothing lost: every character each typed is there
        assert Counter(head["content"]) == Counter("".join("".join(run["inserted"])
                                                           for run in runs))
        everything = set(range(1, head["version"] + 1))
        all_made = []
        for peer in js:
            report = await peer.report()
            made, _ = own_versions(report)
            assert report["received"] == sorted(set(report["received"]))
            assert set(report["received"]) | set(made) == everything
            all_made += made
        assert sorted(all_made) == sorted(everything)  # every accepted change one version
    await cancel_leftover_tasks()  # (the Redis registry's, after both nodes stopped)


# -- live and plain members together --------------------------------------------------


async def test_live_js_and_plain_v1_members_see_every_change_once_in_their_mode(
        server, peers):
    alice = await server.connect("alice")
    await document(alice, "·", bob="editor")
    live = await peers(server.url, "bob")
    await live.join("doc")
    plain = await server.connect("alice")
    known = (await plain.ok("documents:join", {"document_id": "doc"}))["document"]
    broadcasts: list[dict] = []  # documents:updated, as the plain member got them
    mine: list[int] = []
    plain_inserted: list[str] = []

    def newest() -> dict:
        nonlocal known
        broadcasts.extend(plain.pending("documents:updated"))
        return max([known, *(b["document"] for b in broadcasts)], key=lambda d: d["version"])

    async def plain_writer() -> int:
        """v1 compare-and-set: on VERSION_CONFLICT, redo the edit on the current one."""
        nonlocal known
        rng = random.Random(5)
        conflicts = 0
        for _ in range(40):
            token = rng.choice(["P", "Q", "Ω", "🙂"])  # code points, as v1 counts
            for _attempt in range(100):
                known = newest()
                at = rng.randrange(len(known["content"]) + 1)
                content = known["content"][:at] + token + known["content"][at:]
                ack = await plain.call("documents:update", {
                    "document_id": "doc", "content": content, "version": known["version"] + 1})
                if ack["ok"]:
                    known = ack["document"]
                    assert known["content"] == content
                    mine.append(known["version"])
                    plain_inserted.append(token)
                    break
                assert ack["error"]["code"] == "VERSION_CONFLICT", ack
                known = ack["error"]["details"]["document"]
                conflicts += 1
            else:
                raise AssertionError("never won a compare-and-set")
        return conflicts

    run, conflicts = await asyncio.gather(
        live.random_edits(60, seed=3, delete_ratio=0, alphabet=["j", "k", "ж", "🎉"]),
        plain_writer())
    head = await stored(alice)
    assert await live.settled(head["version"]) == head["content"]
    everything = set(range(1, head["version"] + 1))
    while {b["document"]["version"] for b in broadcasts} | set(mine) != everything:
        broadcasts.append(await plain.next("documents:updated"))

    # the plain member: every change it did not make, once, in version order, whole
    got = [b["document"]["version"] for b in broadcasts]
    assert got == sorted(set(got)) and set(got).isdisjoint(mine)
    for b in broadcasts:
        at = await stored(alice, b["document"]["version"])
        assert b["document"]["content"] == at["content"]
        assert b["user_id"] == at["updated_by"] == "bob"
    assert len(plain.pending("error")) == conflicts  # each conflict also came as `error`
    # the live member: likewise, as Yjs updates
    report = await live.report()
    made, nothing_new = own_versions(report)
    assert nothing_new == [] and len(made) == 60 and report["refused"] == []
    assert report["received"] == sorted(mine)
    assert head["version"] == 60 + 40
    # nothing lost: every character each side inserted is there
    assert Counter(head["content"]) == Counter("·" + "".join(run["inserted"])
                                               + "".join(plain_inserted))


# -- Unicode ---------------------------------------------------------------------------


async def test_unicode_round_trips_exactly_between_yjs_v1_and_pycrdt(server, peers):
    alice = await server.connect("alice")
    await document(alice, "")
    js = await peers(server.url, "alice")
    await js.join("doc")
    plain = await server.connect("alice")
    await plain.ok("documents:join", {"document_id": "doc"})
    py = PycrdtPeer(await server.connect("alice"), "doc")
    await py.join()

    async def everyone_has(expected: str, by: str) -> None:
        """The server, the plain member, the pycrdt peer and the yjs peer all hold
        exactly ``expected`` (code point for code point)."""
        if by != "js":
            await js.wait_text(expected)
        if by != "plain":
            assert (await plain.next("documents:updated"))["document"]["content"] == expected
        if by != "py":
            await py.receive()
        answer = await js.call("text")
        assert (answer["text"], answer["utf16_length"]) == (expected, utf16(expected))
        assert py.content == expected
        assert (await stored(plain))["content"] == expected
        versions.append(expected)

    text = ""
    versions = [""]  # each version's content, as every client had it
    yjs_edits = [  # (UTF-16 index, units deleted, inserted), as an editor binding makes them
        (0, 0, "😀日本語 e\u0301 👨‍👩‍👧 🇫🇷"),
        (2, 0, "|"),  # just after the emoji (2 units)
        (utf16("😀|日本語 e\u0301 👨‍👩‍👧"), 0, "\u0308"),  # a mark after the family
        (utf16("😀|日本語 e\u0301 👨"), 1, ""),  # the first ZWJ: the family comes apart
        (utf16("😀|日本語 "), 2, ""),  # e and its combining acute
        (utf16("😀|日本語 "), 0, "ǅ👍🏽"),
    ]
    for index, delete, insert in yjs_edits:
        text = utf16_splice(text, index, delete, insert)
        answer = await (js.delete(index, delete) if delete else js.insert(index, insert))
        assert answer["ack"]["ok"] is True
        await everyone_has(text, by="js")
    assert text == "😀|日本語 ǅ👍🏽 👨👩\u200d👧\u0308 🇫🇷"

    # v1: whole content, code points; applied as the smallest edit
    text = text.replace("日本語", "中文🀄").replace("🇫🇷", "🇯🇵🏳️‍🌈")
    await plain.ok("documents:update", {"document_id": "doc", "content": text,
                                        "version": (await stored(plain))["version"] + 1})
    await everyone_has(text, by="plain")

    # pycrdt counts UTF-8 bytes: an insertion after the third code point
    at = len(text[:3].encode("utf-8"))
    await py.send(py.edit(lambda t: t.insert(at, "𝔘𝔫𝔦 ")))
    text = text[:3] + "𝔘𝔫𝔦 " + text[3:]
    await everyone_has(text, by="py")
    # and the history, replayed from the stored Yjs updates, has each exactly
    assert sorted(await history(plain)) == list(range(len(versions))) == list(range(9))
    for version, content in enumerate(versions):
        assert (await stored(plain, version))["content"] == content


# -- offline -----------------------------------------------------------------------


async def test_offline_edits_merge_on_rejoin_by_state_vectors(server, peers):
    alice = await server.connect("alice")
    await document(alice, "base", bob="editor")
    a, b = await peers(server.url, "alice"), await peers(server.url, "bob")
    await a.join("doc")
    await b.join("doc")
    assert (await a.insert(4, "!"))["ack"] == {"ok": True, "version": 1}
    assert await b.settled(1) == "base!"

    await a.disconnect()
    for index, text in ((5, "A"), (6, "😀"), (8, "AA")):  # offline: kept, not sent
        assert (await a.insert(index, text))["ack"] is None
    assert (await a.delete(0, 1))["ack"] is None
    assert await a.text() == "ase!A😀AA"
    for version, text in enumerate(("bb", "🎈", "b"), start=2):  # online meanwhile
        assert (await b.insert(0, text))["ack"] == {"ok": True, "version": version}
    assert (await stored(alice))["content"] == "b🎈bbbase!"

    rejoined = await a.reconnect()
    assert rejoined["ack"]["document"]["version"] == 4
    assert rejoined["sent"] == {"ok": True, "version": 5}  # all the offline edits: one version
    merged = "b🎈bbase!A😀AA"
    assert rejoined["text"] == merged
    assert await b.settled(5) == merged
    head = await stored(alice)
    assert (head["content"], head["version"]) == (merged, 5)
    assert (await history(alice))[5] == "alice"
    assert (await b.report())["received"] == [1, 5]
    report = await a.report()  # 2 to 4 came in the rejoin's update, not one by one
    assert report["received"] == [] and report["joins"] == [0, 4]
    assert [ack["version"] for ack in report["acks"]] == [1, 5]

    # again with nothing done offline: the rejoin still sends its diff (a Yjs diff
    # carries the whole delete set), which brings nothing new: acked with the current
    # version, neither stored nor sent
    await a.disconnect()
    again = await a.reconnect()
    assert again["sent"] == {"ok": True, "version": 5}
    assert await b.insert(0, "+") == {"ack": {"ok": True, "version": 6}, "text": "+" + merged,
                                      "utf16_length": utf16("+" + merged)}
    assert (await b.report())["received"] == [1, 5]  # nothing between 5 and its own 6
    assert sorted(await history(alice)) == list(range(7))


# -- awareness -----------------------------------------------------------------------


async def test_awareness_between_js_clients_and_removal_on_disconnect(server, peers):
    alice = await server.connect("alice")
    await document(alice, "text", bob="editor", carol="viewer")
    a, b = await peers(server.url, "alice"), await peers(server.url, "bob")
    await a.join("doc")
    await b.join("doc")
    cursor = {"user": {"name": "Alice", "color": "#e91e63"}, "cursor": {"anchor": 1, "head": 3}}
    mine = await a.awareness_set(cursor)
    assert mine["ack"] == {"ok": True}
    await b.wait_awareness(mine["client_id"], cursor)

    c = await peers(server.url, "carol")  # a newcomer, and a viewer (awareness needs viewer)
    await c.join("doc")
    assert (await c.awareness_states())[mine["client_id"]] == cursor  # from the join's ack
    carol = {"user": {"name": "Carol 🐱"}}
    theirs = await c.awareness_set(carol)
    assert theirs["ack"] == {"ok": True}
    await a.wait_awareness(theirs["client_id"], carol)
    await b.wait_awareness(theirs["client_id"], carol)

    started = time.monotonic()
    await a.disconnect()
    # the server's removal, not y-protocols' 30-second timeout (the peers run none)
    await b.wait_awareness(mine["client_id"], None, timeout=5)
    await c.wait_awareness(mine["client_id"], None, timeout=5)
    assert time.monotonic() - started < 5
    assert (await b.awareness_states()).get(theirs["client_id"]) == carol

    await a.reconnect()  # announced anew, with a newer clock, and shown the others at once
    assert (await a.awareness_states())[theirs["client_id"]] == carol
    await b.wait_awareness(mine["client_id"], cursor)
    await c.wait_awareness(mine["client_id"], cursor)


# -- refusals -------------------------------------------------------------------------


async def test_refusals_from_js_change_nothing(server, peers):
    alice = await server.connect("alice")
    await document(alice, "keep", bob="viewer")
    editor, viewer = await peers(server.url, "alice"), await peers(server.url, "bob")
    await editor.join("doc")
    assert (await viewer.join("doc"))["ack"]["role"] == "viewer"

    denied = (await viewer.insert(0, "x"))["ack"]
    assert denied["ok"] is False and denied["error"]["code"] == "PERMISSION_DENIED"
    garbage = [b"", b"\x00", b"\xff" * 20, b"\x01\x01\xff\xff\xff\xff\x0f", bytes(range(256))]
    for update in garbage:
        ack = await editor.send("documents:yupdate", {"document_id": "doc"}, update=update)
        assert ack["ok"] is False and ack["error"]["code"] == "INVALID_INPUT", (update, ack)
    ack = await editor.send("documents:awareness", {"document_id": "doc"}, update=b"\x01\x02")
    assert ack["error"]["code"] == "INVALID_INPUT"
    outsider = await peers(server.url, "alice")  # connected, not joined live
    valid = pycrdt.Doc()
    valid.get("content", type=pycrdt.Text).insert(0, "x")
    ack = await outsider.send("documents:yupdate", {"document_id": "doc"},
                              update=valid.get_update())
    assert ack["error"]["code"] == "INVALID_INPUT"

    head = await stored(alice)
    assert (head["content"], head["version"]) == ("keep", 0)
    assert await history(alice) == {0: "alice"}
    assert await editor.text() == "keep"
    # each refusal also came as an `error` event, to that connection only
    assert [e["code"] for e in (await viewer.report())["errors"]] == ["PERMISSION_DENIED"]
    assert [e["code"] for e in (await editor.report())["errors"]] == ["INVALID_INPUT"] * 6
    # and the document goes on: the next change is version 1, the first anyone received
    assert (await editor.insert(4, "!"))["ack"] == {"ok": True, "version": 1}
    await viewer.settled(1)
    assert (await viewer.report())["received"] == [1]
    assert (await stored(alice))["content"] == "keep!"


async def test_after_a_refusal_a_client_reloads_its_document(server, peers):
    """A refused update stays in the Y.Doc that made it, and every later update of that
    client id builds on it: the server refuses those as depending on what it lacks, and
    the client's way back is a fresh Y.Doc, joined again."""
    alice = await server.connect("alice")
    await document(alice, "keep", bob="viewer")
    bob = await peers(server.url, "bob")
    await bob.join("doc")
    denied = (await bob.insert(0, "x"))["ack"]
    assert denied["error"]["code"] == "PERMISSION_DENIED"
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob",
                                       "role": "editor"})
    stuck = (await bob.insert(5, "!"))["ack"]
    assert stuck["ok"] is False and stuck["error"]["code"] == "INVALID_INPUT"
    reloaded = await bob.reload()
    assert reloaded["text"] == "keep" and reloaded["sent"] is None
    assert (await bob.insert(4, "!"))["ack"] == {"ok": True, "version": 1}
    head = await stored(alice)
    assert (head["content"], head["version"]) == ("keep!", 1)


async def test_a_downgraded_or_revoked_editor_is_refused(server, peers):
    alice = await server.connect("alice")
    await document(alice, "keep", bob="editor", carol="editor")
    bob, carol = await peers(server.url, "bob"), await peers(server.url, "carol")
    await bob.join("doc")
    await carol.join("doc")
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob",
                                       "role": "viewer"})
    downgraded = (await bob.insert(0, "b"))["ack"]
    assert downgraded["error"]["code"] == "PERMISSION_DENIED"
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "carol",
                                       "role": None})
    revoked = (await carol.insert(0, "c"))["ack"]
    # taken out of the room at the revocation (told by an `error` event): no longer live
    assert revoked["ok"] is False and revoked["error"]["code"] == "INVALID_INPUT"
    assert [e["code"] for e in (await carol.report())["errors"]] == \
        ["PERMISSION_DENIED", "INVALID_INPUT"]
    head = await stored(alice)
    assert (head["content"], head["version"]) == ("keep", 0)
