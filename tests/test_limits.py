"""Bad input gets a clear error code, changes nothing, and the server keeps serving."""

from __future__ import annotations

import asyncio

import pytest
from harness import make_settings, make_token
from rawsocket import RawSocket

from collab.packet import MAX_DEPTH


async def burst(client, count):
    """Send ``count`` events at once; the server handles them in order."""
    acks = await asyncio.gather(*(
        client.call("chat:typing", {"chat_id": "nope", "typing": True}) for _ in range(count)))
    assert len(client.pending("error")) == count  # one error event beside each failure ack
    return acks


@pytest.fixture
def settings():
    return make_settings(rate_limit_per_second=2, rate_limit_burst=10, max_packet_bytes=20_000)


async def test_rate_limit_refuses_bursts_and_recovers(server):
    alice = await server.connect("alice")
    acks = await burst(alice, 12)
    codes = [a["error"]["code"] for a in acks]
    assert codes[:10] == ["NOT_FOUND"] * 10  # within the burst: handled normally
    assert codes[10:] == ["RATE_LIMITED"] * 2
    retry = acks[-1]["error"]["details"]["retry_after_ms"]
    assert 0 < retry <= 1000  # at 2 events/s a token is back within 500 ms
    await asyncio.sleep(retry / 1000)  # the limit itself is about time
    await alice.fails("chat:typing", {"chat_id": "nope", "typing": True}, "NOT_FOUND")


async def test_rate_limit_is_per_connection(server):
    first = await server.connect("alice")
    second = await server.connect("alice")
    await burst(first, 10)
    await first.fails("chat:typing", {"chat_id": "nope", "typing": True}, "RATE_LIMITED")
    await second.fails("chat:typing", {"chat_id": "nope", "typing": True}, "NOT_FOUND")


async def test_rate_limited_event_changes_nothing(server):
    alice = await server.connect("alice")
    await alice.ok("chat:create", {"chat_id": "c"})
    await burst(alice, 9)
    await alice.fails("chat:message", {"chat_id": "c", "content": "lost?"}, "RATE_LIMITED")
    assert (await server.app.store.messages_after("c", 0, 10)) == []


@pytest.mark.parametrize("settings", [make_settings(rate_limit_per_second=0)], indirect=False)
async def test_rate_limit_zero_turns_it_off(server):
    alice = await server.connect("alice")
    for _ in range(150):
        ack = await alice.call("chat:typing", {"chat_id": "nope", "typing": True})
        assert ack["error"]["code"] == "NOT_FOUND"


async def test_packet_over_transport_limit_closes_only_that_connection(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    closed = asyncio.Event()
    alice.sio.on("disconnect", lambda *_: closed.set())
    await alice.sio.emit("chat:message", {"chat_id": "c", "content": "x" * 30_000})
    await asyncio.wait_for(closed.wait(), 5)
    await bob.ok("chat:create", {"chat_id": "still-serving"})


async def test_unknown_event(server):
    alice = await server.connect("alice")
    error = await alice.fails("documents:delete", {"document_id": "d"}, "INVALID_INPUT")
    assert "documents:delete" in error["message"]


@pytest.mark.parametrize("event", ["connect", "disconnect", "message"])
async def test_reserved_names_sent_as_events_are_unknown(server, event):
    alice = await server.connect("alice")
    await alice.fails(event, {"x": 1}, "INVALID_INPUT")
    assert server.app.connections.keys() == {alice.sid}
    ack = await alice.ok("documents:create", {})
    assert ack["document"]["created_by"] == "alice"


async def test_internal_error_hides_the_exception(server, monkeypatch, caplog):
    async def broken(*args, **kwargs):
        raise RuntimeError("secret detail from the depths")

    monkeypatch.setattr(server.app.store, "create_chat", broken)
    alice = await server.connect("alice")
    error = await alice.fails("chat:create", {"chat_id": "c"}, "INTERNAL_ERROR")
    assert "secret" not in error["message"]
    error_id = error["details"]["error_id"]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
    await alice.ok("documents:create", {})


class TestMalformedPackets:
    """With the default 1 MB packet limit, so the payloads reach the decoder."""

    @pytest.fixture
    def settings(self):
        return make_settings()

    async def test_too_deeply_nested_json_is_invalid_input(self, server):
        raw = await RawSocket.connect(server.url, make_token("alice"))
        try:
            depth = 100_000
            await raw.send('27["documents:create",' + "[" * depth + "]" * depth + "]")
            ack = await raw.ack(7)
            assert ack["ok"] is False
            assert ack["error"]["code"] == "INVALID_INPUT"
            await raw.send('28["documents:create",{"document_id":"after"}]')
            assert (await raw.ack(8))["ok"] is True
        finally:
            await raw.close()

    async def test_nested_but_decodable_payload_fails_validation(self, server):
        alice = await server.connect("alice")
        nested: list = []
        for _ in range(30):
            nested = [nested]
        error = await alice.fails("documents:create", {"title": nested}, "INVALID_INPUT")
        assert "title" in error["details"]

    async def test_nesting_beyond_the_packet_limit_is_refused_before_decoding(self, server):
        alice = await server.connect("alice")
        nested: list = []
        for _ in range(MAX_DEPTH + 1):
            nested = [nested]
        error = await alice.fails("documents:create", {"title": nested}, "INVALID_INPUT")
        assert "nested too deeply" in error["message"]
        deep_string = {"title": "[" * 1000}  # brackets inside strings do not count
        await alice.ok("documents:create", deep_string)

    async def test_not_json_is_invalid_input(self, server):
        raw = await RawSocket.connect(server.url, make_token("alice"))
        try:
            await raw.send('23["documents:create",{nope}]')
            ack = await raw.ack(3)
            assert ack["error"]["code"] == "INVALID_INPUT"
        finally:
            await raw.close()


async def test_unknown_and_malformed_events_count_against_the_rate_limit(server):
    alice = await server.connect("alice")
    acks = await asyncio.gather(*(alice.call("no:such:event", {}) for _ in range(12)))
    codes = [a["error"]["code"] for a in acks]
    assert codes == ["INVALID_INPUT"] * 10 + ["RATE_LIMITED"] * 2
    raw = await RawSocket.connect(server.url, make_token("bob"))
    try:
        for ack_id in range(1, 13):
            await raw.send(f"2{ack_id}[1]")  # an event whose name is not a string
        codes = [(await raw.ack(ack_id))["error"]["code"] for ack_id in range(1, 13)]
        assert codes == ["INVALID_INPUT"] * 10 + ["RATE_LIMITED"] * 2
    finally:
        await raw.close()
