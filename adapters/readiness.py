"""Worker readiness: every generation worker keeps a record in Redis of the engines it has loaded or is
loading, refreshed by a heartbeat and gone soon after the worker is; ``/health/ready`` reads them, so the
API can say whether a generation would be answered now even when the workers run on other machines.

In Redis, ``{namespace}:worker:{name}`` holds a worker's record (JSON) and expires ``ttl_s`` after its last
heartbeat; ``{namespace}:workers`` is a sorted set of worker names scored by their last heartbeat, so the
records are read without a SCAN over the deployment's keys. A worker that stops removes its record at once;
one that dies stops heartbeating and its record expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Literal

import msgspec
import structlog
from redis.asyncio import Redis

__all__ = [
    "EngineStatus",
    "WorkerBeacon",
    "WorkerRecords",
    "WorkerStatus",
    "readiness",
]

log = structlog.get_logger("parley.readiness")

HEARTBEAT_S = 5.0
TTL_S = 15.0


class EngineStatus(msgspec.Struct, frozen=True, kw_only=True):
    """An engine a worker loads at start: ``loading``, then ``ready`` or ``failed`` (with ``error``)."""

    kind: str
    model: str | None = None
    state: Literal["loading", "ready", "failed"]
    load_seconds: float | None = None
    error: str | None = None


class WorkerStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    concurrency: int
    kinds: list[str]
    """Engine kinds the worker runs (those not in ``engines`` are built on first use: no load to wait for)."""
    engines: list[EngineStatus]
    started_at: float
    heartbeat_at: float

    @property
    def state(self) -> Literal["loading", "ready", "failed"]:
        """``loading`` while any engine loads, else ``failed`` if one failed, else ``ready``."""
        states = {e.state for e in self.engines}
        return "loading" if "loading" in states else "failed" if "failed" in states else "ready"


_decode = msgspec.json.Decoder(WorkerStatus)


class WorkerRecords:
    """The workers' records in Redis (see the module's docstring for the layout)."""

    def __init__(self, redis: Redis, namespace: str, *, ttl_s: float = TTL_S) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._index = f"{namespace}:workers"
        self._prefix = f"{namespace}:worker:"

    async def put(self, status: WorkerStatus) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self._prefix + status.name, msgspec.json.encode(status), px=int(self.ttl_s * 1000))
            pipe.zadd(self._index, {status.name: now})
            pipe.zremrangebyscore(self._index, "-inf", now - 4 * self.ttl_s)  # names of workers long dead
            await pipe.execute()

    async def remove(self, name: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._prefix + name)
            pipe.zrem(self._index, name)
            await pipe.execute()

    async def live(self) -> list[WorkerStatus]:
        """The records of the workers that heartbeat, by name."""
        names = sorted(await self.redis.zrange(self._index, 0, -1))  # str: the client decodes responses
        if not names:
            return []
        records = await self.redis.mget([self._prefix + n for n in names])
        return [_decode.decode(r) for r in records if r is not None]


def readiness(infrastructure_ok: bool, workers: list[WorkerStatus] | None) -> tuple[str, str]:
    """``(status, engines)`` for ``/health/ready``: the status is ``ready`` or ``degraded`` (200) or
    ``not_ready`` (503); ``engines`` sums up the workers: ``ok``, ``loading``, ``failed``, ``no_workers``
    or ``unknown`` (their records could not be read).

    Not ready: the event store, NATS or Redis fails, or workers are alive and every one of them is still
    loading its engines (a generation would wait for a load). Degraded: no worker is alive (a generation
    waits in the queue until one starts; the API itself serves, and workers may run elsewhere), an engine
    failed to load (other engines still answer; waiting will not mend it), or some workers are ready while
    others load (a worker joining a running deployment does not take the API out of its load balancer)."""
    if workers is None:
        return "not_ready", "unknown"
    states = {w.state for w in workers}
    engines = (
        "no_workers" if not states
        else "loading" if "loading" in states
        else "failed" if "failed" in states
        else "ok"
    )  # fmt: skip
    if not infrastructure_ok or states == {"loading"}:
        return "not_ready", engines
    return ("ready" if engines == "ok" else "degraded"), engines


class WorkerBeacon:
    """Keeps one worker's record fresh: at once, whenever ``wake`` is set (an engine changed state), and
    every ``interval_s``; removes it when stopped. A failed write is logged and tried again."""

    def __init__(
        self,
        records: WorkerRecords,
        *,
        name: str,
        concurrency: int,
        kinds: list[str],
        engines: Callable[[], list[EngineStatus]],
        interval_s: float = HEARTBEAT_S,
    ) -> None:
        self.records = records
        self.name = name
        self.concurrency = concurrency
        self.kinds = kinds
        self.engines = engines
        self.interval_s = interval_s
        self.started_at = time.time()

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            name=self.name,
            concurrency=self.concurrency,
            kinds=self.kinds,
            engines=self.engines(),
            started_at=self.started_at,
            heartbeat_at=time.time(),
        )

    async def run(self, stop: asyncio.Event, wake: asyncio.Event | None = None) -> None:
        wake = wake or asyncio.Event()
        try:
            while not stop.is_set():
                wake.clear()
                try:
                    await self.records.put(self.status())
                except Exception as exc:
                    log.warning("worker_status_failed", error_type=type(exc).__name__, error=str(exc)[:200])
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
                try:
                    await asyncio.wait(waiters, timeout=self.interval_s, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            with contextlib.suppress(Exception):
                await self.records.remove(self.name)
