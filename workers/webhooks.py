"""The webhook dispatcher (``parley webhooks``): delivers each tenant's events to its endpoints, signed as
the Standard Webhooks specification says, at least once, each endpoint on its own.

How a message travels:
1. The webhooks projector (``projections/webhooks.py``), followed here as a durable consumer of
   ``PARLEY_EVENTS``, writes one message per event and matching endpoint in the transaction that records
   its position: exactly once, whatever is redelivered. A message this dispatcher has room for is written
   locked to it (a lease) and handed over after the commit: no round trip between commit and send.
2. Anything else that is due - a retry whose time came, a message no dispatcher had room for, one whose
   lease ran out because its dispatcher died (kill -9) - is claimed with ``FOR UPDATE SKIP LOCKED``, so
   several dispatchers share the work without sending one message twice at once.
3. Each endpoint has its own lane: at most ``endpoint_concurrency`` requests in flight and a short queue.
   A slow or dead endpoint fills only its own lane; its other messages wait in the table, unclaimed, and
   never hold up another endpoint's (no head-of-line blocking across endpoints).
4. A send is one POST of the event's envelope (personal fields opened only for an endpoint allowed them,
   withheld otherwise), with ``webhook-id`` = the event id (the same on every attempt, so receivers
   de-duplicate), ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
   id.timestamp.body>`` for each valid secret). Only a 2xx counts; redirects are not followed (a redirect
   could point anywhere). Connections go through the guarded client (``adapters/outbound.py``): the address
   connected to is the address checked, private ones refused unless the deployment allows them.
5. Every attempt is written to the delivery log (batched: one transaction for all that finished together).
   A failure is retried after the schedule's next delay (jittered ±20 %), or after ``Retry-After`` where
   the receiver sent one (at most a day); after the last, the message is failed. An endpoint with no
   success for ``disable_after_s`` is disabled (``WebhookDisabled``, reason ``failing``: in the audit log).
6. Replays (``WebhookReplayRequested``) page the tenant's log (the audit log is its index) up to the
   request's position and queue every matching event again, a page per transaction.

A crash loses nothing: unsent messages are rows; a send whose result was not yet written is sent again
(at least once), with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import hmac
import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.eventstore import EventStore
from adapters.outbound import AddressPolicy, guarded_client, read_capped, refusal
from adapters.settings import WEBHOOK_RETRY_SCHEDULE_S
from application.integrations import SigningSecret, Webhooks
from projections.runtime import ProjectorRunner, read_position
from projections.webhooks import Claimed, Endpoint, Scopes, WebhooksProjector, matches, message_id_for
from schema.contract import withhold_personal
from schema.events import EventEnvelope, encode
from schema.locks import advisory_key
from schema.tables import (
    audit_log,
    webhook_attempts,
    webhook_endpoints,
    webhook_health,
    webhook_log_floor,
    webhook_messages,
    webhook_replays,
)

__all__ = ["DispatchConfig", "Dispatcher", "sign"]

log = structlog.get_logger("parley.webhooks")

RESPONSE_CAP = 64 * 1024
"""Bytes of a receiver's answer read at most; the log keeps an excerpt of ``EXCERPT_CHARS``."""
EXCERPT_CHARS = 1000
MAX_RETRY_AFTER_S = 86_400.0
REPLAY_PAGE = 500
USER_AGENT = "parley-webhooks/1"


def sign(secrets: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64 HMAC-SHA256>`` per secret, space-separated."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in secrets
    )


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now, at most a day."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class DispatchConfig:
    retry_schedule_s: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE_S
    disable_after_s: float = 5 * 86_400.0
    lease_s: float = 120.0
    timeout_s: float = 15.0
    concurrency: int = 256
    endpoint_concurrency: int = 8
    tenant_concurrency: int = 64
    allow_private: bool = False
    poll_s: float = 1.0
    """How often due messages and replays are looked for when nothing says sooner."""
    log_retention_s: float = 30 * 86_400.0
    sweep_every_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> DispatchConfig:
        values = dict(
            retry_schedule_s=tuple(settings.webhook_retry_schedule_s),
            disable_after_s=settings.webhook_disable_after_s,
            lease_s=settings.webhook_lease_s,
            timeout_s=settings.webhook_timeout_s,
            concurrency=settings.webhook_concurrency,
            endpoint_concurrency=settings.webhook_endpoint_concurrency,
            tenant_concurrency=settings.webhook_tenant_concurrency,
            allow_private=settings.webhooks_allow_private,
            log_retention_s=settings.webhook_log_retention_s,
        )
        values.update(overrides)
        return cls(**values)

    def delay_s(self, attempt: int) -> float | None:
        """Seconds before the attempt after attempt number ``attempt`` (1-based); None: no more attempts."""
        if attempt > len(self.retry_schedule_s):
            return None
        return self.retry_schedule_s[attempt - 1] * random.uniform(0.8, 1.2)


@dataclass
class _Outcome:
    claim: Claimed
    at: datetime
    latency_ms: float
    status_code: int | None = None
    excerpt: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    release: bool = False
    """Not sent: the endpoint is disabled (the message waits) or gone (it is cancelled)."""
    cancelled: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class _Lane:
    queue: deque[Claimed] = field(default_factory=deque)
    running: int = 0


class _Events:
    """Sealed envelopes by notification id: the sends of one event to many endpoints read it once, and the
    reads of one moment go to the event store together."""

    def __init__(self, store: EventStore, size: int = 4096) -> None:
        self.store = store
        self.size = size
        self.cache: dict[int, EventEnvelope] = {}
        self.waiting: dict[int, list[asyncio.Future[EventEnvelope | None]]] = {}
        self.reading = False

    def put(self, events: dict[int, EventEnvelope]) -> None:
        if len(self.cache) + len(events) > self.size:
            self.cache.clear()
        self.cache.update(events)

    async def get(self, notification_id: int) -> EventEnvelope | None:
        if notification_id in self.cache:
            return self.cache[notification_id]
        future: asyncio.Future[EventEnvelope | None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(notification_id, []).append(future)
        if not self.reading:
            self.reading = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._read()))
        return await future

    async def _read(self) -> None:
        waiting, self.waiting = self.waiting, {}
        self.reading = False
        try:
            found = {e.id: e for e in await self.store.call(self.store.read_ids, sorted(waiting))}
        except Exception as exc:  # noqa: BLE001 - every waiter gets the error
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        self.put(found)
        for notification_id, futures in waiting.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(notification_id))


class Dispatcher:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        store: EventStore,
        webhooks: Webhooks,
        config: DispatchConfig,
        dispatcher_id: str | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.webhooks = webhooks
        self.config = config
        self.dispatcher_id = dispatcher_id or f"dispatcher-{uuid.uuid4().hex[:12]}"
        self.projector = WebhooksProjector(
            claim=self._fresh_room, dispatcher_id=self.dispatcher_id, lease_s=config.lease_s
        )
        self.lanes: dict[str, _Lane] = {}
        self.tenant_in_flight: dict[str, int] = {}
        """Requests in flight per tenant: one tenant's slow endpoints (many of them) cannot take every slot."""
        self.held = 0
        """Messages this dispatcher holds (queued or being sent)."""
        self.outcomes: list[_Outcome] = []
        self.outcome_ready = asyncio.Event()
        self.wake_claims = asyncio.Event()
        self.due: list[float] = []
        """When retries this dispatcher scheduled fall due (a heap of monotonic times)."""
        self.backlogged: set[str] = set()
        """Endpoints with messages waiting in the table beyond what their lanes took."""
        self.events = _Events(store)
        self.endpoint_cache: dict[str, tuple[float, Endpoint | None]] = {}
        self.endpoint_reads: dict[str, asyncio.Future[Endpoint | None]] = {}
        self.secret_cache: dict[tuple[str, int], list[SigningSecret]] = {}
        self.client: httpx.AsyncClient | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        """The sends in flight."""

    # --- lanes -------------------------------------------------------------------------------------------
    def has_room(self, endpoint_id: str) -> bool:
        lane = self.lanes.get(endpoint_id)
        held = 0 if lane is None else lane.running + len(lane.queue)
        return held < 2 * self.config.endpoint_concurrency and self.held < 4 * self.config.concurrency

    def offer(self, claims: Sequence[Claimed]) -> None:
        for claim in claims:
            self.lanes.setdefault(claim.endpoint_id, _Lane()).queue.append(claim)
            self.held += 1
        for endpoint_id in {c.endpoint_id for c in claims}:
            self._pump(endpoint_id)

    def _pump(self, endpoint_id: str) -> None:
        lane = self.lanes[endpoint_id]
        while (
            lane.queue
            and lane.running < self.config.endpoint_concurrency
            and len(self.tasks) < self.config.concurrency
            and self.tenant_in_flight.get(lane.queue[0].tenant_id, 0) < self.config.tenant_concurrency
        ):
            claim = lane.queue.popleft()
            lane.running += 1
            self.tenant_in_flight[claim.tenant_id] = self.tenant_in_flight.get(claim.tenant_id, 0) + 1
            task = asyncio.ensure_future(self._send(claim))
            self.tasks.add(task)
            task.add_done_callback(lambda t, c=claim: self._sent(t, c))

    def _sent(self, task: asyncio.Task[None], claim: Claimed) -> None:
        self.tasks.discard(task)
        lane = self.lanes[claim.endpoint_id]
        lane.running -= 1
        self.held -= 1
        if self.tenant_in_flight[claim.tenant_id] <= 1:
            del self.tenant_in_flight[claim.tenant_id]
        else:
            self.tenant_in_flight[claim.tenant_id] -= 1
        if not lane.queue and not lane.running:
            del self.lanes[claim.endpoint_id]
        if claim.endpoint_id in self.backlogged and self.has_room(claim.endpoint_id):
            self.wake_claims.set()  # more of this endpoint's messages wait in the table
        for endpoint_id in [e for e, lane in self.lanes.items() if lane.queue]:  # a slot freed: any lane may go
            self._pump(endpoint_id)

    def _fresh_room(self, endpoint_id: str) -> bool:
        """The projector's question: may a new message to this endpoint be handed over at once? When not,
        it waits in the table, and the endpoint is noted as having a backlog to claim as its lane frees."""
        if self.has_room(endpoint_id):
            return True
        self.backlogged.add(endpoint_id)
        return False

    def _release_queued(self) -> None:
        """On the way out: what waits in the lanes goes back to the table for another dispatcher now,
        rather than when its lease ends."""
        now = datetime.now(UTC)
        for lane in self.lanes.values():
            while lane.queue:
                claim = lane.queue.popleft()
                self.held -= 1
                self.outcomes.append(_Outcome(claim=claim, at=now, latency_ms=0.0, release=True))
        self.outcome_ready.set()

    # --- one send ----------------------------------------------------------------------------------------
    async def _endpoint(self, endpoint_id: str) -> Endpoint | None:
        """The endpoint as the read model has it, cached for a second (a change shows within that); the
        sends that find it stale together wait on one read."""
        cached = self.endpoint_cache.get(endpoint_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        loading = self.endpoint_reads.get(endpoint_id)
        if loading is None:
            loading = asyncio.ensure_future(self._read_endpoint(endpoint_id))
            self.endpoint_reads[endpoint_id] = loading
            loading.add_done_callback(lambda _f: self.endpoint_reads.pop(endpoint_id, None))
        return await asyncio.shield(loading)

    async def _read_endpoint(self, endpoint_id: str) -> Endpoint | None:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(select(webhook_endpoints).where(webhook_endpoints.c.endpoint_id == endpoint_id)))
                .mappings()
                .first()
            )
        endpoint = None if row is None else Endpoint.from_row(row)
        self.endpoint_cache[endpoint_id] = (time.monotonic() + 1.0, endpoint)
        return endpoint

    async def _secrets(self, endpoint: Endpoint) -> list[bytes]:
        key = (endpoint.endpoint_id, endpoint.secret_version)
        secrets = self.secret_cache.get(key)
        if secrets is None:
            secrets = await self.store.call(self.webhooks.signing_secrets, uuid.UUID(endpoint.endpoint_id))
            self.secret_cache = {k: v for k, v in self.secret_cache.items() if k[0] != endpoint.endpoint_id}
            self.secret_cache[key] = secrets
        now = datetime.now(UTC)
        return [s.key for s in secrets if s.valid_until is None or now < s.valid_until]

    async def _body(self, endpoint: Endpoint, event: EventEnvelope) -> bytes:
        if endpoint.include_personal:
            event = (await self.store.call(self.store.open_envelopes, [event]))[0]
        else:
            event = withhold_personal(event)
        return encode(event)

    async def _send(self, claim: Claimed) -> None:
        at = datetime.now(UTC)
        started = time.perf_counter()
        outcome = _Outcome(claim=claim, at=at, latency_ms=0.0)
        try:
            endpoint = await self._endpoint(claim.endpoint_id)
            if endpoint is None or not endpoint.enabled:
                outcome.release, outcome.cancelled = True, endpoint is None
                return
            event = await self.events.get(claim.notification_id)
            if event is None:
                outcome.error = "EVENT_NOT_FOUND"
                return
            body = await self._body(endpoint, event)
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": claim.event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(await self._secrets(endpoint), claim.event_id, timestamp, body),
            }
            assert self.client is not None
            started = time.perf_counter()
            async with self.client.stream("POST", endpoint.url, content=body, headers=headers) as response:
                data, _cut = await read_capped(response, RESPONSE_CAP)
                outcome.status_code = response.status_code
                outcome.excerpt = data[: EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS]
                if response.is_redirect:
                    outcome.error = "REDIRECT_NOT_FOLLOWED"
                outcome.retry_after_s = retry_after_s(response.headers.get("retry-after"), at)
        except Exception as exc:  # noqa: BLE001 - every failure is an attempt in the log
            outcome.error = _describe(exc)
        finally:
            outcome.latency_ms = (time.perf_counter() - started) * 1000
            self.outcomes.append(outcome)
            self.outcome_ready.set()

    # --- the delivery log ----------------------------------------------------------------------------------
    async def _flush(self) -> None:
        outcomes, self.outcomes = self.outcomes, []
        if not outcomes:
            return
        now = datetime.now(UTC)
        attempts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        released: list[dict[str, Any]] = []
        health: dict[str, bool] = {}
        for o in outcomes:
            c = o.claim
            if o.release:
                released.append({"m_id": c.message_id, "m_status": "cancelled" if o.cancelled else "pending"})
                continue
            number = c.attempts + 1
            attempts.append(
                {
                    "message_id": c.message_id,
                    "tenant_id": c.tenant_id,
                    "endpoint_id": c.endpoint_id,
                    "attempt": number,
                    "at": o.at,
                    "status_code": o.status_code,
                    "latency_ms": round(o.latency_ms, 3),
                    "response_excerpt": o.excerpt,
                    "error": o.error,
                    "dispatcher": self.dispatcher_id,
                }
            )
            if o.delivered:
                status, next_at = "delivered", None
            else:
                delay = self.config.delay_s(number)
                if delay is not None and o.retry_after_s is not None:
                    delay = o.retry_after_s
                status = "pending" if delay is not None else "failed"
                next_at = None if delay is None else now + timedelta(seconds=delay)
                if next_at is not None:
                    heapq.heappush(self.due, time.monotonic() + delay)
            health[c.endpoint_id] = health.get(c.endpoint_id, False) or o.delivered
            updates.append(
                {
                    "m_id": c.message_id,
                    "m_status": status,
                    "m_attempts": number,
                    "m_next": next_at,
                    "m_last": o.at,
                    "m_delivered": now if o.delivered else None,
                    "m_code": o.status_code,
                    "m_error": o.error,
                }
            )
        mine = webhook_messages.c.locked_by == self.dispatcher_id
        async with self.engine.begin() as conn:
            if attempts:
                await conn.execute(insert(webhook_attempts), attempts)
            if updates:
                await conn.execute(
                    webhook_messages.update()
                    .where(webhook_messages.c.message_id == bindparam("m_id"), mine)
                    .values(
                        status=bindparam("m_status"),
                        attempts=bindparam("m_attempts"),
                        next_attempt_at=bindparam("m_next"),
                        last_attempt_at=bindparam("m_last"),
                        delivered_at=bindparam("m_delivered"),
                        last_status=bindparam("m_code"),
                        last_error=bindparam("m_error"),
                        locked_by=None,
                        locked_until=None,
                    ),
                    updates,
                )
            if released:
                await conn.execute(
                    webhook_messages.update()
                    .where(webhook_messages.c.message_id == bindparam("m_id"), mine)
                    .values(status=bindparam("m_status"), locked_by=None, locked_until=None),
                    released,
                )
            for endpoint_id, ok in sorted(health.items()):
                row = {"endpoint_id": endpoint_id}
                if ok:
                    row.update(last_success_at=now, failing_since=None)
                    on_conflict = {"last_success_at": now, "failing_since": None}
                else:
                    row.update(last_failure_at=now, failing_since=now)
                    on_conflict = {
                        "last_failure_at": now,
                        "failing_since": func.coalesce(webhook_health.c.failing_since, now),
                    }
                await conn.execute(
                    insert(webhook_health)
                    .values(**row)
                    .on_conflict_do_update(index_elements=["endpoint_id"], set_=on_conflict)
                )
        failing = [e for e, ok in health.items() if not ok]
        if failing:
            await self._disable_failing(failing, now)
        if self.due and self.due[0] <= time.monotonic() + 0.1:
            self.wake_claims.set()

    async def _disable_failing(self, endpoint_ids: list[str], now: datetime) -> None:
        cutoff = now - timedelta(seconds=self.config.disable_after_s)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(webhook_health.c.endpoint_id, webhook_health.c.failing_since).where(
                        webhook_health.c.endpoint_id.in_(endpoint_ids),
                        webhook_health.c.failing_since <= cutoff,
                        webhook_health.c.disabled_at.is_(None),
                    )
                )
            ).all()
        for endpoint_id, failing_since in rows:
            endpoint = await self._endpoint(str(endpoint_id))
            if endpoint is None:
                continue
            disabled = await self.webhooks.disable_failing(
                endpoint.tenant_id, uuid.UUID(str(endpoint_id)), failing_since
            )
            async with self.engine.begin() as conn:
                await conn.execute(
                    webhook_health.update()
                    .where(webhook_health.c.endpoint_id == str(endpoint_id))
                    .values(disabled_at=now)
                )
            self.endpoint_cache.pop(str(endpoint_id), None)
            if disabled:
                log.warning(
                    "webhook_endpoint_disabled", endpoint_id=str(endpoint_id), failing_since=failing_since.isoformat()
                )

    # --- claiming what is due --------------------------------------------------------------------------------
    _CLAIM = text(
        """
        WITH candidates AS (
            SELECT m.message_id, m.endpoint_id, m.next_attempt_at
            FROM webhook_messages m
            JOIN rm_webhook_endpoints e ON e.endpoint_id = m.endpoint_id AND e.enabled
            WHERE m.status = 'pending' AND m.next_attempt_at <= now()
              AND (m.locked_until IS NULL OR m.locked_until < now())
              AND NOT (m.endpoint_id = ANY(CAST(:busy AS uuid[])))
            ORDER BY m.next_attempt_at
            LIMIT :scan
            FOR UPDATE OF m SKIP LOCKED
        ), ranked AS (
            SELECT message_id, row_number() OVER (PARTITION BY endpoint_id ORDER BY next_attempt_at) AS rank
            FROM candidates
        )
        UPDATE webhook_messages w
        SET locked_by = :me, locked_until = now() + make_interval(secs => :lease)
        FROM ranked r
        WHERE w.message_id = r.message_id AND r.rank <= :per_endpoint
        RETURNING w.message_id, w.tenant_id, w.endpoint_id, w.event_id, w.notification_id, w.attempts
        """
    )

    async def claim_due(self) -> int:
        room = 4 * self.config.concurrency - self.held
        if room <= 0:
            return 0
        busy = [e for e in self.lanes if not self.has_room(e)]
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    self._CLAIM,
                    {
                        "busy": busy,
                        "scan": min(room, 1000),
                        "me": self.dispatcher_id,
                        "lease": self.config.lease_s,
                        "per_endpoint": 2 * self.config.endpoint_concurrency,
                    },
                )
            ).all()
        per_endpoint: dict[str, int] = {}
        for r in rows:
            per_endpoint[str(r.endpoint_id)] = per_endpoint.get(str(r.endpoint_id), 0) + 1
        self.backlogged = {e for e in self.backlogged if e in self.lanes} | {
            e for e, n in per_endpoint.items() if n >= 2 * self.config.endpoint_concurrency
        }
        claims = [Claimed.from_row(r) for r in rows]
        self.offer(claims)
        return len(claims)

    # --- replays -----------------------------------------------------------------------------------------
    async def replay_step(self) -> bool:
        """Queue one page of one unfinished replay; False when there was nothing to do."""
        async with self.engine.begin() as conn:
            replay = (
                (
                    await conn.execute(
                        select(webhook_replays)
                        .where(webhook_replays.c.done_at.is_(None))
                        .order_by(webhook_replays.c.created_at)
                        .limit(1)
                        .with_for_update(skip_locked=True)
                    )
                )
                .mappings()
                .first()
            )
            if replay is None:
                return False
            if await read_position(self.engine, "audit") < replay["upto"]:
                return False  # the tenant's index has not reached the request yet
            where = webhook_replays.c.replay_id == replay["replay_id"]
            row = (
                (
                    await conn.execute(
                        select(webhook_endpoints).where(webhook_endpoints.c.endpoint_id == replay["endpoint_id"])
                    )
                )
                .mappings()
                .first()
            )
            if row is None:  # deleted meanwhile
                await conn.execute(webhook_replays.update().where(where).values(done_at=func.now()))
                return True
            endpoint = Endpoint.from_row(row)
            endpoint.enabled = True  # a disabled endpoint's replay waits in its messages
            query = (
                select(audit_log.c.notification_id)
                .where(
                    audit_log.c.tenant_id == replay["tenant_id"],
                    audit_log.c.notification_id > replay["cursor"],
                    audit_log.c.notification_id <= replay["upto"],
                )
                .order_by(audit_log.c.notification_id)
                .limit(REPLAY_PAGE)
            )
            if replay["since"] is not None:
                query = query.where(audit_log.c.occurred_at >= replay["since"])
            ids = [int(i) for i in (await conn.execute(query)).scalars()]
            events = await self.store.call(self.store.read_ids, ids) if ids else []
            scopes = Scopes(conn)
            rows = [
                {
                    "message_id": message_id_for(endpoint.endpoint_id, e.event_id),
                    "tenant_id": endpoint.tenant_id,
                    "endpoint_id": endpoint.endpoint_id,
                    "event_id": str(e.event_id),
                    "notification_id": e.id,
                    "event_type": e.type,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": func.now(),
                    "created_at": func.now(),
                }
                for e in events
                if await matches(endpoint, e, scopes)
            ]
            if rows:
                statement = insert(webhook_messages).values(rows)
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["endpoint_id", "event_id"],
                        set_={
                            "status": "pending",
                            "next_attempt_at": func.now(),
                            "locked_by": None,
                            "locked_until": None,
                        },
                    )
                )
            done = len(ids) < REPLAY_PAGE
            await conn.execute(
                webhook_replays.update()
                .where(where)
                .values(
                    cursor=ids[-1] if ids else replay["upto"],
                    queued=webhook_replays.c.queued + len(rows),
                    done_at=func.now() if done else None,
                )
            )
        if rows:
            self.wake_claims.set()
        return not done

    # --- the delivery log's retention -----------------------------------------------------------------------
    _SWEEP = text(
        """
        WITH gone AS (
            DELETE FROM webhook_messages
            WHERE message_id IN (
                SELECT message_id FROM webhook_messages
                WHERE status IN ('delivered', 'failed', 'cancelled') AND created_at < :cutoff
                LIMIT :batch
            )
            RETURNING message_id, notification_id
        ), attempts AS (
            DELETE FROM webhook_attempts a USING gone WHERE a.message_id = gone.message_id
        )
        SELECT count(*), max(notification_id) FROM gone
        """
    )

    async def sweep_log(self, *, now: datetime | None = None, batch: int = 10_000) -> int:
        """Drop finished messages older than ``log_retention_s``, with their attempts, a batch per transaction;
        one dispatcher at a time. Pending ones stay whatever their age. Returns how many went."""
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.config.log_retention_s)
        dropped = 0
        while True:
            async with self.engine.begin() as conn:
                if not await conn.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": advisory_key("webhook-log-sweep")}
                ):
                    return dropped
                count, highest = (await conn.execute(self._SWEEP, {"cutoff": cutoff, "batch": batch})).one()
                if count:
                    await conn.execute(
                        insert(webhook_log_floor)
                        .values(name="floor", notification_id=highest, swept_at=func.now())
                        .on_conflict_do_update(
                            index_elements=["name"],
                            set_={
                                "notification_id": func.greatest(webhook_log_floor.c.notification_id, highest),
                                "swept_at": func.now(),
                            },
                        )
                    )
            dropped += int(count or 0)
            if (count or 0) < batch:
                if dropped:
                    log.info("webhook_log_swept", messages=dropped)
                return dropped

    # --- the loops ---------------------------------------------------------------------------------------
    def _take_fresh(self) -> None:
        claims, events = self.projector.take_fresh()
        self.events.put(events)
        self.offer(claims)

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        """Claims what is due, and moves replays on a page a round, until ``stop``. It wakes when a retry
        falls due, when a lane with a backlog frees, when a replay queued messages, or every ``poll_s``."""
        next_sweep = time.monotonic() + min(60.0, self.config.sweep_every_s)
        while not stop.is_set():
            more = False
            try:
                await self.claim_due()
                more = await self.replay_step()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.config.sweep_every_s
                    await self.sweep_log()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("webhook_claim_failed", error_type=type(exc).__name__, error=str(exc)[:300])
            # Retries due within the next 100 ms go in this round: a dead endpoint's hundreds of retries, each
            # with its own jitter, make a few rounds a second rather than one each.
            now = time.monotonic()
            while self.due and self.due[0] <= now + 0.1:
                heapq.heappop(self.due)
            wait = (
                0.0
                if more
                else min(self.config.poll_s, max(0.1, self.due[0] - now) if self.due else self.config.poll_s)
            )
            self.wake_claims.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, self.wake_claims), timeout=wait)
            await asyncio.sleep(0.05)  # a round at most every 50 ms, however often woken

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set() or self.outcomes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, self.outcome_ready), timeout=1.0)
            self.outcome_ready.clear()
            await asyncio.sleep(0.005)  # let the sends finishing together share one transaction
            try:
                await self._flush()
            except Exception as exc:  # noqa: BLE001 - kept for the next flush
                log.warning("webhook_log_failed", error_type=type(exc).__name__, error=str(exc)[:300])
                await asyncio.sleep(1.0)
            if stop.is_set() and not self.tasks:
                break

    async def run(self, js: Any, subjects: Any, stop: asyncio.Event) -> None:
        """Follow the log, send, log, until ``stop`` is set; then let the sends under way finish (at most
        the request timeout) and write their results."""
        timeout = httpx.Timeout(self.config.timeout_s, connect=min(5.0, self.config.timeout_s))
        self.client = guarded_client(
            policy=AddressPolicy(allow_private=self.config.allow_private),
            timeout=timeout,
            max_connections=self.config.concurrency,
            max_keepalive=self.config.concurrency,  # one kept-alive connection per request in flight: no re-dials
        )
        runner = ProjectorRunner(self.projector, engine=self.engine, store=self.store, after_commit=self._take_fresh)
        log.info("webhook_dispatcher_started", dispatcher=self.dispatcher_id)
        flushing = asyncio.ensure_future(self._flush_loop(stop))
        try:
            await asyncio.gather(runner.run(js, subjects, stop), self._claim_loop(stop))
            self._release_queued()
            if self.tasks:
                await asyncio.wait(list(self.tasks), timeout=self.config.timeout_s + 1)
            self.outcome_ready.set()
            await flushing
            await self._flush()  # what finished after the flush loop's last round
        finally:
            flushing.cancel()
            for task in list(self.tasks):
                task.cancel()
            await self.client.aclose()


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _describe(exc: BaseException) -> str:
    refused = refusal(exc)
    if refused is not None:
        return f"URL_FORBIDDEN: {refused}"[:300]
    if isinstance(exc, httpx.TimeoutException):
        return f"TIMEOUT: {type(exc).__name__}"
    if isinstance(exc, httpx.ConnectError):
        return f"CONNECT_FAILED: {exc}"[:300]
    if isinstance(exc, httpx.HTTPError):
        return f"HTTP_ERROR: {type(exc).__name__}: {exc}"[:300]
    return f"ERROR: {type(exc).__name__}"
