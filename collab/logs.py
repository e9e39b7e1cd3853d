"""Log lines on stderr: UTC ISO-8601 timestamps, as text or as one JSON object per line,
and never a credential.

Clients may put a token in a URL (the y-websocket provider must: ``/yjs/doc?token=``),
and Tornado prints a request's URL in its access line and in its warnings and errors
about a request. So the access line is ours (:func:`log_request`, the Application's
``log_function``), and :class:`Redacted` masks every credential query parameter in
what Tornado's loggers, the Socket.IO libraries' and the stderr handler write.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

from tornado.log import access_log

from .urls import redacted_target, redacted_text

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the JSON fields, in this order: time, level, logger, message (then extras, exc_info)
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
JSON_RENAME = {"asctime": "time", "levelname": "level", "name": "logger"}

#: python-engineio and python-socketio log every packet at INFO, payloads (tokens) included,
#: and each refused connection at WARNING: only their errors are worth a line.
LIBRARY_LEVEL = logging.ERROR

#: at most one warning of a kind per this many seconds (ThrottledWarning's default)
LOG_INTERVAL = 60.0


def configure_logging(level: str, fmt: str = "text") -> None:
    """One stderr handler on the root logger, replacing any there; ``fmt`` is "text" or "json".

    Raises ValueError for another ``fmt``, before changing anything.
    """
    if fmt not in FORMATS:
        raise ValueError(f"{fmt!r} is not a log format; use " + " or ".join(FORMATS))
    formatter = _json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_in_utc(formatter))
    handler.addFilter(REDACTED)  # every logger's lines, ours and the libraries'
    redact_libraries()
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if level != "DEBUG":
        # one line per HTTP request would be one per long-poll and per probe
        logging.getLogger("tornado.access").setLevel(logging.WARNING)


def library_logger(name: str) -> logging.Logger:
    """The logger to give python-socketio and python-engineio instead of ``False``.

    Given ``False`` they add a stderr handler of their own to their logger, so each of
    their lines came out twice: raw, and again through the root handler.
    """
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(LIBRARY_LEVEL)
    logger.addFilter(_client_mistakes)  # (once: addFilter skips a filter already there)
    logger.addFilter(REDACTED)
    return logger


class Redacted(logging.Filter):
    """Masks credential query parameters (``token=***``) in a record's message and its
    exception text; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redacted_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            masked = redacted_text(record.exc_text)
            if masked != record.exc_text:
                # formatters that format exc_info afresh (the JSON one) fall back on
                # exc_text without it
                record.exc_text, record.exc_info = masked, None
        return True


REDACTED = Redacted()
#: the loggers Tornado writes to: requests' URLs appear in all three
TORNADO_LOGGERS = ("tornado.access", "tornado.application", "tornado.general")


def redact_libraries() -> None:
    """Have Tornado's loggers mask credentials whatever handler gets their records
    (also when the embedding application set up logging, not configure_logging)."""
    for name in TORNADO_LOGGERS:
        logging.getLogger(name).addFilter(REDACTED)  # (once: addFilter skips repeats)


def log_request(handler: Any) -> None:
    """Tornado's access line (the ``log_function`` setting), credentials masked: the
    same ``200 GET /path?query (ip) 1.23ms`` at the same levels, INFO below 400,
    WARNING below 500, ERROR above."""
    status = handler.get_status()
    if status < 400:
        write = access_log.info
    elif status < 500:
        write = access_log.warning
    else:
        write = access_log.error
    request = handler.request
    write("%d %s %s (%s) %.2fms", status, request.method, redacted_target(request.uri or ""),
          request.remote_ip, 1000.0 * request.request_time())


def _client_mistakes(record: logging.LogRecord) -> bool:
    """Drop python-engineio's "logged once" lines about a client's bad request.

    It logs the first request for an unknown or closed session, or on the wrong
    transport, at ERROR with the session id in it: a client's mistake (or a
    probe for session ids), not the server's, already answered 400 and counted
    in the access log.
    """
    return "further occurrences of this error will be logged" not in record.getMessage()


def _in_utc(formatter: logging.Formatter) -> logging.Formatter:
    """``%(asctime)s`` as ``2026-12-02T03:04:05.678Z``, whatever the machine's time zone.

    These three attributes are the ones logging.Formatter documents for this.
    """
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def _json_formatter() -> logging.Formatter:
    # imported when asked for, like the store and registry backends
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAME)


class ThrottledWarning:
    """A warning at most once per interval; the next one says how many were held back.

    For what a client or the load can repeat without end (a refused connection, a
    closed one): the operator sees that it happens and how often, not every time.
    """

    def __init__(self, interval: float = LOG_INTERVAL,
                 logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self.logger = logger or logging.getLogger("collab")
        self._last = -math.inf
        self._held = 0

    def __call__(self, message: str, *args: Any) -> bool:
        """Log unless one was logged within the interval; return whether it was."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self._held += 1
            return False
        if self._held:
            message += " (%d more since the last such warning)"
            args = (*args, self._held)
        self._last, self._held = now, 0
        self.logger.warning(message, *args)
        return True
