"""Hybrid search over ``rm_chunks`` against the real Postgres + pgvector. Full text ranks a bounded set of
candidates: chunks with every word first, then those with more distinctive words, so a rare word is found
among many chunks of common ones; it stays within the tenant and the scope. The vector half is exact for a
small scope and goes through HNSW past ``exact_up_to``, asking the index again with a larger ``ef_search``
when the scope's filter leaves too few of its candidates, and agrees with the exact answer."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.database import create_engine, create_tables
from adapters.settings import Settings
from domain.knowledge import SearchScope
from projections.vectors import VectorIndex, build_indexes, content_sha, ensure_space
from schema.tables import chunks

SPACE = "test/hybrid-8"
DIMS = 8


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    assert settings.database_url
    engine = create_engine(settings.database_url, pool_size=2)
    await create_tables(engine)
    async with engine.begin() as conn:
        await ensure_space(conn, SPACE, DIMS)
    yield engine
    await engine.dispose()


async def put(
    engine: AsyncEngine, tenant: str, kb: str, texts: Sequence[str], vectors: Sequence[list[float]] | None = None
) -> list[str]:
    """One document per text (chunk 0) in the knowledge base; returns the document ids."""
    ids = [str(uuid.uuid4()) for _ in texts]
    rows = [
        {
            "document_id": document_id,
            "chunk_index": 0,
            "tenant_id": tenant,
            "knowledge_id": kb,
            "chat_id": None,
            "heading": "",
            "text": body,
            "page": None,
            "start": 0,
            "end": len(body),
            "content_sha": content_sha("", body),
            "space": SPACE,
            "embedding": vectors[i] if vectors is not None else [1.0] + [0.0] * (DIMS - 1),
        }
        for i, (document_id, body) in enumerate(zip(ids, texts, strict=True))
    ]
    async with engine.begin() as conn:
        for start in range(0, len(rows), 1000):
            await conn.execute(insert(chunks).values(rows[start : start + 1000]))
    return ids


def text_scope(kb: str) -> SearchScope:
    return SearchScope(space=SPACE, vector=None, knowledge_ids=[kb])


async def test_full_text_ranks_every_word_first_then_distinctive_words_before_common_ones(engine: AsyncEngine) -> None:
    tenant, kb = str(uuid.uuid4()), str(uuid.uuid4())
    index = VectorIndex(engine)
    index.text_pool = 20  # the common words below fill their pools: only a sample of them is ranked
    common = await put(engine, tenant, kb, ["The quarterly budget report covers the budget of the harbour report."] * 120)
    every, two_rare, one_rare = await put(
        engine,
        tenant,
        kb,
        [
            "The ferry report on the Zanzibar budget.",
            "Zanzibar ferry timetable.",
            "The Zanzibar report.",
        ],
    )
    # Every word, but another tenant's, or another knowledge base's: never found.
    (elsewhere,) = await put(engine, str(uuid.uuid4()), kb, ["The ferry report on the Zanzibar budget."])
    (other_kb,) = await put(engine, tenant, str(uuid.uuid4()), ["The ferry report on the Zanzibar budget."])

    hits = await index.search(tenant, [text_scope(kb)], "Zanzibar ferry budget report?", limit=10)

    found = [h.document_id for h in hits]
    assert found[:3] == [every, two_rare, one_rare], found
    assert set(found[3:]) <= set(common) and len(found) == 10
    assert [h.text_rank for h in hits] == list(range(1, 11))
    assert elsewhere not in found and other_kb not in found
    assert hits[0].text == "The ferry report on the Zanzibar budget." and hits[0].similarity is None


async def test_full_text_finds_nothing_for_stop_words_and_keeps_a_hyphenated_word_whole(engine: AsyncEngine) -> None:
    tenant, kb = str(uuid.uuid4()), str(uuid.uuid4())
    index = VectorIndex(engine)
    (hyphenated, _) = await put(engine, tenant, kb, ["Send the e-mail to the harbour master.", "The mail boat."])
    assert await index.search(tenant, [text_scope(kb)], "the of and", limit=5) == []
    hits = await index.search(tenant, [text_scope(kb)], "e-mail", limit=5)
    assert [h.document_id for h in hits][:1] == [hyphenated]


def unit(rng: random.Random) -> list[float]:
    v = [rng.gauss(0, 1) for _ in range(DIMS)]
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v]


async def test_vector_half_goes_through_the_index_past_exact_up_to_and_agrees_with_exact(engine: AsyncEngine) -> None:
    rng = random.Random(3)
    tenant, big, small = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await put(engine, tenant, big, ["big"] * 2_850, [unit(rng) for _ in range(2_850)])
    await put(engine, tenant, small, ["small"] * 150, [unit(rng) for _ in range(150)])  # 5% of the space
    assert await build_indexes(engine) == [SPACE]
    async with engine.connect() as conn:
        await conn.exec_driver_sql("ANALYZE rm_chunks")
        await conn.commit()
    index = VectorIndex(engine, candidates=20, ef_search=40)
    index.exact_up_to = 100

    sent: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        for kb in (big, small):
            raised = 0
            for attempt in range(5):
                scope = SearchScope(space=SPACE, vector=unit(rng), knowledge_ids=[kb])
                sent.clear()
                hits = await index.search(tenant, [scope], "", limit=10, vector_only=True)
                exact = await index.nearest_exact(tenant, scope, limit=10)
                assert len(hits) == 10
                assert len({(h.document_id, h.chunk_index) for h in hits} & set(exact)) >= 9
                ef_searches = [int(s.rsplit("=", 1)[1]) for s in sent if "hnsw.ef_search" in s]
                counted = any("count(*)" in s for s in sent)
                assert counted == (attempt == 0), sent  # then remembered as past exact_up_to
                if kb == big:  # 95% of the space: the index's 40 candidates keep 20
                    assert ef_searches == [40], sent
                elif attempt == 0:  # 5%: about 2 of 40 pass the filter, so the index is asked again for more
                    assert len(ef_searches) == 2 and ef_searches[0] == 40 and ef_searches[1] >= 200, sent
                    raised = ef_searches[1]
                else:  # and the next search of the scope starts there
                    assert ef_searches == [raised], sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)

    # A scope of at most exact_up_to chunks is searched exactly: no HNSW scan.
    index = VectorIndex(engine, candidates=20, ef_search=40)
    index.exact_up_to = 200
    sent.clear()
    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        scope = SearchScope(space=SPACE, vector=unit(rng), knowledge_ids=[small])
        hits = await index.search(tenant, [scope], "", limit=10, vector_only=True)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    assert not any("hnsw.ef_search" in s for s in sent)
    assert [(h.document_id, h.chunk_index) for h in hits] == await index.nearest_exact(tenant, scope, limit=10)
