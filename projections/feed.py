"""The event feed: one tenant's events in log order, for its admins and auditors, paged or followed live.

The order comes from the audit log read model (``rm_audit_log``): it holds every event of every tenant,
written by the audit projector in notification order, so what a query sees of a tenant is always a
committed prefix of that tenant's log, and a position (a notification id) once passed never gains an
event below it. The envelopes themselves are read from the event store by id, and go out as on NATS with
their personal fields withheld (``schema.contract.withhold_personal``; secrets never leave the store).
Events that the retention sweeper dropped from the audit log (``AuditRowsDropped``) are beyond the feed's
reach: a position before them resumes at the oldest event kept.

A type filter (exact event types or ``*`` patterns, as webhooks take them) is applied in SQL, over at most
``SCAN_LIMIT`` rows of the tenant's log per query: a filter that matches little cannot make one request
read a whole log. A page says where its scan stopped (``next_after``), whether or not it filled.

Following (the SSE stream): the relay publishes every event on ``<namespace>.events.<tenant>.>`` (core
NATS reaches every subscriber); ``FeedWakeUps`` holds one subscription per tenant per process, shared by
all of that tenant's streams, and wakes them. A woken stream queries the audit log; since the audit
projector commits a little after the relay publishes, an event a wake-up named that the log does not show
yet is asked for again shortly (10, 20, 40... ms, for up to ``RETRY_FOR_S``). A slow poll (``POLL_S``)
makes a lost wake-up or a bus outage a delay, never a loss.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import msgspec
import structlog
from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.integrations import check_type_patterns, type_matcher
from schema.contract import event_types, withhold_personal
from schema.events import EventEnvelope
from schema.subjects import Subjects
from schema.tables import audit_log

__all__ = [
    "HEARTBEAT_S",
    "MAX_PAGE",
    "POLL_S",
    "SCAN_LIMIT",
    "FeedPage",
    "FeedWakeUps",
    "NoWakeUps",
    "ReadIds",
    "WakeUps",
    "follow_feed",
    "read_feed",
    "type_filter",
]

log = structlog.get_logger("parley.feed")

MAX_PAGE = 1000
"""Events one page holds at most."""
SCAN_LIMIT = 10_000
"""Rows of the tenant's log one filtered query looks at, at most."""
STREAM_PAGE = 200
"""Events a stream reads at a time."""
HEARTBEAT_S = 15.0
"""Silence after which a stream says it is still there (an SSE comment)."""
POLL_S = 1.5
"""How often an idle stream looks at the log without being woken: the bound on a lost wake-up's delay."""
RETRY_FIRST_S = 0.01
RETRY_MAX_S = 0.5
RETRY_FOR_S = 2.0
"""How long a stream keeps asking for an event a wake-up named that the audit log does not show yet."""

ReadIds = Callable[[Sequence[int]], Awaitable[list[EventEnvelope]]]
"""The event store's envelopes of these notification ids, in id order (``EventStore.read_ids``, off the
event loop)."""


# --- the type filter -----------------------------------------------------------------------------------
def type_filter(values: Sequence[str] | None) -> list[str]:
    """The event-type patterns a request names (each value may list several, comma-separated), checked
    against the contract's event types; empty for no filter. Raises ``Invalid``
    (``INVALID_EVENT_TYPE_FILTER``) for a malformed, unknown or matchless one."""
    if not values:
        return []
    patterns = [piece.strip() for value in values for piece in value.split(",")]
    return check_type_patterns(patterns, event_types().keys(), field="type")


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _type_clause(action: Any, patterns: Sequence[str]) -> ColumnElement[bool] | None:
    """The SQL test of ``domain.integrations.type_matcher`` (``*`` is ``%``: patterns are letters and
    stars); None where every type matches."""
    if not patterns or any(p.strip("*") == "" for p in patterns):
        return None
    exact = sorted({p for p in patterns if "*" not in p})
    tests: list[ColumnElement[bool]] = [action.in_(exact)] if exact else []
    tests += [action.like(_escape_like(p).replace("*", "%"), escape="\\") for p in patterns if "*" in p]
    return or_(*tests)


# --- a page --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedPage:
    events: list[EventEnvelope]
    """In log order, personal fields withheld."""
    next_after: int
    """The notification id of the last row scanned (``after`` when none): where the next page starts."""
    has_more: bool
    """The tenant's log goes on past ``next_after`` (it may hold no more matching events)."""


def _rows_after(tenant_id: str, after: int) -> Select[tuple[int, str]]:
    c = audit_log.c
    return (
        select(c.notification_id.label("id"), c.action)
        .where(c.tenant_id == tenant_id, c.notification_id > after)
        .order_by(c.notification_id)
    )


async def _positions(
    engine: AsyncEngine, tenant_id: str, after: int, patterns: Sequence[str], limit: int, scan_limit: int
) -> tuple[list[int], int, bool]:
    """(the ids of up to ``limit`` matching events after ``after``, the last id scanned, whether the log
    goes on)."""
    rows = _rows_after(tenant_id, after)
    if _type_clause(audit_log.c.action, patterns) is None:
        async with engine.connect() as conn:
            found: list[int] = list(
                (await conn.scalars(rows.with_only_columns(audit_log.c.notification_id).limit(limit + 1))).all()
            )
        page = found[:limit]
        return page, page[-1] if page else after, len(found) > limit
    # One statement, so one snapshot: the scan's end and its matches agree.
    scanned = rows.limit(scan_limit).cte("scanned")
    wanted = _type_clause(scanned.c.action, patterns)
    assert wanted is not None
    matched = select(scanned.c.id).where(wanted).order_by(scanned.c.id).limit(limit + 1).subquery("matched")
    statement = select(
        select(func.array_agg(aggregate_order_by(matched.c.id, matched.c.id))).scalar_subquery(),
        select(func.max(scanned.c.id)).scalar_subquery(),
        select(func.count()).select_from(scanned).scalar_subquery(),
    )
    async with engine.connect() as conn:
        result: Any = (await conn.execute(statement)).one()
    found_ids, last_scanned, scanned_count = result
    found = [int(i) for i in found_ids or ()]
    if len(found) > limit:
        return found[:limit], found[limit - 1], True
    return found, int(last_scanned) if last_scanned is not None else after, scanned_count >= scan_limit


async def read_feed(
    engine: AsyncEngine,
    read_ids: ReadIds,
    tenant_id: str,
    *,
    after: int = 0,
    patterns: Sequence[str] = (),
    limit: int = 100,
    scan_limit: int | None = None,
) -> FeedPage:
    """The tenant's events after notification id ``after`` whose type matches ``patterns`` (checked
    already: ``type_filter``; empty for every type), at most ``limit`` (1..``MAX_PAGE``), looking at no
    more than ``scan_limit`` (default ``SCAN_LIMIT``, at least ``limit``) rows when filtering."""
    if not tenant_id:
        raise ValueError("the event feed is of one tenant")
    limit = max(1, min(limit, MAX_PAGE))
    scan_limit = max(limit, SCAN_LIMIT if scan_limit is None else scan_limit)
    ids, next_after, has_more = await _positions(engine, tenant_id, after, patterns, limit, scan_limit)
    envelopes = {e.id: e for e in await read_ids(ids)} if ids else {}
    matches = type_matcher(patterns)  # what the SQL selected; webhooks filter with the same test
    events = [
        withhold_personal(e)
        for e in (envelopes.get(i) for i in ids)
        # The audit row named the tenant and the type; the event store has the last word.
        if e is not None and e.tenant_id == tenant_id and matches(e.type)
    ]
    return FeedPage(events=events, next_after=next_after, has_more=has_more)


# --- wake-ups ------------------------------------------------------------------------------------------
class WakeUps(Protocol):
    async def wait(self, seconds: float) -> int:
        """Returns when woken or after ``seconds``: the highest notification id the wake-ups since
        the previous call named (0: none, or none that said)."""
        ...


class NoWakeUps:
    """For a process without the bus: every wait lasts its whole time (the stream polls)."""

    async def wait(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return 0


class _Named(msgspec.Struct):
    id: int = 0


_named = msgspec.json.Decoder(_Named)


@dataclass(eq=False)
class _Listener:
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    highest: int = 0

    def wake(self, notification_id: int) -> None:
        self.highest = max(self.highest, notification_id)
        self.woken.set()

    async def wait(self, seconds: float) -> int:
        if not self.woken.is_set():
            try:
                await asyncio.wait_for(self.woken.wait(), max(seconds, 0.0))
            except TimeoutError:
                return 0
        self.woken.clear()
        named, self.highest = self.highest, 0
        return named


@dataclass(eq=False)
class _Tenant:
    listeners: set[_Listener] = field(default_factory=set)
    subscription: Any = None

    async def deliver(self, msg: Any) -> None:
        try:
            named = _named.decode(msg.data).id
        except msgspec.DecodeError:
            named = 0  # news all the same: the stream looks
        for listener in self.listeners:
            listener.wake(named)


class FeedWakeUps:
    """One core-NATS subscription per tenant with streams open in this process, shared by those streams
    (``listen``); dropped when the last of them goes. ``nc`` is a connected nats-py client."""

    def __init__(self, nc: Any, subjects: Subjects) -> None:
        self.nc = nc
        self.subjects = subjects
        self._tenants: dict[str, _Tenant] = {}
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def listen(self, tenant_id: str) -> AsyncIterator[WakeUps]:
        listener = _Listener()
        try:
            await self._join(tenant_id, listener)
        except Exception as exc:  # noqa: BLE001 - the bus is gone: the stream still follows, by polling
            log.warning("feed_wake_ups_off", tenant_id=tenant_id, error=str(exc))
            joined = False
        else:
            joined = True
        if not joined:
            yield NoWakeUps()
            return
        try:
            yield listener
        finally:
            # Also when the client went away and the stream is being cancelled: shielded, or the
            # subscription would outlive its last stream.
            with anyio.CancelScope(shield=True):
                await self._leave(tenant_id, listener)

    async def _join(self, tenant_id: str, listener: _Listener) -> None:
        async with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None:
                tenant = _Tenant()
                subject = self.subjects.events_of_tenant(tenant_id)
                tenant.subscription = await self.nc.subscribe(subject, cb=tenant.deliver)
                await self.nc.flush()  # the server has it: what is published from now on wakes the stream
                self._tenants[tenant_id] = tenant
            tenant.listeners.add(listener)

    async def _leave(self, tenant_id: str, listener: _Listener) -> None:
        async with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None:
                return
            tenant.listeners.discard(listener)
            if tenant.listeners:
                return
            del self._tenants[tenant_id]
            try:
                await tenant.subscription.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - a connection that is gone took its subscriptions with it
                log.info("feed_unsubscribe_failed", error=str(exc))


# --- following -----------------------------------------------------------------------------------------
async def follow_feed(
    engine: AsyncEngine,
    read_ids: ReadIds,
    tenant_id: str,
    wake_ups: WakeUps,
    *,
    after: int,
    patterns: Sequence[str] = (),
    heartbeat_s: float | None = None,
    poll_s: float | None = None,
    lifetime_s: float | None = None,
) -> AsyncIterator[EventEnvelope | None]:
    """Every event of the tenant after ``after`` that matches ``patterns``, in order, as it comes; None
    when nothing was said for ``heartbeat_s`` (say something). Ends after ``lifetime_s``, if given."""
    heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    poll_s = POLL_S if poll_s is None else poll_s
    clock = asyncio.get_running_loop().time
    ends = clock() + lifetime_s if lifetime_s is not None else math.inf
    position = after
    named = 0  # the highest notification id a wake-up named
    retry_delay, retry_until = 0.0, 0.0
    said = clock()  # when the client last heard from the stream
    while clock() < ends:
        page = await read_feed(engine, read_ids, tenant_id, after=position, patterns=patterns, limit=STREAM_PAGE)
        position = page.next_after
        for envelope in page.events:
            yield envelope
        now = clock()
        if page.events:
            said = now
        elif now - said >= heartbeat_s:
            yield None
            said = now
        if page.has_more:
            continue
        wait_s = poll_s
        if named > position:
            # Named by a wake-up, not in the audit log yet: the projector commits a little after the relay
            # publishes. Ask again shortly; after RETRY_FOR_S, leave it to the poll.
            if not retry_delay:
                retry_delay, retry_until = RETRY_FIRST_S, now + RETRY_FOR_S
            if now < retry_until:
                wait_s, retry_delay = retry_delay, min(retry_delay * 2, RETRY_MAX_S)
            else:
                named, retry_delay = position, 0.0
        else:
            retry_delay = 0.0
        wait_s = min(wait_s, max(heartbeat_s - (now - said), 0.0), max(ends - now, 0.0))
        named = max(named, await wake_ups.wait(wait_s))
