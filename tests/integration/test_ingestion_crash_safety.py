"""Crash safety of ingestion: ``parley ingest`` and the vector projector (``parley project knowledge
vectors``) run as real processes and are killed with SIGKILL mid-way, while documents keep being
uploaded. Whatever the timing, every document ends extracted exactly once (one ``DocumentExtracted``) and
indexed exactly once (each of its chunks one row of the index, in the space of its knowledge base)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters.settings import Settings
from application.context import CommandContext
from application.identity import Principal
from projections.runtime import read_position
from schema.tables import chunks
from tests.integration.procs import Part
from workers.bootstrap import Container

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WORDS = "river orchard lantern basalt meadow copper harbour thistle glacier saffron quarry beacon".split()


def document(n: int) -> bytes:
    """A Markdown document of a few sections, several chunks long, different for every ``n``."""
    sections = []
    for s in range(3):
        sentences = " ".join(
            f"Item {n}-{s}-{i} mentions {WORDS[(n + s + i) % len(WORDS)]} and {WORDS[(n * 7 + i) % len(WORDS)]}."
            for i in range(40)
        )
        sections.append(f"## Section {s} of document {n}\n\n{sentences}\n")
    return (f"# Document {n}\n\n" + "\n".join(sections)).encode()


@pytest.fixture
def parts(settings: Settings, tmp_path: Path) -> Iterator[dict[str, Part]]:
    logs = tmp_path / "logs"
    started = {
        "relay": Part(settings, logs, "relay").start(),
        "ingest": Part(settings, logs, "ingest").start(),
        "vectors": Part(settings, logs, "project", "knowledge", "vectors").start(),
    }
    yield started
    for part in started.values():
        part.stop()


async def extracted(c: Container) -> Counter[str]:
    events = await c.store.call(c.store.read, 1, 1_000_000)
    return Counter(str(e.aggregate_id) for e in events if e.type == "DocumentExtracted")


async def test_killing_the_ingestion_worker_and_the_vector_projector_indexes_every_document_once(
    container: Container, parts: dict[str, Part]
) -> None:
    c = container
    tenant = await c.identity.ensure_tenant(c.settings.default_tenant, "Default")
    owner = Principal(tenant_id=str(tenant.id), user_id=uuid.uuid4(), role="admin", via="token")
    ctx = CommandContext(tenant_id=owner.tenant_id, actor=owner.actor)
    kb = await c.knowledge.create(ctx, owner, name="Crash test", chunk_size=500, chunk_overlap=50)
    documents: list[uuid.UUID] = []

    async def upload(count: int) -> None:
        for _ in range(count):
            n = len(documents)
            doc = await c.knowledge.upload(ctx, owner, data=document(n), filename=f"doc-{n}.md", knowledge_id=kb.id)
            documents.append(doc.id)

    async def until(condition: object, what: str, timeout: float = 90) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await condition():  # type: ignore[operator]
            for part in parts.values():
                assert part.alive(), f"{part.name} died:\n{part.log()}"
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    await parts["ingest"].wait_for_log("ingestion_worker_started", timeout=60)
    await upload(12)
    # Kill the ingestion worker as soon as it has recorded something, with documents still queued.
    async def some_extracted() -> bool:
        return len(await extracted(c)) >= 2

    await until(some_extracted, "the first extractions")
    parts["ingest"].kill9()
    await upload(8)
    parts["ingest"].start()

    # Kill the vector projector once it has indexed some chunks, twice.
    for _ in range(2):
        before = await read_position(c.engine, "vectors")

        async def moved(before: int = before) -> bool:
            return await read_position(c.engine, "vectors") > before

        await until(moved, "the vector projector to move")
        parts["vectors"].kill9()
        await upload(5)
        parts["vectors"].start()
    parts["ingest"].kill9()  # and the worker once more, right after uploads
    parts["ingest"].start()

    async def all_extracted() -> bool:
        return set(await extracted(c)) >= {str(d) for d in documents}

    await until(all_extracted, "every document to be extracted", timeout=150)
    counts = await extracted(c)
    assert all(counts[str(d)] == 1 for d in documents), counts  # exactly once

    events = await c.store.call(c.store.read, 1, 1_000_000)
    expected = {
        str(e.aggregate_id): int(e.data["chunk_count"]) for e in events if e.type == "DocumentExtracted"
    }

    async def all_indexed() -> bool:
        return await read_position(c.engine, "vectors") >= await c.store.call(c.store.max_id)

    await until(all_indexed, "the vector projector to catch up", timeout=150)
    async with c.engine.connect() as conn:
        rows = (await conn.execute(select(chunks.c.document_id, chunks.c.chunk_index, chunks.c.space))).all()
    by_document: dict[str, list[int]] = {}
    for document_id, index, space in rows:
        assert space == "local/all-minilm-l6-v2"
        by_document.setdefault(str(document_id), []).append(index)
    assert set(by_document) == {str(d) for d in documents}
    for document_id, indexes in by_document.items():
        assert sorted(indexes) == list(range(expected[document_id])), document_id
    assert sum(expected.values()) == len(rows) > len(documents)
