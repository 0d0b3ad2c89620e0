"""The projector runtime.

A projector is a name, the event types it handles, the tables it owns, and how each event changes them.
The runtime feeds it envelopes in notification order and records its position in the same Postgres
transaction as the effects, skipping anything at or below that position: at-least-once delivery,
exactly-once effect.

Events arrive from ``PARLEY_EVENTS`` through a durable pull consumer and are acked only after commit.
The event store is the truth: when what arrives does not follow on from the position (a crash left
messages unacked, a consumer was created late, a relay is behind), the runtime reads the missing range
from the event store itself. The same path rebuilds a read model from the event store alone: pages of
``PAGE`` events, each applied in one transaction with the position (a rebuild cut short claims only the
pages it committed), through the projector's ``apply_many`` where it has one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import msgspec
import structlog
from psycopg.types.json import Jsonb
from sqlalchemy import JSON, Table, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schema.events import EventEnvelope
from schema.tables import projector_positions

__all__ = [
    "PAGE",
    "HandlesTypes",
    "Projector",
    "ProjectorRunner",
    "apply_batch",
    "apply_locked",
    "follow",
    "copy_rows",
    "observe_applies",
    "read_position",
    "rebuild",
]

log = structlog.get_logger("parley.projector")


class EventSource(Protocol):
    """What the runtime needs from the event store (``adapters.eventstore.EventStore``)."""

    def read(self, start: int, limit: int, stop: int | None = None) -> list[EventEnvelope]: ...

    def max_id(self) -> int: ...

    # Optional, used by catch-up and rebuild where present: ``read_for(handles, start, limit, stop)`` decodes
    # only the events ``handles`` accepts and returns them, how many were read, and the last id read.

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any: ...


class Projector(Protocol):
    """A read model's projector. One that can apply a batch in fewer statements also defines
    ``async def apply_many(conn, events)`` (the handled events of one transaction, in order), which the
    runtime then uses instead of ``apply``; its result must equal ``apply`` applied to each in turn."""

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


async def copy_rows(conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` with ``COPY``, in the connection's
    transaction: about a third of the cost per row of a multi-row ``INSERT``. Values go in as the table's
    ``insert()`` would send them: a JSON column's Python ``None`` becomes JSON ``null`` unless the column
    says ``none_as_null``."""
    if not rows:
        return
    names = list(rows[0])
    json_columns = {
        name: not getattr(table.c[name].type, "none_as_null", False)
        for name in names
        if isinstance(table.c[name].type, JSON)
    }
    columns = ", ".join(f'"{name}"' for name in names)
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    async with driver.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({columns}) FROM STDIN') as copy:
        for row in rows:
            values = [row[name] for name in names]
            if json_columns:
                for i, name in enumerate(names):
                    if name in json_columns and (values[i] is not None or json_columns[name]):
                        values[i] = Jsonb(values[i], dumps=_json_dumps)
            await copy.write_row(values)


_json_dumps = msgspec.json.encode
"""JSON for ``COPY``: Postgres parses it into JSONB, so any valid JSON serves; msgspec's is ~5x faster than
the stdlib's (psycopg's default)."""

_MAX_FILL = 5_000
PAGE = 5_000
"""Events per read of the event store when catching up or rebuilding."""


def _transactions(
    projector: Projector, start: int, events: Sequence[EventEnvelope], last: int
) -> Iterator[tuple[int, int, Sequence[EventEnvelope]]]:
    """A page of the log (ids ``start`` to ``last``, of which ``events`` were decoded) cut into
    transactions: (the id each starts from, the id it ends with, its events).

    One transaction per page, unless the projector does heavy work per event (embedding) and names a
    ``batch_size``: then at most that many events it handles go into one transaction, however many it
    skips between them."""
    limit = getattr(projector, "batch_size", None)
    if limit is None:
        yield start, last, events
        return
    first, handled = 0, 0
    for i, event in enumerate(events):
        if projector.handles(event.type):
            if handled == limit:
                yield start, events[i - 1].id, events[first:i]
                start, first, handled = events[i - 1].id + 1, i, 0
            handled += 1
    yield start, last, events[first:]


def _by_handled(projector: Projector, events: Sequence[EventEnvelope]) -> Iterator[Sequence[EventEnvelope]]:
    """A fetched batch cut into transactions of at most the projector's ``batch_size`` handled events, the
    events it skips riding along (so that skipping costs no transaction of its own); the whole batch for a
    projector without one."""
    limit = getattr(projector, "batch_size", None)
    if limit is None:
        yield events
        return
    start, handled = 0, 0
    for i, event in enumerate(events):
        if projector.handles(event.type):
            handled += 1
            if handled == limit:
                yield events[start : i + 1]
                start, handled = i + 1, 0
    if start < len(events):
        yield events[start:]


async def apply_batch(
    engine: AsyncEngine,
    projector: Projector,
    store: EventSource,
    events: Sequence[EventEnvelope],
    *,
    read_from: int | None = None,
    through: int | None = None,
) -> int:
    """Apply the log after the projector's position, up to the last of ``events``, in one transaction.

    The position row is locked, so two runners of one projector (or a runner and a rebuild) never apply
    an event twice. When ``events`` do not follow on from the position (a crash left messages unacked, a
    consumer was created late, ids were burnt by rolled-back appends), the range is read from the event
    store, which is the truth. ``read_from`` says that ``events`` are the event store's own page from that
    id on, up to ``through`` (catch-up, rebuild), less any events the projector does not handle: they are
    the truth of their range, gaps included, as long as the position has not fallen behind the page's
    start. Returns the position after the batch."""
    async with engine.begin() as conn:
        position = await _lock_position(conn, projector.name)
        return await apply_locked(conn, projector, store, position, events, read_from=read_from, through=through)


async def apply_locked(
    conn: AsyncConnection,
    projector: Projector,
    store: EventSource,
    position: int,
    events: Sequence[EventEnvelope],
    *,
    read_from: int | None = None,
    through: int | None = None,
    opened_by_id: Mapping[int, EventEnvelope] | None = None,
    record: bool = True,
) -> int:
    """``apply_batch`` inside a transaction that holds the projector's position row (locked, at
    ``position``): applies what follows the position and records the new one. Returns it.
    ``opened_by_id``: ``events`` already opened, by id (a group opens a batch once for all its members).
    ``record=False``: the caller writes the position returned (a group writes all its members' at once)."""
    fresh = [e for e in events if e.id > position]
    if read_from is not None and read_from <= position + 1:
        end = max(position, through if through is not None else fresh[-1].id if fresh else position)
    elif not fresh:
        return position
    else:
        contiguous = fresh[0].id == position + 1 and all(
            b.id == a.id + 1 for a, b in zip(fresh, fresh[1:], strict=False)
        )
        if not contiguous:
            fresh = await store.call(store.read, position + 1, _MAX_FILL, fresh[-1].id)
        end = fresh[-1].id if fresh else position
    if end <= position:
        return position
    handled = [e for e in fresh if projector.handles(e.type)]
    if handled and not getattr(projector, "sealed", False):
        if opened_by_id:  # opened once for the whole group
            handled = [opened_by_id.get(e.id, e) for e in handled]
        handled = await opened(store, handled)
    if handled and read_from is None and _observe_apply is not None:  # live events, not a rebuild's pages
        with _observe_apply(projector.name, handled):
            await _apply(conn, projector, handled)
    else:
        await _apply(conn, projector, handled)
    if record:
        await conn.execute(
            projector_positions.update().where(projector_positions.c.name == projector.name).values(position=end)
        )
    return end


async def _apply(conn: AsyncConnection, projector: Projector, handled: Sequence[EventEnvelope]) -> None:
    apply_many = getattr(projector, "apply_many", None)
    if handled and apply_many is not None:  # a projector that can apply a batch in fewer statements
        await apply_many(conn, handled)
    else:
        for event in handled:
            await projector.apply(conn, event)


ApplyObserver = Callable[[str, Sequence[EventEnvelope]], contextlib.AbstractContextManager[object]]
_observe_apply: ApplyObserver | None = None


def observe_applies(observer: ApplyObserver | None) -> None:
    """``observer(projector name, events)`` wraps each live apply from now on (not the pages of a rebuild or
    a catch-up): a projector process that traces sets ``adapters.tracing.projector_apply``, so each apply
    shows in the traces of the requests whose events it applies."""
    global _observe_apply
    _observe_apply = observer


def _holds_sealed(event: EventEnvelope) -> bool:
    return any(type(v) is str and v.startswith("enc:v1:") for v in event.data.values())


async def opened(store: EventSource, events: list[EventEnvelope]) -> list[EventEnvelope]:
    """``events`` with personal fields opened, where the store seals them. A projector that keeps them
    sealed (the audit log) says ``sealed = True``."""
    open_envelopes = getattr(store, "open_envelopes", None)
    if open_envelopes is None or not any(_holds_sealed(e) for e in events):
        return events
    return list(await store.call(open_envelopes, events))


class ProjectorRunner:
    def __init__(
        self,
        projector: Projector,
        *,
        engine: AsyncEngine,
        store: EventSource,
        batch_size: int = 256,
        idle_check_s: float = 1.0,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self.projector = projector
        self.after_commit = after_commit
        """Called after each transaction this runner committed (the webhook dispatcher takes the messages it
        wrote locked to itself)."""
        self.engine = engine
        self.store = store
        self.batch_size = batch_size
        self.idle_check_s = idle_check_s
        self.position = 0

    async def catch_up(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Apply everything in the event store after the position; returns how many events were read.

        The log is read in pages of ``PAGE`` events, the next page read (on the event store's thread) while
        this one is applied, decoding only the events the projector handles where the store can. A page is
        one transaction unless the projector asks for smaller ones."""
        self.position = await read_position(self.engine, self.projector.name)
        target = await self.store.call(self.store.max_id)
        seen = 0
        start = self.position + 1
        next_page = self._read(start, target)
        try:
            while next_page is not None:
                events, count, last = await next_page
                if not count:
                    break
                next_page = self._read(last + 1, target)
                for read_from, through, batch in _transactions(self.projector, start, events, last):
                    self.position = await apply_batch(
                        self.engine, self.projector, self.store, batch, read_from=read_from, through=through
                    )
                    if self.after_commit is not None:
                        self.after_commit()
                seen += count
                start = last + 1
                if progress is not None:
                    progress(self.position, target)
        finally:
            if next_page is not None and not next_page.done():
                next_page.cancel()
        return seen

    def _read(self, start: int, target: int) -> asyncio.Future[tuple[list[EventEnvelope], int, int]] | None:
        """The page of the log from ``start`` on (at most ``PAGE`` events, none past ``target``), being read:
        the events the projector handles, how many were read, the last id read."""
        if start > target:
            return None
        read_for = getattr(self.store, "read_for", None)
        if read_for is not None:
            return asyncio.ensure_future(self.store.call(read_for, self.projector.handles, start, PAGE, target))

        async def whole_page() -> tuple[list[EventEnvelope], int, int]:
            page = await self.store.call(self.store.read, start, PAGE, target)
            return page, len(page), page[-1].id if page else start - 1

        return asyncio.ensure_future(whole_page())

    async def _catch_up_logged(self) -> None:
        try:
            await self.catch_up()
        except Exception as exc:  # retried when next idle
            log.warning(
                "projector_catch_up_failed",
                projector=self.projector.name,
                error_type=type(exc).__name__,
                error=str(exc)[:300],
            )
            await asyncio.sleep(1.0)

    async def run(self, js: Any, subjects: Any, stop: asyncio.Event) -> None:
        """Follow ``PARLEY_EVENTS`` until ``stop`` is set."""

        async def apply(events: Sequence[EventEnvelope]) -> None:
            for chunk in _by_handled(self.projector, events):
                self.position = await apply_batch(self.engine, self.projector, self.store, chunk)
                if self.after_commit is not None:
                    self.after_commit()

        async def behind() -> bool:
            return bool(await self.store.call(self.store.max_id) > self.position)

        def started() -> None:
            log.info("projector_started", projector=self.projector.name, position=self.position)

        await self._catch_up_logged()
        await follow(
            js, subjects, stop, name=self.projector.name, batch_size=self.batch_size, idle_check_s=self.idle_check_s,
            apply=apply, behind=behind, catch_up=self._catch_up_logged, started=started,
        )  # fmt: skip


async def follow(
    js: Any,
    subjects: Any,
    stop: asyncio.Event,
    *,
    name: str,
    batch_size: int,
    idle_check_s: float,
    apply: Callable[[Sequence[EventEnvelope]], Awaitable[None]],
    behind: Callable[[], Awaitable[bool]],
    catch_up: Callable[[], Awaitable[None]],
    started: Callable[[], None],
) -> None:
    """Follow ``PARLEY_EVENTS`` on the durable pull consumer ``name`` until ``stop`` is set: each batch is
    applied (``apply``, one transaction) and acked only after it committed; a batch that failed is not
    acked and comes back, after a backoff. When idle, anything committed that never arrived (relay down, a
    late consumer, a failure) is read from the event store (``behind``, ``catch_up``); so too while the
    consumer cannot be reached (a NATS node lost, its leader being elected)."""
    from nats.errors import Error as NatsError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from schema.events import decode

    sub = await js.pull_subscribe(
        subjects.events_all,
        durable=subjects.durable(name),
        stream=subjects.events_stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30,
            max_ack_pending=20_000,
        ),
    )
    started()
    failures = 0
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch_size, timeout=idle_check_s)
        except (TimeoutError, NatsTimeout):
            if await behind():
                await catch_up()
            continue
        except NatsError as exc:
            log.warning("projector_fetch_failed", projector=name, error_type=type(exc).__name__, error=str(exc)[:200])
            if await behind():
                await catch_up()
            await asyncio.sleep(0.5)
            continue
        events = sorted((decode(m.data) for m in msgs), key=lambda e: e.id)
        try:
            await apply(events)
        except Exception as exc:
            failures += 1
            log.warning(
                "projector_batch_failed", projector=name, error_type=type(exc).__name__, error=str(exc)[:300],
                failures=failures,
            )  # fmt: skip
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
