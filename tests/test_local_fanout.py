"""Room broadcasts with and without the fast path (collab/broadcast/local.py): exactly once, in
order, ordered with acks on the same connection, mixed transports, slow consumers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pycrdt
import pytest
import tornado.iostream
from harness import WAIT, Harness, cancel_leftover_tasks, make_settings, make_token, scrape
from rawsocket import RawSocket

from collab.broadcast.local import ws_binary_frame, ws_text_frame
from collab.server import Server


@pytest.fixture(params=[True, False], ids=["fast", "normal"])
def settings(request):
    # short pings: a polling python-socketio client otherwise takes up to 30 s to disconnect
    return make_settings(fast_broadcast=request.param, rate_limit_per_second=0,
                         ping_interval=0.5, ping_timeout=1)


def check_manager(server, settings) -> None:
    assert server.app.sio.manager is server.app.broadcaster
    assert server.app.broadcaster.fast == settings.fast_broadcast


async def make_chat(owner, members: list[str]) -> str:
    ack = await owner.ok("chat:create", {"title": "room", "members": members})
    return ack["chat"]["id"]


def frame_of(text: str) -> bytes:
    return ws_text_frame(text.encode())


def test_frame_lengths():
    assert frame_of("42") == b"\x81\x0242"
    assert frame_of("x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert frame_of("x" * 70000)[:10] == b"\x81\x7f" + struct.pack("!Q", 70000)


async def test_mixed_transports_every_message_once_in_order(server, settings):
    check_manager(server, settings)
    users = [f"u{i}" for i in range(6)]
    owner = await server.connect("u0")
    chat_id = await make_chat(owner, users[1:])
    clients = [owner]
    clients.append(await server.connect("u1"))
    clients.append(await server.connect("u2", transports=["polling"]))
    clients.append(await server.connect("u3", transports=["polling"]))
    clients.append(await server.connect("u4", transports=["polling", "websocket"]))  # upgrades
    clients.append(await server.connect("u5"))
    for client in clients:
        await client.ok("chat:join", {"chat_id": chat_id})
    for client in clients:
        client.pending("user:joined")

    per_poster = 15
    posters = [clients[1], clients[2], clients[4]]  # websocket, polling, upgraded

    async def post(client, n: int) -> None:
        for i in range(n):
            await client.ok("chat:message", {"chat_id": chat_id, "content": f"m{i}"})

    await asyncio.gather(*(post(p, per_poster) for p in posters))
    total = per_poster * len(posters)
    for client in clients:
        seqs = []
        for _ in range(total):
            seqs.append((await client.next("chat:message"))["message"]["seq"])
        assert seqs == list(range(1, total + 1))
        await client.ok("chat:history", {"chat_id": chat_id, "limit": 1})  # a round trip
        assert client.pending("chat:message") == []  # and nothing twice
    if settings.fast_broadcast:
        manager = server.app.sio.manager
        assert manager.direct_writes > 0  # the WebSocket clients took the fast path
        assert manager.queued_writes > 0  # the polling ones the queue


def test_binary_frame():
    assert ws_binary_frame(b"\x00\x01") == b"\x82\x02\x00\x01"
    assert ws_binary_frame(b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"


async def test_binary_broadcasts_reach_every_transport_once_in_order(server, settings):
    """A ``documents:yupdate`` carries its update as a binary attachment: the fast path
    writes the header and the attachment to WebSockets together, and queues both for
    pollers; every member gets every update once, whole, in version order."""
    users = [f"u{i}" for i in range(5)]
    owner = await server.connect("u0")
    ack = await owner.ok("documents:create", {"title": "d", "content": ""})
    document_id = ack["document"]["id"]
    for user_id in users[1:]:
        await owner.ok("documents:share", {"document_id": document_id, "user_id": user_id,
                                           "role": "viewer"})
    members = [await server.connect("u1"),
               await server.connect("u2", transports=["polling"]),
               await server.connect("u3", transports=["polling"]),
               await server.connect("u4", transports=["polling", "websocket"])]  # upgrades
    ydoc = pycrdt.Doc()
    text = ydoc.get("content", type=pycrdt.Text)
    joined = await owner.ok("documents:join", {"document_id": document_id,
                                               "state_vector": ydoc.get_state()})
    ydoc.apply_update(joined["update"])
    docs = []
    for member in members:
        doc = pycrdt.Doc()
        got = await member.ok("documents:join", {"document_id": document_id,
                                                 "state_vector": doc.get_state()})
        doc.apply_update(got["update"])
        docs.append(doc)
    manager = server.app.sio.manager
    direct, queued = getattr(manager, "direct_writes", 0), getattr(manager, "queued_writes", 0)

    updates = []
    for i in range(20):
        before = ydoc.get_state()
        text.insert(len(text), f"k{i} ")
        updates.append(ydoc.get_update(before))
    acks = await asyncio.gather(*(owner.ok("documents:yupdate", {
        "document_id": document_id, "update": u}) for u in updates))
    assert sorted(a["version"] for a in acks) == list(range(1, 21))
    for member, doc in zip(members, docs, strict=True):
        versions = []
        for _ in range(20):
            got = await member.next("documents:yupdate")
            assert isinstance(got["update"], bytes)
            doc.apply_update(got["update"])
            versions.append(got["version"])
        assert versions == list(range(1, 21))
        assert str(doc.get("content", type=pycrdt.Text)) == str(text)
        await member.ok("documents:history", {"document_id": document_id, "limit": 1})
        assert member.pending("documents:yupdate") == []  # and nothing twice
    if settings.fast_broadcast:
        assert manager.direct_writes > direct  # the WebSocket members took the fast path
        assert manager.queued_writes > queued  # the polling ones the queue


async def test_broadcast_arrives_before_the_ack_of_the_same_call(server, settings):
    """Fire many posts without waiting: each one's broadcast precedes its ack, and
    the error event of a failed call precedes that call's ack."""
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    chat_id = await make_chat(alice, ["bob"])
    await alice.ok("chat:join", {"chat_id": chat_id})
    await bob.ok("chat:join", {"chat_id": chat_id})
    arrivals: list[tuple[str, Any]] = []
    alice.sio.on("chat:message", lambda data: arrivals.append(("msg", data["message"]["content"])))
    alice.sio.on("error", lambda data: arrivals.append(("error", data["code"])))
    done = asyncio.get_running_loop().create_future()
    n = 40

    def on_ack(tag: str):
        def record(ack: dict[str, Any]) -> None:
            arrivals.append(("ack", tag))
            if sum(1 for kind, _ in arrivals if kind == "ack") == n + 1 and not done.done():
                done.set_result(None)
        return record

    for i in range(n):
        await alice.sio.emit("chat:message", {"chat_id": chat_id, "content": f"c{i}"},
                             callback=on_ack(f"c{i}"))
        if i == n // 2:
            await alice.sio.emit("chat:message", {"chat_id": "nope", "content": "x"},
                                 callback=on_ack("bad"))
    await asyncio.wait_for(done, WAIT)
    for i in range(n):
        tag = f"c{i}"
        assert arrivals.index(("msg", tag)) < arrivals.index(("ack", tag)), arrivals
    errors = [i for i, (kind, _) in enumerate(arrivals) if kind == "error"]
    assert len(errors) == 1 and errors[0] < arrivals.index(("ack", "bad"))
    assert [c for kind, c in arrivals if kind == "msg"] == [f"c{i}" for i in range(n)]
    for i in range(n):  # bob too: every message once, in order
        assert (await bob.next("chat:message"))["message"]["content"] == f"c{i}"


async def test_broadcasts_of_one_loop_pass_share_a_write(io_loop):
    """Fast path: of the broadcasts made in one event-loop pass (as a group
    commit's completions are), the first is written at once and the rest reach
    each WebSocket in one write, in order; an event sent through the
    connection's queue afterwards still comes after them."""
    srv = await Server.start(make_settings(fast_broadcast=True, rate_limit_per_second=0))
    server = Harness(srv)
    try:
        alice = await server.connect("alice")
        bob = await server.connect("bob")
        chat_id = await make_chat(alice, ["bob"])
        for client in (alice, bob):
            await client.ok("chat:join", {"chat_id": chat_id})
        bob.pending("user:joined")
        manager = srv.app.sio.manager
        writes, direct = manager.flushed_writes, manager.direct_writes
        for i in range(5):  # no await in between suspends: one pass
            await srv.app.sio.emit("chat:typing", {"n": i}, room=f"chat_{chat_id}")
            # the first went out at once; the ones after it wait for the flush
            assert len(manager.corked) == (0 if i == 0 else 2)
        bob_sid = next(s for s, c in srv.app.connections.items() if c.user_id == "bob")
        bob_eio_sid = manager.eio_sid_from_sid(bob_sid, "/")
        # in the same pass, a packet put straight into bob's Engine.IO queue (as acks are)
        await srv.app.sio.eio.send(bob_eio_sid, '2["chat:typing",{"n":"after"}]')
        assert manager.direct_writes - direct == 10
        for client in (alice, bob):
            assert [(await client.next("chat:typing"))["n"] for _ in range(5)] == list(range(5))
        assert (await bob.next("chat:typing"))["n"] == "after"
        assert manager.flushed_writes - writes == 2  # broadcasts 2-5: one per connection
    finally:
        await server.close_clients()
        await srv.stop()
        await cancel_leftover_tasks()


# -- a consumer that stops reading ------------------------------------------------


class StalledPeer:
    """A raw Socket.IO WebSocket client that joins a chat and then never reads again."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def join(cls, port: int, token: str, chat_id: str) -> StalledPeer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101"), head
        peer = cls(reader, writer)
        assert (await peer.recv()).startswith("0{")  # Engine.IO OPEN
        peer.send("40" + json.dumps({"token": token}))
        assert (await peer.recv()).startswith("40{")  # Socket.IO CONNECT
        peer.send("421" + json.dumps(["chat:join", {"chat_id": chat_id}]))
        while not (await peer.recv()).startswith("431"):  # the join's ack
            pass
        return peer

    async def recv(self) -> str:
        head = await asyncio.wait_for(self.reader.readexactly(2), WAIT)
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return (await self.reader.readexactly(n)).decode()

    def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        assert len(data) <= 0xFFFF
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        n = len(data)
        size = bytes((0x80 | n,)) if n < 126 else struct.pack("!BH", 0xFE, n)
        self.writer.write(b"\x81" + size + mask + masked)

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "normal"])
def test_a_client_that_stops_reading_is_disconnected(io_loop, fast, caplog):
    """Criterion: with a 256 KiB send buffer cap and pings far away (25 s), a peer that
    stops reading while 200 KB messages are broadcast to its room is disconnected by the
    server once the kernel's buffers and the cap are full (a few MB), its connection and
    room membership are gone, a reading member still gets every message in order, and
    the bytes the server held for it never passed the cap by more than the one message
    that found the cap already full; the writes it never got log no traceback."""
    settings = make_settings(fast_broadcast=fast, rate_limit_per_second=0,
                             max_send_buffer_bytes=256 * 1024, history_page_bytes=64 * 1024,
                             max_message_chars=200_000)

    async def scenario() -> None:
        srv = await Server.start(settings)
        server = Harness(srv)
        peer = None
        try:
            alice = await server.connect("alice")
            chat_id = await make_chat(alice, ["bob", "carol"])
            await alice.ok("chat:join", {"chat_id": chat_id})
            bob = await server.connect("bob")
            await bob.ok("chat:join", {"chat_id": chat_id})
            peer = await StalledPeer.join(srv.port, make_token("carol"), chat_id)
            app = srv.app
            assert len(app.connections) == 3
            carol_sid = next(s for s, c in app.connections.items() if c.user_id == "carol")
            content = "x" * 200_000
            sent = 0
            held_max = 0
            deadline = time.monotonic() + 30
            while carol_sid in app.connections and time.monotonic() < deadline:
                await alice.ok("chat:message", {"chat_id": chat_id, "content": content})
                sent += 1
                held_max = max(held_max, held_bytes(app, carol_sid))
                bob_got = (await bob.next("chat:message"))["message"]["seq"]
                assert bob_got == sent
            assert carol_sid not in app.connections, f"still connected after {sent} messages"
            one_message = len(content) + 1000  # the frame: content plus the JSON around it
            assert held_max <= settings.max_send_buffer_bytes + one_message
            assert "carol" not in await app.registry.room_users(f"chat_{chat_id}")
            assert (await scrape(server.url))["collab_slow_consumers_closed_total"] == 1
            # the others carry on
            await alice.ok("chat:message", {"chat_id": chat_id, "content": "after"})
            assert (await bob.next("chat:message"))["message"]["content"] == "after"
            gc.collect()  # an unretrieved failed write is logged when it is collected
            assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        finally:
            if peer is not None:
                peer.close()
            await server.close_clients()
            await srv.stop()
            await cancel_leftover_tasks()

    io_loop.run_sync(scenario, timeout=60)


def held_bytes(app, sid: str) -> int:
    """Bytes the server holds unsent for one connection (Tornado's write buffer)."""
    eio_sid = app.sio.manager.eio_sid_from_sid(sid, "/")
    environ = app.sio.environ.get(eio_sid) or {}
    handler = environ.get("tornado.handler")
    conn = getattr(handler, "ws_connection", None)
    if conn is None:
        return 0
    return len(conn.stream._write_buffer)


async def test_a_polling_client_that_stops_polling_is_closed_by_the_queue_cap(io_loop):
    """Fast path only: a long-polling connection with more than ``max_queued`` packets
    waiting (it stopped polling; pings are far away) is closed, and the room goes on."""
    import aiohttp

    settings = make_settings(fast_broadcast=True, rate_limit_per_second=0)
    srv = await Server.start(settings)
    server = Harness(srv)
    session = aiohttp.ClientSession()
    try:
        manager = srv.app.sio.manager
        manager.max_queued = 20
        alice = await server.connect("alice")
        chat_id = await make_chat(alice, ["carol"])
        await alice.ok("chat:join", {"chat_id": chat_id})
        base = f"{server.url}/socket.io/?EIO=4&transport=polling"
        async with session.get(base) as resp:
            opening = await resp.text()
        sid = json.loads(opening[1:])["sid"]
        url = f"{base}&sid={sid}"

        async def post(packet: str) -> None:
            async with session.post(url, data=packet) as resp:
                assert resp.status == 200

        async def poll_until(prefix: str) -> None:
            while True:
                async with session.get(url) as resp:
                    packets = (await resp.text()).split("\x1e")
                if any(p.startswith(prefix) for p in packets):
                    return

        await post("40" + json.dumps({"token": make_token("carol")}))
        await asyncio.wait_for(poll_until("40{"), WAIT)
        await post("421" + json.dumps(["chat:join", {"chat_id": chat_id}]))
        await asyncio.wait_for(poll_until("431"), WAIT)
        app = srv.app
        carol = next(s for s, c in app.connections.items() if c.user_id == "carol")
        for i in range(manager.max_queued + 5):  # carol no longer polls
            await alice.ok("chat:message", {"chat_id": chat_id, "content": f"m{i}"})
            if carol not in app.connections:
                break
        for _ in range(100):  # the close runs as its own task: a few loop turns
            if carol not in app.connections:
                break
            await alice.ok("chat:history", {"chat_id": chat_id, "limit": 1})
        assert carol not in app.connections
        assert "carol" not in await app.registry.room_users(f"chat_{chat_id}")
        # once, however many broadcasts found its queue full before the close ran
        assert (await scrape(server.url))["collab_slow_consumers_closed_total"] == 1
    finally:
        await session.close()
        await server.close_clients()
        await srv.stop()
        await cancel_leftover_tasks()


async def test_a_session_id_is_not_enough_to_receive_its_broadcasts(server, settings):
    """A WebSocket that asks to carry someone's session (``sid`` in the query) without
    Engine.IO accepting it as that session's upgrade is closed and never becomes the
    session's sink: the victim, upgraded from long-polling, keeps every broadcast."""
    check_manager(server, settings)
    alice = await server.connect("alice")
    victim = await server.connect("bob", transports=["polling", "websocket"])
    chat_id = await make_chat(alice, ["bob"])
    await victim.ok("chat:join", {"chat_id": chat_id})
    eio_sid = victim.sio.eio.sid
    assert victim.sio.eio.current_transport == "websocket"
    assert server.app.sio.eio.sockets[eio_sid].upgraded
    manager = server.app.sio.manager
    sink = manager.ws_handlers.get(eio_sid) if settings.fast_broadcast else None
    attacker = await RawSocket.open(server.url, f"&sid={eio_sid}")
    try:
        await alice.ok("chat:message", {"chat_id": chat_id, "content": "for bob only"})
        got = await victim.next("chat:message")
        assert got["message"]["content"] == "for bob only"
        assert await attacker.closed(timeout=WAIT) == []
    finally:
        await attacker.close()
    direct = getattr(manager, "direct_writes", 0)
    await alice.ok("chat:message", {"chat_id": chat_id, "content": "still bob's"})
    assert (await victim.next("chat:message"))["message"]["content"] == "still bob's"
    if settings.fast_broadcast:  # the accepted upgrade is the sink: bob's frames go direct
        handler = manager.ws_handlers[eio_sid]
        assert handler is sink and handler.ws_connection is not None
        assert manager.sinks[eio_sid] == (handler, handler.ws_connection)
        assert manager.direct_writes - direct == 1  # bob, the only member in the room


def server_stream(server, client) -> tornado.iostream.IOStream:
    """The server's stream of ``client``'s WebSocket (one that connected on WebSocket)."""
    return server.app.sio.environ[client.sio.eio.sid]["tornado.handler"].ws_connection.stream


@contextlib.contextmanager
def tornado_writes(stream: tornado.iostream.IOStream) -> Iterator[list[bytes]]:
    """What the server writes to ``stream`` through ``IOStream.write`` while the block
    runs (the fast path's direct sends go around it)."""
    written: list[bytes] = []
    original = stream.write

    def write(data, *args, **kwargs):
        written.append(bytes(data))
        return original(data, *args, **kwargs)

    stream.write = write
    try:
        yield written
    finally:
        del stream.write


async def test_a_broadcast_to_an_idle_websocket_is_one_direct_send(server, settings):
    """The frame goes straight to the socket, not through ``IOStream.write``, on the
    streams the server really uses (the listener's counted stream, a subclass);
    python-socketio's own broadcast writes through Tornado."""
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    chat_id = await make_chat(alice, ["bob"])
    await bob.ok("chat:join", {"chat_id": chat_id})
    stream = server_stream(server, bob)
    assert type(stream) is not tornado.iostream.IOStream  # (what once defeated the check)
    with tornado_writes(stream) as buffered:
        await alice.ok("chat:message", {"chat_id": chat_id, "content": "direct"})
        assert (await bob.next("chat:message"))["message"]["content"] == "direct"
    through_tornado = [data for data in buffered if b"direct" in data]
    assert len(through_tornado) == (0 if settings.fast_broadcast else 1)


async def test_an_ack_to_an_idle_websocket_is_one_direct_send(server, settings):
    """Acks skip Engine.IO's queue and writer on an idle WebSocket, as broadcasts do,
    and still come after the broadcast of the same call (fast path); python-socketio's
    own path writes them through Tornado."""
    alice = await server.connect("alice")
    chat_id = await make_chat(alice, [])
    await alice.ok("chat:join", {"chat_id": chat_id})
    sends = server.app.broadcaster.direct_sends
    with tornado_writes(server_stream(server, alice)) as buffered:
        ack = await alice.ok("chat:message", {"chat_id": chat_id, "content": "acked"})
        assert (await alice.next("chat:message")) == {"message": ack["message"]}
    through_tornado = [data for data in buffered if b'"ok":true' in data]
    assert len(through_tornado) == (0 if settings.fast_broadcast else 1)
    assert server.app.broadcaster.direct_sends - sends == (1 if settings.fast_broadcast else 0)
