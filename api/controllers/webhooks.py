"""Webhook endpoints through HTTP (tenant admins): register, change, rotate the signing secret, delete;
the delivery log per endpoint and per event; retry one message; replay history.

Deliveries follow the Standard Webhooks specification: the body is the event's envelope (the JSON Schema
at ``GET /api/v1/events/schema``), personal fields withheld unless the endpoint has ``include_personal``;
headers ``webhook-id`` (the event id: receivers de-duplicate on it), ``webhook-timestamp`` and
``webhook-signature`` (verify with the ``standardwebhooks`` package and the secret shown when the endpoint
was made or its secret rotated). Every change is an event on the endpoint, in the audit log.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED
from msgspec import UNSET, Meta, UnsetType

from api import dto
from api.deps import App, Caller, command_context
from api.openapi import refusals
from domain.errors import NotFound
from domain.integrations import MAX_DESCRIPTION_CHARS, MAX_FILTER_ITEMS, MAX_URL_CHARS, Webhook
from projections.deliveries import (
    endpoint_rows,
    message_attempts,
    message_row,
    messages_of_endpoint,
    messages_of_event,
)

__all__ = ["WebhookController"]

Url = Annotated[str, Meta(min_length=1, max_length=MAX_URL_CHARS)]
Description = Annotated[str, Meta(max_length=MAX_DESCRIPTION_CHARS)]
Patterns = Annotated[list[Annotated[str, Meta(max_length=100)]], Meta(min_length=1, max_length=MAX_FILTER_ITEMS)]
Models = Annotated[list[Annotated[str, Meta(min_length=1, max_length=200)]], Meta(max_length=MAX_FILTER_ITEMS)]
Users = Annotated[list[UUID], Meta(max_length=MAX_FILTER_ITEMS)]
MessageStatus = Literal["pending", "delivered", "failed", "cancelled"]


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Url
    """Where to POST (http or https; not a private, loopback or link-local address unless the deployment
    allows private ones)."""
    event_types: Patterns = msgspec.field(default_factory=lambda: ["*"])
    """Event types or patterns (``Generation*``, ``*``) to receive."""
    description: Description = ""
    user_ids: Users = []
    """Only events by or about these users of the tenant; empty: any."""
    models: Models = []
    """Only events naming these models (a generation's events name its model); empty: any."""
    include_personal: bool = False
    """Send personal fields (message text, names, e-mail addresses) opened; otherwise they read
    ``"[withheld]"`` (empty lists and objects for fields that are not text)."""


class WebhookUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Url | UnsetType = UNSET
    event_types: Patterns | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    user_ids: Users | UnsetType = UNSET
    models: Models | UnsetType = UNSET
    include_personal: bool | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    """false: stop deliveries (events meanwhile are not sent later); true: resume (and clear a disable
    for failing)."""


class RotateSecret(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    overlap_s: Annotated[int, Meta(ge=0, le=7 * 86_400)] = 86_400
    """How long the previous secret keeps signing (each delivery carries a signature per valid secret)."""


class Replay(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    since: datetime | None = None
    """Every matching event from this time on, up to now; or:"""
    after: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None
    """every matching event after this position (an event's ``id``)."""


class WebhookOut(msgspec.Struct, kw_only=True):
    id: str
    url: str
    description: str
    event_types: list[str]
    user_ids: list[str]
    models: list[str]
    include_personal: bool
    enabled: bool
    disabled_reason: str | None = None
    created_at: datetime | None = None
    failing_since: datetime | None = None
    """The first failure since the last success; null: the last delivery succeeded (or none was made)."""
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None


class WebhookWithSecret(WebhookOut, kw_only=True):
    secret: str
    """The signing secret (``whsec_...``): shown only now."""
    previous_secret_valid_until: datetime | None = None


class MessageOut(msgspec.Struct, kw_only=True):
    id: str
    endpoint_id: str
    event_id: str
    """Sent as ``webhook-id``."""
    event_position: int
    event_type: str
    status: MessageStatus
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None


class AttemptOut(msgspec.Struct, kw_only=True):
    attempt: int
    at: datetime
    status_code: int | None
    latency_ms: float
    response_excerpt: str | None
    error: str | None


class MessageDetail(MessageOut, kw_only=True):
    attempt_log: list[AttemptOut]


class ReplayOut(msgspec.Struct, kw_only=True):
    replay_id: str


def _from_aggregate(w: Webhook, health: Mapping[str, Any] | None = None) -> WebhookOut:
    h = health or {}
    return WebhookOut(
        id=str(w.id),
        url=w.url,
        description=w.description,
        event_types=list(w.event_types),
        user_ids=list(w.user_ids),
        models=list(w.models),
        include_personal=w.include_personal,
        enabled=w.enabled,
        disabled_reason=w.disabled_reason,
        created_at=w.created_on,
        failing_since=h.get("failing_since"),
        last_success_at=h.get("last_success_at"),
        last_failure_at=h.get("last_failure_at"),
    )


def _from_row(r: Mapping[str, Any]) -> WebhookOut:
    return WebhookOut(
        id=str(r["endpoint_id"]),
        url=r["url"],
        description=r["description"],
        event_types=list(r["event_types"]),
        user_ids=list(r["user_ids"]),
        models=list(r["models"]),
        include_personal=r["include_personal"],
        enabled=r["enabled"],
        disabled_reason=r["disabled_reason"],
        created_at=r["created_at"],
        failing_since=r["failing_since"],
        last_success_at=r["last_success_at"],
        last_failure_at=r["last_failure_at"],
    )


def _with_secret(w: Webhook, secret: str) -> WebhookWithSecret:
    base = msgspec.structs.asdict(_from_aggregate(w))
    return WebhookWithSecret(**base, secret=secret, previous_secret_valid_until=w.previous_valid_until)


def _message(r: Mapping[str, Any]) -> MessageOut:
    return MessageOut(
        id=str(r["message_id"]),
        endpoint_id=str(r["endpoint_id"]),
        event_id=str(r["event_id"]),
        event_position=int(r["notification_id"]),
        event_type=r["event_type"],
        status=r["status"],
        attempts=int(r["attempts"]),
        next_attempt_at=r["next_attempt_at"] if r["status"] == "pending" else None,
        created_at=r["created_at"],
        last_attempt_at=r["last_attempt_at"],
        delivered_at=r["delivered_at"],
        last_status=r["last_status"],
        last_error=r["last_error"],
    )


class WebhookController(Controller):
    path = "/api/v1/webhooks"
    tags = ["webhooks"]

    @get("/", operation_id="ListWebhooks")
    async def list_webhooks(self, c: App, caller: Caller) -> list[WebhookOut]:
        """The tenant's endpoints with their health (as the webhooks projector has applied them)."""
        caller.require_admin()
        return [_from_row(r) for r in await endpoint_rows(c.engine, caller.tenant_id)]

    @post("/", operation_id="CreateWebhook", status_code=HTTP_201_CREATED)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[WebhookCreate], c: App, caller: Caller
    ) -> WebhookWithSecret:
        """Registers an endpoint; the answer holds its signing secret, shown only this once."""
        webhook, secret = await c.webhooks.create(
            command_context(request, caller),
            caller,
            url=data.url,
            description=data.description,
            event_types=data.event_types,
            user_ids=data.user_ids,
            models=data.models,
            include_personal=data.include_personal,
        )
        return _with_secret(webhook, secret)

    @get("/messages", operation_id="ListWebhookMessagesOfEvent")
    async def messages_of_event(self, c: App, caller: Caller, event_id: FromQuery[UUID]) -> list[MessageOut]:
        """Every endpoint's message for one event (by its ``event_id``)."""
        caller.require_admin()
        return [_message(r) for r in await messages_of_event(c.engine, caller.tenant_id, str(event_id))]

    @get("/{webhook_id:uuid}", operation_id="GetWebhook", responses=refusals(404))
    async def get_webhook(self, webhook_id: FromPath[UUID], c: App, caller: Caller) -> WebhookOut:
        webhook = await c.webhooks.get(caller, webhook_id)
        rows = await endpoint_rows(c.engine, caller.tenant_id, str(webhook_id))
        return _from_aggregate(webhook, rows[0] if rows else None)

    @patch("/{webhook_id:uuid}", operation_id="UpdateWebhook", responses=refusals(404))
    async def update(
        self,
        request: Request[Any, Any, Any],
        webhook_id: FromPath[UUID],
        data: JSONBody[WebhookUpdate],
        c: App,
        caller: Caller,
    ) -> WebhookOut:
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not UNSET}
        if "user_ids" in changes:
            changes["user_ids"] = [str(u) for u in changes["user_ids"]]
        webhook = await c.webhooks.change(command_context(request, caller), caller, webhook_id, **changes)
        return _from_aggregate(webhook)

    @delete("/{webhook_id:uuid}", operation_id="DeleteWebhook", status_code=HTTP_200_OK, responses=refusals(404))
    async def delete_webhook(
        self, request: Request[Any, Any, Any], webhook_id: FromPath[UUID], c: App, caller: Caller
    ) -> dict[str, bool]:
        """Deletes the endpoint: nothing more is sent to it (messages still pending are cancelled)."""
        await c.webhooks.delete(command_context(request, caller), caller, webhook_id)
        return {"deleted": True}

    @post(
        "/{webhook_id:uuid}/secret/rotate",
        operation_id="RotateWebhookSecret",
        status_code=HTTP_200_OK,
        responses=refusals(404),
    )
    async def rotate(
        self,
        request: Request[Any, Any, Any],
        webhook_id: FromPath[UUID],
        c: App,
        caller: Caller,
        data: JSONBody[RotateSecret | None] = None,
    ) -> WebhookWithSecret:
        """A new signing secret, shown only now; the previous one keeps signing for ``overlap_s``."""
        overlap = (data or RotateSecret()).overlap_s
        webhook, secret = await c.webhooks.rotate_secret(
            command_context(request, caller), caller, webhook_id, overlap_s=overlap
        )
        return _with_secret(webhook, secret)

    @get("/{webhook_id:uuid}/messages", operation_id="ListWebhookMessages", responses=refusals(404))
    async def messages(
        self,
        webhook_id: FromPath[UUID],
        c: App,
        caller: Caller,
        status: FromQuery[MessageStatus | None] = None,
        event_id: FromQuery[UUID | None] = None,
        before: Annotated[int | None, QueryParameter(ge=1, le=2**63 - 1)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    ) -> list[MessageOut]:
        """The endpoint's delivery log, newest event first; page with ``before`` = the last
        ``event_position`` seen."""
        await c.webhooks.get(caller, webhook_id)
        rows = await messages_of_endpoint(
            c.engine,
            caller.tenant_id,
            str(webhook_id),
            status=status,
            event_id=None if event_id is None else str(event_id),
            before=before,
            limit=limit,
        )
        return [_message(r) for r in rows]

    @get("/{webhook_id:uuid}/messages/{message_id:uuid}", operation_id="GetWebhookMessage", responses=refusals(404))
    async def message(
        self, webhook_id: FromPath[UUID], message_id: FromPath[UUID], c: App, caller: Caller
    ) -> MessageDetail:
        """One message with every attempt: time, HTTP status, latency, an excerpt of the answer, the error."""
        await c.webhooks.get(caller, webhook_id)
        row = await message_row(c.engine, caller.tenant_id, str(webhook_id), str(message_id))
        if row is None:
            raise NotFound("WEBHOOK_MESSAGE_NOT_FOUND", "no such message for this endpoint")
        attempts = await message_attempts(c.engine, caller.tenant_id, str(message_id))
        return MessageDetail(
            **msgspec.structs.asdict(_message(row)),
            attempt_log=[
                AttemptOut(
                    attempt=a["attempt"],
                    at=a["at"],
                    status_code=a["status_code"],
                    latency_ms=a["latency_ms"],
                    response_excerpt=a["response_excerpt"],
                    error=a["error"],
                )
                for a in attempts
            ],
        )

    @post(
        "/{webhook_id:uuid}/messages/{message_id:uuid}/retry",
        operation_id="RetryWebhookMessage",
        status_code=HTTP_202_ACCEPTED,
        responses=refusals(404),
    )
    async def retry(
        self,
        request: Request[Any, Any, Any],
        webhook_id: FromPath[UUID],
        message_id: FromPath[UUID],
        c: App,
        caller: Caller,
    ) -> dict[str, bool]:
        """Sends the message again now, whatever its state (the same ``webhook-id``)."""
        await c.webhooks.retry(command_context(request, caller), caller, webhook_id, message_id)
        return {"queued": True}

    @post(
        "/{webhook_id:uuid}/replay",
        operation_id="ReplayWebhook",
        status_code=HTTP_202_ACCEPTED,
        responses=refusals(404),
    )
    async def replay(
        self,
        request: Request[Any, Any, Any],
        webhook_id: FromPath[UUID],
        data: JSONBody[Replay],
        c: App,
        caller: Caller,
    ) -> ReplayOut:
        """Sends again every event that matches the endpoint's filters after ``after`` (a position) or since
        ``since`` (a time), up to this request: a new integration backfills history. Events the receiver
        had already accepted come with the same ``webhook-id`` as before."""
        replay_id = await c.webhooks.replay(
            command_context(request, caller), caller, webhook_id, since=dto.aware(data.since), after=data.after
        )
        return ReplayOut(replay_id=replay_id)
