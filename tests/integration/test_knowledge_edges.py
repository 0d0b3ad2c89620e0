"""Knowledge at its edges, through the services and the real engines: an extraction that takes too long
fails its document; a provider that changes its embedding dimension leaves the chunks findable by full text
instead of stalling the index; guests and pending accounts cannot create knowledge bases."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from application.context import CommandContext
from application.identity import Principal
from domain.errors import Forbidden
from domain.knowledge import embedding_space
from projections.runtime import ProjectorRunner
from projections.vectors import ensure_space
from schema.tables import chunks
from tests import corpus
from tests.fakes.upstreams import FakeUpstreams
from workers.bootstrap import Container, all_projectors


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreams]:
    with FakeUpstreams() as fake:
        yield fake


async def admin_of(c: Container) -> tuple[Principal, CommandContext]:
    tenant = await c.identity.ensure_tenant(c.settings.default_tenant, "Default")
    admin = Principal(tenant_id=str(tenant.id), user_id=uuid.uuid4(), role="admin", via="token")
    return admin, CommandContext(tenant_id=admin.tenant_id, actor=admin.actor)


async def project(c: Container) -> None:
    for projector in all_projectors(c):
        await ProjectorRunner(projector, engine=c.engine, store=c.store).catch_up()


async def test_an_extraction_past_its_time_limit_fails_the_document(container: Container) -> None:
    c = container
    admin, ctx = await admin_of(c)
    kb = await c.knowledge.create(ctx, admin, name="Slow")
    sample = corpus.SAMPLES["pdf"]
    document = await c.knowledge.upload(ctx, admin, data=sample.data, filename=sample.filename, knowledge_id=kb.id)
    c.knowledge.limits = dataclasses.replace(c.knowledge.limits, extract_timeout_s=1e-9)
    assert await c.knowledge.ingest(ctx, document.id) == "failed"
    failed = await c.knowledge.document(admin, document.id)
    assert failed.error_code == "EXTRACTION_TIMEOUT"
    assert await c.knowledge.ingest(ctx, document.id) is None  # nothing more to do


async def test_a_provider_that_changes_its_dimension_leaves_chunks_to_full_text(
    container: Container, upstream: FakeUpstreams
) -> None:
    c = container
    admin, ctx = await admin_of(c)
    provider = await c.models.register_provider(ctx, admin, name="embeddings", kind="openai", base_url=upstream.openai_url)
    kb = await c.knowledge.create(ctx, admin, name="Drifting", embedding_model="fake-embed-8", provider_id=str(provider.id))
    space = embedding_space(kb.embedding)
    async with c.engine.begin() as conn:  # the space was first seen with another dimension
        await ensure_space(conn, space, 16)
    sample = corpus.SAMPLES["markdown"]
    document = await c.knowledge.upload(ctx, admin, data=sample.data, filename=sample.filename, knowledge_id=kb.id)
    await c.knowledge.ingest(ctx, document.id)
    await project(c)  # does not stall: the batch is applied

    async with c.engine.connect() as conn:
        rows = (await conn.execute(select(chunks.c.space, chunks.c.embedding).where(chunks.c.knowledge_id == str(kb.id)))).all()
    assert rows and all(r.space == space and r.embedding is None for r in rows)
    hits = await c.knowledge.search(admin, kb.id, sample.question)
    assert hits and hits[0].document_id == str(document.id) and hits[0].similarity is None  # full text found it


@pytest.mark.parametrize("role", ["guest", "pending"])
async def test_guests_and_pending_accounts_cannot_create_knowledge_bases(container: Container, role: str) -> None:
    admin, ctx = await admin_of(container)
    someone = dataclasses.replace(admin, role=role)
    with pytest.raises(Forbidden) as refused:
        await container.knowledge.create(ctx, someone, name="Mine")
    assert refused.value.code == "ROLE_CANNOT_CREATE"
