"""A generation whose worker crashes on every attempt is retried up to max_deliver, then recorded as
failed (MAX_ATTEMPTS) when JetStream gives up on the job: no generation stays "running" forever."""

from __future__ import annotations

import asyncio
import uuid

from application.context import CommandContext
from application.identity import Principal
from domain.chats import Generation
from tests.conftest import Pipeline
from workers.bootstrap import Container


async def test_a_job_that_crashes_every_worker_fails_after_max_deliver(container: Container, pipeline: Pipeline) -> None:
    c = container
    tenant = await c.identity.tenant(c.settings.default_tenant)
    ctx = CommandContext(tenant_id=str(tenant.id), actor="anonymous")
    user = await c.identity.register(ctx, tenant=str(tenant.id), email="a@example.com", password="correct horse 9", name="A")
    admin = Principal(tenant_id=str(tenant.id), user_id=user.id, role="admin", via="token")

    attempts: list[str] = []

    async def crash(target: object) -> object:
        attempts.append("x")
        raise RuntimeError("the GPU fell off the bus")

    pipeline.worker.engines.get = crash  # type: ignore[method-assign]
    chat = await c.chats.create(ctx, admin)
    sent = await c.chats.send_message(ctx, admin, chat.id, content="hello", model="smollm2")

    generation = None
    for _ in range(300):
        generation = await c.store.call(c.store.find, Generation, sent.generation_id)
        if generation is not None and generation.finished:
            break
        await asyncio.sleep(0.1)
    assert generation is not None and generation.status == "failed"
    assert generation.error_code == "MAX_ATTEMPTS"
    assert len(attempts) == pipeline.worker.max_deliver
    assert uuid.UUID(str(generation.id)) == sent.generation_id
