"""The projector runtime.

A projector is a name, the event types it handles, the tables it owns, and how each event changes them.
The runtime feeds it envelopes in notification order and records its position in the same Postgres
transaction as the effects, skipping anything at or below that position: at-least-once delivery,
exactly-once effect.

Events arrive from ``PARLEY_EVENTS`` through a durable pull consumer and are acked only after commit.
The event store is the truth: when what arrives does not follow on from the position (a crash left
messages unacked, a consumer was created late, a relay is behind), the runtime reads the missing range
from the event store itself. The same path rebuilds a read model from the event store alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schema.events import EventEnvelope
from schema.tables import projector_positions

__all__ = ["HandlesTypes", "Projector", "ProjectorRunner", "apply_batch", "read_position"]

log = structlog.get_logger("parley.projector")


class EventSource(Protocol):
    """What the runtime needs from the event store (``adapters.eventstore.EventStore``)."""

    def read(self, start: int, limit: int, stop: int | None = None) -> list[EventEnvelope]: ...

    def max_id(self) -> int: ...

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any: ...


class Projector(Protocol):
    name: str
    tables: Sequence[Table]
    """Tables this projector owns: emptied when it is rebuilt."""

    def handles(self, event_type: str) -> bool: ...

    async def apply(self, conn: AsyncConnection, event: EventEnvelope) -> None: ...


class HandlesTypes:
    """For a projector that handles a fixed set of event types, named in ``_types``."""

    _types: frozenset[str] = frozenset()

    def handles(self, event_type: str) -> bool:
        return event_type in self._types


async def _lock_position(conn: AsyncConnection, name: str) -> int:
    await conn.execute(insert(projector_positions).values(name=name, position=0).on_conflict_do_nothing())
    row = await conn.execute(
        select(projector_positions.c.position).where(projector_positions.c.name == name).with_for_update()
    )
    return int(row.scalar_one())


async def read_position(engine: AsyncEngine, name: str) -> int:
    async with engine.connect() as conn:
        row = await conn.execute(select(projector_positions.c.position).where(projector_positions.c.name == name))
        return int(row.scalar() or 0)


_MAX_FILL = 5_000


async def apply_batch(
    engine: AsyncEngine, projector: Projector, store: EventSource, events: Sequence[EventEnvelope]
) -> int:
    """Apply the log after the projector's position, up to the last of ``events``, in one transaction.

    The position row is locked, so two runners of one projector (or a runner and a rebuild) never apply
    an event twice. When ``events`` do not follow on from the position (a crash left messages unacked, a
    consumer was created late, ids were burnt by rolled-back appends), the range is read from the event
    store, which is the truth. Returns the position after the batch."""
    async with engine.begin() as conn:
        position = await _lock_position(conn, projector.name)
        fresh = [e for e in events if e.id > position]
        if not fresh:
            return position
        contiguous = fresh[0].id == position + 1 and all(
            b.id == a.id + 1 for a, b in zip(fresh, fresh[1:], strict=False)
        )
        if not contiguous:
            fresh = await store.call(store.read, position + 1, _MAX_FILL, fresh[-1].id)
        handled = [e for e in fresh if projector.handles(e.type)]
        apply_many = getattr(projector, "apply_many", None)
        if apply_many is not None:  # a projector that can apply a batch in fewer statements
            await apply_many(conn, handled)
        else:
            for event in handled:
                await projector.apply(conn, event)
        position = fresh[-1].id
        await conn.execute(
            projector_positions.update()
            .where(projector_positions.c.name == projector.name)
            .values(position=position)
        )
        return position


class ProjectorRunner:
    def __init__(
        self,
        projector: Projector,
        *,
        engine: AsyncEngine,
        store: EventSource,
        batch_size: int = 256,
        idle_check_s: float = 1.0,
    ) -> None:
        self.projector = projector
        self.engine = engine
        self.store = store
        self.batch_size = batch_size
        self.idle_check_s = idle_check_s
        self.position = 0

    async def catch_up(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Apply everything in the event store after the position; returns how many events were read."""
        self.position = await read_position(self.engine, self.projector.name)
        target = await self.store.call(self.store.max_id)
        seen = 0
        while self.position < target:
            # A projector that does heavy work per event (embedding) asks for smaller transactions.
            size = min(1000, getattr(self.projector, "batch_size", 1000))
            batch = await self.store.call(self.store.read, self.position + 1, size, target)
            if not batch:
                break
            self.position = await apply_batch(self.engine, self.projector, self.store, batch)
            seen += len(batch)
            if progress is not None:
                progress(self.position, target)
        return seen

    async def _catch_up_logged(self) -> None:
        try:
            await self.catch_up()
        except Exception as exc:  # retried when next idle
            log.warning("projector_catch_up_failed", projector=self.projector.name, error_type=type(exc).__name__, error=str(exc)[:300])
            await asyncio.sleep(1.0)

    async def run(self, js: Any, subjects: Any, stop: asyncio.Event) -> None:
        """Follow ``PARLEY_EVENTS`` until ``stop`` is set."""
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        from schema.events import decode

        await self._catch_up_logged()
        sub = await js.pull_subscribe(
            subjects.events_all,
            durable=subjects.durable(self.projector.name),
            stream=subjects.events_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                max_ack_pending=20_000,
            ),
        )
        log.info("projector_started", projector=self.projector.name, position=self.position)
        failures = 0
        while not stop.is_set():
            try:
                msgs = await sub.fetch(self.batch_size, timeout=self.idle_check_s)
            except (TimeoutError, NatsTimeout):
                # Idle: anything committed that never reached us (relay down, late consumer)?
                if await self.store.call(self.store.max_id) > self.position:
                    await self._catch_up_logged()
                continue
            events = sorted((decode(m.data) for m in msgs), key=lambda e: e.id)
            try:
                self.position = await apply_batch(self.engine, self.projector, self.store, events)
            except Exception as exc:
                # Not acked: the batch comes back (redelivery, or the gap is read from the store).
                failures += 1
                log.warning(
                    "projector_batch_failed",
                    projector=self.projector.name,
                    error_type=type(exc).__name__,
                    error=str(exc)[:300],
                    failures=failures,
                )
                await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))
                continue
            failures = 0
            for m in msgs:
                await m.ack()
        await sub.unsubscribe()


async def rebuild(
    projector: Projector,
    *,
    engine: AsyncEngine,
    store: EventSource,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Empty the projector's tables, reset its position and replay the event store. A runner of the same
    projector may keep going meanwhile: both serialise on the position row."""
    async with engine.begin() as conn:
        await _lock_position(conn, projector.name)
        for table in reversed(projector.tables):
            await conn.execute(table.delete())
        await conn.execute(
            projector_positions.update().where(projector_positions.c.name == projector.name).values(position=0)
        )
    return await ProjectorRunner(projector, engine=engine, store=store).catch_up(progress)
