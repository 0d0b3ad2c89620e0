"""A projector group (``projections.group``): one consumer and one transaction per batch for several read
models. One member's failure rolls back its savepoint alone; the others advance, and the failed one reads
what it missed from the event store on the next batch. Every event takes effect once in every read model."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from projections.audit import AuditProjector
from projections.group import ProjectorGroup
from projections.identity import IdentityProjector
from projections.runtime import ProjectorRunner, read_position
from schema.events import EventEnvelope
from tests.integration.procs import Traffic, assert_projected_exactly_once
from workers.bootstrap import Container, all_projectors


class Flaky:
    """Wraps a projector; fails while ``broken`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.tables = inner.tables
        self.broken = False

    def handles(self, event_type: str) -> bool:
        return bool(self.inner.handles(event_type))

    async def apply(self, conn: AsyncConnection, event: EventEnvelope) -> None:
        await self.inner.apply(conn, event)
        if self.broken:
            raise RuntimeError("the read model's database refused the write")


async def catch_up_the_rest(c: Container) -> None:
    """The read models outside the groups under test, so the exactly-once check can look at all of them."""
    for p in all_projectors(c):
        if p.name not in ("identity", "audit"):
            await ProjectorRunner(p, engine=c.engine, store=c.store).catch_up()


async def test_one_member_failing_holds_up_no_other_and_catches_up_after(container: Container) -> None:
    c = container
    traffic = await Traffic(c).start()
    audit = Flaky(AuditProjector())
    group = ProjectorGroup([IdentityProjector(), audit], engine=c.engine, store=c.store)
    await group.catch_up()

    await traffic.steps(20)
    first = await c.store.call(c.store.read, group.positions["identity"] + 1, 10_000)
    audit.broken = True
    await group.apply(first)
    assert await read_position(c.engine, "identity") == first[-1].id
    assert await read_position(c.engine, "audit") < first[0].id  # rolled back, identity's effects kept

    audit.broken = False
    await traffic.steps(10)
    second = await c.store.call(c.store.read, first[-1].id + 1, 10_000)
    await group.apply(second)  # audit's batch does not follow on from its position: it reads the gap
    assert await read_position(c.engine, "audit") == second[-1].id == await read_position(c.engine, "identity")

    await catch_up_the_rest(c)
    await assert_projected_exactly_once(c, traffic)


async def test_a_batch_applied_twice_takes_effect_once(container: Container) -> None:
    c = container
    traffic = await Traffic(c).start()
    group = ProjectorGroup([IdentityProjector(), AuditProjector()], engine=c.engine, store=c.store)
    await traffic.steps(15)
    events = await c.store.call(c.store.read, 1, 10_000)
    await group.apply(events[: len(events) // 2])
    await group.apply(events)  # redelivered, overlapping what was applied
    await group.apply(events)
    for name in ("identity", "audit"):
        assert await read_position(c.engine, name) == events[-1].id
    await catch_up_the_rest(c)
    await assert_projected_exactly_once(c, traffic)
