"""Prometheus metrics, kept in a registry per server so tests can run several."""

from __future__ import annotations

import functools
import inspect
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from . import __version__
from .rooms import KINDS

# prometheus_client adds a ``<name>_created`` series (the creation time) to every counter
# and histogram: as many series again, which Prometheus' text format does not use. The
# switch is process-wide in the client's API (0.26 has none per registry) and read at
# scrape time; collab owns its process, so it is turned off once, here.
prometheus_client.disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

#: the room broadcasts the server sends: the only values of ``collab_broadcasts{event}``
BROADCAST_EVENTS = (
    "chat:message", "chat:typing", "documents:updated", "documents:yupdate",
    "documents:awareness", "user:joined", "user:left",
)
#: the kinds of pub/sub message between nodes (collab/broadcast/wire.py)
PUBSUB_KINDS = ("broadcast", "presence", "revocation")
#: the label of a broadcast event missing from BROADCAST_EVENTS (a bug, not client input)
OTHER = "other"


#: python-socketio's disconnect reasons (engineio ``Server.reason``) -> our label
DISCONNECT_REASONS = {
    "client disconnect": "client",
    "server disconnect": "server",
    "ping timeout": "ping_timeout",
    "transport close": "transport_close",
    "transport error": "transport_error",
}


def disconnect_label(reason: Any) -> str:
    """The ``collab_disconnects{reason}`` label of a disconnect reason: a closed set."""
    return DISCONNECT_REASONS.get(reason, OTHER) if isinstance(reason, str) else OTHER


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_* (CPU, memory, file descriptors, start time) and python_info, on this
        # registry: the library's default registry is not the one /metrics renders
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info("collab_build", "The collab version this node runs", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()})
        self.connections = Gauge(
            "collab_connections", "Live Socket.IO connections on this node",
            registry=self.registry)
        self.yjs_connections = Gauge(
            "collab_yjs_connections", "Open y-websocket connections (/yjs/) on this node",
            registry=self.registry)
        self.yjs_refused = Counter(
            "collab_yjs_refused", "y-websocket upgrades refused, by error code",
            ["code"], registry=self.registry)
        self.yjs_closed = Counter(
            "collab_yjs_closed", "y-websocket connections the server closed, by error code",
            ["code"], registry=self.registry)
        self.connects_refused = Counter(
            "collab_connects_refused", "Handshakes refused, by error code",
            ["code"], registry=self.registry)
        self.disconnects = Counter(
            "collab_disconnects", "Connections ended, by who or what ended them",
            ["reason"], registry=self.registry)
        for label in (*DISCONNECT_REASONS.values(), OTHER):
            self.disconnects.labels(label)  # every series from the start, at 0
        self.events = Counter(
            "collab_events", "Client events handled, by event and outcome",
            ["event", "outcome"], registry=self.registry)
        self.handler_latency = Histogram(
            "collab_handler_latency_seconds", "Time to handle a client event",
            ["event"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.store_latency = Histogram(
            "collab_store_latency_seconds", "Time of one store operation",
            ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry)
        broadcasts = Counter(
            "collab_broadcasts", "Room broadcasts this node sent, by event",
            ["event"], registry=self.registry)
        self._broadcasts = {event: broadcasts.labels(event)
                            for event in (*BROADCAST_EVENTS, OTHER)}
        self.slow_consumers_closed = Counter(
            "collab_slow_consumers_closed",
            "Connections closed for not reading what was sent to them",
            registry=self.registry)
        self.rooms = Gauge(
            "collab_rooms", "Rooms with at least one member on this node, by kind",
            ["kind"], registry=self.registry)
        # Pub/sub between nodes (collab/broadcast/redis.py): with a channel per room, a
        # node that hosts no member of a room receives none of its messages
        self.pubsub_published = Counter(
            "collab_pubsub_messages_published",
            "Messages this node published for other nodes, by kind",
            ["kind"], registry=self.registry)
        self.pubsub_received = Counter(
            "collab_pubsub_messages_received",
            "Messages from other nodes this node received, by kind",
            ["kind"], registry=self.registry)
        for kind in PUBSUB_KINDS:
            self.pubsub_published.labels(kind)
            self.pubsub_received.labels(kind)
        self.pubsub_channels = Gauge(
            "collab_pubsub_channels", "Room channels this node is subscribed to",
            registry=self.registry)
        self.documents_loaded = Gauge(
            "collab_documents_loaded", "Live documents held in memory on this node",
            registry=self.registry)

    def broadcast(self, event: str) -> None:
        """Count one room broadcast of ``event`` (a name from BROADCAST_EVENTS)."""
        self._broadcasts.get(event, self._broadcasts[OTHER]).inc()

    def count_rooms(self, count: Callable[[], Mapping[str, int]]) -> None:
        """Have ``collab_rooms`` read ``count()`` (kind -> rooms) at each scrape."""
        for kind in KINDS:  # collab_rooms{kind}
            self.rooms.labels(kind).set_function(lambda kind=kind: count().get(kind, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimedStore:
    """Wraps a store so each coroutine method call lands in the store histogram."""

    def __init__(self, store: Any, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        observe = self._metrics.store_latency.labels(name).observe

        @functools.wraps(attr)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            finally:
                observe(time.perf_counter() - start)

        setattr(self, name, timed)  # build the wrapper once per method
        return timed
