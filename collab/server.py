"""Start and stop a whole server: store, registry, Socket.IO and HTTP on one port."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import socket
from typing import Any

import socketio
import tornado.httpserver
import tornado.netutil
import tornado.web

from . import transport
from .app import CollabApp
from .broadcast import bounded_handler, open_broadcaster
from .config import Settings
from .errors import CollabError
from .http import HealthzHandler, MetricsHandler, Readiness, ReadyzHandler
from .listener import ConnectionLimits, Listener, connection_budget
from .logs import log_request, redact_libraries
from .metrics import Metrics
from .proxy import TrustedProxies
from .registry import open_registry
from .store import open_store
from .urls import redacted, scrubbed
from .webapp import webapp_routes
from .yws import YjsHandler

log = logging.getLogger("collab")


class StartupError(Exception):
    """The node cannot start for a reason that is not a setting's value; the message names
    the address or backend and the setting that points at it (credentials masked)."""


def _bind(port: int, host: str, settings: Settings, names: tuple[str, str]) -> list[socket.socket]:
    try:
        return tornado.netutil.bind_sockets(port, host)
    except OSError as exc:  # in use, not ours to take, or a name that does not resolve
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        labels = " and ".join(settings.label(name) for name in names)
        raise StartupError(f"cannot listen on {where} ({labels}): "
                           f"{exc.strerror or exc}") from None


def _unreachable(what: str, url: str, setting: str, exc: BaseException) -> StartupError:
    """One line: which backend, at which URL (masked), named by which setting, and the
    driver's own reason, shortened (ours, Unavailable, says only "retry")."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = " ".join(str(cause).split())
    if not isinstance(cause, (CollabError, OSError)):
        text = f"{type(cause).__name__}: {text}"
    text = scrubbed(text, url)
    if len(text) > 200:
        text = text[:197] + "..."
    return StartupError(f"cannot open the {what} {redacted(url)} ({setting}): {text}")


#: connections open at once on a separate metrics_port: a scraper needs one or two
METRICS_MAX_CONNECTIONS = 64


def socket_handler(app: CollabApp) -> type:
    """python-socketio's Tornado handler, with our compression and origin policy."""
    guarded = transport.guarded_handler(
        socketio.get_tornado_handler(app.sio), app.sio.eio, app.settings.max_packet_bytes
    )
    base = bounded_handler(guarded, app.broadcaster, app.settings.max_send_buffer_bytes,
                           on_slow_consumer=app.metrics.slow_consumers_closed.inc)
    compression = app.settings.websocket_compression

    class SocketHandler(base):  # type: ignore[misc, valid-type]
        def get_compression_options(self) -> dict[str, Any] | None:
            return {} if compression else None

        def check_origin(self, origin: str) -> bool:
            # Refuse a foreign origin at the upgrade (403): Engine.IO's own check runs only
            # once the WebSocket is open and then leaves it hanging without an answer.
            # (origin_allowed reads the handler alone: no need to build a whole environ)
            return app.origin_allowed(origin, {"tornado.handler": self})

    return SocketHandler


def make_tornado_app(app: CollabApp) -> tornado.web.Application:
    redact_libraries()
    return tornado.web.Application(
        [
            (r"/socket.io/", socket_handler(app)),
            (r"/yjs/([^/]+)", YjsHandler, {"endpoint": app.yjs}),
            (r"/healthz", HealthzHandler),
            (r"/readyz", ReadyzHandler, {"app": app, "readiness": Readiness()}),
            *([] if app.settings.metrics_port else [make_metrics_route(app)]),
            *webapp_routes(),
        ],
        websocket_max_message_size=app.settings.max_packet_bytes,
        # the access line without credentials (a y-websocket URL carries the token)
        log_function=log_request,
    )


def make_metrics_route(app: CollabApp) -> tuple[str, type, dict[str, Any]]:
    return (r"/metrics", MetricsHandler, {"app": app, "token": app.settings.metrics_token})


@dataclasses.dataclass
class Endpoint:
    """One HTTP server and the listener that accepts its connections."""

    http: tornado.httpserver.HTTPServer
    listener: Listener
    port: int

    @classmethod
    def start(
        cls, application: tornado.web.Application, settings: Settings,
        sockets: list[socket.socket], limits: ConnectionLimits,
    ) -> Endpoint:
        # No xheaders: request.remote_ip stays the TCP peer, and forwarded headers
        # count only from a trusted proxy (collab/proxy.py).
        http = tornado.httpserver.HTTPServer(
            application,
            max_buffer_size=settings.max_packet_bytes + 64 * 1024,
            # Tornado's idle timeout is also its limit for receiving headers (1 h unset)
            idle_connection_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
        )
        listener = Listener(http, limits)
        listener.add_sockets(sockets)
        return cls(http, listener, sockets[0].getsockname()[1])


def _main_limits(settings: Settings, proxies: TrustedProxies) -> ConnectionLimits:
    budget = connection_budget(settings.max_connections)
    if budget < settings.max_connections:
        log.warning(
            "max_connections lowered from %d to %d: the file descriptor limit "
            "(ulimit -n) leaves no more", settings.max_connections, budget,
        )
    return ConnectionLimits(budget, settings.max_connections_per_ip, proxies)


def _store_options(settings: Settings) -> dict[str, Any]:
    if not settings.storage_url.startswith("mongodb"):
        return {}
    return {
        "server_selection_timeout_ms": settings.mongodb_server_selection_timeout_ms,
        "write_concern": settings.mongodb_write_concern or None,
        "read_preference": settings.mongodb_read_preference or None,
    }


class Server:
    """A running collab node; ``await Server.start(settings)`` then ``await stop()``."""

    def __init__(self, app: CollabApp, main: Endpoint, metrics: Endpoint | None = None) -> None:
        self.app = app
        self.http = main.http
        self.port = main.port
        #: /metrics on its own port (settings.metrics_port), else None
        self.metrics = metrics
        self._endpoints = [main] if metrics is None else [main, metrics]

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port if self.metrics is not None else None

    @classmethod
    async def start(cls, settings: Settings, sockets: list[socket.socket] | None = None) -> Server:
        store = open_store(settings.storage_url, **_store_options(settings))
        try:
            await store.open()
        except Exception as exc:  # a driver's own error too (bad credentials, a read-only disk)
            await store.close()
            raise _unreachable("store", settings.storage_url, settings.label("storage_url"),
                               exc) from None
        registry = open_registry(settings.registry_url, settings.node_id)
        try:
            await registry.open()
        except BaseException as exc:
            await store.close()
            if isinstance(exc, Exception):
                raise _unreachable("registry", settings.registry_url,
                                   settings.label("registry_url"), exc) from None
            raise
        metrics = Metrics()
        broadcaster = open_broadcaster(settings.registry_url, metrics,
                                       fast=settings.fast_broadcast,
                                       compression=settings.websocket_compression)
        app = CollabApp(settings, store, registry, broadcaster=broadcaster, metrics=metrics)
        await app.broadcaster.start()  # hear other nodes before the first client
        app.documents.start()
        metrics_sockets: list[socket.socket] = []
        if settings.metrics_port:
            metrics_sockets = _bind(
                settings.metrics_port, settings.metrics_host or settings.host, settings,
                ("metrics_host" if settings.metrics_host else "host", "metrics_port"),
            )
        if sockets is None:
            try:
                sockets = _bind(settings.port, settings.host, settings, ("host", "port"))
            except BaseException:
                for sock in metrics_sockets:
                    sock.close()
                raise
        main = Endpoint.start(
            make_tornado_app(app), settings, sockets, _main_limits(settings, app.proxies)
        )
        log.info(
            "collab serving on http://%s:%d (store %s, registry %s, node %s)",
            settings.host, main.port, store.display_url, registry.display_url, settings.node_id,
        )
        metrics = None
        if metrics_sockets:
            # its own small cap: a flood on the main port must not shut the scraper out
            limits = ConnectionLimits(METRICS_MAX_CONNECTIONS, METRICS_MAX_CONNECTIONS)
            metrics = Endpoint.start(
                tornado.web.Application([make_metrics_route(app)], log_function=log_request),
                settings,
                metrics_sockets, limits,
            )
            log.info("metrics on http://%s:%d/metrics",
                     settings.metrics_host or settings.host, metrics.port)
        return cls(app, main, metrics)

    async def stop(self) -> None:
        """Stop accepting, disconnect clients, then close the registry and the store."""
        for endpoint in self._endpoints:
            endpoint.listener.stop()
        await self.app.disconnect_all()
        if self.app.admin is not None:
            await self.app.admin.shutdown()
        await self.app.sio.shutdown()
        running = self.app.sio.pipelined_running()
        if running:  # (messages in the store: their commit and broadcast still go out)
            _, left = await asyncio.wait(running, timeout=self.app.settings.shutdown_timeout)
            if left:
                log.warning("%d chat messages were still being stored at shutdown", len(left))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(e.http.close_all_connections() for e in self._endpoints)),
                self.app.settings.shutdown_timeout,
            )
        except asyncio.TimeoutError:
            log.warning("some HTTP connections did not close in time")
        await self.app.registry.close()  # its goodbye (user:left) goes out through:
        await self.app.broadcaster.close()
        await self.app.documents.close()
        await self.app.raw_store.close()
        log.info("collab stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    server = await Server.start(settings)
    # What the start made (modules, settings, the app) lives as long as the process: out
    # of the collector's reach, a full collection walks only what connections made. In a
    # connect storm after 5,000 connections had come and gone, full collections over the
    # whole heap took half the CPU of each handshake (bench/README.md).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    await server.stop()
