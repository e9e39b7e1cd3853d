"""Delivery to this node's clients: encode once, frame once, write the same bytes to every
WebSocket.

:class:`LocalBroadcaster` is the client manager (python-socketio's extension
point) of a node that has no other nodes to tell; the Redis broadcaster
(:mod:`collab.broadcast.redis`) is this class with the cross-node transport
added, so both deliver locally through the code below.

python-socketio encodes a broadcast once but then starts one task per recipient,
each of which goes through the recipient's Engine.IO queue, its writer task,
Tornado's per-message framing and its own write. For a room of 100 that is most
of the server's time. The fast path keeps the encoding shared and, for a
recipient on WebSocket whose outgoing queue is idle, writes one pre-framed
WebSocket message straight to its Tornado stream, synchronously, without a task
or a queue. (``fast=False`` leaves every emit to python-socketio: the
``fast_broadcast`` setting, for comparison and as a way out.)

Corking: the first broadcast of an event-loop pass is written at once and
schedules a flush with ``call_soon`` (it runs after the callbacks already
queued). The frames of broadcasts made before that flush runs (a group
commit's completions are) are collected per connection and written together
by it: one system call per recipient for all of them, instead of one per
broadcast and recipient, while a lone broadcast loses no time. (With
WebSocket compression on, every frame is compressed and written at once.)

Ordering: a frame takes the direct path only when nothing sent earlier to that
connection is still waiting in its Engine.IO queue. Acks and other packets for
one client take the same path under the same rule
(:meth:`LocalBroadcaster.send_direct`, called by collab/sioserver.py), corked
behind the pass's broadcast frames for that connection; otherwise they go
through that queue. Anything put in that queue afterwards is written by the
queue's writer task, which the put wakes with a callback scheduled after the
flush (the event loop runs callbacks in the order they were scheduled), so
per-connection order is kept. Every other recipient (long-polling, upgrading,
busy) gets the packet appended to its queue in the same synchronous pass, so a
broadcast is never interleaved with another one.

Members that are not Socket.IO connections (the y-websocket endpoint's sockets,
collab/yws.py) are :class:`Receiver` objects added to a room by name: every
broadcast delivered to the room on this node reaches them too, at the same point
and so in the same order as the room's Socket.IO members, decoded once for all.

Slow consumers: :func:`bounded_handler` caps each WebSocket's Tornado write
buffer; a connection that still holds more than the cap of unsent bytes when
the next message is written to it is aborted, on the direct path and on
python-socketio's own path alike. The message being written does not count:
one larger than the cap (a big ack, a big document) says nothing about the
consumer, so it is written, and a connection holds at most the cap plus one
message. A connection with more than ``max_queued`` packets waiting in its
Engine.IO queue (a polling client that stopped polling) is closed by the fast
path too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import tornado.iostream
import tornado.websocket
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from ..rooms import Room
from ..sioserver import queue_backlogged
from ..transport import close_session
from .joins import JoinPositions
from .roomindex import IndexedManager

log = logging.getLogger("collab.broadcast")

#: default cap on one WebSocket's unsent bytes held by the server
DEFAULT_SEND_BUFFER = 4 * 1024 * 1024
#: default cap on packets waiting in one connection's Engine.IO queue (fast path)
DEFAULT_MAX_QUEUED = 10_000

#: told once per connection closed for not keeping up (the slow consumer metric)
SlowConsumerHook = Callable[[], None]


class Receiver(Protocol):
    """A member of rooms on this node that is not a Socket.IO connection."""

    #: unique on this node, never a Socket.IO sid (a broadcast's ``skip_sid`` may name it)
    key: str

    def receive(self, room: str, event: str, data: Any) -> None:
        """One broadcast to ``room``; called in the room's delivery order, synchronously
        (it must queue, never wait)."""


def _ignore() -> None:
    pass


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented, uncompressed WebSocket text frame (RFC 6455)."""
    return _ws_frame(0x81, payload)


def ws_binary_frame(payload: bytes) -> bytes:
    """The same as a binary frame: how Engine.IO 4 sends a binary attachment."""
    return _ws_frame(0x82, payload)


def _ws_frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def _queue_busy(queue: Any) -> bool:
    """Whether packets put in this Engine.IO queue may not be written yet.

    The WebSocket writer calls ``task_done()`` right before it writes, with no
    suspension in between (the Tornado write is synchronous), so a queue with
    no unfinished task has nothing sent earlier still in flight. Anything we
    cannot tell counts as busy (the normal path is always correct).
    """
    return getattr(queue, "_unfinished_tasks", 1) != 0


class LocalBroadcaster(IndexedManager):
    """The client manager of one node: room broadcasts reach this node's clients."""

    #: no other node exists: everything that changes a role happens here (a node with
    #: others is told of revocations only, so it does not keep document roles)
    alone = True
    direct_writes = 0
    direct_sends = 0
    queued_writes = 0
    flushed_writes = 0

    def __init__(self, *, fast: bool = True, compression: bool = False,
                 max_queued: int = DEFAULT_MAX_QUEUED,
                 on_slow_consumer: SlowConsumerHook = _ignore) -> None:
        super().__init__()
        #: whether emits take the fast path at all (the ``fast_broadcast`` setting)
        self.fast = fast
        self.compression = compression
        self.max_queued = max_queued
        self.on_slow_consumer = on_slow_consumer
        #: eio sid -> Tornado handler, for connections upgraded from polling (set once
        #: Engine.IO has accepted the upgrade, see bounded_handler)
        self.ws_handlers: dict[str, Any] = {}
        #: eio sid -> (handler, WebSocket connection), found once per connection
        self.sinks: dict[str, tuple[Any, Any]] = {}
        #: WebSocket connection -> [handler, frames...] waiting for this pass's flush
        self.corked: dict[Any, list[Any]] = {}
        self.flush_scheduled = False
        #: eio sid -> the task closing it for too many queued packets: one close
        #: (and one count) however many broadcasts find it full meanwhile
        self.closing: dict[str, asyncio.Future[Any]] = {}
        #: what joins already gave their connections (collab/broadcast/joins.py)
        self.joins = JoinPositions()
        #: room name -> key -> the room's members here that are not Socket.IO connections
        self.receivers: dict[str, dict[str, Receiver]] = {}

    # -- what the app asks of every broadcaster ----------------------------

    async def start(self) -> None:
        """Get ready before the first client connects (nothing to do on one node)."""

    async def close(self) -> None:
        """Release what the broadcaster holds (nothing on one node)."""

    @property
    def publishing(self) -> bool:
        """Whether other nodes hear this one's broadcasts now (there are none)."""
        return True

    async def revoke(self, room: Room, user_id: str) -> bool:
        """Have every other node take ``user_id`` out of ``room``: none to tell."""
        return True

    async def ask(self, room: Room) -> None:
        """Have the other nodes send their awareness states in ``room`` again: none."""

    def local_members(self, room: str) -> list[str]:
        """This node's members of the room named ``room``: sids, and receivers' keys."""
        return [*self.rooms.get("/", {}).get(room, ()), *self.receivers.get(room, ())]

    async def broadcast(self, room: Room, event: str, data: Any, *,
                        position: int | None = None, skip_sid: Any = None,
                        sender: str = "") -> None:
        """Send ``event`` to the room's members; ``position`` orders a stored item's
        broadcasts across nodes (one node delivers them in call order already);
        ``sender`` is for other nodes (there are none)."""
        if position is not None:
            skip_sid = self.skipping(room.name, position, skip_sid)
        self.to_receivers(room.name, event, data, skip_sid)
        await self.emit(event, data, "/", room=room.name, skip_sid=skip_sid)

    def skipping(self, room: str, position: int, skip_sid: Any) -> list[Any]:
        """``skip_sid`` and the members whose join covered ``position`` already."""
        skip = list(skip_sid) if isinstance(skip_sid, list | tuple) \
            else ([] if skip_sid is None else [skip_sid])
        return skip + self.joins.skip(room, position, self.rooms.get("/", {}).get(room, ()))

    # -- members that are not Socket.IO connections ------------------------

    async def add_receiver(self, room: str, receiver: Receiver) -> None:
        """Make ``receiver`` a member of the room named ``room`` on this node; returns once
        the room's broadcasts reach it (the caller reads the room's state after this)."""
        self.receivers.setdefault(room, {})[receiver.key] = receiver

    async def remove_receiver(self, room: str, key: str) -> None:
        members = self.receivers.get(room)
        if members is not None and members.pop(key, None) is not None and not members:
            del self.receivers[room]

    def hosts(self, room: str) -> bool:
        """Whether the room named ``room`` has a member on this node, of either kind."""
        return bool(self.rooms.get("/", {}).get(room)) or room in self.receivers

    def to_receivers(self, room: str, event: str, data: Any, skip_sid: Any) -> None:
        """Hand one broadcast to the room's receivers here (all but those skipped)."""
        members = self.receivers.get(room)
        if not members:
            return
        skip = skip_sid if isinstance(skip_sid, list | tuple) else (skip_sid,)
        for key, receiver in list(members.items()):
            if key not in skip:
                try:
                    receiver.receive(room, event, data)
                except Exception:  # one broken receiver must not cost the others
                    log.exception("delivering %s to a receiver in %s failed", event, room)

    # -- local delivery ----------------------------------------------------

    def _new_sink(self, eio_sid: str, keep: bool = True) -> tuple[Any, Any] | None:
        """Find (and keep) the (handler, WebSocket connection) of ``eio_sid``, or None."""
        handler = self.websocket_for(eio_sid)
        if handler is None:
            return None
        sink = (handler, handler.ws_connection)
        if keep:
            self.sinks[eio_sid] = sink
        return sink

    def websocket_for(self, eio_sid: str) -> Any:
        """The open Tornado WebSocket handler carrying ``eio_sid``, or None."""
        handler = self.ws_handlers.get(eio_sid)
        if handler is None:
            # a connection that opened on WebSocket: its handshake environ is the socket's
            environ = self.server.environ.get(eio_sid)
            handler = environ.get("tornado.handler") if environ else None
        if handler is None or getattr(handler, "ws_connection", None) is None:
            return None
        return handler

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> Any:
        eio_sid = self.eio_sid_from_sid(sid, namespace or "/")
        if eio_sid is not None:
            self.sinks.pop(eio_sid, None)
        self.joins.forget_sid(sid, self.get_rooms(sid, namespace or "/"))
        return await super().disconnect(sid, namespace, **kwargs)

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   **kwargs: Any) -> None:
        room = to or room
        if not self.fast or callback is not None or namespace not in self.rooms:
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                                      callback=callback, **kwargs)
        if isinstance(data, tuple):
            args = list(data)
        elif data is not None:
            args = [data]
        else:
            args = []
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, *args]).encode()
        if isinstance(encoded, list):  # binary attachments: the header, then each one
            self.deliver(encoded[0], namespace, room, skip_sid, tuple(encoded[1:]))
        else:
            self.deliver(encoded, namespace, room, skip_sid)

    def deliver(self, encoded: str, namespace: str, room: Any, skip_sid: Any,
                attachments: tuple[bytes, ...] = ()) -> None:
        """Send one encoded Socket.IO packet to a room's local participants, synchronously.

        A packet with binary ``attachments`` (a Yjs update) is its text header followed
        by one binary Engine.IO message per attachment, as python-socketio sends it:
        on the direct path the frames go out together in one write, on the queued path
        they are put in the connection's queue one after the other in the same pass.
        """
        if not isinstance(skip_sid, list):
            skip_sid = [skip_sid]
        eio_pkts = [eio_packet.Packet(eio_packet.MESSAGE, encoded),
                    *(eio_packet.Packet(eio_packet.MESSAGE, a) for a in attachments)]
        text = "4" + encoded
        frame = None
        sockets = self.server.eio.sockets
        sinks = self.sinks
        corked = self.corked
        cork = self.flush_scheduled  # an earlier broadcast of this pass went out
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip_sid:
                continue
            sock = sockets.get(eio_sid)
            if sock is None or sock.closed:
                continue
            if sock.upgraded and not sock.upgrading and not sock.closing \
                    and not _queue_busy(sock.queue):
                sink = sinks.get(eio_sid) or self._new_sink(eio_sid)
                if sink is not None:
                    handler, conn = sink
                    if not conn.is_closing():
                        if self.compression:
                            _write(handler, conn, text, None, self.on_slow_consumer,
                                   attachments)
                        else:
                            if frame is None:
                                frame = ws_text_frame(text.encode())
                                if attachments:
                                    frame = b"".join([frame, *map(ws_binary_frame,
                                                                   attachments)])
                            if not cork:
                                _write(handler, conn, None, frame, self.on_slow_consumer)
                            elif (pending := corked.get(conn)) is None:
                                corked[conn] = [handler, frame]
                            else:
                                pending.append(frame)
                        self.direct_writes += 1
                        continue
                    del sinks[eio_sid]
            if sock.queue.qsize() >= self.max_queued \
                    or queue_backlogged(sock, self.server.eio.max_queued_bytes):
                if eio_sid not in self.closing:
                    self._close_backlogged(eio_sid, sock)
                continue
            for eio_pkt in eio_pkts:
                sock.queue.put_nowait(eio_pkt)
            self.queued_writes += 1
        if not cork:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def send_direct(self, eio_sid: str, encoded: str) -> bool:
        """Write one encoded Socket.IO packet for one client (an ack, an ``error``) to
        its WebSocket as a broadcast's frame would go: at once, or corked with this
        pass's frames for it. False, with nothing written, where it must take the
        session's Engine.IO queue: any session that is not an idle upgraded
        WebSocket, and every session with compression on or the fast path off."""
        if not self.fast or self.compression:
            return False
        sock = self.server.eio.sockets.get(eio_sid)
        # (deliver's test for the direct path, which it spells out per recipient)
        if sock is None or sock.closed or not sock.upgraded or sock.upgrading \
                or sock.closing or _queue_busy(sock.queue):
            return False
        # (not kept: an idle connection gets an ack or two, and a kept sink costs it
        # memory; a broadcast keeps it)
        sink = self.sinks.get(eio_sid) or self._new_sink(eio_sid, keep=False)
        if sink is None:
            return False
        handler, conn = sink
        if conn.is_closing():
            return False
        frame = ws_text_frame(("4" + encoded).encode())
        if (pending := self.corked.get(conn)) is not None:
            pending.append(frame)  # behind this pass's broadcast frames for it
        elif self.flush_scheduled:
            self.corked[conn] = [handler, frame]
        else:
            _write(handler, conn, None, frame, self.on_slow_consumer)
        self.direct_sends += 1
        return True

    def _close_backlogged(self, eio_sid: str, sock: Any) -> None:
        environ = self.server.environ.get(eio_sid) or {}
        handler = environ.get("tornado.handler")
        log.warning("closing a connection from %s that does not collect what it is sent "
                    "(%d packets queued)", handler.request.remote_ip if handler else "?",
                    sock.queue.qsize())  # (never the session id: it is all a hijacker needs)
        task = self.closing[eio_sid] = asyncio.ensure_future(
            close_session(self.server.eio, eio_sid))
        task.add_done_callback(lambda _: self.closing.pop(eio_sid, None))
        self.on_slow_consumer()

    def flush(self) -> None:
        """End of the pass: write each connection's corked frames with one write."""
        corked, self.corked = self.corked, {}
        self.flush_scheduled = False
        for conn, (handler, *frames) in corked.items():
            if not conn.is_closing():
                _write(handler, conn, None, frames[0] if len(frames) == 1 else b"".join(frames),
                       self.on_slow_consumer)
                self.flushed_writes += 1


def _send_frame(stream: Any, frame: bytes) -> None:
    """Write ``frame`` to a Tornado stream, straight to the socket when nothing is buffered.

    With an empty write buffer, ``IOStream.write`` would itself try the socket at
    once; doing it here skips its per-call Future and bookkeeping, which on a
    100-recipient broadcast cost about as much as the system calls. Whatever the
    kernel does not take goes to the stream's buffer, behind nothing, so the byte
    order is the same as Tornado's. Plain sockets only (TLS needs the stream): any
    IOStream but an SSLIOStream, so that a subclass (the listener's CountedStream,
    which every connection has) keeps the direct write; an exact type test here once
    sent every frame through ``IOStream.write``, unnoticed by every test.
    """
    if not stream.writing() and isinstance(stream, tornado.iostream.IOStream) \
            and not isinstance(stream, tornado.iostream.SSLIOStream):
        try:
            sent = stream.socket.send(frame)
        except OSError:  # EAGAIN, or an error Tornado's own write will see and handle
            sent = 0
        if sent == len(frame):
            return
        frame = memoryview(frame)[sent:]
    _buffer(stream, frame)


def _buffer(stream: Any, data: bytes | memoryview) -> None:
    """``stream.write(data)``, refused (``StreamBufferFullError``) only when backlogged."""
    if _backlogged(stream):
        raise tornado.iostream.StreamBufferFullError("send buffer full")
    with _uncapped(stream):
        stream.write(data)


def _backlogged(stream: Any) -> bool:
    """Whether earlier messages hold more unsent bytes than the send cap
    (``max_write_buffer_size``): the consumer does not keep up. The message about to
    be written does not count, so one larger than the cap on its own is written."""
    cap = stream.max_write_buffer_size
    return cap is not None and len(stream._write_buffer) > cap


@contextlib.contextmanager
def _uncapped(stream: Any) -> Iterator[None]:
    """Lift Tornado's write cap for one message: it would count the message itself.

    It stays in force for the frames Tornado writes on its own (pongs, close),
    so a peer that pings and never reads still cannot grow the buffer.
    """
    cap, stream.max_write_buffer_size = stream.max_write_buffer_size, None
    try:
        yield
    finally:
        stream.max_write_buffer_size = cap


def _write(handler: Any, conn: Any, text: str | None, frame: bytes | None,
           on_slow_consumer: SlowConsumerHook, attachments: tuple[bytes, ...] = ()) -> None:
    try:
        if frame is not None:
            _send_frame(conn.stream, frame)
        else:  # (compression: Tornado frames and compresses each message)
            handler.write_message(text)
            for attachment in attachments:
                handler.write_message(attachment, binary=True)
    except (tornado.iostream.StreamClosedError, tornado.websocket.WebSocketClosedError):
        pass  # already going away; its disconnect runs on the close callback
    except tornado.iostream.StreamBufferFullError:
        _overflow(handler, conn, on_slow_consumer)
    except Exception:  # one broken connection must not cost the rest of the room its frames
        log.exception("writing to %s failed; closing it", handler.request.remote_ip)
        conn.stream.close()


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _overflow(handler: Any, conn: Any, on_slow_consumer: SlowConsumerHook) -> None:
    if conn.stream.closed():
        return  # an earlier write found it full and closed it: told once
    log.warning("closing a WebSocket that does not keep up (send buffer full): %s",
                handler.request.remote_ip)
    conn.stream.close()
    on_slow_consumer()


def write_bounded(handler: Any, message: bytes | str, binary: bool,
                  on_slow_consumer: SlowConsumerHook) -> None:
    """Write one message to a WebSocket whose send buffer is capped (``cap_send_buffer``);
    a connection that holds more than the cap unsent is closed (and counted) instead,
    as the Socket.IO path does (the message itself does not count, see above)."""
    conn = handler.ws_connection
    if conn is None or conn.is_closing():
        return
    if _backlogged(conn.stream):
        _overflow(handler, conn, on_slow_consumer)
        return
    try:
        with _uncapped(conn.stream):
            future = handler.write_message(message, binary=binary)
    except tornado.websocket.WebSocketClosedError:
        return
    future.add_done_callback(_retrieve)  # (fails when the stream closes with it unsent)


def cap_send_buffer(handler: Any, send_buffer: int) -> None:
    """Cap a freshly opened WebSocket's unsent bytes, and turn Nagle off (see below)."""
    if handler.ws_connection is not None:
        handler.ws_connection.stream.max_write_buffer_size = send_buffer
        handler.set_nodelay(True)


def bounded_handler(base: type, manager: Any, send_buffer: int = DEFAULT_SEND_BUFFER,
                    on_slow_consumer: SlowConsumerHook = _ignore) -> type:
    """python-socketio's Tornado handler with a capped send buffer per WebSocket (and
    TCP_NODELAY, as Node's socket.io has).

    It also tells a :class:`LocalBroadcaster` which WebSocket carries a
    connection that was upgraded from long-polling, once Engine.IO has
    accepted it as that connection's upgrade; the ``sid`` in its query string
    alone proves nothing (anyone who saw a polling URL knows it).
    """
    fast = manager if isinstance(manager, LocalBroadcaster) and manager.fast else None

    class BoundedHandler(base):  # type: ignore[misc, valid-type]
        _eio_sid: str | None = None
        #: an upgrade not decided yet: the messages Engine.IO has read from it so far
        _upgrade_read: list[Any] | None = None

        async def open(self, *args: Any, **kwargs: Any) -> None:
            # Tornado leaves Nagle on for WebSockets: a small frame written while an
            # earlier one is unacknowledged then waits for the peer's delayed ACK
            # (up to 40 ms). Node's ws and socket.io turn it off; so do we.
            cap_send_buffer(self, send_buffer)
            if fast is not None and self.get_query_argument("sid", None):
                self._upgrade_read = []
            await super().open(*args, **kwargs)

        async def get_next_message(self) -> Any:
            if self._upgrade_read is not None and len(self._upgrade_read) == 2:
                self._upgrade_accepted(self._upgrade_read)
            message = await super().get_next_message()
            if self._upgrade_read is not None:
                self._upgrade_read.append(message)
            return message

        def _upgrade_accepted(self, read: list[Any]) -> None:
            """Engine.IO asks for a third message: it has taken the probe and UPGRADE."""
            self._upgrade_read = None
            sid = self.get_query_argument("sid")
            sock = fast.server.eio.sockets.get(sid)
            # Engine.IO reads a third message from an upgrading WebSocket only once it
            # took the first two as probe and UPGRADE; the rest is belt and braces
            if read == ["2probe", "5"] and sock is not None and sock.upgraded \
                    and not sock.closed and self.ws_connection is not None:
                self._eio_sid = sid
                fast.ws_handlers[sid] = self
                fast.sinks.pop(sid, None)

        def write_message(self, message: Any, binary: bool = False) -> Any:
            conn = self.ws_connection
            if conn is None:
                return super().write_message(message, binary=binary)  # raises: closed
            if _backlogged(conn.stream):
                _overflow(self, conn, on_slow_consumer)
                raise tornado.websocket.WebSocketClosedError()
            with _uncapped(conn.stream):
                future = super().write_message(message, binary=binary)
            # Engine.IO never awaits it; when the stream closes with this message
            # unsent (a slow consumer dropped) it fails, and would be logged as a
            # "Task exception was never retrieved" traceback.
            future.add_done_callback(_retrieve)
            return future

        def on_close(self) -> None:
            if fast is not None and self._eio_sid \
                    and fast.ws_handlers.get(self._eio_sid) is self:
                del fast.ws_handlers[self._eio_sid]
                fast.sinks.pop(self._eio_sid, None)
            super().on_close()

    return BoundedHandler
