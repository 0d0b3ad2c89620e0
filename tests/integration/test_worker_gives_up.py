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


async def test_giving_up_while_the_event_store_is_unavailable_still_records_and_releases(
    container: Container, pipeline: Pipeline
) -> None:
    """The last attempt crashes, and for three seconds the database drops every connection the moment it is
    used (a restart, a failover): the worker keeps trying to record the failure until it can, and the
    quota reservation is settled."""
    from adapters.eventstore import connect

    c = container
    tenant = await c.identity.tenant(c.settings.default_tenant)
    ctx = CommandContext(tenant_id=str(tenant.id), actor="anonymous")
    user = await c.identity.register(ctx, tenant=str(tenant.id), email="b@example.com", password="correct horse 9", name="B")
    admin = Principal(tenant_id=str(tenant.id), user_id=user.id, role="admin", via="token")
    outage_started = asyncio.Event()

    async def outage(seconds: float) -> None:
        conn = await asyncio.to_thread(connect, c.settings.database_url or "")
        try:
            deadline = asyncio.get_running_loop().time() + seconds
            outage_started.set()
            while asyncio.get_running_loop().time() < deadline:
                await asyncio.to_thread(
                    conn.execute,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                await asyncio.sleep(0.02)
        finally:
            await asyncio.to_thread(conn.close)

    attempts: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    async def crash(target: object) -> object:
        attempts.append(1)
        if len(attempts) == pipeline.worker.max_deliver:
            tasks.append(asyncio.create_task(outage(3.0)))
            await outage_started.wait()
        raise RuntimeError("the GPU fell off the bus")

    pipeline.worker.engines.get = crash  # type: ignore[method-assign]
    chat = await c.chats.create(ctx, admin)
    sent = await c.chats.send_message(ctx, admin, chat.id, content="hello", model="smollm2", params={"max_tokens": 50})

    generation = None
    for _ in range(600):
        try:
            generation = await c.store.call(c.store.find, Generation, sent.generation_id)
        except Exception:  # the test's own reads meet the outage too
            generation = None
        if generation is not None and generation.finished:
            break
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)
    assert generation is not None and generation.status == "failed" and generation.error_code == "MAX_ATTEMPTS"
    # The reservation is settled with what was used (nothing): no tokens stay held.
    for _ in range(100):
        if str(sent.generation_id) not in await c.quotas.ledger.stale(0):
            break
        await asyncio.sleep(0.1)
    assert str(sent.generation_id) not in await c.quotas.ledger.stale(0)
