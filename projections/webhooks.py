"""The webhooks projector: every tenant's endpoints as a read model, and one message per event and matching
endpoint, written in the transaction that records the projector's position.

So each event becomes each of its messages exactly once, however often it arrives (kill -9, redelivery,
two dispatchers): the messages are the dispatcher's outbox (``workers/webhooks.py`` sends them). An event
matches an endpoint of its own tenant that is enabled when the event is applied, whose event-type patterns
match, and, where the endpoint names users or models, that is by or about one of those users (its actor,
the user it is about, the owner of its chat, the user who asked for its generation) and names one of those
models (its ``model``, or its generation's).

Only what the rows need is read: the projector keeps events sealed (``sealed = True``); a delivery opens
personal fields only for an endpoint allowed them, at the time it is sent, so that content erased before a
retry goes out erased. A rebuild re-derives the endpoints and scopes; the delivery log is kept, and only
messages missing from it are added (``ON CONFLICT DO NOTHING``): a rebuild re-sends nothing delivered.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.integrations import type_matcher
from schema.contract import (
    WebhookChanged,
    WebhookCreated,
    WebhookDeleted,
    WebhookDisabled,
    WebhookEnabled,
    WebhookReplayRequested,
    WebhookRetryRequested,
    WebhookSecretRotated,
    decode_data,
    subject_fields,
)
from schema.events import EventEnvelope
from schema.tables import (
    webhook_endpoints,
    webhook_health,
    webhook_log_floor,
    webhook_messages,
    webhook_replays,
    webhook_scopes,
)

__all__ = ["Claimed", "Endpoint", "Scopes", "WebhooksProjector", "matches", "message_id_for"]


def message_id_for(endpoint_id: str, event_id: uuid.UUID | str) -> str:
    """The message of one event to one endpoint has a fixed id: retries, replays and rebuilds find it."""
    return str(uuid.uuid5(uuid.UUID(str(endpoint_id)), str(event_id)))


@dataclass(frozen=True)
class Claimed:
    """A message a dispatcher holds (``locked_by`` it, until its lease ends) and is to send now."""

    message_id: str
    tenant_id: str
    endpoint_id: str
    event_id: str
    notification_id: int
    attempts: int

    @classmethod
    def from_row(cls, row: Any) -> Claimed:
        """From a ``webhook_messages`` row, or a RETURNING of those columns."""
        return cls(
            message_id=str(row.message_id),
            tenant_id=row.tenant_id,
            endpoint_id=str(row.endpoint_id),
            event_id=str(row.event_id),
            notification_id=int(row.notification_id),
            attempts=int(row.attempts),
        )


@dataclass(frozen=True)
class Scope:
    user_id: str | None
    model: str | None


@dataclass
class Endpoint:
    """An endpoint as the projector and the dispatcher read it."""

    endpoint_id: str
    tenant_id: str
    url: str
    event_types: list[str]
    user_ids: list[str]
    models: list[str]
    include_personal: bool
    enabled: bool
    secret_version: int

    def __post_init__(self) -> None:
        self.wants_type = type_matcher(self.event_types)

    @property
    def scoped(self) -> bool:
        return bool(self.user_ids or self.models)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Endpoint:
        return cls(
            endpoint_id=str(row["endpoint_id"]),
            tenant_id=row["tenant_id"],
            url=row["url"],
            event_types=list(row["event_types"]),
            user_ids=list(row["user_ids"]),
            models=list(row["models"]),
            include_personal=bool(row["include_personal"]),
            enabled=bool(row["enabled"]),
            secret_version=int(row["secret_version"]),
        )


def tenant_of(event: EventEnvelope) -> str:
    return event.tenant_id or "platform"


class Scopes:
    """Scope lookups within one transaction, remembered; what this batch wrote is seen at once."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.known: dict[str, Scope | None] = {}
        self.written: dict[str, Scope] = {}

    async def get(self, aggregate_id: Any) -> Scope | None:
        key = str(aggregate_id)
        if key not in self.known:
            row = (await self.conn.execute(select(webhook_scopes).where(webhook_scopes.c.aggregate_id == key))).first()
            self.known[key] = None if row is None else Scope(row.user_id, row.model)
        return self.known[key]

    def put(self, aggregate_id: Any, scope: Scope) -> None:
        """Known at once to this transaction's lookups; written with the rest by ``flush``."""
        key = str(aggregate_id)
        self.known[key] = scope
        self.written[key] = scope

    async def flush(self) -> None:
        if self.written:
            await self.conn.execute(
                insert(webhook_scopes).on_conflict_do_nothing(),
                [{"aggregate_id": k, "user_id": v.user_id, "model": v.model} for k, v in self.written.items()],
            )
            self.written = {}


async def users_of(event: EventEnvelope, scopes: Scopes) -> set[str]:
    """The users an event is by or about."""
    users: set[str] = set()
    if event.actor.startswith("user:"):
        users.add(event.actor[5:])
    if event.aggregate_type == "User":
        users.add(str(event.aggregate_id))
    for kind, field in subject_fields(event.type).items():
        value = event.data.get(field)
        if not value:
            continue
        if kind == "user":
            users.add(str(value))
        elif (chat := await scopes.get(value)) is not None and chat.user_id:
            users.add(chat.user_id)
    own = await scopes.get(event.aggregate_id)
    if own is not None and own.user_id:
        users.add(own.user_id)
    return users


async def models_of(event: EventEnvelope, scopes: Scopes) -> set[str]:
    models = set()
    model = event.data.get("model")
    if isinstance(model, str) and model:
        models.add(model)
    own = await scopes.get(event.aggregate_id)
    if own is not None and own.model:
        models.add(own.model)
    return models


async def matches(endpoint: Endpoint, event: EventEnvelope, scopes: Scopes) -> bool:
    if not endpoint.enabled or not endpoint.wants_type(event.type):
        return False
    if endpoint.user_ids and not (await users_of(event, scopes)) & set(endpoint.user_ids):
        return False
    return not endpoint.models or bool((await models_of(event, scopes)) & set(endpoint.models))


class WebhooksProjector:
    """See the module docstring. ``claim(endpoint_id)`` says whether this process's dispatcher has room to
    send a new message to that endpoint now: if so the message is written locked to it (``dispatcher_id``,
    for ``lease_s``) and handed over after the commit (``take_fresh``), without another round trip; if not,
    or without a dispatcher (a rebuild), it waits unlocked for whichever dispatcher claims it."""

    name = "webhooks"
    tables = (webhook_endpoints, webhook_scopes)
    sealed = True

    def __init__(
        self, *, claim: Callable[[str], bool] | None = None, dispatcher_id: str | None = None, lease_s: float = 120.0
    ) -> None:
        self.claim = claim
        self.dispatcher_id = dispatcher_id
        self.lease_s = lease_s
        self._fresh: list[Claimed] = []
        self._fresh_events: dict[int, EventEnvelope] = {}
        self._floor: tuple[float, int] | None = None

    def handles(self, event_type: str) -> bool:
        return True

    def take_fresh(self) -> tuple[list[Claimed], dict[int, EventEnvelope]]:
        """The messages the last committed transaction wrote locked to this dispatcher, and their events (as
        they came, sealed), so that sending them reads nothing again."""
        fresh, events = self._fresh, self._fresh_events
        self._fresh, self._fresh_events = [], {}
        return fresh, events

    async def apply(self, conn: AsyncConnection, event: EventEnvelope) -> None:
        await self.apply_many(conn, [event])

    async def apply_many(self, conn: AsyncConnection, events: Sequence[EventEnvelope]) -> None:
        self._fresh, self._fresh_events = [], {}  # what a failed transaction wrote was rolled back with it
        tenants = {tenant_of(e) for e in events}
        endpoints = await self._endpoints(conn, tenants)
        scopes = Scopes(conn)
        rows: list[dict[str, Any]] = []
        for event in events:
            tenant = tenant_of(event)
            if event.aggregate_type == "Webhook":
                await self._apply_webhook(conn, event)
                endpoints.update(await self._endpoints(conn, {tenant}))
            elif event.type == "ChatCreated":
                scopes.put(event.aggregate_id, Scope(str(event.data.get("owner_id") or ""), None))
            elif event.type == "GenerationRequested":
                scopes.put(
                    event.aggregate_id, Scope(str(event.data.get("user_id") or ""), str(event.data.get("model") or ""))
                )
            for endpoint in endpoints.get(tenant, ()):
                if await matches(endpoint, event, scopes):
                    rows.append(self._message(endpoint, event))
        await scopes.flush()
        if rows:
            floor = await self._log_floor(conn)
            rows = [row for row in rows if row["notification_id"] > floor]
        if rows:
            await self._insert(conn, rows, {e.id: e for e in events})

    async def _log_floor(self, conn: AsyncConnection) -> int:
        """Messages of events up to this position may have been swept from the delivery log: none is written
        for them again (a rebuild would re-send them). Far behind the live position; read once a minute."""
        now = time.monotonic()
        if self._floor is None or self._floor[0] < now:
            found = await conn.scalar(select(webhook_log_floor.c.notification_id))
            self._floor = (now + 60.0, int(found or 0))
        return self._floor[1]

    async def _endpoints(self, conn: AsyncConnection, tenants: set[str]) -> dict[str, list[Endpoint]]:
        found: dict[str, list[Endpoint]] = {tenant: [] for tenant in tenants}
        result = await conn.execute(
            select(webhook_endpoints).where(
                webhook_endpoints.c.tenant_id.in_(sorted(tenants)), webhook_endpoints.c.enabled.is_(True)
            )
        )
        for row in result.mappings():
            found[row["tenant_id"]].append(Endpoint.from_row(row))
        return found

    def _message(self, endpoint: Endpoint, event: EventEnvelope) -> dict[str, Any]:
        mine = self.claim is not None and self.dispatcher_id is not None and self.claim(endpoint.endpoint_id)
        return {
            "message_id": message_id_for(endpoint.endpoint_id, event.event_id),
            "tenant_id": endpoint.tenant_id,
            "endpoint_id": endpoint.endpoint_id,
            "event_id": str(event.event_id),
            "notification_id": event.id,
            "event_type": event.type,
            "locked_by": self.dispatcher_id if mine else None,
            "lease": mine,
        }

    _INSERT = (
        insert(webhook_messages)
        .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
        .returning(
            webhook_messages.c.message_id,
            webhook_messages.c.tenant_id,
            webhook_messages.c.endpoint_id,
            webhook_messages.c.event_id,
            webhook_messages.c.notification_id,
            webhook_messages.c.attempts,
            webhook_messages.c.locked_by,
        )
    )
    """One statement, compiled once, for any number of rows (SQLAlchemy batches them into multi-row VALUES)."""

    async def _insert(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], events: Mapping[int, EventEnvelope]
    ) -> None:
        now = datetime.now(UTC)
        lease_end = now + timedelta(seconds=self.lease_s)
        params = [
            {
                **{k: v for k, v in row.items() if k != "lease"},
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "locked_until": lease_end if row["lease"] else None,
            }
            for row in rows
        ]
        for row in await conn.execute(self._INSERT, params):
            if row.locked_by is not None and row.locked_by == self.dispatcher_id:
                claim = Claimed.from_row(row)
                self._fresh.append(claim)
                self._fresh_events[claim.notification_id] = events[claim.notification_id]

    async def _apply_webhook(self, conn: AsyncConnection, event: EventEnvelope) -> None:
        endpoint_id = str(event.aggregate_id)
        at: datetime = event.occurred_at
        data = decode_data(event.type, event.data)
        where = webhook_endpoints.c.endpoint_id == endpoint_id
        match data:
            case WebhookCreated():
                await conn.execute(
                    insert(webhook_endpoints)
                    .values(
                        endpoint_id=endpoint_id,
                        tenant_id=data.tenant_id,
                        url=data.url,
                        description=data.description,
                        event_types=data.event_types,
                        user_ids=data.user_ids,
                        models=data.models,
                        include_personal=data.include_personal,
                        enabled=True,
                        secret_version=event.aggregate_version,
                        created_at=at,
                        updated_at=at,
                    )
                    .on_conflict_do_nothing()
                )
            case WebhookChanged():
                columns = {"url", "description", "event_types", "user_ids", "models", "include_personal"}
                changes = {k: v for k, v in data.changes.items() if k in columns}
                await conn.execute(webhook_endpoints.update().where(where).values(**changes, updated_at=at))
            case WebhookDisabled():
                await conn.execute(
                    webhook_endpoints.update()
                    .where(where)
                    .values(enabled=False, disabled_reason=data.reason, updated_at=at)
                )
            case WebhookRetryRequested():
                await conn.execute(
                    webhook_messages.update()
                    .where(
                        and_(
                            webhook_messages.c.message_id == data.message_id,
                            webhook_messages.c.endpoint_id == endpoint_id,
                        )
                    )
                    .values(status="pending", next_attempt_at=func.now(), locked_by=None, locked_until=None)
                )
            case WebhookReplayRequested():
                await conn.execute(
                    insert(webhook_replays)
                    .values(
                        replay_id=data.replay_id,
                        tenant_id=tenant_of(event),
                        endpoint_id=endpoint_id,
                        since=data.since,
                        cursor=data.after or 0,
                        upto=event.id,
                        created_at=at,
                    )
                    .on_conflict_do_nothing()
                )
            case WebhookSecretRotated():
                await conn.execute(
                    webhook_endpoints.update()
                    .where(where)
                    .values(secret_version=event.aggregate_version, updated_at=at)
                )
            case WebhookEnabled():
                await conn.execute(
                    webhook_endpoints.update().where(where).values(enabled=True, disabled_reason=None, updated_at=at)
                )
                await conn.execute(
                    webhook_health.update()
                    .where(webhook_health.c.endpoint_id == endpoint_id)
                    .values(failing_since=None, disabled_at=None)
                )
            case WebhookDeleted():
                await conn.execute(webhook_endpoints.delete().where(where))
                await conn.execute(
                    webhook_messages.update()
                    .where(and_(webhook_messages.c.endpoint_id == endpoint_id, webhook_messages.c.status == "pending"))
                    .values(status="cancelled", locked_by=None, locked_until=None)
                )
