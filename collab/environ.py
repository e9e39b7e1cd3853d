"""The WSGI-style environ Engine.IO builds for each request, built leaner.

python-engineio's Tornado driver (``engineio.async_drivers.tornado.translate_request``)
defines its ``wsgi.input`` class inside the function, so each request creates
a new class, and the session's environ keeps that class alive for the life of
the connection: 2.5 KiB of the 41 KiB an idle WebSocket connection held
(bench/memory.py), and a type creation in every handshake (two, with our
origin check). :func:`translate_request` builds the same keys with one
module-level class, and spells the ``HTTP_*`` key of a header name once.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlsplit

#: header name as Tornado gives it -> its environ key ("User-Agent" -> "HTTP_USER_AGENT");
#: bounded, since header names are the client's
_KEYS: dict[str, str] = {"Content-Type": "CONTENT_TYPE", "Content-Length": "CONTENT_LENGTH"}
_MAX_KEYS = 512


def _key(name: str) -> str:
    key = _KEYS.get(name)
    if key is None:
        upper = name.upper()
        if upper in ("CONTENT-TYPE", "CONTENT-LENGTH"):
            key = upper.replace("-", "_")
        else:
            key = "HTTP_" + upper.replace("-", "_")
        if len(_KEYS) < _MAX_KEYS:
            _KEYS[name] = key
    return key


class AwaitablePayload:
    """A request body as Engine.IO reads it: ``await read(length)``."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes | None) -> None:
        self.payload = payload or b""

    async def read(self, length: int | None = None) -> bytes:
        if length is None:
            r, self.payload = self.payload, b""
        else:
            r, self.payload = self.payload[:length], self.payload[length:]
        return r


#: what is the same in every environ (copied into each: a session may be changed)
_CONSTANT = {
    "wsgi.errors": sys.stderr,
    "wsgi.version": (1, 0),
    "wsgi.async": True,
    "wsgi.multithread": False,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
    "SERVER_SOFTWARE": "aiohttp",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "0",
    "SERVER_NAME": "aiohttp",
    "SERVER_PORT": "0",
    "SCRIPT_NAME": "",
}


def translate_request(handler: Any) -> dict[str, Any]:
    """The environ of ``handler``'s request: the keys and values of Engine.IO's own."""
    request = handler.request
    path = request.path
    query = request.query or ""
    environ = dict(_CONSTANT)
    environ["wsgi.input"] = AwaitablePayload(request.body)
    environ["REQUEST_METHOD"] = request.method
    environ["QUERY_STRING"] = query
    environ["RAW_URI"] = f"{path}?{query}" if query else path
    environ["SERVER_PROTOCOL"] = "HTTP/%s" % request.version  # noqa: UP031 - as Engine.IO's
    environ["tornado.handler"] = handler
    for name, value in request.headers.items():
        environ[_key(name)] = value
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    environ["PATH_INFO"] = urlsplit(path).path
    return environ
