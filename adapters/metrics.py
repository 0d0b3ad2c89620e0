"""Prometheus metrics of an API process. Request counts and latencies are recorded as requests pass;
pipeline lags (how far the relay and each projector trail the event store) are read at scrape time, so
they are right whichever process does the work."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.tables import projector_positions, relay_positions

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4"
"""Prometheus' text format; the response adds ``charset=utf-8``, as to every ``text/*`` media type."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "parley_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "parley_http_request_seconds",
            "HTTP request duration",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.head = Gauge("parley_event_store_head", "newest notification id in the event store", registry=self.registry)
        self.lag = Gauge(
            "parley_consumer_lag_events",
            "events committed but not yet handled, per relay/projector",
            ["consumer"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    async def render(self, engine: AsyncEngine, head: int) -> bytes:
        self.head.set(head)
        async with engine.connect() as conn:
            for table, prefix in ((relay_positions, "relay"), (projector_positions, "projector")):
                for row in await conn.execute(select(table.c.name, table.c.position)):
                    self.lag.labels(f"{prefix}:{row.name}").set(max(0, head - int(row.position)))
        return generate_latest(self.registry)
