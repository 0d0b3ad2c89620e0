"""Queries over the webhooks read models and delivery log, for the API: a tenant's endpoints with their
health, an endpoint's messages (newest first, by status or event), one message's attempts, and every
endpoint's message for one event. Every query is bounded by the caller's tenant."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.tables import webhook_attempts, webhook_endpoints, webhook_health, webhook_messages, webhook_replays

__all__ = [
    "endpoint_rows",
    "message_attempts",
    "message_exists",
    "message_row",
    "messages_of_endpoint",
    "messages_of_event",
    "replay_row",
]

_MESSAGE_COLUMNS = (
    webhook_messages.c.message_id,
    webhook_messages.c.endpoint_id,
    webhook_messages.c.event_id,
    webhook_messages.c.notification_id,
    webhook_messages.c.event_type,
    webhook_messages.c.status,
    webhook_messages.c.attempts,
    webhook_messages.c.next_attempt_at,
    webhook_messages.c.created_at,
    webhook_messages.c.last_attempt_at,
    webhook_messages.c.delivered_at,
    webhook_messages.c.last_status,
    webhook_messages.c.last_error,
)


async def endpoint_rows(engine: AsyncEngine, tenant_id: str, endpoint_id: str | None = None) -> list[Mapping[str, Any]]:
    """The tenant's endpoints (or one), oldest first, with their health."""
    query = (
        select(
            webhook_endpoints,
            webhook_health.c.failing_since,
            webhook_health.c.last_success_at,
            webhook_health.c.last_failure_at,
        )
        .outerjoin(webhook_health, webhook_health.c.endpoint_id == webhook_endpoints.c.endpoint_id)
        .where(webhook_endpoints.c.tenant_id == tenant_id)
        .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.endpoint_id)
    )
    if endpoint_id is not None:
        query = query.where(webhook_endpoints.c.endpoint_id == endpoint_id)
    async with engine.connect() as conn:
        return list((await conn.execute(query)).mappings())


async def messages_of_endpoint(
    engine: AsyncEngine,
    tenant_id: str,
    endpoint_id: str,
    *,
    status: str | None = None,
    event_id: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[Mapping[str, Any]]:
    """An endpoint's messages, newest event first; ``before``: only events before that position."""
    query = select(*_MESSAGE_COLUMNS).where(
        webhook_messages.c.tenant_id == tenant_id, webhook_messages.c.endpoint_id == endpoint_id
    )
    if status is not None:
        query = query.where(webhook_messages.c.status == status)
    if event_id is not None:
        query = query.where(webhook_messages.c.event_id == event_id)
    if before is not None:
        query = query.where(webhook_messages.c.notification_id < before)
    query = query.order_by(webhook_messages.c.notification_id.desc()).limit(limit)
    async with engine.connect() as conn:
        return list((await conn.execute(query)).mappings())


async def messages_of_event(engine: AsyncEngine, tenant_id: str, event_id: str) -> list[Mapping[str, Any]]:
    """Every endpoint's message for one event of the tenant."""
    query = (
        select(*_MESSAGE_COLUMNS)
        .where(webhook_messages.c.tenant_id == tenant_id, webhook_messages.c.event_id == event_id)
        .order_by(webhook_messages.c.endpoint_id)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).mappings())


async def message_row(
    engine: AsyncEngine, tenant_id: str, endpoint_id: str, message_id: str
) -> Mapping[str, Any] | None:
    query = select(*_MESSAGE_COLUMNS).where(
        and_(
            webhook_messages.c.tenant_id == tenant_id,
            webhook_messages.c.endpoint_id == endpoint_id,
            webhook_messages.c.message_id == message_id,
        )
    )
    async with engine.connect() as conn:
        return (await conn.execute(query)).mappings().first()


async def message_exists(engine: AsyncEngine, tenant_id: str, endpoint_id: str, message_id: str) -> bool:
    return await message_row(engine, tenant_id, endpoint_id, message_id) is not None


async def message_attempts(engine: AsyncEngine, tenant_id: str, message_id: str) -> list[Mapping[str, Any]]:
    """A message's attempts, first first."""
    query = (
        select(webhook_attempts)
        .where(webhook_attempts.c.tenant_id == tenant_id, webhook_attempts.c.message_id == message_id)
        .order_by(webhook_attempts.c.attempt_id)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).mappings())


async def replay_row(engine: AsyncEngine, tenant_id: str, replay_id: str) -> Mapping[str, Any] | None:
    query = select(webhook_replays).where(
        webhook_replays.c.tenant_id == tenant_id, webhook_replays.c.replay_id == replay_id
    )
    async with engine.connect() as conn:
        return (await conn.execute(query)).mappings().first()
