"""Transport defaults: WebSocket without permessage-deflate unless configured."""

from __future__ import annotations

import asyncio
import gc
import json
import logging

import aiohttp
import pytest
from harness import WAIT, make_settings, make_token, scrape
from rawsocket import RawPolling, RawSocket


async def negotiated_extensions(url: str) -> str | None:
    async with aiohttp.ClientSession() as session:
        ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        async with session.ws_connect(ws_url, compress=15) as ws:
            assert (await ws.receive_str(timeout=5)).startswith("0{")
            return ws._response.headers.get("Sec-WebSocket-Extensions")


async def test_permessage_deflate_is_off_by_default(server):
    assert await negotiated_extensions(server.url) is None


class TestCompressionConfigured:
    @pytest.fixture
    def settings(self):
        return make_settings(websocket_compression=True)

    async def test_permessage_deflate_when_configured(self, server):
        assert "permessage-deflate" in await negotiated_extensions(server.url)


async def test_a_refused_websocket_is_closed(server):
    """Engine.IO cannot answer a WebSocket it refuses (Tornado has sent 101 already) and
    left it open; the server closes it at once."""
    raw = await RawSocket.open(server.url, "&sid=no-such-session")
    try:
        assert await raw.closed(timeout=WAIT) == []
    finally:
        await raw.close()


class TestOversizedPollingPost:
    @pytest.fixture
    def settings(self):
        return make_settings(max_packet_bytes=20_000)

    async def test_answered_413_at_once_and_the_session_is_gone(self, server):
        """A body over max_packet_bytes (but under Tornado's buffer) used to wait for a
        poll that never came; it is answered 413 at once and its session is closed."""
        bob = await server.connect("bob")
        polling = await RawPolling.connect(server.url, make_token("carol"))
        try:
            carol = next(s for s, c in server.app.connections.items() if c.user_id == "carol")
            body = "42" + json.dumps(["chat:message", {"chat_id": "c", "content": "x" * 30_000}])
            assert 20_000 < len(body) < server.app.settings.max_packet_bytes + 64 * 1024
            status, _ = await asyncio.wait_for(polling.post(body), 2)
            assert status == 413
            assert polling.eio_sid not in server.app.sio.eio.sockets
            assert carol not in server.app.connections  # its disconnect has run
            status, _ = await asyncio.wait_for(polling.get(), 2)
            assert status == 400  # the session is unknown now
        finally:
            await polling.close()
        await bob.ok("chat:create", {"chat_id": "still-serving"})

    async def test_without_a_session_413_too(self, server):
        async with aiohttp.ClientSession() as session:
            url = f"{server.url}/socket.io/?EIO=4&transport=polling&sid=nope"
            async with session.post(url, data="4" + "x" * 30_000) as resp:
                assert resp.status == 413

    async def test_a_websocket_session_is_not_closed_by_a_post_naming_it(self, server):
        bob = await server.connect("bob")
        async with aiohttp.ClientSession() as session:
            url = f"{server.url}/socket.io/?EIO=4&transport=polling&sid={bob.sio.eio.sid}"
            async with session.post(url, data="4" + "x" * 30_000) as resp:
                assert resp.status == 413
        assert bob.sio.eio.sid in server.app.sio.eio.sockets
        await bob.ok("chat:create", {"chat_id": "still-connected"})


async def test_a_post_for_a_session_the_client_closed_is_400(server, caplog):
    """Engine.IO keeps a closed polling session until a poll collects its CLOSE; a POST in
    between used to raise out of its handler (500 and a traceback)."""
    polling = await RawPolling.connect(server.url, make_token("carol"))
    try:
        status, _ = await polling.post("1")  # Engine.IO CLOSE
        assert status == 200
        assert server.app.sio.eio.sockets[polling.eio_sid].closed
        status, _ = await polling.post('42["chat:typing",{"chat_id":"c","typing":true}]')
        assert status == 400
    finally:
        await polling.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_polling_post_holds_as_many_packets_as_a_client_buffered(server):
    """socket.io-client sends in one POST everything it buffered while the last one was
    out, bounded by bytes only; Engine.IO took at most 16 packets (400, session closed),
    so a live editor's eight quick Yjs updates (two packets each) cut its connection.
    (Over ``MAX_POST_PACKETS`` is still 400: tests/test_malformed.py.)"""
    polling = await RawPolling.connect(server.url, make_token("carol"))
    try:
        events = [f'42{i}["chat:typing",{{"chat_id":"c","typing":true}}]' for i in range(1, 41)]
        status, _ = await polling.post("\x1e".join(events))
        assert status == 200
        for i in range(1, 41):  # each one handled, in order
            ack = json.loads((await polling.packet(f"3{i}["))[len(f"3{i}"):])
            assert ack[0]["error"]["code"] == "NOT_FOUND"
    finally:
        await polling.close()


class TestConnectTimeout:
    """An Engine.IO session without an accepted Socket.IO CONNECT is closed after
    ``connect_timeout`` (as Node's socket.io does), instead of holding its socket for as
    long as the client answers pings."""

    @pytest.fixture
    def settings(self):
        return make_settings(ping_interval=0.2, ping_timeout=5)

    @pytest.fixture(autouse=True)
    def short_timeout(self, server):
        server.app.sio.connect_timeout = 0.5

    async def test_a_session_that_never_connects_is_closed(self, server):
        raw = await RawSocket.open(server.url)
        try:
            await raw.closed(timeout=WAIT)  # (it answered every ping meanwhile)
            assert raw.eio_sid not in server.app.sio.eio.sockets
        finally:
            await raw.close()

    async def test_a_refused_session_is_closed(self, server):
        raw = await RawSocket.open(server.url)
        try:
            await raw.send('0{"token":"not a token"}')
            assert (await raw.recv()).startswith("4{")  # CONNECT_ERROR
            await raw.closed(timeout=WAIT)
        finally:
            await raw.close()

    async def test_a_connected_session_stays(self, server):
        raw = await RawSocket.connect(server.url, make_token("alice"))
        try:
            with pytest.raises(asyncio.TimeoutError):
                await raw.closed(timeout=1.5)  # three times the connect timeout
            await raw.send('21["chat:typing",{"chat_id":"c","typing":true}]')
            assert (await raw.ack(1))["error"]["code"] == "NOT_FOUND"
        finally:
            await raw.close()


async def test_a_namespace_disconnect_rearms_the_connect_timeout(server):
    """A client that connected, then sent Socket.IO DISCONNECT, keeps its Engine.IO session:
    it must CONNECT again within the timeout too."""
    server.app.sio.connect_timeout = 0.5
    raw = await RawSocket.connect(server.url, make_token("alice"))
    try:
        await asyncio.sleep(0.7)  # past the first deadline, while connected: it stays
        assert raw.eio_sid in server.app.sio.eio.sockets
        await raw.send("1")  # Socket.IO DISCONNECT from "/"
        await raw.closed(timeout=WAIT)
        assert raw.eio_sid not in server.app.sio.eio.sockets
    finally:
        await raw.close()


class TestPollingBacklog:
    """A poller that never polls, and keeps its session alive with POSTs, may not make the
    server hold every ack it is sent: past max_send_buffer_bytes waiting, it is closed."""

    @pytest.fixture
    def settings(self):
        return make_settings(max_send_buffer_bytes=1_500_000, history_page_bytes=100_000,
                             rate_limit_per_second=0, user_rate_limit_per_second=0)

    async def test_acks_nobody_collects_close_the_session(self, server):
        owner = await server.connect("alice")
        await owner.ok("documents:create", {"document_id": "big", "content": "a" * 400_000})
        polling = await RawPolling.connect(server.url, make_token("alice"))
        try:
            for ack_id in range(1, 8):  # 7 acks of 400 KB, never collected
                status, _ = await polling.post(
                    f'42{ack_id}["documents:join",{{"document_id":"big"}}]')
                if status != 200:
                    break
            assert polling.eio_sid not in server.app.sio.eio.sockets
            assert (await scrape(server.url))["collab_slow_consumers_closed_total"] == 1
        finally:
            await polling.close()
        await owner.ok("documents:leave", {"document_id": "big"})


async def test_a_second_websocket_upgrading_the_same_session_is_closed(server):
    polling = await RawPolling.connect(server.url, make_token("carol"))
    first = await RawSocket.open(server.url, f"&sid={polling.eio_sid}")
    second = await RawSocket.open(server.url, f"&sid={polling.eio_sid}")
    try:
        await second.closed(timeout=WAIT)
        await first.ws.send_str("2probe")
        assert (await first.ws.receive_str(timeout=WAIT)) == "3probe"
        assert polling.eio_sid in server.app.sio.eio.sockets  # the session lives on
    finally:
        for raw in (first, second):
            await raw.close()
        await polling.close()


async def test_a_closed_connection_leaves_nothing_for_the_collector(server):
    """A connection that ends is freed by reference counting: nothing of it waits in a
    cycle for a full collection (which, after thousands of connections had closed,
    held the event loop for a second). collab/transport.py, EngineIOWebSocket."""
    gc.collect()
    gc.disable()
    try:
        clients = [await server.connect(f"u{i}") for i in range(3)]
        clients.append(await server.connect("upgraded", transports=["polling", "websocket"]))
        assert clients[-1].sio.eio.current_transport == "websocket"
        handlers = [server.app.sio.environ[c.sio.eio.sid]["tornado.handler"] for c in clients]
        handlers[-1] = server.app.broadcaster.ws_handlers[clients[-1].sio.eio.sid]
        sockets = [server.app.sio.eio.sockets[c.sio.eio.sid] for c in clients]
        kinds = (type(handlers[0]), type(sockets[0]), type(handlers[0].ws_connection.stream))
        for client in clients:
            await client.disconnect()
        for handler in handlers:
            await asyncio.wait_for(asyncio.shield(handler._serving), WAIT)
        del handlers, sockets
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, kinds)]
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
