"""The one event store: the ``eventsourcing`` library on Postgres (psycopg 3), one events table and one
notification log for every aggregate of every bounded context.

Appends keep the library's table lock (``POSTGRES_ENABLE_DB_FUNCTIONS`` stays off), so notification ids
are assigned in commit order. The library is synchronous: the async facade runs it on a thread pool
sized for the connection pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import msgspec
import psycopg
import structlog
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Notification
from psycopg.conninfo import conninfo_to_dict

from application.context import CommandContext, current_command
from domain.chats import Chat
from domain.errors import Conflict, NotFound
from schema.events import SECRET_SUFFIXES, EventEnvelope

__all__ = ["EventStore", "notification_to_envelope", "envelopes"]

log = structlog.get_logger("parley.eventstore")

A = TypeVar("A", bound=Aggregate)
R = TypeVar("R")


class ParleyApplication(Application[uuid.UUID]):
    name = "parley"
    # A chat with thousands of messages loads from its latest snapshot plus < 100 events.
    snapshotting_intervals: ClassVar[dict[type[Aggregate], int]] = {Chat: 100}
    env: ClassVar[dict[str, str]] = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_ENABLE_DB_FUNCTIONS": "no",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
        "POSTGRES_PRE_PING": "no",
    }


def _split_topic(topic: str) -> tuple[str, str]:
    # "domain.identity:User.UserRegistered" -> ("User", "UserRegistered")
    qualname = topic.rpartition(":")[2]
    parts = qualname.split(".")
    return parts[0], parts[-1]


def event_id(aggregate_id: uuid.UUID, version: int) -> uuid.UUID:
    return uuid.uuid5(aggregate_id, str(version))


def notification_to_envelope(app: Application[uuid.UUID], n: Notification) -> EventEnvelope:
    domain_event = app.mapper.to_domain_event(n)
    state = dict(vars(domain_event))
    meta: dict[str, Any] = state.pop("meta", None) or {}
    state.pop("originator_id", None)
    state.pop("originator_version", None)
    state.pop("originator_topic", None)
    occurred_at: datetime = state.pop("timestamp")
    aggregate_type, event_type = _split_topic(n.topic)
    data = {k: v for k, v in state.items() if not k.endswith(SECRET_SUFFIXES)}
    for key, value in state.items():  # say that a secret is set, never what it is
        if key.endswith("_encrypted"):
            data[f"has_{key.removesuffix('_encrypted')}"] = value is not None
    return EventEnvelope(
        id=n.id,
        event_id=event_id(n.originator_id, n.originator_version),  # type: ignore[arg-type]
        type=event_type,
        aggregate_type=aggregate_type,
        aggregate_id=n.originator_id,  # type: ignore[arg-type]
        aggregate_version=n.originator_version,
        occurred_at=occurred_at,
        tenant_id=str(meta.get("tenant_id", "")),
        actor=str(meta.get("actor", "system")),
        via=meta.get("via"),
        correlation_id=str(meta.get("correlation_id", "")),
        causation_id=meta.get("causation_id"),
        traceparent=meta.get("traceparent"),
        ip=meta.get("ip"),
        user_agent=meta.get("user_agent"),
        data=msgspec.to_builtins(data),
    )


class EventStore:
    """Sync core plus an async facade. Services call ``await store.execute(ctx, fn)``; ``fn`` runs on a
    worker thread with the context set, loads aggregates with ``get``, mutates them and calls ``save``.
    A version conflict re-runs ``fn`` once, then becomes 409 ``VERSION_CONFLICT``."""

    def __init__(self, database_url: str, *, pool_size: int = 10, max_overflow: int = 10) -> None:
        params = conninfo_to_dict(database_url.replace("postgresql+psycopg://", "postgresql://"))
        env = {
            "POSTGRES_DBNAME": str(params.get("dbname") or "postgres"),
            "POSTGRES_HOST": str(params.get("host") or "localhost"),
            "POSTGRES_PORT": str(params.get("port") or "5432"),
            "POSTGRES_USER": str(params.get("user") or "postgres"),
            "POSTGRES_PASSWORD": str(params.get("password") or ""),
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": str(max_overflow),
        }
        self.database_url = database_url
        # The library creates its tables (and their indexes) when the application is built; processes
        # starting together would race on the catalog ("tuple concurrently updated"): take turns.
        with connect(database_url) as lock:
            lock.execute("SELECT pg_advisory_lock(7261002)")
            try:
                self.app = ParleyApplication(env=env)
            finally:
                lock.execute("SELECT pg_advisory_unlock(7261002)")
        self.recorder = self.app.recorder
        self.events_table = "parley_events"
        self._executor = ThreadPoolExecutor(max_workers=pool_size + max_overflow, thread_name_prefix="es")

    @property
    def notify_channel(self) -> str:
        """The library NOTIFYs this channel inside every append; the relay LISTENs on it."""
        return self.events_table

    # --- sync core (runs on worker threads) --------------------------------------------------------------
    def get(self, cls: type[A], aggregate_id: uuid.UUID, *, version: int | None = None) -> A:
        try:
            aggregate = self.app.repository.get(aggregate_id, version=version)
        except AggregateNotFoundError:
            raise NotFound(f"{cls.__name__.upper()}_NOT_FOUND", f"{cls.__name__.lower()} not found") from None
        if not isinstance(aggregate, cls):
            raise NotFound(f"{cls.__name__.upper()}_NOT_FOUND", f"{cls.__name__.lower()} not found")
        return aggregate

    def find(self, cls: type[A], aggregate_id: uuid.UUID) -> A | None:
        try:
            return self.get(cls, aggregate_id)
        except NotFound:
            return None

    def save(self, *aggregates: Aggregate | None) -> list[int]:
        ctx = current_command.get()
        if ctx is None:
            raise RuntimeError("EventStore.save called outside a command context")
        meta = ctx.as_meta()
        for aggregate in aggregates:
            if aggregate is None:
                continue
            for pending in aggregate.pending_events:
                object.__setattr__(pending, "meta", meta)
        recordings = self.app.save(*aggregates)
        return [r.notification.id for r in recordings]

    def read(self, start: int, limit: int, stop: int | None = None) -> list[EventEnvelope]:
        """Envelopes with notification id >= start (and <= stop), in order."""
        notifications = self.recorder.select_notifications(start=start, limit=limit, stop=stop)
        return [notification_to_envelope(self.app, n) for n in notifications]

    def max_id(self) -> int:
        return self.recorder.max_notification_id() or 0

    def events_of(self, aggregate_id: uuid.UUID, *, until: datetime | None = None) -> list[Any]:
        events = list(self.app.events.get(aggregate_id))
        if until is not None:
            events = [e for e in events if e.timestamp <= until]
        return events

    def run_command(self, ctx: CommandContext, fn: Callable[[], R]) -> R:
        token = current_command.set(ctx)
        try:
            for attempt in (1, 2):
                try:
                    return fn()
                except IntegrityError:
                    if attempt == 2:
                        raise Conflict("VERSION_CONFLICT", "the resource changed concurrently; retry") from None
                    log.debug("version_conflict_retry", correlation_id=ctx.correlation_id)
            raise AssertionError("unreachable")
        finally:
            current_command.reset(token)

    # --- async facade -------------------------------------------------------------------------------------
    async def execute(self, ctx: CommandContext, fn: Callable[[], R]) -> R:
        loop = asyncio.get_running_loop()
        call = contextvars.copy_context().run
        return await loop.run_in_executor(self._executor, call, self.run_command, ctx, fn)

    async def call(self, fn: Callable[..., R], *args: Any) -> R:
        """Run a read (``get``, ``read``, ``max_id``) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.app.close()


def connect(database_url: str) -> psycopg.Connection[Any]:
    """A plain psycopg connection to the same database (advisory locks, LISTEN)."""
    return psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def envelopes(store: EventStore, start: int, batch: int = 1000) -> Iterable[Sequence[EventEnvelope]]:
    """Every envelope from ``start`` on, in batches (rebuild, replay)."""
    position = start
    while True:
        page = store.read(position, batch)
        if not page:
            return
        yield page
        position = page[-1].id + 1
