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
                         max_document_bytes=BIG)


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
