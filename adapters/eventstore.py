"""The one event store: the ``eventsourcing`` library on Postgres (psycopg 3), one events table and one
notification log for every aggregate of every bounded context.

Appends keep the library's table lock (``POSTGRES_ENABLE_DB_FUNCTIONS`` stays off), so notification ids
are assigned in commit order. Appends are group-committed (``GroupCommitRecorder``): commands that arrive
while a transaction is being written go together into the next one. The library is synchronous: the
async facade runs it on a thread pool sized for the connection pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import threading
import time
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
from eventsourcing.persistence import IntegrityError, InterfaceError, Notification, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg.conninfo import conninfo_to_dict
from psycopg.sql import SQL, Identifier

from adapters import tracing
from adapters.crypto import KeyRow, KeyStore, ShreddingMapper, erased_marker, is_sealed
from application.context import CommandContext, current_command
from domain.chats import Chat
from domain.errors import Conflict, NotFound
from schema.contract import personal_fields
from schema.events import SECRET_SUFFIXES, EventEnvelope

__all__ = ["EventStore", "GroupCommitRecorder", "notification_to_envelope", "envelopes"]

log = structlog.get_logger("parley.eventstore")

A = TypeVar("A", bound=Aggregate)
R = TypeVar("R")


class _Append:
    """One command's events, waiting to be written with whatever else arrives meanwhile."""

    __slots__ = ("stored_events", "keys", "notification_ids", "error", "done")

    def __init__(self, stored_events: Sequence[StoredEvent], keys: Sequence[KeyRow]) -> None:
        self.stored_events = stored_events
        self.keys = keys
        self.notification_ids: list[int] = []
        self.error: Exception | None = None
        self.done = False


class GroupCommitRecorder(PostgresApplicationRecorder):
    """The library's recorder, with group commit: one table lock, one NOTIFY, one INSERT and one fsync for
    every command that arrived while the previous transaction was being written.

    No command waits for company: the first to find no transaction in flight writes at once (a lone
    command's latency stays as it was); those that arrive meanwhile queue, and when the writer commits,
    the first of them writes the whole queue. Under the table lock each command's versions are checked
    against the log and against the commands ahead of it in the group; one that conflicts is refused
    alone (``IntegrityError``, which ``run_command`` retries once and then answers 409), before any
    notification id is drawn for it, so the ids stay gapless and in commit order. A command is answered
    only after the transaction that holds it has committed; a crash before that loses the whole group
    and acknowledges none of it."""

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_notification_ids(self, ids: Sequence[int]) -> list[Notification]:
        """The notifications with these ids, in id order."""
        statement = SQL("SELECT * FROM {schema}.{table} WHERE notification_id = ANY(%s) ORDER BY notification_id").format(
            schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name)
        )
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, [list(ids)], prepare=True)
            return [
                Notification(
                    id=row["notification_id"],
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]

    MAX_GROUP = 512
    """Commands written in one transaction at most; the rest go in the next."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: list[_Append] = []
        self._writing = False
        self._turn = threading.Condition()
        table = SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(self.events_table_name))
        # One statement writes the group: the rows of every command that conflicts with the log are left
        # out whole (before the sequence is drawn for any of them, so no id is burnt), the others inserted
        # in order. Conflicts within the group are settled before, in Python.
        self._insert_group_statement = SQL(
            "WITH u AS ("
            " SELECT * FROM unnest(%s::{schema}.{stored_event_type}[], %s::int[]) WITH ORDINALITY"
            " AS x(originator_id, originator_version, topic, state, command, n)"
            "), refused AS ("
            " SELECT DISTINCT u.command FROM u JOIN {table} t"
            " ON t.originator_id = u.originator_id AND t.originator_version = u.originator_version"
            "), ins AS ("
            " INSERT INTO {table} (originator_id, originator_version, topic, state)"
            " SELECT originator_id, originator_version, topic, state FROM u"
            " WHERE u.command NOT IN (SELECT command FROM refused) ORDER BY u.n"
            " RETURNING notification_id, originator_id, originator_version"
            # The data keys of the aggregates the group creates, with their first events: only where that
            # event went in (a refused command's key never lands; a key row an earlier failed attempt left
            # for a brand-new aggregate is replaced).
            "), made AS ("
            " INSERT INTO parley_subject_keys AS k (key_id, tenant_id, user_id, chat_id, wrapped)"
            " SELECT m.key_id, m.tenant_id, m.user_id, m.chat_id, m.wrapped"
            " FROM unnest(%s::uuid[], %s::text[], %s::uuid[], %s::uuid[], %s::bytea[])"
            " AS m(key_id, tenant_id, user_id, chat_id, wrapped)"
            " WHERE EXISTS (SELECT 1 FROM ins WHERE ins.originator_id = m.key_id AND ins.originator_version = 1)"
            " ON CONFLICT (key_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, user_id = EXCLUDED.user_id,"
            " chat_id = EXCLUDED.chat_id, wrapped = EXCLUDED.wrapped, created_at = now(), destroyed_at = NULL"
            ")"
            " SELECT notification_id, originator_id, originator_version FROM ins"
        ).format(
            table=table,
            schema=Identifier(self.datastore.schema),
            stored_event_type=Identifier(self.stored_event_type_name),
        )
        self.groups_written = 0
        self.commands_written = 0

    keys: KeyStore | None = None
    """Set by the event store: the data keys a command made for the aggregates it creates are written in
    the same transaction as their first events."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        made = self.keys.take_pending() if self.keys is not None else []
        if not stored_events or any(v is not None for v in kwargs.values()):  # tracking: the library's path
            if self.keys is not None:
                self.keys.insert_now(made)
            ids = super().insert_events(stored_events, **kwargs)
            if self.keys is not None:
                self.keys.committed(made)
            return ids
        mine = _Append(stored_events, made)
        group: list[_Append] = []
        with self._turn:
            self._queue.append(mine)
            while self._writing and not mine.done:
                self._turn.wait()
            if not mine.done:  # no transaction in flight: write everything queued, mine among it
                self._writing = True
                group, self._queue = self._queue[: self.MAX_GROUP], self._queue[self.MAX_GROUP :]
        if not mine.done:
            try:
                self._write_group(group)
            except Exception as e:  # the transaction failed as a whole: every command in it fails
                for append in group:
                    append.error = append.error or e
            finally:
                with self._turn:
                    for append in group:
                        append.done = True
                    self._writing = False
                    self._turn.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.notification_ids

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _write_group(self, group: list[_Append]) -> None:
        for append in group:  # a retry after a lost connection starts from scratch
            append.error, append.notification_ids = None, []
        accepted: list[_Append] = []
        keys_of: dict[int, list[tuple[str, int]]] = {}
        taken: set[tuple[str, int]] = set()
        for append in group:  # within the group, the first command to write a version has it
            keys = [(str(e.originator_id), e.originator_version) for e in append.stored_events]
            if len(set(keys)) < len(keys) or not taken.isdisjoint(keys):
                clash = sorted(set(keys) & taken) or keys
                append.error = IntegrityError(f"already recorded: {clash[0][0]} version {clash[0][1]}")
                continue
            taken.update(keys)
            keys_of[id(append)] = keys
            accepted.append(append)
        if not accepted:
            return
        rows = [
            self.construct_pg_stored_event(e.originator_id, e.originator_version, e.topic, e.state)
            for append in accepted
            for e in append.stored_events
        ]
        commands = [n for n, append in enumerate(accepted) for _ in append.stored_events]
        made = [key for append in accepted for key in append.keys]
        key_columns = (
            [k.key_id for k in made], [k.tenant_id for k in made], [k.user_id for k in made],
            [k.chat_id for k in made], [k.wrapped for k in made],
        )  # fmt: skip
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            with conn.pipeline():  # one round trip, as the library's own append
                self._lock_table(curs)
                self._notify_channel(curs)
                curs.execute(self._insert_group_statement, (rows, commands, *key_columns))
            ids = {
                (str(r["originator_id"]), int(r["originator_version"])): int(r["notification_id"])
                for r in curs.fetchall()
            }
        written = 0
        for append in accepted:
            keys = keys_of[id(append)]
            if keys[0] in ids:
                append.notification_ids = [ids[k] for k in keys]
                written += 1
                if self.keys is not None:
                    self.keys.committed(append.keys)
            else:
                append.error = IntegrityError(f"already recorded: {keys[0][0]} version {keys[0][1]} or a later one")
        if written:
            self.groups_written += 1
            self.commands_written += written


class ParleyApplication(Application[uuid.UUID]):
    name = "parley"
    # A chat with thousands of messages loads from its latest snapshot plus < 100 events.
    snapshotting_intervals: ClassVar[dict[type[Aggregate], int]] = {Chat: 100}
    # The library's aggregate cache with fast-forward: a cached aggregate is brought up to date with the
    # events recorded after it (by any process) on every get, so it is never served stale; what it saves is
    # decoding and replaying the aggregate's whole history (or snapshot) each time. Commands get a deep
    # copy; an LRU bound keeps long chats from filling memory.
    env: ClassVar[dict[str, str]] = {
        "AGGREGATE_CACHE_MAXSIZE": "2000",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_ENABLE_DB_FUNCTIONS": "no",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
        "POSTGRES_PRE_PING": "no",
        "APPLICATION_RECORDER_TOPIC": "adapters.eventstore:GroupCommitRecorder",
        "MAPPER_TOPIC": "adapters.crypto:ShreddingMapper",
    }


    def take_snapshot(self, aggregate_id: uuid.UUID, version: int | None = None, projector_func: Any = None) -> None:
        """No snapshot of an aggregate whose key is destroyed (a late answer to a deleted chat): it would
        hold nothing but erased markers, and replaying its events gives the same."""
        keys = getattr(self.mapper, "keys", None)
        if keys is not None and keys.ensure(aggregate_id, tenant_id="", user_id=None, chat_id=None) is None:
            return
        if projector_func is None:
            super().take_snapshot(aggregate_id, version)
        else:
            super().take_snapshot(aggregate_id, version, projector_func)


def _split_topic(topic: str) -> tuple[str, str]:
    # "domain.identity:User.UserRegistered" -> ("User", "UserRegistered")
    qualname = topic.rpartition(":")[2]
    parts = qualname.split(".")
    return parts[0], parts[-1]


def command_name(fn: Callable[..., Any]) -> str:
    """``Chats.send_message`` for the ``command`` closure a service's method hands to ``execute``."""
    name = getattr(fn, "__qualname__", "") or type(fn).__name__
    return name.split(".<locals>", 1)[0]


def event_id(aggregate_id: uuid.UUID, version: int) -> uuid.UUID:
    return uuid.uuid5(aggregate_id, str(version))


def notification_to_envelope(app: Application[uuid.UUID], n: Notification) -> EventEnvelope:
    """The event as it leaves the event store: personal fields stay sealed (see ``adapters.crypto``)."""
    mapper = app.mapper
    domain_event = mapper.to_sealed_event(n) if isinstance(mapper, ShreddingMapper) else mapper.to_domain_event(n)
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
    A version conflict re-runs ``fn`` (``ATTEMPTS`` in all), then becomes 409 ``VERSION_CONFLICT``."""

    def __init__(self, database_url: str, *, secret_key: str, pool_size: int = 10, max_overflow: int = 10) -> None:
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
                self.keys = KeyStore(database_url.replace("postgresql+psycopg://", "postgresql://"), secret_key)
                self.keys.create_table(lock)
            finally:
                lock.execute("SELECT pg_advisory_unlock(7261002)")
        self.recorder = self.app.recorder
        self.mapper = self.app.mapper
        assert isinstance(self.mapper, ShreddingMapper)
        self.mapper.keys = self.keys
        self.keys.on_forget = self.forget
        assert isinstance(self.recorder, GroupCommitRecorder)
        self.recorder.keys = self.keys
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
        self.keys.discard_pending()  # what an earlier, failed attempt of this thread's command made
        for aggregate in aggregates:
            if aggregate is None:
                continue
            for pending in aggregate.pending_events:
                object.__setattr__(pending, "meta", meta)
        with tracing.span("event_store.append") as span:
            recordings = self.app.save(*aggregates)
            ids = [r.notification.id for r in recordings]
            if span is not None and ids:
                span.set_attributes({"parley.events": len(ids), "parley.notification_id.first": ids[0]})
        return ids

    def read(self, start: int, limit: int, stop: int | None = None) -> list[EventEnvelope]:
        """Envelopes with notification id >= start (and <= stop), in order."""
        notifications = self.recorder.select_notifications(start=start, limit=limit, stop=stop)
        return [notification_to_envelope(self.app, n) for n in notifications]

    def read_ids(self, ids: Sequence[int]) -> list[EventEnvelope]:
        """The envelopes of these notification ids, in id order (ids not in the log are left out): the
        event feed and webhook deliveries read scattered events of one tenant this way."""
        if not ids:
            return []
        return [notification_to_envelope(self.app, n) for n in self.recorder.select_notification_ids(ids)]

    def read_for(
        self, handles: Callable[[str], bool], start: int, limit: int, stop: int | None = None
    ) -> tuple[list[EventEnvelope], int, int]:
        """``read`` for one projector (catch-up, rebuild): only the events whose type ``handles`` accepts
        are decoded, the type being known from the topic. Returns them, how many events were read, and
        the last id read (``start - 1`` if none), so that the reader moves past the events it skipped."""
        notifications = self.recorder.select_notifications(start=start, limit=limit, stop=stop)
        wanted = [notification_to_envelope(self.app, n) for n in notifications if handles(_split_topic(n.topic)[1])]
        return wanted, len(notifications), notifications[-1].id if notifications else start - 1

    def max_id(self) -> int:
        return self.recorder.max_notification_id() or 0

    def forget(self, key_ids: Iterable[uuid.UUID]) -> None:
        """Keys destroyed (here or by another process): drop them from the key cache, and the aggregates
        they sealed from the aggregate cache, so that nothing opened with them stays in this process."""
        key_ids = list(key_ids)
        self.keys.forget(key_ids)
        cache = self.app.repository.cache
        if cache is not None:
            for key_id in key_ids:
                with contextlib.suppress(KeyError):
                    cache.get(key_id, evict=True)

    def open_envelopes(self, events: Sequence[EventEnvelope]) -> list[EventEnvelope]:
        """``events`` with their personal fields opened (erased ones as their marker), for what needs the
        text (the read models of chats, documents and users)."""
        self.keys.prefetch(  # the page's keys in one query, not one per aggregate
            uuid.UUID(hex=value.split(":", 4)[3])
            for event in events
            for name in personal_fields(event.type)
            if is_sealed(value := event.data.get(name))
        )
        opened = []
        for event in events:
            fields = personal_fields(event.type)
            if not fields or not any(is_sealed(event.data.get(f)) for f in fields):
                opened.append(event)
                continue
            data = dict(event.data)
            for name in fields:
                value = data.get(name)
                if is_sealed(value):
                    plain = self.keys.open(value, event.aggregate_id, name)
                    data[name] = erased_marker(value) if plain is None else msgspec.to_builtins(
                        self.mapper.transcoder.decode(plain)
                    )
            opened.append(msgspec.structs.replace(event, data=data))
        return opened

    def events_of(self, aggregate_id: uuid.UUID, *, until: datetime | None = None) -> list[Any]:
        events = list(self.app.events.get(aggregate_id))
        if until is not None:
            events = [e for e in events if e.timestamp <= until]
        return events

    ATTEMPTS = 8
    """How often a command is run before a version conflict becomes 409. One retry was enough while
    commands touched an aggregate one at a time; a chat takes a user's next message while the worker
    records the answers to earlier ones (its own commands, retried the same way), and each answer recorded
    during a command is one more conflict it must ride out. Retries back off (jittered, 1 ms doubling to
    64 ms) so that two writers of one chat stop colliding."""

    def run_command(self, ctx: CommandContext, fn: Callable[[], R]) -> R:
        token = current_command.set(ctx)
        try:
            for attempt in range(1, self.ATTEMPTS + 1):
                try:
                    return fn()
                except IntegrityError as e:
                    if attempt == self.ATTEMPTS:
                        raise Conflict("VERSION_CONFLICT", "the resource changed concurrently; retry") from None
                    log.debug(
                        "version_conflict_retry", correlation_id=ctx.correlation_id, attempt=attempt, error=str(e)
                    )
                    time.sleep(random.uniform(0, 0.001 * 2 ** min(attempt, 6)))
            raise AssertionError("unreachable")
        finally:
            current_command.reset(token)

    # --- async facade -------------------------------------------------------------------------------------
    async def execute(self, ctx: CommandContext, fn: Callable[[], R]) -> R:
        if not tracing.enabled():
            return await self._execute(ctx, fn)
        # The command's span; its events carry it as their traceparent, so that the relay, the projectors
        # and the workers continue this trace.
        attributes = {"parley.tenant_id": ctx.tenant_id, "parley.correlation_id": ctx.correlation_id}
        with tracing.span(f"command {command_name(fn)}", attributes=attributes):
            return await self._execute(ctx.replace(traceparent=tracing.current_traceparent()), fn)

    async def _execute(self, ctx: CommandContext, fn: Callable[[], R]) -> R:
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
        self.keys.close()


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
