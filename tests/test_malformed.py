"""Malformed Socket.IO and Engine.IO frames (issue 10, items 4 and 10).

Each is answered ``INVALID_INPUT`` on its ack id (and with an ``error`` event
when it has none), or closes its own connection; either way the log gets one
line at most for that connection and never a traceback, nothing is kept for
it, and everybody else is served as before.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from harness import WAIT, make_settings, make_token
from rawsocket import RawPolling, RawSocket

from collab.errors import Unavailable
from collab.packet import MAX_ATTACHMENTS
from collab.transport import MAX_POST_PACKETS

ANSWERED = "answered"  # INVALID_INPUT on ack id 9 (after the error event)
ERROR_EVENT = "error event"  # no ack id: the error event alone
CLOSED = "closed"

PLACEHOLDER = '{"_placeholder":true,"num":0}'

# (the WebSocket message as sent, whether it comes after the CONNECT, what it gets)
FRAMES = [
    # before any CONNECT
    pytest.param("47", False, CLOSED, id="pre-type-7"),
    pytest.param("4x", False, CLOSED, id="pre-type-not-a-digit"),
    pytest.param("4", False, CLOSED, id="pre-empty"),
    pytest.param('429["documents:create",{}]', False, CLOSED, id="pre-event"),
    pytest.param(f'451-9["documents:create",{PLACEHOLDER}]', False, CLOSED, id="pre-binary-event"),
    pytest.param("44", False, CLOSED, id="pre-connect-error"),
    pytest.param('42/admin,9["x"]', False, CLOSED, id="pre-unknown-namespace"),
    pytest.param("x", False, CLOSED, id="pre-not-engine-io"),
    # connected
    pytest.param("47", True, CLOSED, id="type-7"),
    pytest.param("4x", True, CLOSED, id="type-not-a-digit"),
    pytest.param("4", True, CLOSED, id="empty"),
    pytest.param('429{"document_id":"d"}', True, ANSWERED, id="data-an-object"),
    pytest.param("429[]", True, ANSWERED, id="data-empty"),
    pytest.param("429", True, ANSWERED, id="no-data"),
    pytest.param('429"documents:create"', True, ANSWERED, id="data-a-string"),
    pytest.param("429null", True, ANSWERED, id="data-null"),
    pytest.param('429[{"a":1}]', True, ANSWERED, id="name-an-object"),
    pytest.param("429[[1]]", True, ANSWERED, id="name-a-list"),
    pytest.param("429[1]", True, ANSWERED, id="name-a-number"),
    pytest.param("429{nope}", True, ANSWERED, id="not-json"),
    pytest.param('42{"a":1}', True, ERROR_EVENT, id="data-an-object-no-ack-id"),
    pytest.param("42[[1]]", True, ERROR_EVENT, id="name-a-list-no-ack-id"),
    pytest.param("42" + "9" * 120 + '["x"]', True, CLOSED, id="ack-id-too-long"),
    pytest.param("42\u00b2-9[\"x\"]", True, CLOSED, id="attachment-count-not-a-number"),
    pytest.param(f"461-9[{PLACEHOLDER}]", True, CLOSED, id="binary-ack-from-client"),
    pytest.param("439[]", True, CLOSED, id="ack-nobody-asked-for"),
    pytest.param('439{"a":1}', True, CLOSED, id="ack-data-not-a-list"),
    pytest.param("40TOKEN", True, CLOSED, id="connect-twice"),
    pytest.param('42/admin,9["documents:create",{}]', True, CLOSED, id="unknown-namespace"),
    pytest.param("41/admin,", True, CLOSED, id="disconnect-unknown-namespace"),
    pytest.param("44", True, CLOSED, id="connect-error-from-client"),
    pytest.param(f'459999999999-9["documents:create",{PLACEHOLDER}]', True, ANSWERED,
                 id="9999999999-attachments"),
    pytest.param(f'45{MAX_ATTACHMENTS + 1}-9["documents:create",{PLACEHOLDER}]', True, ANSWERED,
                 id="one-attachment-too-many"),
    pytest.param('450-9["documents:create",{}]', True, ANSWERED, id="binary-without-attachments"),
    pytest.param('451-9["documents:create",{"_placeholder":true,"num":1}]', True, ANSWERED,
                 id="placeholder-out-of-range"),
    pytest.param('451-9["documents:create",{"_placeholder":true,"num":"0"}]', True, ANSWERED,
                 id="placeholder-not-a-number"),
    pytest.param(b"\x00\x01", True, CLOSED, id="attachment-without-packet"),
    pytest.param("x", True, CLOSED, id="not-engine-io"),
    pytest.param("bAAAA", True, CLOSED, id="base64-on-a-websocket"),
    # Engine.IO decodes these as JSON before Socket.IO sees them
    pytest.param("4[1]", True, CLOSED, id="message-a-json-list"),
    pytest.param('4{"a":1}', True, CLOSED, id="message-a-json-object"),
    pytest.param("4null", True, CLOSED, id="message-json-null"),
    pytest.param("4true", True, CLOSED, id="message-json-true"),
    # Engine.IO CLOSE from the client: Engine.IO ended the session but kept reading
    pytest.param("1", True, CLOSED, id="engine-io-close"),
    pytest.param("1", False, CLOSED, id="pre-engine-io-close"),
]


def check_log(caplog: pytest.LogCaptureFixture, lines: int) -> None:
    """No error, no traceback, and at most ``lines`` warnings."""
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info], records
    assert len(records) <= lines, [r.getMessage() for r in records]


@pytest.mark.parametrize(("frame", "connected", "outcome"), FRAMES)
async def test_malformed_frame(server, caplog, frame, connected, outcome):
    bob = await server.connect("bob")
    token = make_token("alice")
    raw = await (RawSocket.connect(server.url, token) if connected else RawSocket.open(server.url))
    app = server.app
    try:
        if isinstance(frame, str):
            frame = frame.replace("TOKEN", json.dumps({"token": token}))
        handler = app.sio.environ[raw.eio_sid]["tornado.handler"]
        await raw.send_frame(frame)
        if outcome == CLOSED:
            await raw.closed(timeout=WAIT)
            await asyncio.wait_for(handler._serving, WAIT)  # Engine.IO is done with it
            assert raw.eio_sid not in app.sio.eio.sockets
            assert [c.user_id for c in app.connections.values()] == ["bob"]
        else:
            if outcome == ANSWERED:
                ack = await raw.ack(9)
                assert ack["ok"] is False and ack["error"]["code"] == "INVALID_INPUT", ack
                assert "Invalid packet" in ack["error"]["message"]
            else:
                packet = await raw.recv()
                assert packet.startswith('2["error",'), packet
                assert json.loads(packet[1:])[1]["code"] == "INVALID_INPUT", packet
            await raw.send('210["documents:create",{"document_id":"after"}]')
            assert (await raw.ack(10))["ok"] is True
        assert raw.eio_sid not in app.sio._binary_packet
    finally:
        await raw.close()
    check_log(caplog, 1)
    ack = await bob.ok("documents:create", {})
    assert ack["document"]["created_by"] == "bob"


async def test_attachments_of_a_refused_header_are_skipped_not_kept(server, caplog):
    """A BINARY_EVENT announcing 9,999,999,999 attachments is answered on its ack id;
    the binary frames that follow are dropped as they come, not kept."""
    raw = await RawSocket.connect(server.url, make_token("alice"))
    try:
        await raw.send(f'59999999999-3["documents:create",{PLACEHOLDER}]')
        assert (await raw.ack(3))["error"]["code"] == "INVALID_INPUT"
        for _ in range(50):
            await raw.send_frame(b"\x00" * 10_000)
        await raw.send('24["documents:create",{"document_id":"after"}]')
        assert (await raw.ack(4))["ok"] is True  # read after every one of the 50 frames
        assert server.app.sio._binary_packet == {}
    finally:
        await raw.close()
    check_log(caplog, 0)


async def test_a_binary_event_within_the_bounds_is_dispatched(server):
    """Attachments still work (v2 will use them): the event is put together and
    dispatched by its name."""
    raw = await RawSocket.connect(server.url, make_token("alice"))
    try:
        await raw.send(f'52-3["binary:probe",{PLACEHOLDER},{{"_placeholder":true,"num":1}}]')
        await raw.send_frame(b"\x01\x02")
        await raw.send_frame(b"\x03")
        ack = await raw.ack(3)
        assert ack["error"] == {"code": "INVALID_INPUT", "message": "Unknown event 'binary:probe'"}
        assert server.app.sio._binary_packet == {}
    finally:
        await raw.close()


class TestAttachmentBytes:
    @pytest.fixture
    def settings(self):
        return make_settings(max_packet_bytes=20_000)

    async def test_attachments_over_the_packet_limit_close_the_connection(self, server, caplog):
        bob = await server.connect("bob")
        raw = await RawSocket.connect(server.url, make_token("alice"))
        try:
            two = '{"title":{"_placeholder":true,"num":0},"content":{"_placeholder":true,"num":1}}'
            await raw.send(f'52-3["documents:create",{two}]')
            await raw.send_frame(b"x" * 15_000)  # each under the limit, together over it
            await raw.send_frame(b"x" * 15_000)
            await raw.closed(timeout=WAIT)
            assert server.app.sio._binary_packet == {}
        finally:
            await raw.close()
        check_log(caplog, 1)
        await bob.ok("documents:create", {})


async def test_a_binary_header_during_a_pending_connect_is_not_kept(server, monkeypatch):
    """While a polling client's CONNECT waits on the registry, a BINARY_EVENT header
    sent beside it used to be kept, and (the connect then refused) kept after the
    session closed. It closes the session; nothing is left."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_refusal(sid: str, user_id: str) -> None:
        entered.set()
        await release.wait()
        raise Unavailable()

    monkeypatch.setattr(server.app.registry, "add_connection", slow_refusal)
    polling = await RawPolling.open(server.url)
    try:
        connect = asyncio.ensure_future(
            polling.post("40" + json.dumps({"token": make_token("alice")})))
        await asyncio.wait_for(entered.wait(), WAIT)
        await polling.post(f'451-3["documents:create",{PLACEHOLDER}]')
        release.set()
        await asyncio.wait_for(connect, WAIT)
        await polling.post("1")  # the client says goodbye (if the session is still there)
        assert polling.eio_sid not in server.app.sio._binary_packet
        assert polling.eio_sid not in server.app.sio.eio.sockets
    finally:
        await polling.close()


@pytest.mark.parametrize("body", [
    pytest.param(b"x", id="not-a-packet"),
    pytest.param(b"7", id="type-7"),
    pytest.param(b"\xff\xfe", id="not-utf-8"),
    pytest.param(b"bA", id="bad-base64"),
    pytest.param(b"4\x1e", id="empty-packet"),
    pytest.param(b"\x1e".join([b"3"] * (MAX_POST_PACKETS + 1)), id="too-many-packets"),
    pytest.param(b"6", id="noop-from-client"),
])
async def test_a_polling_body_that_is_not_engine_io_is_400_and_closes(server, caplog, body):
    polling = await RawPolling.connect(server.url, make_token("alice"))
    try:
        status, _ = await asyncio.wait_for(polling.post(body), WAIT)
        assert status == 400
        assert polling.eio_sid not in server.app.sio.eio.sockets
        assert server.app.connections == {}
    finally:
        await polling.close()
    check_log(caplog, 1)  # Tornado's access line for the 400
