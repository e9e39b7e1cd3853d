"""Big payloads: UTF-8 on the wire, pages bounded by bytes, and a send cap that is for
consumers that do not keep up, not for big messages."""

from __future__ import annotations

import json

import pytest
from harness import make_settings, make_token
from rawsocket import RawPolling, RawSocket

SEND_CAP = 64 * 1024
BIG = 300_000  # characters of document content: every packet carrying it is over the cap
EMOJI = "\U0001F600"  # 4 bytes in UTF-8, 12 as the JSON escape pair "\\ud83d\\ude00"


@pytest.fixture(params=[True, False], ids=["fast", "normal"])
def settings(request):
    return make_settings(fast_broadcast=request.param, max_send_buffer_bytes=SEND_CAP,
                         history_page_bytes=SEND_CAP // 2, max_document_bytes=BIG)


async def test_acks_and_broadcasts_larger_than_the_send_cap_are_written(server):
    """One message over the cap, with nothing else waiting, is no slow consumer: the
    create and join acks and the update's broadcast (each about 300 KB against a
    64 KiB cap) all arrive and nobody is disconnected."""
    alice = await server.connect("alice")
    created = await alice.ok("documents:create", {"document_id": "d1", "content": "x" * BIG})
    assert len(created["document"]["content"]) == BIG
    await alice.ok("documents:share", {"document_id": "d1", "user_id": "bob", "role": "viewer"})
    bob = await server.connect("bob")
    joined = await bob.ok("documents:join", {"document_id": "d1"})
    assert joined["document"] == created["document"]

    updated = await alice.ok("documents:update",
                             {"document_id": "d1", "content": "y" * BIG, "version": 1})
    broadcast = await bob.next("documents:updated")
    assert broadcast == {"document": updated["document"], "user_id": "alice"}
    assert set(server.app.connections) == {alice.sid, bob.sid}
    await bob.ok("documents:leave", {"document_id": "d1"})  # still served


# -- UTF-8 on the wire ---------------------------------------------------------------


async def emoji_chat(server) -> tuple[str, object]:
    """alice, in chat c1 with bob; returns the content of the message she will post."""
    alice = await server.connect("alice")
    await alice.ok("chat:create", {"chat_id": "c1", "members": ["bob"]})
    return EMOJI * 1000 + " and ASCII", alice


def assert_utf8(packet: bytes, content: str) -> None:
    """``packet`` carries ``content`` as its UTF-8 bytes, not as JSON escapes."""
    assert content.encode() in packet
    assert b"\\u" not in packet
    assert len(packet) < len(content.encode()) + 300, len(packet)  # 4 bytes an emoji, not 12


async def test_acks_and_broadcasts_are_utf8_on_a_websocket(server):
    content, alice = await emoji_chat(server)
    raw = await RawSocket.connect(server.url, make_token("bob"))
    try:
        await raw.send("21" + json.dumps(["chat:join", {"chat_id": "c1"}]))
        await raw.packet("31[")
        await alice.ok("chat:message", {"chat_id": "c1", "content": content})
        broadcast = await raw.packet('2["chat:message"')  # the fast path, or the queue
        await raw.send("22" + json.dumps(["chat:history", {"chat_id": "c1"}]))
        ack = await raw.packet("32[")  # python-socketio's own path
        for packet in (broadcast, ack):  # a text frame's payload is its UTF-8
            assert_utf8(packet.encode(), content)
    finally:
        await raw.close()


async def test_acks_and_broadcasts_are_utf8_on_long_polling(server):
    content, alice = await emoji_chat(server)
    raw = await RawPolling.connect(server.url, make_token("bob"))
    try:
        await raw.send("21" + json.dumps(["chat:join", {"chat_id": "c1"}]))
        await raw.packet("31[")
        await alice.ok("chat:message", {"chat_id": "c1", "content": content})
        broadcast = await raw.packet('2["chat:message"')
        await raw.send("22" + json.dumps(["chat:history", {"chat_id": "c1"}]))
        ack = await raw.packet("32[")
        for packet in (broadcast, ack):  # the HTTP body's bytes
            assert_utf8(packet, content)
    finally:
        await raw.close()


# -- pages bounded by bytes ----------------------------------------------------------


def page_bytes(messages: list[dict]) -> int:
    """What ``messages`` take in a packet: a JSON array in UTF-8, as the server sends it."""
    return len(json.dumps(messages, ensure_ascii=False, separators=(",", ":")).encode())


def seqs(messages: list[dict]) -> list[int]:
    return [m["seq"] for m in messages]


async def page_back(client, first_page: dict, max_bytes: int) -> list[dict]:
    """Every message from ``first_page`` back to the first, via chat:history; each page
    within ``max_bytes``."""
    pages = [first_page["messages"]]
    has_more = first_page["has_more"]
    while has_more:
        page = await client.ok("chat:history", {"chat_id": "c1", "limit": 200,
                                                "before_seq": pages[-1][0]["seq"]})
        pages.append(page["messages"])
        has_more = page["has_more"]
    for page in pages:
        assert len(page) == 1 or page_bytes(page) <= max_bytes
    return [m for page in reversed(pages) for m in page]


async def page_forward(client, since_seq: int, max_bytes: int) -> list[dict]:
    """Every message after ``since_seq``, via chat:join with since_seq, page by page;
    each page within ``max_bytes``."""
    messages: list[dict] = []
    while True:
        ack = await client.ok("chat:join", {"chat_id": "c1", "since_seq": since_seq})
        assert len(ack["messages"]) == 1 or page_bytes(ack["messages"]) <= max_bytes
        messages += ack["messages"]
        if not ack["has_more"]:
            return messages
        since_seq = ack["messages"][-1]["seq"]


class TestAChatOfBigMessages:
    """50 messages of 10,000 emoji (the character limit) are 2 MB as UTF-8 (and were
    6 MB with ensure_ascii): more than a page may take, with the default settings,
    on either store."""

    @pytest.fixture(params=["sqlite", pytest.param("mongodb", marks=pytest.mark.mongo)])
    def settings(self, request):
        if request.param == "sqlite":
            return make_settings()
        return make_settings(storage_url=request.getfixturevalue("mongo_db"))

    async def test_join_and_history_answer_in_pages_within_the_bound(self, server):
        settings = server.app.settings
        alice = await server.connect("alice")
        await alice.ok("chat:create", {"chat_id": "c1", "members": ["bob"]})
        sent = [(await alice.ok("chat:message", {"chat_id": "c1",
                                                 "content": f"{i:02d}" + EMOJI * 9998}))["message"]
                for i in range(50)]
        assert page_bytes(sent) > settings.history_page_bytes
        raw = await RawSocket.connect(server.url, make_token("bob"))
        try:  # the join's ack as it crosses the wire: the page plus the chat and users
            await raw.send("21" + json.dumps(["chat:join", {"chat_id": "c1"}]))
            frame = (await raw.packet("31[")).encode()
            assert len(frame) <= settings.history_page_bytes + 1000
            assert json.loads(frame[2:])[0]["has_more"] is True
        finally:
            await raw.close()

        bob = await server.connect("bob")
        joined = await bob.ok("chat:join", {"chat_id": "c1"})
        latest = joined["messages"]
        assert 1 < len(latest) < 50 and latest == sent[-len(latest):]
        assert page_bytes(latest) <= settings.history_page_bytes
        assert joined["has_more"] is True
        history = await bob.ok("chat:history", {"chat_id": "c1"})
        assert (history["messages"], history["has_more"]) == (latest, True)
        assert page_bytes(sent[-len(latest) - 1:]) > settings.history_page_bytes  # full
        assert await page_back(bob, joined, settings.history_page_bytes) == sent  # once each
        assert await page_forward(bob, 0, settings.history_page_bytes) == sent
        assert set(server.app.connections) == {alice.sid, bob.sid}  # nobody was closed


class TestMessagesOverThePageBound:
    """A page bound below one message's size: every page holds exactly one message."""

    @pytest.fixture
    def settings(self):
        return make_settings(history_page_bytes=1000)

    async def test_every_page_holds_one_message_and_has_more_tells_the_rest(self, server):
        alice = await server.connect("alice")
        await alice.ok("chat:create", {"chat_id": "c1"})
        sent = [(await alice.ok("chat:message", {"chat_id": "c1", "content": c * 2000}))["message"]
                for c in "abc"]
        joined = await alice.ok("chat:join", {"chat_id": "c1"})
        assert (seqs(joined["messages"]), joined["has_more"]) == ([3], True)
        page = await alice.ok("chat:history", {"chat_id": "c1", "before_seq": 3})
        assert (seqs(page["messages"]), page["has_more"]) == ([2], True)
        page = await alice.ok("chat:history", {"chat_id": "c1", "before_seq": 2})
        assert (seqs(page["messages"]), page["has_more"]) == ([1], False)
        for since, expected, more in [(0, [1], True), (1, [2], True), (2, [3], False),
                                      (3, [], False)]:
            ack = await alice.ok("chat:join", {"chat_id": "c1", "since_seq": since})
            assert (seqs(ack["messages"]), ack["has_more"]) == (expected, more), since
        assert await page_forward(alice, 0, 1000) == sent
        assert await page_back(alice, joined, 1000) == sent

    async def test_small_messages_fill_the_page(self, server):
        alice = await server.connect("alice")
        await alice.ok("chat:create", {"chat_id": "c1"})
        sent = [(await alice.ok("chat:message", {"chat_id": "c1", "content": f"m{i}"}))["message"]
                for i in range(30)]
        page = await alice.ok("chat:history", {"chat_id": "c1"})
        n = len(page["messages"])
        assert 1 < n < 30 and page["messages"] == sent[-n:] and page["has_more"] is True
        assert page_bytes(sent[-n:]) <= 1000 < page_bytes(sent[-n - 1:])
        forward = await alice.ok("chat:join", {"chat_id": "c1", "since_seq": 0})
        n = len(forward["messages"])
        assert forward["messages"] == sent[:n] and forward["has_more"] is True
        assert page_bytes(sent[:n]) <= 1000 < page_bytes(sent[:n + 1])
        assert await page_back(alice, page, 1000) == sent
        assert await page_forward(alice, 0, 1000) == sent


@pytest.mark.parametrize("overrides", [
    {"history_page_bytes": 0},
    {"history_page_bytes": 4 * 1024 * 1024},  # the default send cap: a page could fill it
    {"history_page_bytes": 64 * 1024, "max_send_buffer_bytes": 64 * 1024},
])
def test_a_page_bound_that_cannot_work_is_refused_at_start(overrides):
    from collab.config import ConfigError

    with pytest.raises(ConfigError, match="COLLAB_HISTORY_PAGE_BYTES"):
        make_settings(**overrides)
