"""Storage backends, chosen by the scheme of the store URL."""

from __future__ import annotations

from typing import Any

from collab.store.base import Store

__all__ = ["Store", "open_store"]

SUPPORTED_SCHEMES = ("sqlite", "mongodb", "mongodb+srv")


def open_store(url: str, **options: Any) -> Store:
    """Build the backend for ``url``; the caller awaits ``.open()`` on it.

    Backends are imported lazily so a deployment only needs the driver it uses.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        from collab.store.sqlite import SqliteStore

        return SqliteStore(url, **options)
    if scheme in ("mongodb", "mongodb+srv"):
        from collab.store.mongodb import MongoStore

        return MongoStore(url, **options)
    # Only the scheme is named: the rest of the URL may hold a password.
    raise ValueError(
        f"Unsupported store URL scheme {scheme!r}; supported: {', '.join(SUPPORTED_SCHEMES)}"
    )
