"""Start and stop a whole server: store, registry, Socket.IO and HTTP on one port."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any

import socketio
import tornado.httpserver
import tornado.netutil
import tornado.web
from engineio.async_drivers.tornado import translate_request

from . import fanout
from .app import CollabApp
from .config import Settings
from .http import HealthzHandler, MetricsHandler, Readiness, ReadyzHandler
from .registry import open_registry
from .store import open_store

log = logging.getLogger("collab")


def socket_handler(app: CollabApp) -> type:
    """python-socketio's Tornado handler, with our compression and origin policy."""
    base = fanout.bounded_handler(
        socketio.get_tornado_handler(app.sio), app.sio.manager, app.settings.max_send_buffer_bytes
    )
    compression = app.settings.websocket_compression

    class SocketHandler(base):  # type: ignore[misc, valid-type]
        def get_compression_options(self) -> dict[str, Any] | None:
            return {} if compression else None

        def check_origin(self, origin: str) -> bool:
            # Refuse a foreign origin at the upgrade (403): Engine.IO's own check runs only
            # once the WebSocket is open and then leaves it hanging without an answer.
            return app.origin_allowed(origin, translate_request(self))

    return SocketHandler


def make_tornado_app(app: CollabApp) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/socket.io/", socket_handler(app)),
            (r"/healthz", HealthzHandler),
            (r"/readyz", ReadyzHandler, {"app": app, "readiness": Readiness()}),
            (r"/metrics", MetricsHandler, {"app": app}),
        ],
        websocket_max_message_size=app.settings.max_packet_bytes,
    )


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

    def __init__(self, app: CollabApp, http: tornado.httpserver.HTTPServer, port: int) -> None:
        self.app = app
        self.http = http
        self.port = port

    @classmethod
    async def start(cls, settings: Settings, sockets: list[socket.socket] | None = None) -> Server:
        store = open_store(settings.storage_url, **_store_options(settings))
        await store.open()
        registry = open_registry(settings.registry_url, settings.node_id)
        try:
            await registry.open()
        except BaseException:
            await store.close()
            raise
        manager = getattr(registry, "client_manager", lambda: None)()
        if settings.fast_broadcast:
            manager = fanout.fast_manager(manager, compression=settings.websocket_compression)
        app = CollabApp(settings, store, registry, client_manager=manager)
        if hasattr(manager, "start_listening"):
            await manager.start_listening()  # hear other nodes before the first client
        http = tornado.httpserver.HTTPServer(
            make_tornado_app(app),
            max_buffer_size=settings.max_packet_bytes + 64 * 1024,
            # No xheaders: request.remote_ip stays the TCP peer, and forwarded headers
            # count only from a trusted proxy (collab/proxy.py).
        )
        if sockets is None:
            sockets = tornado.netutil.bind_sockets(settings.port, settings.host)
        http.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        log.info(
            "collab serving on http://%s:%d (store %s, registry %s, node %s)",
            settings.host, port, store.display_url, registry.display_url, settings.node_id,
        )
        return cls(app, http, port)

    async def stop(self) -> None:
        """Stop accepting, disconnect clients, then close the registry and the store."""
        self.http.stop()
        await self.app.disconnect_all()
        await self.app.sio.shutdown()
        try:
            await asyncio.wait_for(
                self.http.close_all_connections(), self.app.settings.shutdown_timeout
            )
        except asyncio.TimeoutError:
            log.warning("some HTTP connections did not close in time")
        await self.app.registry.close()
        await self.app.raw_store.close()
        log.info("collab stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    server = await Server.start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    await server.stop()
