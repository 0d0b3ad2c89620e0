"""Prometheus metrics. Each is observed where its numbers are known, and documented in README's metrics
table; ops/grafana/parley.json charts them.

* An API process (``Metrics``, ``GET /metrics``): requests as they pass, quota and rate-limit refusals as
  they are answered, and, read at scrape time so that they are right whichever process does the work,
  the pipeline's lag (how far the relay and each projector trail the event store) and the generation queue
  (JetStream's own counts of the job stream and the workers' consumer).
* A generation worker (``WorkerMetrics``, on ``PARLEY_WORKER_METRICS_PORT``): what only it sees, per
  model: how long each job waited in the queue, time to first token, tokens per second, outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.settings import SettingsError
from schema.tables import projector_positions, relay_positions

__all__ = ["Metrics", "WorkerMetrics", "CONTENT_TYPE", "QUEUE_READ_TIMEOUT_S"]

log = structlog.get_logger("parley.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4"
"""Prometheus' text format; the response adds ``charset=utf-8``, as to every ``text/*`` media type."""

QUEUE_READ_TIMEOUT_S = 2.0
"""How long a scrape waits for JetStream's queue counts; without them the rest is still answered."""

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_WAIT_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKENS_PER_S = (1, 2.5, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000)


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
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.head = Gauge("parley_event_store_head", "newest notification id in the event store", registry=self.registry)
        self.lag = Gauge(
            "parley_consumer_lag_events",
            "events committed but not yet handled, per relay/projector",
            ["consumer"],
            registry=self.registry,
        )
        self.quota_refusals = Counter(
            "parley_quota_refusals",
            "generations refused by a daily token quota, by the limit that refused (user, user_model, tenant)",
            ["scope"],
            registry=self.registry,
        )
        self.rate_limit_refusals = Counter(
            "parley_rate_limit_refusals",
            "requests refused by a per-minute rate limit (user_per_minute, api_key_per_minute)",
            ["limit"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "parley_generation_jobs",
            "generation jobs in the queue: waiting for a worker, or running (taken, not yet acked)",
            ["state"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "parley_generation_queue_depth",
            "generation jobs in the queue (waiting or running), per model subject",
            ["model"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def quota_refused(self, scope: str) -> None:
        self.quota_refusals.labels(scope).inc()

    def rate_limited(self, limit: str) -> None:
        self.rate_limit_refusals.labels(limit).inc()

    async def render(self, engine: AsyncEngine, head: int, js: Any = None, subjects: Any = None) -> bytes:
        self.head.set(head)
        async with engine.connect() as conn:
            for table, prefix in ((relay_positions, "relay"), (projector_positions, "projector")):
                for row in await conn.execute(select(table.c.name, table.c.position)):
                    self.lag.labels(f"{prefix}:{row.name}").set(max(0, head - int(row.position)))
        if js is not None and subjects is not None:
            try:
                await asyncio.wait_for(self._read_queue(js, subjects), QUEUE_READ_TIMEOUT_S)
            except Exception as exc:  # NATS unreachable: the gauges keep their last values
                log.warning("metrics_queue_unread", error_type=type(exc).__name__, error=str(exc)[:200])
        return generate_latest(self.registry)

    async def _read_queue(self, js: Any, subjects: Any) -> None:
        from nats.js.errors import NotFoundError

        try:
            consumer = await js.consumer_info(subjects.jobs_stream, subjects.workers_durable)
        except NotFoundError:  # no worker has started yet: nothing is taken, nothing counted as waiting
            waiting, running = 0, 0
        else:
            waiting, running = int(consumer.num_pending or 0), int(consumer.num_ack_pending or 0)
        self.jobs.labels("waiting").set(waiting)
        self.jobs.labels("running").set(running)
        # A work queue keeps each job until it is acked: its messages per subject are the jobs per model.
        info = await js.stream_info(subjects.jobs_stream, subjects_filter=subjects.jobs_all)
        counts = {subject.rsplit(".", 1)[-1]: int(n) for subject, n in (info.state.subjects or {}).items()}
        for model in {labels[0] for labels in _label_sets(self.queue_depth)} - set(counts):
            self.queue_depth.labels(model).set(0)  # emptied since the last scrape
        for model, n in counts.items():
            self.queue_depth.labels(model).set(n)


def _label_sets(metric: Any) -> list[tuple[str, ...]]:
    return [tuple(sample.labels.values()) for family in metric.collect() for sample in family.samples]


class WorkerMetrics:
    """What a generation worker observes, per model (parley's model name, as the job names it)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_wait = Histogram(
            "parley_generation_queue_wait_seconds",
            "from the job's enqueueing (the relay's publish) to a worker taking it, first attempts only",
            ["model"],
            buckets=_WAIT_SECONDS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "parley_generation_ttft_seconds",
            "time to first token: from the engine call to its first text",
            ["model"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.tokens_per_s = Histogram(
            "parley_generation_tokens_per_second",
            "decoding speed of a completed generation: output tokens per second after the first",
            ["model"],
            buckets=_TOKENS_PER_S,
            registry=self.registry,
        )
        self.generations = Counter(
            "parley_generations",
            "generation attempts finished by this worker, by outcome (completed, failed, cancelled)",
            ["model", "status"],
            registry=self.registry,
        )
        self.running = Gauge(
            "parley_worker_generations_running", "generations this worker is running now", registry=self.registry
        )
        self._server: Any = None

    def taken(self, model: str, enqueued_at: datetime | None, attempt: int) -> None:
        if attempt == 1 and enqueued_at is not None:
            self.queue_wait.labels(model).observe(max(0.0, time.time() - enqueued_at.timestamp()))

    def finished(self, model: str, status: str, ttft_ms: float, tokens_per_s: float, completion_tokens: int) -> None:
        self.generations.labels(model, status).inc()
        if status == "completed" and completion_tokens:
            self.ttft.labels(model).observe(ttft_ms / 1000)
            if tokens_per_s > 0:
                self.tokens_per_s.labels(model).observe(tokens_per_s)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside the host
        """Serve ``/metrics`` on ``port`` from a thread of its own (Prometheus' client's server)."""
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise SettingsError([f"PARLEY_WORKER_METRICS_PORT={port}: cannot listen there ({exc.strerror})"]) from None
        log.info("worker_metrics_listening", host=host, port=port)

    def close(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.shutdown()
            self._server = None
