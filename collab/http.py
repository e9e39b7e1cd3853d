"""HTTP endpoints served beside Socket.IO on the same port."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import TYPE_CHECKING

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST
from tornado.log import access_log

from .urls import redacted_target, scrubbed

if TYPE_CHECKING:
    from .app import CollabApp

READY_TIMEOUT = 3.0
#: how much of a backend's error message goes into the log line
REASON_CHARS = 200

log = logging.getLogger("collab")


class Readiness:
    """What ``/readyz`` answered last, so that a change is logged once and not every probe
    (a balancer probes every few seconds for as long as an outage lasts)."""

    def __init__(self) -> None:
        self.failed: tuple[str, ...] = ()

    def update(self, failures: dict[str, str]) -> None:
        """``failures``: check name -> why it failed; empty when ready."""
        failed = tuple(failures)
        if failed == self.failed:
            return
        self.failed = failed
        if failed:
            log.warning("not ready: %s",
                        "; ".join(f"{name} {why}" for name, why in failures.items()))
        else:
            log.info("ready again")


def _reason(display_url: str, exc: BaseException, url: str = "") -> str:
    """One line: where, what, and the backend's own error that caused it, shortened, with
    any credential of ``url`` (the configured one) that a driver's message repeats masked."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"{display_url}: no answer within {READY_TIMEOUT:g} s"
    text = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:
        text += f" ({type(exc.__cause__).__name__}: {exc.__cause__})"
    text = " ".join(text.split())
    if url:
        text = scrubbed(text, url)
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 3] + "..."
    return f"{display_url}: {text}"


class HealthzHandler(tornado.web.RequestHandler):
    """200 while the process serves: a liveness probe, no backend involved."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(b'{"status":"ok"}')


class ReadyzHandler(tornado.web.RequestHandler):
    """200 when the store and the registry answer; 503 naming which did not."""

    def initialize(self, app: CollabApp, readiness: Readiness) -> None:
        self.app = app
        self.readiness = readiness

    async def get(self) -> None:
        targets = {"store": self.app.raw_store, "registry": self.app.registry}
        results = await asyncio.gather(
            *(asyncio.wait_for(t.ping(), READY_TIMEOUT) for t in targets.values()),
            return_exceptions=True,
        )
        urls = {"store": self.app.settings.storage_url,
                "registry": self.app.settings.registry_url}
        failures = {
            name: _reason(targets[name].display_url, result, urls[name])
            for name, result in zip(targets, results, strict=True)
            if isinstance(result, BaseException)
        }
        self.readiness.update(failures)
        failed = list(failures)
        self.set_status(503 if failed else 200)
        self.set_header("Content-Type", "application/json")
        body = {"status": "unavailable" if failed else "ok", "failed": failed}
        self.write(json.dumps(body))

    def _log(self) -> None:
        # Tornado logs every 5xx at ERROR: a 503 here is an answer, not a failure of this
        # request, and Readiness has logged the change of state once already
        access_log.info("%d %s %s (%s) %.2fms", self.get_status(), self.request.method,
                        redacted_target(self.request.uri or ""), self.request.remote_ip,
                        1000.0 * self.request.request_time())


class MetricsHandler(tornado.web.RequestHandler):
    """Prometheus text; with a ``token``, only for ``Authorization: Bearer <token>``."""

    def initialize(self, app: CollabApp, token: str = "") -> None:
        self.app = app
        self.token = token.encode()

    def get(self) -> None:
        if self.token and not self._authorized():
            # before any rendering: refusing must stay cheaper than answering
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Bearer realm="metrics"')
            return
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(self.app.metrics.render())

    def _authorized(self) -> bool:
        scheme, _, credentials = self.request.headers.get("Authorization", "").partition(" ")
        presented = credentials.strip().encode("latin-1")  # how Tornado decoded it
        return scheme.lower() == "bearer" and hmac.compare_digest(presented, self.token)

    def _log(self) -> None:
        # Tornado logs every 4xx as a warning; a flood of refused scrapes would be a
        # flood of log lines (the token itself is never logged: headers are not)
        if self.get_status() != 401:
            super()._log()
