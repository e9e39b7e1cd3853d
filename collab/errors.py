"""Error codes of the wire protocol and the exceptions that carry them.

Handlers raise :class:`CollabError`; the dispatcher turns it into a failure
ack plus an ``error`` event. The set of codes is closed: clients switch on it.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(str, enum.Enum):
    UNAUTHORIZED = "UNAUTHORIZED"
    INVALID_INPUT = "INVALID_INPUT"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    VERSION_CONFLICT = "VERSION_CONFLICT"
    RATE_LIMITED = "RATE_LIMITED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class CollabError(Exception):
    """An error that reaches the client as ``{code, message, details?}``."""

    def __init__(self, code: ErrorCode, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"CollabError({self.code.value}, {self.message!r})"


class Unauthorized(CollabError):
    def __init__(self, message: str = "Authentication required") -> None:
        super().__init__(ErrorCode.UNAUTHORIZED, message)


class InvalidInput(CollabError):
    def __init__(self, message: str = "Invalid input", details: Any = None) -> None:
        super().__init__(ErrorCode.INVALID_INPUT, message, details)


class PermissionDenied(CollabError):
    def __init__(self, message: str = "Permission denied") -> None:
        super().__init__(ErrorCode.PERMISSION_DENIED, message)


class NotFound(CollabError):
    def __init__(self, message: str = "Not found") -> None:
        super().__init__(ErrorCode.NOT_FOUND, message)


class AlreadyExists(CollabError):
    def __init__(self, message: str = "Already exists") -> None:
        super().__init__(ErrorCode.ALREADY_EXISTS, message)


class VersionConflict(CollabError):
    """Raised by stores when a compare-and-set on a document's version fails."""

    def __init__(self, current: dict[str, Any]) -> None:
        super().__init__(
            ErrorCode.VERSION_CONFLICT,
            f"Document is at version {current['version']}",
            {"current_version": current["version"], "document": current},
        )
        self.current = current


class RateLimited(CollabError):
    def __init__(self, retry_after_ms: int, message: str = "Too many events; slow down") -> None:
        super().__init__(ErrorCode.RATE_LIMITED, message, {"retry_after_ms": retry_after_ms})


class TooManyConnections(CollabError):
    """A user already holds as many connections on this node as allowed.

    ``RATE_LIMITED``, the code of a client that asks for too much too fast: retry
    later, after closing a connection. ``retry_after_ms`` is there because clients
    back off by it; no timer frees a slot, so it is a pace, not a promise.
    """

    RETRY_AFTER_MS = 5000

    def __init__(self, limit: int) -> None:
        super().__init__(
            ErrorCode.RATE_LIMITED,
            f"Too many connections for this user (at most {limit} on this server)",
            {"retry_after_ms": self.RETRY_AFTER_MS, "limit": limit},
        )


class PayloadTooLarge(CollabError):
    def __init__(self, what: str, limit: int) -> None:
        super().__init__(
            ErrorCode.PAYLOAD_TOO_LARGE, f"{what} exceeds the limit of {limit}", {"limit": limit}
        )


class Unavailable(CollabError):
    """A backend could not be reached; nothing was changed and a retry is safe."""

    def __init__(self, message: str = "Service temporarily unavailable; retry") -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message)
