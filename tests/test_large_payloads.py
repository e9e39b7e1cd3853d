"""Big payloads: the send cap is for consumers that do not keep up, not for big messages."""

from __future__ import annotations

import pytest
from harness import make_settings

SEND_CAP = 64 * 1024
BIG = 300_000  # characters of document content: every packet carrying it is over the cap


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
