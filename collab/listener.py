"""Accepting TCP connections: caps in all and per address, and no busy loop without descriptors.

Tornado's accept loop (``tornado.netutil.add_accept_handler``) lets every
error but EAGAIN and ECONNABORTED escape. Out of file descriptors (EMFILE),
the listening socket stays readable, so the event loop calls it again at
once, forever, logging a traceback each time, and nothing else gets a turn.
:class:`Listener` takes its place: on an accept error it stops watching the
socket for a short while and says so once; a connection past a cap is closed
before anything is read from it. Counting happens here, at the TCP level, so
a client cannot hide behind headers, and a slot is given back when the
socket closes, whatever protocol it ended up speaking.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import tornado.ioloop
import tornado.iostream
import tornado.tcpserver

from .logs import ThrottledWarning
from .proxy import TrustedProxies, parse_address

try:
    import resource
except ImportError:  # pragma: no cover - not a Unix
    resource = None  # type: ignore[assignment]

log = logging.getLogger("collab")

#: connections accepted per wake-up before other callbacks get a turn (as Tornado)
ACCEPT_BATCH = 128
#: how long accepting stops after an error such as EMFILE: long enough not to spin,
#: short enough that /healthz answers soon after descriptors are free again
ACCEPT_PAUSE = 0.5
#: the same when that wake-up did accept some first: descriptors are coming free (the
#: backlog often holds connections their clients gave up on, closed as soon as read)
ACCEPT_RETRY = 0.05
#: descriptors kept for what is not a client connection: the store, Redis, log files
FD_RESERVE = 256

Release = Callable[[], None]


def peer_key(host: str) -> str:
    """What a per-address cap counts: an IPv4 address, or the /64 of an IPv6 address.

    A subscriber is given at least a /64 and may use any address in it.
    """
    ip = parse_address(host)
    if ip is None:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def connection_budget(wanted: int) -> int:
    """``wanted``, or fewer if the file descriptor limit would run out first.

    A cap above the limit would never refuse anything: EMFILE would come first,
    and then the store and Redis cannot open a socket either.
    """
    if resource is None:  # pragma: no cover
        return wanted
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - min(FD_RESERVE, soft // 4)))


class ConnectionLimits:
    """Open connections in all and per address; :meth:`admit` refuses past either cap.

    Connections from a trusted proxy count only in all: the proxy carries many
    clients, and limiting each of them is its job.
    """

    def __init__(
        self, max_total: int, max_per_ip: int, proxies: TrustedProxies | None = None
    ) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.proxies = proxies or TrustedProxies()
        self.total = 0
        #: only addresses with a connection open, so at most max_total entries
        self.per_ip: dict[str, int] = {}
        self._warn_total = ThrottledWarning()
        self._warn_per_ip = ThrottledWarning()

    def admit(self, host: str) -> Release | None:
        """Take a slot for a connection from ``host``: its release, or ``None`` if full."""
        if self.total >= self.max_total:
            self._warn_total(
                "max_connections (%d) reached: closing new connections", self.max_total
            )
            return None
        key = None if self.proxies.trusts(host) else peer_key(host)
        if key is not None:
            count = self.per_ip.get(key, 0)
            if count >= self.max_per_ip:
                self._warn_per_ip(
                    "max_connections_per_ip (%d) reached by %s: closing its new connections",
                    self.max_per_ip, key,
                )
                return None
            self.per_ip[key] = count + 1
        self.total += 1
        return lambda: self._release(key)

    def _release(self, key: str | None) -> None:
        self.total -= 1
        if key is not None:
            left = self.per_ip[key] - 1
            if left:
                self.per_ip[key] = left
            else:
                del self.per_ip[key]


class CountedStream(tornado.iostream.IOStream):
    """An IOStream that gives its connection's slot back when its socket is closed."""

    def __init__(self, sock: socket.socket, release: Release, **kwargs: Any) -> None:
        self._release: Release | None = release
        super().__init__(sock, **kwargs)

    def close_fd(self) -> None:
        # BaseIOStream.close calls this exactly once, for HTTP and WebSocket alike
        try:
            super().close_fd()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class Listener:
    """Accepts connections on listening sockets for ``server`` (instead of its add_sockets).

    The server sees a ``handle_stream`` call for each connection within the caps.
    """

    def __init__(self, server: tornado.tcpserver.TCPServer, limits: ConnectionLimits) -> None:
        self.server = server
        self.limits = limits
        self._io_loop = tornado.ioloop.IOLoop.current()
        self._sockets: list[socket.socket] = []
        self._resume_timers: dict[socket.socket, object] = {}
        self._starved_since: float | None = None
        self._starved_logged = False
        self._warn_accept = ThrottledWarning()

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets.append(sock)
            self._io_loop.add_handler(sock, self._on_readable, tornado.ioloop.IOLoop.READ)

    def stop(self) -> None:
        """Stop accepting and close the listening sockets; open connections stay."""
        for sock in self._sockets:
            timer = self._resume_timers.pop(sock, None)
            if timer is not None:
                self._io_loop.remove_timeout(timer)
            self._io_loop.remove_handler(sock)
            sock.close()
        self._sockets.clear()

    def _on_readable(self, sock: socket.socket, events: int) -> None:
        for accepted in range(ACCEPT_BATCH):
            if sock.fileno() == -1:
                return  # stopped
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return  # accepted everything that was waiting
            except ConnectionAbortedError:
                continue  # reset while still in the queue
            except OSError as exc:
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: trying again at once cannot help
                self._pause(sock, exc, ACCEPT_RETRY if accepted else ACCEPT_PAUSE)
                return
            if self._starved_since is not None:
                self._recovered()
            self._accepted(connection, address)

    def _accepted(self, connection: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else ""
        release = self.limits.admit(host)
        if release is None:
            connection.close()
            return
        try:
            stream = CountedStream(
                connection, release,
                max_buffer_size=self.server.max_buffer_size,
                read_chunk_size=self.server.read_chunk_size,
            )
        except BaseException:
            release()
            connection.close()
            raise
        try:
            self.server.handle_stream(stream, address)
        except Exception:  # noqa: BLE001 - as TCPServer: one bad connection, not the loop
            log.exception("error setting up a connection from %s", host)
            stream.close()

    def _pause(self, sock: socket.socket, exc: OSError, delay: float) -> None:
        self._io_loop.remove_handler(sock)
        self._resume_timers[sock] = self._io_loop.call_later(delay, self._resume, sock)
        if self._starved_since is None:
            self._starved_since = time.monotonic()
            self._starved_logged = self._warn_accept(
                "cannot accept connections (%s); trying again every %.1f s "
                "(%d connections open)", exc, ACCEPT_PAUSE, self.limits.total,
            )

    def _resume(self, sock: socket.socket) -> None:
        self._resume_timers.pop(sock, None)
        if sock.fileno() != -1:
            self._io_loop.add_handler(sock, self._on_readable, tornado.ioloop.IOLoop.READ)

    def _recovered(self) -> None:
        assert self._starved_since is not None
        if self._starved_logged:
            log.info("accepting connections again after %.1f s",
                     time.monotonic() - self._starved_since)
        self._starved_since = None
