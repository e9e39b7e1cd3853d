"""Redis connections, as every part of collab that talks to Redis opens them.

The registry (presence, node liveness) and the broadcast layer (pub/sub) each
open their own clients, with the same options: short timeouts, so that an
outage answers ``UNAVAILABLE`` within seconds rather than hanging, and one
quick retry for a pooled connection that died with a restarted Redis.

A URL names either one Redis (``redis://``, ``rediss://``) or a Redis Cluster
by some of its nodes (``redis+cluster://h1:7000,h2:7001``, ``rediss+cluster://``
for TLS); :class:`RedisTarget` is that URL parsed once, and :func:`open_client`
opens the matching client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .urls import redacted, scrubbed

#: an outage answers UNAVAILABLE after about this long, not after minutes
SOCKET_TIMEOUT = 2.0

SINGLE_SCHEMES = ("redis", "rediss")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379


class ClusterUnreachable(RedisConnectionError):
    """The cluster's slot map could not be had: no seed node answered, not every
    slot has a master, or the nodes disagree (a failover or resharding under way).

    redis-py says so with a bare ``RedisClusterException``, which it also raises
    for mistakes of ours (keys of one command in two slots); this one is an outage.
    """


#: errors that mean "Redis cannot be reached right now", never a bug of ours
OUTAGES: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # includes BusyLoadingError and ClusterUnreachable
    RedisTimeoutError,
    ReadOnlyError,  # a replica answering during a failover
    TryAgainError,  # a cluster moving a slot that a multi-key command needs
    ClusterDownError,  # CLUSTERDOWN, and MasterDownError: a slot without a master
    SlotNotCoveredError,  # the client knows no node serving the slot
    OSError,
    asyncio.TimeoutError,
)


def connection_options() -> dict[str, Any]:
    """Client options for every Redis connection collab opens: fail fast, retry once.

    Both ``redis.asyncio.Redis`` and ``RedisCluster`` take them. A cluster client
    reads only the retry's count, and retries (after re-reading the slot map)
    timeouts and ``CLUSTERDOWN`` as well: bound each cluster call with
    ``asyncio.wait_for(..., SOCKET_TIMEOUT)`` to keep a hung node from costing more.
    """
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "socket_keepalive": True,
        # One retry replaces a pooled connection that died with a restarted Redis
        # (that fails at once). A timeout is not retried: a Redis that hangs would
        # cost every call twice the timeout.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1,
                       supported_errors=(RedisConnectionError,)),
    }


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """A Redis URL, parsed and checked once: one Redis, or a cluster by its seed nodes.

    ``url`` holds the credentials and is for connecting only; logs and errors
    show :attr:`display`. Raises ``ValueError`` (never quoting a credential)
    from :meth:`parse` for what redis-py would refuse or misread later.
    """

    url: str = dataclasses.field(repr=False)
    #: a Redis Cluster (``redis+cluster://``), reached through ``seeds``
    cluster: bool
    #: TLS (``rediss://``, ``rediss+cluster://``)
    tls: bool
    #: ``(host, port)``: the one Redis, or the nodes a cluster client asks for the slot map
    seeds: tuple[tuple[str, int], ...]
    #: the URL with its password and credential parameters masked
    display: str

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """``redis://[[user]:password@]host[:port][/db][?option=value...]``, ``rediss://...``,
        ``redis+cluster://[[user]:password@]host:port[,host:port...][/][?option=value...]``
        or ``rediss+cluster://...``."""
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in SINGLE_SCHEMES + CLUSTER_SCHEMES:
            raise ValueError("should start with redis://, rediss://, redis+cluster:// "
                             "or rediss+cluster://")
        cluster = scheme in CLUSTER_SCHEMES
        tls = scheme.startswith("rediss")
        netloc, path, _ = _split(rest)
        hosts = netloc.rpartition("@")[2]
        if cluster:
            seeds = tuple(_seed(part) for part in hosts.split(","))
            if path not in ("", "/", "/0"):
                raise ValueError("a cluster has database 0 only: nothing or /0 after the hosts")
        else:
            kwargs = _parse_url(url, url)
            # redis-py ignores a database that is not a number; we would use database 0 unasked
            if path.strip("/") and not path.strip("/").isdigit():
                raise ValueError("the database after the host should be a number: "
                                 "redis://host:6379/0")
            seeds = ((kwargs.get("host") or "localhost", kwargs.get("port") or DEFAULT_PORT),)
        target = cls(url=url, cluster=cluster, tls=tls, seeds=seeds, display=redacted(url))
        if cluster:
            _cluster_options(target)  # credentials and options as redis-py reads them
        return target

    def __str__(self) -> str:
        return self.display


def open_client(target: RedisTarget, **options: Any) -> aioredis.Redis | RedisCluster:
    """An unconnected ``redis.asyncio.Redis`` for one Redis, or ``RedisCluster`` (seeded
    with ``target.seeds``) for a cluster, with :func:`connection_options` under
    ``options`` (``decode_responses=True``...). Options in the URL's query win, as in
    ``redis.asyncio.from_url``. Close it with ``await client.aclose()``.

    A cluster client reads the slot map on its first command; that it could not
    (no seed answers, slots without a master) is :class:`ClusterUnreachable`, one of
    :data:`OUTAGES`.
    """
    merged = {**connection_options(), **options}
    if not target.cluster:
        return aioredis.from_url(target.url, **merged)
    merged.update(_cluster_options(target))
    return _Cluster(startup_nodes=[ClusterNode(host, port) for host, port in target.seeds],
                    **merged)


# -- helpers -------------------------------------------------------------------


class _Cluster(RedisCluster):
    """``RedisCluster`` whose "cannot read the slot map" is an outage (see
    :class:`ClusterUnreachable`), not a bare ``RedisClusterException``."""

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except SlotNotCoveredError:  # already among OUTAGES
            raise
        except RedisClusterException as exc:
            raise ClusterUnreachable(str(exc)) from exc


def _split(rest: str) -> tuple[str, str, str]:
    """``netloc, path, query`` of what follows ``scheme://`` (the fragment dropped)."""
    rest = rest.partition("#")[0]
    match = re.match(r"([^/?]*)([^?]*)\??(.*)", rest, re.S)
    assert match is not None  # every string matches
    return match.group(1), match.group(2), match.group(3)


def _seed(part: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; the port defaults to 6379) of one seed node."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?", part.strip())
    if not match:
        raise ValueError("should list the seed nodes as host:port,host:port "
                         "after redis+cluster://")
    host, port = match.group(1).strip("[]"), int(match.group(2) or DEFAULT_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} of seed {host} should be between 1 and 65535")
    return host, port


def _hostport(seed: tuple[str, int]) -> str:
    host, port = seed
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_url(url: str, shown: str) -> dict[str, Any]:
    """redis-py's reading of ``url`` (what ``from_url`` would connect with); its
    complaints about it with the credentials of ``shown`` masked."""
    from redis.asyncio.connection import parse_url

    try:
        return dict(parse_url(url))
    except (ValueError, TypeError) as exc:
        message = scrubbed(scrubbed(str(exc), url), shown).rstrip(".")
        raise ValueError(message) from None


#: what RedisCluster takes as keyword arguments (an unknown one is a TypeError at start)
_CLUSTER_PARAMETERS = frozenset(inspect.signature(RedisCluster.__init__).parameters) - {"self"}


def _cluster_options(target: RedisTarget) -> dict[str, Any]:
    """``RedisCluster`` keyword arguments from a cluster URL's credentials and query,
    as redis-py reads them from a single Redis URL to the first seed."""
    netloc, _, query = _split(target.url.partition("://")[2])
    userinfo, at, _ = netloc.rpartition("@")
    scheme = "rediss" if target.tls else "redis"
    options = _parse_url(f"{scheme}://{userinfo}{at}{_hostport(target.seeds[0])}/?{query}",
                         target.url)
    for name in ("host", "port"):
        options.pop(name, None)
    if options.pop("db", 0):
        raise ValueError("a cluster has database 0 only")
    if options.pop("connection_class", None) is not None:  # SSLConnection, for rediss
        options["ssl"] = True
    unknown = sorted(set(options) - _CLUSTER_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for a Redis Cluster")
    return options
