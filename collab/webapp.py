"""The web app at ``/``: the page and its assets, as ``web/build.mjs`` built them.

The build lands in ``collab/static/`` (package data; ``pip install .`` builds it when Node
and npm are there, see setup.py). Without it the server runs all the same and ``/`` says
how to build the app.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import tornado.web
from tornado.log import access_log

from .urls import redacted_target

#: where web/build.mjs writes by default, and what the wheel ships
STATIC_DIR = Path(__file__).parent / "static"
#: the command that builds the app into STATIC_DIR from a source checkout
BUILD_COMMAND = "npm ci --prefix web && node web/build.mjs"
#: asset names carry a content hash (web/build.mjs), so a browser may keep one for good
ASSET_MAX_AGE = 365 * 24 * 3600

#: the page loads only its own scripts and styles and talks only to its own origin
#: (CodeMirror styles the editor, and y-codemirror.next the remote selections, with
#: inline style attributes: hence 'unsafe-inline' for styles alone)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>collab: web app not built</title></head>
<body>
<h1>The collab web app is not built</h1>
<p>The server is running: Socket.IO clients can connect, and <code>/healthz</code>,
<code>/readyz</code> and <code>/metrics</code> answer. The browser app was not built
into this installation (building it needs Node.js and npm).</p>
<p>From a source checkout, build it with</p>
<pre>{command}</pre>
<p>then reload this page, or reinstall with <code>pip install .</code> on a machine
with Node.js and npm.</p>
</body></html>
"""


def _security_headers(handler: tornado.web.RequestHandler) -> None:
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("Referrer-Policy", "no-referrer")


class PageHandler(tornado.web.RequestHandler):
    """``/``: the app's index.html, revalidated on every visit (ETag), so a new build
    reaches browsers at once; a short page saying how to build the app without one."""

    def initialize(self, root: Path) -> None:
        self.root = root

    def get(self) -> None:
        _security_headers(self)
        try:
            page = (self.root / "index.html").read_bytes()
        except FileNotFoundError:
            self.set_status(503)
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header("Cache-Control", "no-store")
            self.write(NOT_BUILT.format(command=html.escape(BUILD_COMMAND)))
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.write(page)  # Tornado adds the ETag and answers If-None-Match with 304

    def _log(self) -> None:
        # Tornado logs every 5xx at ERROR: a missing build is an answer, said once above
        if self.get_status() == 503:
            access_log.info("%d %s %s (%s) %.2fms", self.get_status(), self.request.method,
                            redacted_target(self.request.uri or ""), self.request.remote_ip,
                            1000.0 * self.request.request_time())
        else:
            super()._log()


class AssetHandler(tornado.web.StaticFileHandler):
    """``/assets/<name>``: content-hashed bundles, cached by browsers for a year."""

    def get_cache_time(self, path: str, modified: Any, mime_type: str) -> int:
        return ASSET_MAX_AGE

    def set_extra_headers(self, path: str) -> None:
        _security_headers(self)
        self.set_header("Cache-Control", f"public, max-age={ASSET_MAX_AGE}, immutable")


def webapp_routes(root: Path = STATIC_DIR) -> list[tuple[str, type, dict[str, Any]]]:
    """The routes that serve the app built into ``root``."""
    return [
        (r"/", PageHandler, {"root": root}),
        (r"/assets/(.+)", AssetHandler, {"path": str(root / "assets")}),
    ]
