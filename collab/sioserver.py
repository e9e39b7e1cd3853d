"""python-socketio's server, answering what a client may not send instead of raising.

python-socketio dispatches a client's packets trusting their shape: a bad
type digit, an event that is not a list, a BINARY_ACK nobody asked for, a
packet for a namespace the client never joined, each raise out of
``_handle_eio_message`` and Engine.IO logs a traceback, per packet, answering
nothing. A BINARY_EVENT header may announce up to 9,999,999,999 attachments,
and every later frame of the connection is kept as one of them.

:class:`GuardedServer` checks each packet before dispatching it to the
library's own handlers (``_handle_connect``, ``_handle_event``, ...). What
carries an ack id on a connected namespace is answered there as
:data:`~collab.packet.MALFORMED_EVENT` (``INVALID_INPUT``, see
collab/packet.py); anything else closes that connection alone, with one log
line and no traceback.

python-socketio also registers a CONNECT as *pending* before it runs the
connect handler, and removes that entry only when the handler returns or
refuses: a CONNECT on a session that is already closing (Engine.IO CLOSE,
then CONNECT, on one WebSocket), or any exception out of the handshake, left
it behind for good, one per packet, with no token needed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Collection
from typing import Any

import engineio
import socketio
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from socketio import packet

from .environ import translate_request
from .logs import ThrottledWarning
from .packet import CollabPacket, MalformedPacket
from .pipeline import Turn, context_with
from .queues import LeanQueue
from .transport import EngineIOWebSocket, close_session

log = logging.getLogger("collab.sioserver")


#: the default cap on the bytes waiting in one session's outgoing queue
DEFAULT_MAX_QUEUED_BYTES = 4 * 1024 * 1024


class CountingQueue(LeanQueue):
    """An Engine.IO session's outgoing queue that knows how many bytes it holds.

    The writer (WebSocket) or the next poll takes packets out, and the bytes
    with them. A :class:`~collab.queues.LeanQueue`: empty, it holds nothing.
    """

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def _put(self, item: Any) -> None:
        if getattr(item, "binary", False):
            # A packet caches its first encoding, and a binary one encodes per transport
            # (raw bytes on WebSocket, "b" + base64 when polling); python-socketio puts
            # one packet object in every recipient's queue. Shared, the first consumer's
            # encoding reached the rest: a poller's GET failed (TypeError, HTTP 500) once
            # a WebSocket member had sent it. Each session gets a packet of its own.
            item = eio_packet.Packet(eio_packet.MESSAGE, item.data)
        super()._put(item)
        self.bytes += _packet_size(item)

    def _get(self) -> Any:
        item = super()._get()
        self.bytes -= _packet_size(item)
        return item


def _packet_size(pkt: Any) -> int:
    data = getattr(pkt, "data", None)
    return len(data) if isinstance(data, (str, bytes)) else 0


def queue_backlogged(sock: Any, max_bytes: int) -> bool:
    """Whether a session's queue holds more than ``max_bytes`` not yet sent: its client
    does not collect what it is sent (a poller that stopped polling, yet keeps the
    session alive with POSTs)."""
    return getattr(sock.queue, "bytes", 0) > max_bytes


class EngineIOServer(engineio.AsyncServer):
    """Engine.IO's server, with two bounds on what a session may hold.

    - Outgoing bytes. Packets wait in a session's queue until its client takes
      them; a poller that never polls (and keeps the session alive by POSTing
      PONGs) made every ack and broadcast stay, 300 MB for 600 acks of a large
      document. A packet sent while more than ``max_queued_bytes`` wait closes
      the session, like a WebSocket over its send buffer (collab/broadcast/local.py).
    - The ping task. Between pings each session has a task asleep for
      ``ping_interval`` (25 s). Engine.IO does not keep it, so a closed
      session's task, and with it the socket, its queue and its handshake
      environ, lived on until it woke: about 3 KB for 25 s per connection,
      which a client closing connections as fast as it opens them turns into
      memory without bound.

    Its requests' environ comes from :func:`collab.environ.translate_request`
    (the Tornado driver's own creates a class per request, kept per session).
    """

    def __init__(self, *args: Any, max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
                 on_slow_consumer: Callable[[], None] = lambda: None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the async driver's table (what async_mode selects), with our environ builder
        self._async = {**self._async, "translate_request": translate_request,
                       "websocket": EngineIOWebSocket}
        self.max_queued_bytes = max_queued_bytes
        self.on_slow_consumer = on_slow_consumer
        self._pings: dict[str, asyncio.Task] = {}

    def create_queue(self) -> CountingQueue:  # type: ignore[override]
        return CountingQueue()

    async def send_packet(self, sid: str, pkt: Any) -> None:
        sock = self.sockets.get(sid)
        if sock is not None and not sock.closing and queue_backlogged(sock, self.max_queued_bytes):
            await self.close_slow_consumer(sid, sock)
            return
        await super().send_packet(sid, pkt)

    async def close_slow_consumer(self, sid: str, sock: Any) -> None:
        """Close a session whose client does not take what it is sent."""
        log.warning("closing a session that does not collect what it is sent "
                    "(%d bytes waiting)", sock.queue.bytes)
        self.on_slow_consumer()
        await close_session(self, sid)

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        task = super().start_background_task(target, *args, **kwargs)
        if getattr(target, "__func__", None) is AsyncSocket._send_ping:
            sid = target.__self__.sid
            self._pings[sid] = task
            task.add_done_callback(lambda done: self._forget_ping(sid, done))
        return task

    def _forget_ping(self, sid: str, task: asyncio.Task) -> None:
        if self._pings.get(sid) is task:
            del self._pings[sid]

    def end_pings(self, sid: str) -> None:
        """Cancel the sleeping ping task of session ``sid`` (it has closed)."""
        task = self._pings.pop(sid, None)
        if task is not None:
            task.cancel()


#: seconds an Engine.IO session may stay open without a Socket.IO CONNECT that was
#: accepted (Node's socket.io closes it after the same ``connectTimeout``): a refused
#: or silent client would otherwise hold its socket and a connection slot while it
#: answers pings
CONNECT_TIMEOUT = 45.0
#: refused CONNECTs after which the session is closed: a client whose token was
#: refused gets a new one before it tries again, and each try costs a verification
MAX_REFUSED_CONNECTS = 3
#: at most one "closing a connection" line per this many seconds (with a count of the
#: others): one per connection is still a flood when connections are cheap to make
CLOSE_LOG_INTERVAL = 10.0


class GuardedServer(socketio.AsyncServer):
    """An ``AsyncServer`` whose packet dispatch refuses malformed client packets."""

    def __init__(self, *args: Any, connect_timeout: float = CONNECT_TIMEOUT,
                 direct: Callable[[str, str], bool] | None = None,
                 pipelined: Collection[str] = (), pipeline_depth: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the events of a connection that may run while its earlier ones still do,
        #: up to ``pipeline_depth`` at once (collab/pipeline.py)
        self._pipelined = frozenset(pipelined) if pipeline_depth > 1 else frozenset()
        self._depth = pipeline_depth
        #: eio sid -> its pipelined events running, oldest first, with their turns
        self._running: dict[str, collections.deque[tuple[asyncio.Task, Turn]]] = {}
        self.connect_timeout = connect_timeout
        #: writes one encoded packet to a session without its Engine.IO queue when it
        #: can (the fast broadcast path's LocalBroadcaster.send_direct); False: it cannot
        self._direct = direct
        #: eio sid -> the timer that closes it unless it connected by then
        self._connect_deadlines: dict[str, asyncio.TimerHandle] = {}
        #: eio sid -> how many of its CONNECTs were refused
        self._refused: dict[str, int] = {}
        self._warn_close = ThrottledWarning(CLOSE_LOG_INTERVAL, log)
        if not issubclass(self.packet_class, CollabPacket):
            raise TypeError("GuardedServer needs serializer=CollabPacket (or a subclass)")
        #: eio sids whose binary packet was refused at its header: binary frames are
        #: skipped (not kept) until the next text frame
        self._skipping: set[str] = set()

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        # Acks and events for one client, as python-socketio sends them, but written
        # straight to an idle WebSocket where the fast path can: Engine.IO's queue
        # and writer task cost each ack a task switch, Tornado's framing and a system
        # call of its own (a tenth of the event loop, saturated room of 100).
        encoded = pkt.encode()
        if isinstance(encoded, list):  # binary attachments: one Engine.IO message each
            for part in encoded:
                await self.eio.send(eio_sid, part)
        elif self._direct is None or not self._direct(eio_sid, encoded):
            await self.eio.send(eio_sid, encoded)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.closing or sock.closed:
            return  # closed for an earlier packet: the rest of its frames mean nothing
        pending = self._binary_packet.get(eio_sid)
        if pending is not None:
            if isinstance(data, bytes):
                return await self._attachment(eio_sid, pending, data)
            return await self._close(eio_sid, "a packet where a binary attachment was due")
        if isinstance(data, bytes):
            if eio_sid not in self._skipping:
                await self._close(eio_sid, "a binary attachment no packet announced")
            return
        self._skipping.discard(eio_sid)
        if not isinstance(data, str):
            # Engine.IO decodes a message that looks like JSON ("4[1]", "4{}", "4null"):
            # what arrives here is then no Socket.IO packet at all
            return await self._close(eio_sid, "a message that is not a Socket.IO packet")
        if not data:  # (the packet class would not even decode it: an EVENT without data)
            return await self._close(eio_sid, "an empty packet")
        try:
            pkt = self.packet_class(encoded_packet=data)
        except MalformedPacket as exc:
            return await self._close(eio_sid, str(exc))
        namespace = pkt.namespace or "/"
        kind = pkt.packet_type
        if kind == packet.CONNECT:
            if self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
                return await self._close(eio_sid, "a second CONNECT to the same namespace")
            await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
            if self.manager.sid_from_eio_sid(eio_sid, namespace) is None:  # refused
                refused = self._refused.get(eio_sid, 0) + 1
                if refused >= MAX_REFUSED_CONNECTS:
                    return await self._close(eio_sid, f"{refused} refused CONNECTs")
                self._refused[eio_sid] = refused
            elif namespace == "/":  # accepted: no deadline (a DISCONNECT arms it again)
                self._disarm_connect_deadline(eio_sid)
            return None
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return await self._close(eio_sid, "a packet for a namespace it is not connected to")
        if kind in (packet.ACK, packet.BINARY_ACK) and not self._awaits_ack(sid, pkt.id):
            return await self._close(eio_sid, "an ack the server did not ask for")
        if pkt.refused_attachments:
            self._skipping.add(eio_sid)
        if kind == packet.EVENT:
            await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        elif kind == packet.ACK:
            await self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)
        elif kind == packet.DISCONNECT:
            await self._pipelined_ended(eio_sid)
            await self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
            self._arm_connect_deadline(eio_sid)  # the session stays: it must CONNECT again
        else:  # BINARY_EVENT, BINARY_ACK: wait for the attachments
            self._binary_packet[eio_sid] = pkt

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None,
                            data: Any) -> None:
        if self._pipelined and id is not None and data and data[0] in self._pipelined:
            running = self._running.get(eio_sid) or collections.deque()
            while len(running) >= self._depth:  # (and so the reader waits: back pressure)
                await asyncio.wait([running[0][0]])
            self._running[eio_sid] = running  # (again, if all it held ended meanwhile)
            turn = Turn(running[-1][1] if running else None)
            task = asyncio.get_running_loop().create_task(
                self._run_pipelined(eio_sid, namespace, id, data), context=context_with(turn))
            running.append((task, turn))
            # (a callback: it runs even for a task cancelled before its first step)
            task.add_done_callback(lambda _: self._pipelined_done(eio_sid, running, turn))
            return
        if eio_sid in self._running:
            await self._pipelined_ended(eio_sid)  # the others see them done
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _run_pipelined(self, eio_sid: str, namespace: str | None, id: int | None,
                             data: Any) -> None:
        try:
            await super()._handle_event(eio_sid, namespace, id, data)
        except Exception:  # noqa: BLE001 - (the dispatcher answers every handler error)
            log.exception("handling a pipelined event failed")

    async def _pipelined_ended(self, eio_sid: str) -> None:
        """Until the session's pipelined events have ended: any other packet of the
        session waits for them, a DISCONNECT or the session's end too (they would
        find it gone, and their messages would be dropped unanswered)."""
        running = self._running.get(eio_sid)
        if running:
            me = asyncio.current_task()
            tasks = [task for task, _ in running if task is not me]
            if tasks:
                await asyncio.wait(tasks)

    def _pipelined_done(self, eio_sid: str, running: collections.deque, turn: Turn) -> None:
        turn.ended()
        while running and running[0][0].done():  # (they end in order; a cancel may not)
            running.popleft()
        if not running and self._running.get(eio_sid) is running:
            del self._running[eio_sid]

    def pipelined_running(self) -> list[asyncio.Task]:
        """Every pipelined event still running: a shutdown lets them end."""
        return [task for running in self._running.values() for task, _ in running]

    async def _attachment(self, eio_sid: str, pkt: CollabPacket, data: bytes) -> None:
        pkt.attachment_bytes += len(data)
        if pkt.attachment_bytes > self.eio.max_http_buffer_size:
            return await self._close(eio_sid, "binary attachments over the packet limit")
        if not pkt.add_attachment(data):
            return
        del self._binary_packet[eio_sid]
        if pkt.packet_type == packet.BINARY_EVENT:
            await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        else:
            await self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)

    def _awaits_ack(self, sid: str, ack_id: int | None) -> bool:
        # ids start at 1; the manager keeps its id counter under 0
        return bool(ack_id) and ack_id in self.manager.callbacks.get(sid, ())

    async def _close(self, eio_sid: str, reason: str) -> None:
        """Close one connection for a packet it may not send: one line, no traceback."""
        self._binary_packet.pop(eio_sid, None)
        self._skipping.discard(eio_sid)
        handler = self.environ.get(eio_sid, {}).get("tornado.handler")
        peer = handler.request.remote_ip if handler is not None else "?"
        self._warn_close("closing a connection from %s: %s", peer, reason)  # (no session id)
        await close_session(self.eio, eio_sid)

    async def _handle_eio_connect(self, eio_sid: str, environ: Any) -> None:
        await super()._handle_eio_connect(eio_sid, environ)
        self._arm_connect_deadline(eio_sid)

    def _arm_connect_deadline(self, eio_sid: str) -> None:
        """Close the session in ``connect_timeout`` seconds unless it is connected then."""
        previous = self._connect_deadlines.pop(eio_sid, None)
        if previous is not None:
            previous.cancel()
        self._connect_deadlines[eio_sid] = asyncio.get_running_loop().call_later(
            self.connect_timeout, self._connect_deadline, eio_sid)

    def _disarm_connect_deadline(self, eio_sid: str) -> None:
        # (its timer, its arguments and the entry here would stay for connect_timeout)
        deadline = self._connect_deadlines.pop(eio_sid, None)
        if deadline is not None:
            deadline.cancel()

    def _connect_deadline(self, eio_sid: str) -> None:
        self._connect_deadlines.pop(eio_sid, None)
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        if eio_sid in self.eio.sockets and (sid is None or not self.manager.is_connected(sid, "/")):
            self.start_background_task(
                self._close, eio_sid, f"no accepted CONNECT within {self.connect_timeout:g} s")

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        self._disarm_connect_deadline(eio_sid)
        self._refused.pop(eio_sid, None)
        # python-socketio forgets a half-received binary packet only for a connected
        # namespace; a refused or pending one would keep it after the socket is gone
        self._binary_packet.pop(eio_sid, None)
        self._skipping.discard(eio_sid)
        self.eio.end_pings(eio_sid)
        await self._pipelined_ended(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        if eio_sid not in self.environ:  # the Engine.IO session is gone or going
            return
        try:
            await super()._handle_connect(eio_sid, namespace, data)
        except BaseException:
            namespace = namespace or "/"
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is not None and self.manager.is_pre_connected(sid, namespace):
                await self.manager.disconnect(sid, namespace, ignore_queue=True)
            raise

    def _engineio_server_class(self) -> type:
        return EngineIOServer
