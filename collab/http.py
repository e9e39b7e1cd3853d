"""HTTP endpoints served beside Socket.IO on the same port."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .app import CollabApp

READY_TIMEOUT = 3.0


class HealthzHandler(tornado.web.RequestHandler):
    """200 while the process serves: a liveness probe, no backend involved."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(b'{"status":"ok"}')


class ReadyzHandler(tornado.web.RequestHandler):
    """200 when the store and the registry answer; 503 naming which did not."""

    def initialize(self, app: CollabApp) -> None:
        self.app = app

    async def get(self) -> None:
        checks = {"store": self.app.raw_store.ping(), "registry": self.app.registry.ping()}
        results = await asyncio.gather(
            *(asyncio.wait_for(c, READY_TIMEOUT) for c in checks.values()),
            return_exceptions=True,
        )
        failed = [n for n, r in zip(checks, results, strict=True) if isinstance(r, BaseException)]
        self.set_status(503 if failed else 200)
        self.set_header("Content-Type", "application/json")
        body = {"status": "unavailable" if failed else "ok", "failed": failed}
        self.write(json.dumps(body))


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, app: CollabApp) -> None:
        self.app = app

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(self.app.metrics.render())
