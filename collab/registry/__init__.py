"""Registry backends, picked by URL scheme."""

from __future__ import annotations

from .base import Registry


def open_registry(url: str, node_id: str) -> Registry:
    """An unopened registry for ``url``; the caller awaits ``open()``."""
    if url.startswith("memory://"):
        from .memory import MemoryRegistry

        return MemoryRegistry(node_id)
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisRegistry

        return RedisRegistry(url, node_id)
    raise ValueError(f"unsupported registry URL {url!r}; use memory:// or redis://")


__all__ = ["Registry", "open_registry"]
