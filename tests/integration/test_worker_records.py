"""Workers' readiness records in the real Redis: a beacon keeps its worker's record fresh and says at once
when an engine changes state; a stopped worker's record goes at once, a dead one's when it expires. A model
that cannot be preloaded is reported failed, and requests are not held up by it."""

from __future__ import annotations

import asyncio

from adapters.readiness import EngineStatus, WorkerBeacon, WorkerRecords, WorkerStatus
from application.conversations import EngineTarget
from workers.bootstrap import Container
from workers.generate import EngineRegistry


async def _wait_for_states(records: WorkerRecords, states: list[str]) -> None:
    async with asyncio.timeout(2):
        while [w.state for w in await records.live()] != states:  # noqa: ASYNC110 - nothing to wait on
            await asyncio.sleep(0.02)


async def test_a_beacon_reports_engine_changes_at_once_and_its_record_goes_when_the_worker_stops(
    container: Container,
) -> None:
    records = WorkerRecords(container.redis, container.settings.namespace)
    engines = [EngineStatus(kind="local", model="m", state="loading")]
    wake, stop = asyncio.Event(), asyncio.Event()
    beacon = WorkerBeacon(records, name="w1", concurrency=2, kinds=["local"], engines=lambda: engines, interval_s=60)
    task = asyncio.create_task(beacon.run(stop, wake=wake))

    await _wait_for_states(records, ["loading"])
    engines = [EngineStatus(kind="local", model="m", state="ready", load_seconds=1.5)]
    wake.set()  # the next heartbeat is a minute away
    await _wait_for_states(records, ["ready"])
    [record] = await records.live()
    assert (record.name, record.concurrency, record.kinds, record.engines[0].load_seconds) == ("w1", 2, ["local"], 1.5)

    stop.set()
    await task
    assert await records.live() == []


async def test_the_record_of_a_worker_that_died_expires(container: Container) -> None:
    records = WorkerRecords(container.redis, container.settings.namespace, ttl_s=0.3)
    await records.put(
        WorkerStatus(name="gone", concurrency=1, kinds=[], engines=[], started_at=0.0, heartbeat_at=0.0)
    )
    assert [w.name for w in await records.live()] == ["gone"]
    await asyncio.sleep(0.5)
    assert await records.live() == []


async def test_a_model_that_cannot_be_preloaded_is_reported_failed_and_holds_nothing_up(container: Container) -> None:
    registry = EngineRegistry(container)
    target = EngineTarget("local", None, None, "/no/such/model")
    await registry.preload(target)
    [status] = registry.statuses()
    assert (status.kind, status.model, status.state) == ("local", "/no/such/model", "failed")
    assert status.error and "unknown local model" in status.error and status.load_seconds is not None
    assert registry.changed.is_set()
    assert await asyncio.wait_for(registry.get(target), timeout=1) is not None
    await registry.close()
