"""Logging set-up shared by the server's modules."""

from __future__ import annotations

import logging

#: python-engineio and python-socketio log every packet at INFO, payloads (tokens) included,
#: and each refused connection at WARNING: only their errors are worth a line.
LIBRARY_LEVEL = logging.ERROR


def library_logger(name: str) -> logging.Logger:
    """The logger to give python-socketio and python-engineio instead of ``False``.

    Given ``False`` they add a stderr handler of their own to their logger, so each of
    their lines came out twice: raw, and again through the root handler.
    """
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(LIBRARY_LEVEL)
    return logger
