"""Prometheus metrics, kept in a registry per server so tests can run several."""

from __future__ import annotations

import functools
import inspect
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "collab_connections", "Live Socket.IO connections on this node",
            registry=self.registry)
        self.connects_refused = Counter(
            "collab_connects_refused", "Handshakes refused, by error code",
            ["code"], registry=self.registry)
        self.events = Counter(
            "collab_events", "Client events handled, by event and outcome",
            ["event", "outcome"], registry=self.registry)
        self.handler_latency = Histogram(
            "collab_handler_latency_seconds", "Time to handle a client event",
            ["event"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.store_latency = Histogram(
            "collab_store_latency_seconds", "Time of one store operation",
            ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry)

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
