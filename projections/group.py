"""Several projectors fed by one consumer, applied in one transaction per batch.

Each projector on its own consumer costs, per event, one delivery, one decode and a share of one Postgres
transaction (and its fsync) — seven times over for seven read models, which made the projectors the
largest CPU cost of a request. A group shares all of that: one durable consumer of ``PARLEY_EVENTS``, one
fetch, one decode, one transaction per batch, in which every projector of the group locks its position
row, applies what it handles after its position and records its new position. Exactly-once holds as it
does for one projector (effects and position in one transaction; ack after commit), and each projector
still has its own position: rebuilds, catch-up from the event store and ``parley rebuild NAME`` work on one
projector as before, serialised with the group on its position row.

One projector's failure does not hold up the others: a batch in which one fails is applied again with each
member in a savepoint of its own, and a projector whose savepoint rolled back keeps its old position; the
next batch does not follow on from it, so it reads the range it missed from the event store (as a projector
does after any gap). Projectors that do heavy work
per event (embedding; they name a ``batch_size``) keep a runner and a consumer of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from projections.runtime import EventSource, Projector, ProjectorRunner, apply_locked, follow, opened
from schema.events import EventEnvelope
from schema.tables import projector_positions

__all__ = ["ProjectorGroup", "split_for_groups"]

log = structlog.get_logger("parley.projector")


def split_for_groups(projectors: Sequence[Projector]) -> tuple[list[Projector], list[Projector]]:
    """(those that share a group, those that run alone: heavy work per event, a ``batch_size`` of their
    own)."""
    shared = [p for p in projectors if getattr(p, "batch_size", None) is None]
    alone = [p for p in projectors if getattr(p, "batch_size", None) is not None]
    return shared, alone


_SET_POSITION = (
    projector_positions.update()
    .where(projector_positions.c.name == bindparam("key"))
    .values(position=bindparam("value"))
)
"""One member's new position; executed with every member that moved (one statement, many parameter sets)."""


class ProjectorGroup:
    def __init__(
        self,
        projectors: Sequence[Projector],
        *,
        engine: AsyncEngine,
        store: EventSource,
        batch_size: int = 256,
        idle_check_s: float = 1.0,
    ) -> None:
        if not projectors:
            raise ValueError("a group needs at least one projector")
        # Always the same order: two groups (or a group and a rebuild) lock position rows in one order.
        self.projectors = sorted(projectors, key=lambda p: p.name)
        self.engine = engine
        self.store = store
        self.batch_size = batch_size
        self.idle_check_s = idle_check_s
        self.runners = [ProjectorRunner(p, engine=engine, store=store) for p in self.projectors]
        self.positions: dict[str, int] = {p.name: 0 for p in self.projectors}

    @property
    def name(self) -> str:
        """The group's durable consumer is named after its members: another set is another consumer."""
        return "+".join(p.name for p in self.projectors)

    async def catch_up(self) -> None:
        for runner in self.runners:
            await runner.catch_up()
            self.positions[runner.projector.name] = runner.position

    async def _catch_up_logged(self) -> None:
        try:
            await self.catch_up()
        except Exception as exc:  # retried when next idle
            log.warning(
                "projector_catch_up_failed", projector=self.name, error_type=type(exc).__name__, error=str(exc)[:300]
            )
            await asyncio.sleep(1.0)

    async def apply(self, events: Sequence[EventEnvelope]) -> None:
        """Apply ``events`` (in id order) to every projector of the group, in one transaction.

        Members apply one after the other with no savepoint between them; should one fail, that transaction
        rolls back whole and the batch is applied again with each member in a savepoint of its own, so the
        failing one keeps its old position and the others go on (two statements per member saved on every
        batch that does not fail)."""
        if not events:
            return
        plain = {e.id: e for e in await opened(self.store, list(events))}  # opened once for every member
        try:
            await self._apply(events, plain, isolated=False)
        except Exception:
            await self._apply(events, plain, isolated=True)

    async def _apply(
        self, events: Sequence[EventEnvelope], plain: dict[int, EventEnvelope], *, isolated: bool
    ) -> None:
        contiguous = all(b.id == a.id + 1 for a, b in zip(events, events[1:], strict=False))
        async with self.engine.begin() as conn:
            locked = await self._lock_positions(conn)
            positions = dict(locked)
            for projector in self.projectors:
                position = positions[projector.name]
                if contiguous and position + 1 >= events[0].id and not any(
                    e.id > position and projector.handles(e.type) for e in events
                ):  # nothing for it in the batch, and no gap before it: it only moves on
                    positions[projector.name] = max(position, events[-1].id)
                    continue
                if not isolated:
                    positions[projector.name] = await apply_locked(
                        conn, projector, self.store, position, events, opened_by_id=plain, record=False
                    )
                    continue
                try:
                    async with conn.begin_nested():
                        positions[projector.name] = await apply_locked(
                            conn, projector, self.store, position, events, opened_by_id=plain, record=False
                        )
                except Exception as exc:  # its savepoint rolled back; the others go on
                    log.warning(
                        "projector_batch_failed",
                        projector=projector.name,
                        error_type=type(exc).__name__,
                        error=str(exc)[:300],
                    )
            moved = [{"key": name, "value": p} for name, p in positions.items() if p != locked[name]]
            if moved:  # every member's new position in one statement
                await conn.execute(_SET_POSITION, moved)
        self.positions.update(positions)

    async def _lock_positions(self, conn: AsyncConnection) -> dict[str, int]:
        """The members' positions, their rows locked (created on the group's first batch)."""
        names = [p.name for p in self.projectors]
        query = (
            select(projector_positions.c.name, projector_positions.c.position)
            .where(projector_positions.c.name.in_(names))
            .order_by(projector_positions.c.name)
            .with_for_update()
        )
        positions = {name: int(position) for name, position in (await conn.execute(query)).all()}
        if len(positions) < len(names):
            await conn.execute(
                insert(projector_positions).values([{"name": n, "position": 0} for n in names]).on_conflict_do_nothing()
            )
            positions = {name: int(position) for name, position in (await conn.execute(query)).all()}
        return positions

    async def run(self, js: Any, subjects: Any, stop: asyncio.Event) -> None:
        """Follow ``PARLEY_EVENTS`` until ``stop`` is set."""

        async def behind() -> bool:
            return bool(await self.store.call(self.store.max_id) > min(self.positions.values()))

        def started() -> None:
            for projector in self.projectors:
                log.info(
                    "projector_started",
                    projector=projector.name,
                    group=self.name,
                    position=self.positions[projector.name],
                )

        await self._catch_up_logged()
        await follow(
            js, subjects, stop, name=self.name, batch_size=self.batch_size, idle_check_s=self.idle_check_s,
            apply=self.apply, behind=behind, catch_up=self._catch_up_logged, started=started,
        )  # fmt: skip
