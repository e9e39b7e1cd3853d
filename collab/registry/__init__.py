"""Registry backends, picked by URL scheme."""

from __future__ import annotations

from .base import Registry

#: one Redis, or a Redis Cluster by its seed nodes (collab.redisconn.RedisTarget)
REDIS_SCHEMES = ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")


def open_registry(url: str, node_id: str) -> Registry:
    """An unopened registry for ``url``; the caller awaits ``open()``."""
    if url.startswith("memory://"):
        from .memory import MemoryRegistry

        return MemoryRegistry(node_id)
    if url.lower().startswith(REDIS_SCHEMES):
        from .redis import RedisRegistry

        return RedisRegistry(url, node_id)
    from ..urls import redacted

    raise ValueError(f"unsupported registry URL {redacted(url)!r}; use memory://, "
                     "redis://, rediss://, redis+cluster:// or rediss+cluster://")


__all__ = ["Registry", "open_registry"]
