"""Errors the client raises: the server's ``SocketError`` plus a few local codes.

Codes are plain strings so that callers switch on them the same way in Python
and in JavaScript (``err.code === "VERSION_CONFLICT"``). The server's codes are
listed in the protocol; the ones below never come from the server.
"""

from __future__ import annotations

from typing import Any

#: ``emit`` got no acknowledgement in time (the event may or may not have run).
TIMEOUT = "TIMEOUT"
#: not connected, or the connection dropped before the acknowledgement came.
DISCONNECTED = "DISCONNECTED"
#: the server could not be reached at all (no ``connect_error`` data).
CONNECTION_FAILED = "CONNECTION_FAILED"
#: reconnection gave up; sent to ``error`` handlers, never raised.
MAX_RECONNECT_EXCEEDED = "MAX_RECONNECT_EXCEEDED"
#: the token provider raised or returned something other than a non-empty ``str``.
TOKEN_PROVIDER_FAILED = "TOKEN_PROVIDER_FAILED"


class CollabError(Exception):
    """A failed call: ``code`` (str), human readable ``message``, optional ``details``."""

    def __init__(self, code: str, message: str = "", details: Any = None) -> None:
        super().__init__(message or code)
        self.code = str(code)
        self.message = message
        self.details = details

    @classmethod
    def from_dict(cls, error: Any) -> CollabError:
        """Build from a wire ``SocketError``; tolerant of a malformed one."""
        if not isinstance(error, dict):
            return cls("INTERNAL_ERROR", "Malformed error from the server", {"error": error})
        return cls(str(error.get("code") or "INTERNAL_ERROR"), str(error.get("message") or ""),
                   error.get("details"))

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class AckTimeout(CollabError, TimeoutError):
    """No acknowledgement in time: code ``TIMEOUT``, and an ``asyncio.TimeoutError`` too
    (the builtin ``TimeoutError`` since Python 3.11)."""

    def __init__(self, message: str = "No acknowledgement in time", details: Any = None) -> None:
        CollabError.__init__(self, TIMEOUT, message, details)


class TokenProviderError(CollabError):
    """The token provider failed: code ``TOKEN_PROVIDER_FAILED``. What it raised is the
    ``__cause__``; the message names only its type, since its text may hold a secret."""

    def __init__(self, message: str, details: Any = None) -> None:
        CollabError.__init__(self, TOKEN_PROVIDER_FAILED, message, details)
