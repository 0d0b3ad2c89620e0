"""A generation survives its worker: kill -9 the worker mid-generation, the job is redelivered to another
worker, which starts over as attempt 2 and completes; the chat holds exactly one answer."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

from nats.js.api import DeliverPolicy
from sqlalchemy import select

from adapters.settings import Settings
from application.context import CommandContext
from application.identity import Principal
from domain.chats import Generation
from projections.conversations import get_chat
from schema.tables import messages as rm_messages
from schema.tokens import TokenChunk, decode_chunk
from tests.conftest import wait_projected
from tests.integration.procs import Part
from workers.bootstrap import Container

WORDS = 60


async def _admin(c: Container) -> tuple[Principal, CommandContext]:
    tenant = await c.identity.tenant(c.settings.default_tenant)
    user = await c.identity.register(
        CommandContext(tenant_id=str(tenant.id), actor="anonymous"),
        tenant=str(tenant.id),
        email="ops@example.com",
        password="correct horse 9",
        name="Ops",
    )
    principal = Principal(tenant_id=str(tenant.id), user_id=user.id, role="admin", via="token")
    return principal, CommandContext(tenant_id=str(tenant.id), actor=principal.actor)


async def _collect(c: Container, js: object, generation_id: str, into: list[TokenChunk], stop: asyncio.Event) -> None:
    sub = await js.subscribe(  # type: ignore[attr-defined]
        c.subjects.tokens(generation_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    try:
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                continue
            into.append(decode_chunk(msg.data))
    finally:
        await sub.unsubscribe()


async def test_killed_worker_s_generation_is_redelivered_and_completes_once(
    container: Container, settings: Settings, tmp_path: Path
) -> None:
    c = container
    admin, ctx = await _admin(c)
    await c.models.register_provider(ctx, admin, name="bench", kind="echo")
    await c.models.register_model(
        ctx, admin, name="slow-echo", provider="bench", upstream_model="echo-slow"
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    relay = Part(settings, logs, "relay").start()
    projector = Part(settings, logs, "project").start()
    first = Part(settings, logs, "worker").start()
    second: Part | None = None
    js = await c.connect_nats("test-observer")
    try:
        await first.wait_for_log("worker_started", timeout=60)
        chat = await c.chats.create(ctx, admin, title="crash")
        sent = await c.chats.send_message(
            ctx, admin, chat.id, content="one two three four five", model="slow-echo", params={"max_tokens": WORDS}
        )
        generation_id = str(sent.generation_id)
        chunks: list[TokenChunk] = []
        stop = asyncio.Event()
        collector = asyncio.create_task(_collect(c, js, generation_id, chunks, stop))

        # Kill the worker once it is visibly mid-generation.
        for _ in range(300):
            if sum(1 for ch in chunks if ch.attempt == 1 and ch.text) >= 3:
                break
            await asyncio.sleep(0.05)
        assert any(ch.attempt == 1 for ch in chunks), "the first worker never started streaming"
        first.kill9()
        second = Part(settings, logs, "worker").start()

        # JetStream redelivers after the ack wait (10 s) to the surviving worker, which starts over.
        generation = None
        for _ in range(600):
            generation = await c.store.call(c.store.find, Generation, sent.generation_id)
            if generation is not None and generation.finished:
                break
            await asyncio.sleep(0.1)
        assert generation is not None and generation.status == "completed", generation and generation.status
        assert generation.attempt == 2
        assert generation.completion_tokens == WORDS
        assert len(generation.text.split()) == WORDS

        await asyncio.sleep(0.5)
        stop.set()
        await collector
        attempts = [ch.attempt for ch in chunks]
        assert attempts == sorted(attempts), "a reader sees attempt 1, then attempt 2"
        second_attempt = [ch for ch in chunks if ch.attempt == 2 and not ch.done]
        assert [ch.seq for ch in second_attempt] == list(range(1, len(second_attempt) + 1)), "no chunk lost or repeated"
        assert "".join(ch.text for ch in second_attempt) == generation.text
        assert chunks[-1].done and chunks[-1].status == "completed"

        # The chat holds the user's message and exactly one answer, once.
        await wait_projected(c, timeout=30)
        full = await get_chat(c.engine, admin.tenant_id, str(admin.user_id), str(chat.id))
        assert full is not None
        answers = [m for m in full["messages"] if m["role"] == "assistant"]
        assert len(answers) == 1 and answers[0]["content"] == generation.text
        assert answers[0]["completion_tokens"] == WORDS
        async with c.engine.connect() as conn:
            rows = (await conn.execute(select(rm_messages.c.message_id).where(rm_messages.c.chat_id == str(chat.id)))).all()
        assert len(rows) == 2

        # The quota reservation was settled by the surviving worker with the actual usage, not leaked.
        ledger = c.quotas.ledger
        assert await ledger.reservation(generation_id) is None
        day = datetime.now(UTC).date().isoformat()
        used = await ledger.used(admin.tenant_id, day, "tenant")
        assert used == generation.prompt_tokens + generation.completion_tokens
    finally:
        for part in (first, second, projector, relay):
            if part is not None and part.alive():
                part.stop()
    assert uuid.UUID(generation_id)
