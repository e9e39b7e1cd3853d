"""Engine.IO's Tornado handler, with the request checks it lacks.

python-engineio trusts what reaches its handler in ways a server on the open
internet cannot: a WebSocket it refuses is left open (it cannot answer one
once Tornado has sent 101), and a polling POST over its size limit is
answered only after a poll that may never come (its disconnect waits for the
client to collect CLOSE), holding the request and its body meanwhile, and a
frame that is not Engine.IO at all raises out of its reader with a traceback
(a POST body's, after which it waits for that poll too).
:func:`guarded_handler` checks those at the Tornado level, before Engine.IO
sees them, and :func:`close_session` ends a session without waiting on its
client.

python-engineio also refuses, by default, a POST of more than 16 packets, while
socket.io-client bounds a POST only by the ``maxPayload`` bytes the handshake
announced: it sends everything buffered while the previous POST was out. A
binary event is one packet per attachment more, so a live editor sending eight
Yjs updates in one round trip was disconnected. :data:`MAX_POST_PACKETS` is the
count taken instead.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from typing import Any

import engineio
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio.async_drivers import tornado as eio_tornado

from .queues import LeanQueue

log = logging.getLogger("collab.transport")

#: Engine.IO packets a client may POST: what ``AsyncSocket.receive`` takes (it raises
#: for the others, and Engine.IO then closes the session the way that never ends)
CLIENT_PACKET_TYPES = frozenset(
    (eio_packet.CLOSE, eio_packet.PONG, eio_packet.MESSAGE, eio_packet.UPGRADE)
)
#: Engine.IO packets one polling POST may hold (python-engineio's
#: ``Payload.max_decode_packets``, 16 by default). A POST is decoded whole before any
#: of it runs, so some bound keeps the packet objects of one body few; this one is far
#: above what a client sends within its rate limit (a burst of 100 events, each one
#: packet and one per binary attachment), and a body still cannot pass ``max_body``.
MAX_POST_PACKETS = 1024
#: how a text WebSocket message Engine.IO can decode starts: a packet type digit. Binary
#: data travels as binary messages on a WebSocket, never as base64 text.
_WS_TEXT_TYPES = frozenset("0123456")


async def close_session(server: engineio.AsyncServer, sid: str) -> bool:
    """Close Engine.IO session ``sid`` at once and forget it; False if there was none.

    The disconnect handlers run and the client is sent CLOSE, but unlike
    ``AsyncServer.disconnect`` nothing waits for the client to collect it: the
    session's queue is ended, so a WebSocket's writer closes the WebSocket
    after writing CLOSE and a waiting poll returns.
    """
    sock = server.sockets.pop(sid, None)
    if sock is None:
        return False
    if not sock.closed and not sock.closing:
        await sock.close(wait=False, abort=False, reason=server.reason.TRANSPORT_ERROR)
    sock.queue.put_nowait(None)
    return True


def payload_problem(body: bytes) -> str | None:
    """Why Engine.IO could not take this polling POST body, or None if it can."""
    try:
        packets = eio_payload.Payload(encoded_payload=body.decode("utf-8")).packets
    except (ValueError, TypeError, IndexError, KeyError, binascii.Error):
        return "the body is not an Engine.IO payload"
    if any(pkt.packet_type not in CLIENT_PACKET_TYPES for pkt in packets):
        return "the body holds an Engine.IO packet a client may not send"
    return None


class EngineIOWebSocket(eio_tornado.WebSocket):
    """The Tornado driver's WebSocket, whose end leaves no garbage for the collector.

    When the socket closes, ``wait`` raises OSError and Engine.IO's reader breaks
    out of its loop. On its way the error's traceback takes in the frame of
    ``AsyncSocket._websocket_handler``, which holds the task that raised it, and
    that task holds the error: a cycle that keeps a whole closed connection
    (79 objects: its handler, stream, request, socket, queues, tasks) alive
    until a full collection. After 5,000 connections had closed, that one
    collection took 0.8 to 1.3 s of the event loop (measured in the connect
    storm that followed). The handler drops the traceback once Engine.IO is done
    with the socket (:meth:`GuardedHandler._serve`), so the connection is freed
    by reference counting as it ends.
    """

    async def wait(self) -> Any:
        msg = await self.tornado_handler.get_next_message()
        if not isinstance(msg, (bytes, str)):
            error = self.tornado_handler.closed_error = OSError()
            raise error
        return msg


def guarded_handler(base: type, server: engineio.AsyncServer, max_body: int) -> type:
    """``base`` (Engine.IO's Tornado handler for ``server``) with checks before Engine.IO.

    - A WebSocket is closed as soon as Engine.IO is done with it: when it
      refused the request (an unknown or already upgraded ``sid``, a bad
      version) that is at once, where Engine.IO itself would leave it open.
    - A WebSocket message that is not an Engine.IO packet closes that WebSocket.
    - A polling POST over ``max_body`` bytes is answered 413 at once, one that
      is not an Engine.IO payload 400; either way its session is closed.
    - A polling POST may hold up to :data:`MAX_POST_PACKETS` packets (set for every
      Engine.IO payload of the process: Engine.IO's POST path decodes by the same
      class).
    """
    eio_payload.Payload.max_decode_packets = MAX_POST_PACKETS

    #: polling session id -> the one WebSocket trying to upgrade it. Engine.IO takes two
    #: upgrades of one session at once (both probes answered, both writers on its queue)
    upgrading: dict[str, Any] = {}

    class GuardedHandler(base):  # type: ignore[misc, valid-type]
        _serving: asyncio.Task | None = None
        _claimed: str | None = None
        #: what EngineIOWebSocket.wait raised at the end (its traceback dropped after)
        closed_error: BaseException | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # the incoming messages, waiting for Engine.IO's reader: empty nearly always
            self.receive_queue = LeanQueue()

        async def open(self, *args: Any, **kwargs: Any) -> None:
            sid = self.get_query_argument("sid", None)
            if sid:
                if sid in upgrading:
                    log.warning("closing a second WebSocket upgrading one session, from %s",
                                self.request.remote_ip)
                    self.close(1008, "this session is being upgraded already")
                    return
                upgrading[sid] = self
                self._claimed = sid
            # instead of Engine.IO's open, which starts handle_request and forgets it;
            # Tornado reads no message until open returns, so run it as a task
            self._serving = asyncio.ensure_future(self._serve())

        def on_close(self) -> None:
            if self._claimed is not None and upgrading.get(self._claimed) is self:
                del upgrading[self._claimed]
            super().on_close()

        async def _serve(self) -> None:
            try:
                await server.handle_request(self)
            except Exception as exc:  # noqa: BLE001 - Engine.IO's reader gave up
                log.warning("WebSocket from %s failed: %s", self.request.remote_ip,
                            type(exc).__name__)
            finally:
                self.close()  # no-op when Engine.IO closed it already
                if self.closed_error is not None:  # (the cycle, see EngineIOWebSocket)
                    self.closed_error.__traceback__ = None
                    self.closed_error = None

        async def on_message(self, message: Any) -> None:
            if isinstance(message, str) and (not message or message[0] not in _WS_TEXT_TYPES):
                log.warning("closing a WebSocket from %s: not an Engine.IO packet",
                            self.request.remote_ip)
                self.close(1002, "not an Engine.IO packet")
                return
            await super().on_message(message)
            if isinstance(message, str) and message[0] == str(eio_packet.CLOSE):
                # Engine.IO closes the session but goes on reading the WebSocket until
                # the client hangs up or the ping times out (45 s): a client that asked
                # to close and stayed would keep its socket and our connection slot
                self.close()

        async def post(self, *args: Any, **kwargs: Any) -> None:
            body = self.request.body
            if len(body) > max_body:
                await self._refuse_post(413, "payload too large")
                return
            problem = payload_problem(body)
            if problem is not None:
                await self._refuse_post(400, problem)
                return
            sid = self.get_query_argument("sid", None)
            sock = server.sockets.get(sid) if sid else None
            if sock is not None and sock.closed:
                # Engine.IO's POST path looks such a session up outside its error
                # handling and raises (a 500 with a traceback); its GET path says 400
                server.sockets.pop(sid, None)
                self.set_status(400)
                self.finish()
                return
            await super().post(*args, **kwargs)

        async def _refuse_post(self, status: int, reason: str) -> None:
            # answer first: the client, and the memory its body holds, are let go at once
            self.set_status(status)
            self.finish()
            sid = self.get_query_argument("sid", None)
            sock = server.sockets.get(sid) if sid else None
            # only a session Engine.IO would take this POST for: one on WebSocket refuses
            # HTTP requests, and must not be closed by whoever learnt its id
            if sock is not None and sock.connected and not sock.upgraded:
                await close_session(server, sid)
                # INFO: Tornado's access log has a line for the 4xx already (one a request)
                log.info("closed a polling session from %s: %s", self.request.remote_ip,
                         reason)  # (never a session id: it is all a hijacker needs)

    return GuardedHandler
