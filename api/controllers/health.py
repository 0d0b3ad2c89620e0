"""Liveness, readiness (the event store, NATS and Redis answer, and the generation workers have loaded
their engines: see ``adapters.readiness.readiness`` for what each answer means) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Controller, Response, get
from litestar.openapi import ResponseSpec

from adapters.metrics import CONTENT_TYPE
from adapters.readiness import WorkerRecords, WorkerStatus, readiness
from api.deps import App


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, timeout=2)
        return name, "ok"
    except Exception as exc:  # any failure means not ready; say which
        return name, f"error: {type(exc).__name__}"


async def _live_workers(records: WorkerRecords) -> list[WorkerStatus] | None:
    try:
        return await asyncio.wait_for(records.live(), timeout=2)
    except Exception:  # Redis does not answer: its own check says why
        return None


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]
    include_in_schema = True

    @get("/", operation_id="Health")
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/ready",
        operation_id="Ready",
        responses={
            503: ResponseSpec(dict[str, Any], description="Not ready: the same body, saying why.", generate_examples=False)
        },
    )
    async def ready(self, c: App) -> Response[dict[str, Any]]:
        async def nats() -> None:
            await c.connect_nats("parley-api")
            if not c.nc.is_connected:
                raise ConnectionError("nats disconnected")
            await c.nc.flush(timeout=1)

        checks_done, workers = await asyncio.gather(
            asyncio.gather(
                _check("event_store", c.store.call(c.store.max_id)),
                _check("nats", nats()),
                _check("redis", c.redis.ping()),
            ),
            _live_workers(WorkerRecords(c.redis, c.settings.namespace)),
        )
        checks = dict(checks_done)
        status, checks["engines"] = readiness(all(v == "ok" for v in checks.values()), workers)
        body = {
            "status": status,
            "checks": checks,
            "workers": [{**msgspec.to_builtins(w), "state": w.state} for w in workers or []],
        }
        return Response(body, status_code=503 if status == "not_ready" else 200)


class MetricsController(Controller):
    path = "/metrics"
    tags = ["operations"]

    @get("/", operation_id="Metrics", media_type=CONTENT_TYPE)
    async def metrics(self, c: App) -> Response[bytes]:
        head = await c.store.call(c.store.max_id)
        return Response(await c.metrics.render(c.engine, head, c.js, c.subjects), media_type=CONTENT_TYPE)
