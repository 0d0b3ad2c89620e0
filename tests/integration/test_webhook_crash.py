"""kill -9 of ``parley webhooks`` (a real process) in the middle of delivering hundreds of events, then a
restart: every matching event is delivered at least once, none is lost, and the delivery log has every
message delivered. What the killed process had claimed comes back when its lease ends."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook

from adapters.settings import Settings
from application.context import CommandContext
from application.identity import Principal
from schema.tables import webhook_attempts, webhook_messages
from tests.e2e.test_users_admin import admin, bearer
from tests.integration.procs import Part
from tests.webhook_receiver import Answer, Receiver
from workers.bootstrap import Container

CHATS = 300


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, webhooks_allow_private=True, webhook_retry_schedule_s=(0.2, 0.5, 1.0), webhook_lease_s=2.0
    )


async def create_chats(c: Container, user: dict[str, Any], n: int) -> None:
    """Through the service (the API's per-user rate limit would cap a burst this size)."""
    owner = Principal(tenant_id=user["tenant_id"], user_id=uuid.UUID(user["id"]), role="admin", via="token")
    ctx = CommandContext(tenant_id=user["tenant_id"], actor=owner.actor)
    for start in range(0, n, 20):
        await asyncio.gather(*(c.chats.create(ctx, owner, title=f"c{i}") for i in range(start, min(n, start + 20))))


async def delivery_log_complete(c: Container, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with c.engine.connect() as conn:
            delivered = await conn.scalar(
                select(func.count()).select_from(webhook_messages).where(webhook_messages.c.status == "delivered")
            )
        if delivered == CHATS:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{delivered} of {CHATS} logged as delivered"
        await asyncio.sleep(0.1)


async def test_killing_the_dispatcher_mid_stream_loses_nothing(
    client: httpx.AsyncClient, container: Container, pipeline: Any, settings: Settings, tmp_path: Path
) -> None:
    user, tokens = await admin(client)
    receiver = Receiver(answer=lambda _i, _n: Answer(delay_s=0.02))
    dispatcher = Part(settings, tmp_path / "logs", "webhooks")
    async with receiver.serve() as url:
        r = await client.post(
            "/api/v1/webhooks", json={"url": url, "event_types": ["ChatCreated"]}, headers=bearer(tokens)
        )
        assert r.status_code == 201, r.text
        receiver.verifiers = [Webhook(r.json()["secret"])]
        dispatcher.start()
        try:
            await dispatcher.wait_for_log("webhook_dispatcher_started")
            await create_chats(container, user, CHATS // 2)
            await receiver.wait_for(30, timeout=60)
            dispatcher.kill9()  # mid-stream: messages claimed, some in flight, results unwritten
            delivered_before = len(receiver.accepted)
            await create_chats(container, user, CHATS - CHATS // 2)
            dispatcher.start()
            await dispatcher.wait_for_log("webhook_dispatcher_started")
            await receiver.wait_for(CHATS, timeout=120)
            # What the killed process sent but had not logged is sent again once its lease ends, and logged.
            await delivery_log_complete(container, within=60)
        finally:
            dispatcher.stop()

    events = await container.store.call(container.store.read, 1, 100_000)
    expected = {str(e.event_id) for e in events if e.type == "ChatCreated" and e.tenant_id == user["tenant_id"]}
    assert len(expected) == CHATS
    assert set(receiver.accepted) == expected
    assert delivered_before < CHATS, "the kill came after everything was delivered"
    bad = [(d.webhook_id, d.attempt, d.headers) for d in receiver.deliveries if not d.verified]
    assert not bad, (len(bad), bad[:3])
    async with container.engine.connect() as conn:
        statuses = dict(
            (
                await conn.execute(select(webhook_messages.c.status, func.count()).group_by(webhook_messages.c.status))
            ).all()
        )
        logged = await conn.scalar(select(func.count(func.distinct(webhook_attempts.c.message_id))))
    assert statuses == {"delivered": CHATS}, statuses
    assert logged == CHATS
