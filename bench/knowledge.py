"""Benchmark of knowledge: ingestion on CPU, and vector and hybrid search over 100,000 chunks.

Run ``python -m bench.knowledge`` (``--quick`` for a smoke run under a minute, ``--fast`` to turn
fsync off). It starts its own embedded Postgres, NATS and Redis in a temporary directory (durable commits
by default), sets ``HF_HUB_OFFLINE=1``, and measures in one run, so the figures it compares share a
machine and a moment:

1. Ingestion throughput on CPU, with the local all-MiniLM-L6-v2 model (384 dimensions). Generated Markdown
   documents (prose of 3,000 to 5,000 characters in a few sections, every one different) go through
   ``Knowledge.upload`` into one knowledge base (1,000-character chunks, 150 overlap), then
   ``Knowledge.ingest`` one after the other (extraction, chunking, ``DocumentExtracted`` +
   ``DocumentChunked`` recorded): documents per second. Then the vector projector that the workers run
   (``VectorsProjector`` from ``all_projectors``) indexes them through ``ProjectorRunner.catch_up``: it
   embeds each ``DocumentChunked`` event's chunks (through the embedding cache, empty here) and writes
   ``rm_chunks``: chunks per second. Compared with the raw embedder alone on the very same texts
   (``Embedders.get`` then ``embed`` in batches of 64, nothing written), timed just before, after one
   untimed call that loads the model: projector/raw shows what indexing adds to pure embedding.
2. Search over 100,000 chunks of one knowledge base (quick: 12,000, just past ``EXACT_UP_TO``, so that the
   HNSW path is still the one taken). The chunks are COPYed straight into ``rm_chunks`` in the space
   ``local/all-minilm-l6-v2`` with short generated texts (so full text has words to match) and SYNTHETIC
   vectors: embedding 100,000 chunks with the local model on this CPU would take over an hour. The vectors
   have structure: 1,000 cluster centres around 50 topics (cosine to their topic about 0.7), each chunk
   its centre plus Gaussian noise, normalised (cosine to its centre about 0.7). Beside them, a second tenant's knowledge base of 10,500
   chunks spread over the same clusters shares the space, as every tenant on the local model does. Then
   ``build_indexes`` builds the real HNSW partial index (timed; ``maintenance_work_mem`` raised to 512MB for
   that transaction, where the server default of 64MB would push pgvector into its much slower on-disk
   build), and the table and index sizes are read. Queries are chunk vectors plus noise (cosine to their
   chunk about 0.95), ``SearchScope(space, vector, knowledge_ids=[kb])``, 10 results:

   - exact: ``VectorIndex.nearest_exact`` (a sequential scan and sort): latency, and the reference top 10;
   - HNSW: ``VectorIndex._nearest(..., exact=False)`` with ``ef_search`` 200 (the default) and 40:
     latency and recall@10 = mean over queries of |HNSW top 10 ∩ exact top 10| / 10;
   - hybrid: ``VectorIndex.search`` with six words taken from the query's chunk: latency, and how often
     the chunk the query came from is in the top 10. Then its three parts one by one, as ``search`` runs
     them, each timed: the vector half (``_nearest`` as search decides: the scope counted up to
     ``EXACT_UP_TO`` + 1, then remembered as large for ``LARGE_SCOPE_MEMORY_S``; HNSW for 50 candidates),
     with its recall@10 against exact; the full-text half
     (``_full_text``: 50 candidates, all words first, ranked over at most ``TEXT_POOL`` chunks per word);
     the fusion (``fuse``, reciprocal rank) with the rows read (``_fill``).

   Whether the HNSW index is really used is checked twice: ``EXPLAIN ANALYZE`` of the statement
   ``_nearest`` sent (captured from the engine), and the index's ``idx_scan`` counter in
   ``pg_stat_user_indexes`` before and after each series (an HNSW series must add one scan per query, the
   exact one none). The full-text half's statement is captured and explained the same way
   (``EXPLAIN (ANALYZE, BUFFERS)``): how many rows it ranked, and in how long.

   The small knowledge base shows what HNSW does to a scope that is a small part of its space: pgvector
   (before 0.8's iterative scans) hands the filter at most ``ef_search`` nearest rows of the whole space,
   so a scope past ``EXACT_UP_TO`` that holds a tenth of the space gets about a tenth of them back. Its
   figures: mean rows returned for 10 asked (and for 50, as ``search`` asks), and recall@10.
3. The pgvector version the server runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.embedded import EngineUrls
from application.context import CommandContext
from application.identity import Principal
from bench.spine import Report, cli, percentile, progress, settings_for, start_container, stopwatch
from domain.knowledge import SearchScope
from projections.runtime import ProjectorRunner
from projections.vectors import (
    EXACT_UP_TO,
    LOCAL_EMBEDDING,
    VectorIndex,
    build_indexes,
    content_sha,
    embed_text,
    ensure_space,
    fuse,
)
from projections.vectors import _fill as fill
from projections.vectors import _scope_filter as scope_filter
from schema.events import EventEnvelope
from workers.bootstrap import Container, all_projectors

__all__ = ["FULL", "QUICK", "Scale", "main"]

SPACE = "local/all-minilm-l6-v2"
DIMS = 384
RAW_BATCH = 64
BUILD_MEMORY = "512MB"
TOPICS = 50
CHUNKS_PER_DOCUMENT = 10
"""Of the loaded chunks: ``chunk_index`` 0..9 of one document id."""


@dataclass(frozen=True)
class Scale:
    documents: int
    """Ingested and embedded for real."""
    chunks: int
    """Loaded with synthetic vectors into the benchmarked knowledge base."""
    other_chunks: int
    """The second tenant's knowledge base in the same space: past ``EXACT_UP_TO``, so searched by HNSW."""
    clusters: int
    queries: int
    other_queries: int


FULL = Scale(documents=150, chunks=100_000, other_chunks=10_500, clusters=1_000, queries=200, other_queries=50)
QUICK = Scale(documents=20, chunks=12_000, other_chunks=10_500, clusters=120, queries=50, other_queries=20)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def p50_p95(times: Sequence[float]) -> str:
    return f"{ms(statistics.median(times))}/{ms(percentile(list(times), 0.95))}"


# --- generated text ------------------------------------------------------------------------------------------
NOUNS = (
    "system report river engine garden budget station library market harbour valve schedule contract sensor "
    "bridge archive ledger pipeline kitchen orchard council network battery factory warehouse ferry clinic "
    "canal turbine vineyard tenant invoice survey quarry beacon lantern meadow glacier furnace courtyard"
).split()
VERBS = (
    "inspects records replaces measures delays approves repairs describes supplies monitors schedules reduces "
    "doubles follows audits extends"
).split()
ADJECTIVES = "northern annual wooden quiet rusty temporary modern coastal seasonal narrow reliable damaged".split()
PHRASES = (
    "after the storm",
    "before the audit",
    "during the winter",
    "at the end of each month",
    "without further notice",
    "in most districts",
    "since the last survey",
    "once the permits arrive",
)
SYLLABLES = "ka lo mir ten sa vor quel dan ri fo bel tur no gas pel zi".split()
LEXICON = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES]
"""4,096 made-up words: each cluster of the loaded chunks has a few of its own, so full text can tell them apart."""


def sentence(rng: random.Random, nouns: Sequence[str] = NOUNS) -> str:
    subject, thing = rng.choice(nouns), rng.choice(nouns)
    words = f"The {rng.choice(ADJECTIVES)} {subject} {rng.choice(VERBS)} the {thing} {rng.choice(PHRASES)}"
    if rng.random() < 0.3:
        words += f", about {rng.randint(2, 900)} of them"
    return words + "."


def markdown_document(n: int) -> bytes:
    """A Markdown document of 3,000 to 5,000 characters in a few sections, different for every ``n``."""
    rng = random.Random(n)
    target = rng.randint(3_000, 5_000)
    parts = [f"# Field notes {n}: the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}\n"]
    size = len(parts[0])
    section = 0
    while size < target:
        if section == 0 or rng.random() < 0.3:
            section += 1
            heading = f"\n## {section}. The {rng.choice(NOUNS)} and the {rng.choice(NOUNS)}\n"
            parts.append(heading)
            size += len(heading)
        paragraph = "\n" + " ".join(sentence(rng) for _ in range(rng.randint(3, 7))) + "\n"
        parts.append(paragraph)
        size += len(paragraph)
    return "".join(parts).encode()


# --- 1. ingestion -----------------------------------------------------------------------------------------
def chunk_texts(events: Sequence[EventEnvelope], knowledge_id: str) -> list[str]:
    """What the projector will embed: every chunk of the knowledge base's ``DocumentChunked`` events."""
    return [
        embed_text(c["heading"], c["text"])
        for e in events
        if e.type == "DocumentChunked" and str(e.data.get("knowledge_id")) == knowledge_id
        for c in e.data["chunks"]
    ]


async def measure_ingestion(container: Container, tenant_id: str, scale: Scale, report: Report) -> None:
    knowledge = container.knowledge
    owner = Principal(tenant_id=tenant_id, user_id=uuid.uuid4(), role="admin", via="token")
    ctx = CommandContext(tenant_id=tenant_id, actor=owner.actor)
    kb = await knowledge.create(ctx, owner, name="Bench")
    documents = [markdown_document(n) for n in range(scale.documents)]
    chars = sum(len(d) for d in documents)
    with stopwatch() as elapsed:
        ids = [
            (await knowledge.upload(ctx, owner, data=data, filename=f"notes-{n}.md", knowledge_id=kb.id)).id
            for n, data in enumerate(documents)
        ]
        uploaded = elapsed()
    progress(f"ingestion: {len(ids)} documents uploaded in {uploaded:.1f} s ({len(ids) / uploaded:.1f}/s)")
    with stopwatch() as elapsed:
        statuses = [await knowledge.ingest(ctx, document_id) for document_id in ids]
        ingested = elapsed()
    assert statuses == ["chunked"] * len(ids), statuses
    sealed = await container.store.call(container.store.read, 1, 1_000_000)
    events = await container.store.call(container.store.open_envelopes, sealed)  # chunks are personal: sealed
    texts = chunk_texts(events, str(kb.id))
    progress(
        f"ingestion: {len(ids)} documents extracted and chunked in {ingested:.1f} s "
        f"({len(ids) / ingested:.1f}/s), {len(texts)} chunks"
    )
    report.add("upload documents/s", f"{len(ids) / uploaded:.1f}", "Knowledge.upload: blob + DocumentUploaded")
    report.add(
        "ingest documents/s",
        f"{len(ids) / ingested:.1f}",
        f"Knowledge.ingest: extract+chunk+record; {len(ids)} docs, {chars // len(ids):,} chars, "
        f"{len(texts) / len(ids):.1f} chunks each",
    )

    embedder = await container.embedders.get(tenant_id, LOCAL_EMBEDDING)
    with stopwatch() as elapsed:
        await embedder.embed(["the model loads on its first call"])
        progress(f"ingestion: local model loaded in {elapsed():.1f} s")
    progress(f"ingestion: raw embedder on the {len(texts)} chunk texts, batches of {RAW_BATCH}")
    with stopwatch() as elapsed:
        for start in range(0, len(texts), RAW_BATCH):
            await embedder.embed(texts[start : start + RAW_BATCH])
        raw_s = elapsed()
    raw_rate = len(texts) / raw_s
    progress(f"ingestion: raw embedder {raw_rate:.1f} chunks/s ({raw_s:.1f} s)")

    projector = next(p for p in all_projectors(container) if p.name == "vectors")
    runner = ProjectorRunner(projector, engine=container.engine, store=container.store)
    progress(f"ingestion: vector projector catching up on {len(events)} events")
    with stopwatch() as elapsed:
        read = await runner.catch_up(lambda position, target: progress(f"vectors: {position:,}/{target:,}"))
        projector_s = elapsed()
    async with container.engine.connect() as conn:
        indexed = (
            await conn.execute(
                text("SELECT count(*) FROM rm_chunks WHERE knowledge_id = :kb AND embedding IS NOT NULL"),
                {"kb": str(kb.id)},
            )
        ).scalar_one()
    assert indexed == len(texts), (indexed, len(texts))
    projector_rate = indexed / projector_s
    progress(f"ingestion: projector {projector_rate:.1f} chunks/s ({projector_s:.1f} s, {read} events read)")
    report.add("embed raw chunks/s", f"{raw_rate:.1f}", f"LocalEmbedder.embed, batches of {RAW_BATCH}, nothing stored")
    report.add(
        "projector chunks/s (embed+index)",
        f"{projector_rate:.1f}",
        f"VectorsProjector via ProjectorRunner.catch_up, {indexed} chunks in {projector_s:.1f} s",
    )
    report.add("ratio projector/raw", f"{projector_rate / raw_rate:.2f}", "same texts, same model, same run")


# --- 2. search over loaded chunks -----------------------------------------------------------------------------
@dataclass
class Loaded:
    """The chunks as loaded: their keys and vectors in load order, the first ``main`` of them in the
    benchmarked knowledge base, the rest in the other tenant's."""

    keys: list[tuple[str, int]]
    vectors: np.ndarray
    texts: list[str]
    main: int


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def load_chunks(
    database_url: str, places: Sequence[tuple[str, str, int]], clusters: int, every: Callable[[int, int], None]
) -> Loaded:
    """COPY ``count`` chunks for each (tenant, knowledge base, count) into ``rm_chunks``, binary."""
    rng = np.random.default_rng(11)
    words = random.Random(11)
    topics = unit(rng.standard_normal((TOPICS, DIMS)))
    centres = unit(topics[np.arange(clusters) % TOPICS] + rng.standard_normal((clusters, DIMS)) / np.sqrt(DIMS))
    lexicon = [words.sample(LEXICON, 6) for _ in range(clusters)]
    total = sum(count for _, _, count in places)
    keys: list[tuple[str, int]] = []
    vectors = np.empty((total, DIMS), dtype=np.float32)
    texts: list[str] = []
    columns = (
        'document_id, chunk_index, tenant_id, knowledge_id, chat_id, heading, text, page, start, "end", '
        "content_sha, space, embedding"
    )
    types = ["uuid", "int4", "uuid", "uuid", "uuid", "text", "text", "int4", "int4", "int4", "varchar", "varchar"]
    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        with conn.cursor() as cur, cur.copy(f"COPY rm_chunks ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([*types, "vector"])
            n = 0
            for tenant, knowledge_id, count in places:
                for i in range(count):
                    if i % CHUNKS_PER_DOCUMENT == 0:
                        document_id = uuid.uuid4()
                        offset = 0
                    cluster = int(rng.integers(clusters))
                    noise = rng.standard_normal(DIMS) / np.sqrt(DIMS)
                    vector = unit(centres[cluster] + noise).astype(np.float32)
                    body = " ".join(sentence(words, [*lexicon[cluster], *NOUNS[:8]]) for _ in range(3))
                    heading = f"{lexicon[cluster][0].title()} > Part {i % CHUNKS_PER_DOCUMENT + 1}"
                    index = i % CHUNKS_PER_DOCUMENT
                    copy.write_row(
                        (
                            document_id,
                            index,
                            uuid.UUID(tenant),
                            uuid.UUID(knowledge_id),
                            None,
                            heading,
                            body,
                            None,
                            offset,
                            offset + len(body),
                            content_sha(heading, body),
                            SPACE,
                            vector,
                        )
                    )
                    offset += len(body)
                    keys.append((str(document_id), index))
                    vectors[n] = vector
                    texts.append(body)
                    n += 1
                    every(n, total)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE rm_chunks")
    return Loaded(keys=keys, vectors=vectors, texts=texts, main=places[0][2])


def queries_from(loaded: Loaded, rows: Sequence[int], rng: np.random.Generator) -> list[tuple[list[float], str]]:
    """Per chosen chunk: its vector plus noise (cosine about 0.95), and six words of its text."""
    out = []
    for row in rows:
        vector = unit(loaded.vectors[row] + 0.33 * rng.standard_normal(DIMS) / np.sqrt(DIMS))
        words = loaded.texts[row].replace(",", "").replace(".", "").split()
        start = int(rng.integers(max(1, len(words) - 6)))
        out.append(([float(x) for x in vector], " ".join(words[start : start + 6])))
    return out


async def index_scans(engine: AsyncEngine, index_name: str, at_least: int) -> int:
    """The index's ``idx_scan``, once it has settled: a backend publishes its counters within about a
    second of going idle."""
    deadline = time.perf_counter() + 15
    values: list[int] = []
    while True:
        async with engine.connect() as conn:
            row = await conn.execute(
                text("SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes WHERE indexrelname = :i"),
                {"i": index_name},
            )
            values.append(int(row.scalar_one()))
        settled = len(values) >= 4 and len(set(values[-4:])) == 1
        if (settled and values[-1] >= at_least) or time.perf_counter() > deadline:
            return values[-1]
        await asyncio.sleep(0.5)


async def nearest(
    index: VectorIndex, tenant_id: str, scope: SearchScope, n: int, *, exact: bool | None = False
) -> list[tuple[str, int]]:
    """Through the index whatever the scope's size (``exact=False``: ``nearest_exact``'s twin), or as
    ``VectorIndex.search`` decides (``exact=None``: ef_search raised by the scope's share of the space, exact
    when the index still gives too few rows)."""
    async with index.engine.connect() as conn:
        where, params = scope_filter(tenant_id, scope, ())
        return [key for key, _ in await index._nearest(conn, scope, where, params, n, exact=exact)]


async def timed_series(what: str, count: int, call: Callable[[int], Awaitable[Any]]) -> tuple[list[float], list[Any]]:
    """``call(i)`` for every query, one at a time, after one untimed call; progress at every quarter."""
    await call(0)
    times, results = [], []
    for i in range(count):
        start = time.perf_counter()
        results.append(await call(i))
        times.append(time.perf_counter() - start)
        if (i + 1) % max(1, count // 4) == 0:
            progress(f"{what}: {i + 1}/{count}, p50 so far {ms(statistics.median(times))} ms")
    return times, results


def recall(found: Sequence[Sequence[tuple[str, int]]], truth: Sequence[Sequence[tuple[str, int]]]) -> float:
    return statistics.fmean(len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True))


async def explain_sent(
    index: VectorIndex, marker: str, call: Callable[[], Awaitable[Any]], *, options: str = "ANALYZE, COSTS OFF"
) -> list[str]:
    """``EXPLAIN (options)`` of the last statement holding ``marker`` that ``call`` sent, as the engine saw
    it, with ``hnsw.ef_search`` as the index sets it; the plan is printed."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if marker in statement and "ORDER BY" in statement:
            sent.append((statement, parameters))

    engine = index.engine.sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        await call()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = sent[-1]
    async with index.engine.connect() as conn:
        await conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {index.ef_search}")
        rows = await conn.exec_driver_sql(f"EXPLAIN ({options}) " + statement, parameters)
        plan = [str(r[0]) for r in rows]
    for line in plan:
        progress(f"  plan | {line if len(line) <= 140 else line[:100] + ' ... ' + line[-30:]}")
    return plan


async def explain_nearest(index: VectorIndex, tenant_id: str, scope: SearchScope, index_name: str) -> tuple[bool, str]:
    """EXPLAIN ANALYZE the statement ``_nearest`` sends for an HNSW search, as the engine saw it."""
    plan = await explain_sent(index, "<=>", lambda: nearest(index, tenant_id, scope, 10))
    scan = next((line.strip(" ->") for line in plan if " on rm_chunks" in line), plan[0])
    return f"Index Scan using {index_name}" in scan, scan.split(" (")[0]


async def explain_full_text(index: VectorIndex, tenant_id: str, scope: SearchScope, query: str) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) the statement the full-text half sends: rows ranked, and the time."""

    async def full_text() -> None:
        async with index.engine.connect() as conn:
            where, params = scope_filter(tenant_id, scope, ())
            await index._full_text(conn, where, params, query, index.candidates)

    plan = await explain_sent(index, "ts_rank_cd", full_text, options="ANALYZE, BUFFERS")
    ranked = next((line for line in plan if "GroupAggregate" in line or "HashAggregate" in line), "")
    rows = ranked.split("rows=")[-1].split(" ")[0] if "actual" in ranked else "?"
    executed = next((line.split(": ")[1] for line in plan if line.startswith("Execution Time")), "?")
    return f"{rows} rows ranked, executed in {executed}"


async def measure_search(container: Container, database_url: str, scale: Scale, report: Report) -> None:
    engine = container.engine
    tenant, kb = str(uuid.uuid4()), str(uuid.uuid4())
    other_tenant, other_kb = str(uuid.uuid4()), str(uuid.uuid4())
    places = [(tenant, kb, scale.chunks), (other_tenant, other_kb, scale.other_chunks)]
    total = scale.chunks + scale.other_chunks
    fifth = max(1, total // 5)

    def every(n: int, of: int) -> None:
        if n % fifth == 0 or n == of:
            progress(f"search: loaded {n:,}/{of:,} chunks")

    progress(f"search: loading {total:,} chunks with synthetic vectors ({scale.clusters:,} clusters) by COPY")
    with stopwatch() as elapsed:
        loaded = await asyncio.to_thread(load_chunks, database_url, places, scale.clusters, every)
        load_s = elapsed()
    progress(f"search: loaded and analysed in {load_s:.1f} s; building the HNSW index")
    async with engine.begin() as conn:
        await ensure_space(conn, SPACE, DIMS)
    with stopwatch() as elapsed:
        # build_indexes runs CREATE INDEX CONCURRENTLY on its own connections: the memory is set for the role.
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text(f"ALTER ROLE CURRENT_USER SET maintenance_work_mem = '{BUILD_MEMORY}'"))
        await engine.dispose()  # new connections pick the setting up
        assert await build_indexes(engine) == [SPACE], "build_indexes made no index"
        build_s = elapsed()
    async with engine.connect() as conn:
        index_name = (
            await conn.execute(text("SELECT index_name FROM embedding_spaces WHERE space = :s"), {"s": SPACE})
        ).scalar_one()
        assert index_name, "ensure_space made no index"
        await conn.execute(text("ANALYZE rm_chunks"))
        sizes = (
            await conn.execute(
                text(
                    "SELECT pg_table_size('rm_chunks'), pg_relation_size(CAST(:i AS regclass)), "
                    "pg_indexes_size('rm_chunks')"
                ),
                {"i": index_name},
            )
        ).one()
        version = (await conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))).scalar()
        await conn.commit()
    mib = 1024 * 1024
    progress(
        f"search: HNSW index {index_name} built in {build_s:.1f} s; table {sizes[0] / mib:,.0f} MiB, "
        f"HNSW {sizes[1] / mib:,.0f} MiB"
    )
    report.add("pgvector version", str(version), "SELECT extversion FROM pg_extension")
    report.add(
        "chunks loaded (synthetic vectors)",
        f"{total:,}",
        f"{scale.chunks:,} in the benchmarked KB + {scale.other_chunks:,} of another tenant; COPY+VACUUM ANALYZE "
        f"{load_s:.1f} s",
    )
    report.add("HNSW build (s)", f"{build_s:.1f}", f"build_indexes (CONCURRENTLY), {DIMS} dims, maintenance_work_mem {BUILD_MEMORY}")
    report.add(
        "rm_chunks size (MiB)",
        f"{sizes[0] / mib:,.0f}",
        f"heap+TOAST; indexes {sizes[2] / mib:,.0f} MiB of which HNSW {sizes[1] / mib:,.0f}",
    )

    rng = np.random.default_rng(5)
    rows = rng.choice(loaded.main, scale.queries, replace=False).tolist()
    queries = queries_from(loaded, rows, rng)
    scopes = [SearchScope(space=SPACE, vector=v, knowledge_ids=[kb]) for v, _ in queries]
    index = VectorIndex(engine)
    low = VectorIndex(engine, ef_search=40)

    used, node = await explain_nearest(index, tenant, scopes[0], index_name)
    progress(f"search: EXPLAIN of _nearest: HNSW index {'used' if used else 'NOT USED'} ({node})")
    report.add("HNSW index in the plan (EXPLAIN)", "yes" if used else "NO", node)

    async def series(
        what: str, call: Callable[[int], Awaitable[Any]], per_call: int
    ) -> tuple[list[float], list[Any], str]:
        """Times a series; checks that the index's scan counter moved by ``per_call`` per query."""
        before = await index_scans(engine, index_name, 0)
        times, results = await timed_series(what, len(queries), call)
        expected = (len(queries) + 1) * per_call  # the untimed first call included
        scans = await index_scans(engine, index_name, before + expected) - before
        verdict = f"HNSW idx_scan +{scans}, expected +{expected}" + ("" if scans == expected else " (UNEXPECTED)")
        progress(f"{what}: {verdict}")
        return times, results, verdict

    progress(f"search: {len(queries)} queries, 10 nearest, in a scope of {scale.chunks:,} (> {EXACT_UP_TO:,})")
    exact_times, truth, verdict = await series("exact", lambda i: index.nearest_exact(tenant, scopes[i], limit=10), 0)
    report.add("exact p50/p95 (ms)", p50_p95(exact_times), f"nearest_exact (sequential scan); {verdict}")
    for ef, vector_index in ((200, index), (40, low)):
        times, found, verdict = await series(
            f"HNSW ef {ef}", lambda i, x=vector_index: nearest(x, tenant, scopes[i], 10), 1
        )
        report.add(f"HNSW ef_search {ef} p50/p95 (ms)", p50_p95(times), f"_nearest(exact=False); {verdict}")
        report.add(
            f"HNSW ef_search {ef} recall@10", f"{recall(found, truth):.3f}", f"against exact, {len(queries)} queries"
        )
    hybrid_times, hits, verdict = await series(
        "hybrid", lambda i: index.search(tenant, [scopes[i]], queries[i][1], limit=10), 1
    )
    report.add("hybrid search p50/p95 (ms)", p50_p95(hybrid_times), f"VectorIndex.search, ef 200; {verdict}")
    own = statistics.fmean(
        loaded.keys[row] in {(h.document_id, h.chunk_index) for h in found}
        for row, found in zip(rows, hits, strict=True)
    )
    report.add("hybrid: query's own chunk in top 10", f"{own:.1%}", "its vector + noise, six of its words")
    await measure_hybrid_parts(index, tenant, scopes, [q for _, q in queries], truth, report)

    # The other tenant's knowledge base: a tenth of the space, past EXACT_UP_TO, so searched by HNSW.
    other_rows = (loaded.main + rng.choice(scale.other_chunks, scale.other_queries, replace=False)).tolist()
    other = [
        SearchScope(space=SPACE, vector=v, knowledge_ids=[other_kb]) for v, _ in queries_from(loaded, other_rows, rng)
    ]
    share = scale.other_chunks / total
    progress(
        f"search: {len(other)} queries in the other tenant's {scale.other_chunks:,} chunks ({share:.1%} of the space)"
    )
    other_truth = [await index.nearest_exact(other_tenant, s, limit=10) for s in other]
    for ef, vector_index in ((200, index), (40, low)):
        found = [await nearest(vector_index, other_tenant, s, 10) for s in other]
        returned = statistics.fmean(len(f) for f in found)
        progress(f"small KB, ef {ef}: {returned:.1f} of 10 rows returned, recall@10 {recall(found, other_truth):.3f}")
        report.add(
            f"small KB ({share:.0%} of space), ef {ef}: rows of 10",
            f"{returned:.1f}",
            f"recall@10 {recall(found, other_truth):.3f}, {len(other)} queries",
        )
    with stopwatch() as elapsed:
        auto = [await nearest(index, other_tenant, s, 10, exact=None) for s in other]
    returned = statistics.fmean(len(f) for f in auto)
    progress(f"small KB, as search decides: {returned:.1f} of 10 rows, recall@10 {recall(auto, other_truth):.3f}")
    report.add(
        "small KB, as search decides: rows of 10",
        f"{returned:.1f}",
        f"recall@10 {recall(auto, other_truth):.3f}, {elapsed() / len(other) * 1000:.1f} ms a query (ef_search by share)",
    )
    wide = [await nearest(index, other_tenant, s, index.candidates) for s in other]
    returned = statistics.fmean(len(f) for f in wide)
    progress(f"small KB, ef 200: {returned:.1f} of {index.candidates} rows returned")
    report.add(
        f"small KB, ef 200: rows of {index.candidates}",
        f"{returned:.1f}",
        "the vector candidates VectorIndex.search asks for",
    )


async def measure_hybrid_parts(
    index: VectorIndex,
    tenant: str,
    scopes: Sequence[SearchScope],
    words: Sequence[str],
    truth: Sequence[Sequence[tuple[str, int]]],
    report: Report,
) -> None:
    """Where a hybrid search's time goes: its vector half, full-text half and fusion, one after the other
    on one connection as ``search`` runs them, each timed (and the full-text statement explained)."""
    n = index.candidates
    progress(f"hybrid parts: EXPLAIN (ANALYZE, BUFFERS) of the full-text half for {words[0]!r}")
    explained = await explain_full_text(index, tenant, scopes[0], words[0])
    progress(f"hybrid parts: full-text half {explained}")
    parts: dict[str, list[float]] = {"vector": [], "text": [], "fusion": []}
    nearest_10: list[list[tuple[str, int]]] = []

    async def call(i: int) -> None:
        async with index.engine.connect() as conn:
            where, params = scope_filter(tenant, scopes[i], ())
            with stopwatch() as elapsed:
                vector = await index._nearest(conn, scopes[i], where, params, n)
                parts["vector"].append(elapsed())
            with stopwatch() as elapsed:
                text_half = await index._full_text(conn, where, params, words[i], n)
                parts["text"].append(elapsed())
            with stopwatch() as elapsed:
                await fill(conn, tenant, fuse([(vector, text_half)], 10))
                parts["fusion"].append(elapsed())
            nearest_10.append([key for key, _ in vector[:10]])

    await timed_series("hybrid parts", len(scopes), call)
    for values in parts.values():
        del values[0]  # the untimed first call
    del nearest_10[0]
    report.add(
        "hybrid: vector half p50/p95 (ms)",
        p50_p95(parts["vector"]),
        "_nearest as search decides: scope counted to EXACT_UP_TO+1 every 30 s, HNSW for 50",
    )
    report.add("hybrid: vector half recall@10", f"{recall(nearest_10, truth):.3f}", "its top 10 against exact")
    report.add("hybrid: full-text half p50/p95 (ms)", p50_p95(parts["text"]), f"_full_text, 50 candidates; {explained}")
    report.add("hybrid: fusion + fill p50/p95 (ms)", p50_p95(parts["fusion"]), "fuse (RRF), then _fill reads the 10 rows")


# --- entry point ------------------------------------------------------------------------------------------
async def run(urls: EngineUrls, home: Path, scale: Scale) -> Report:
    report = Report()
    container, tenant_id = await start_container(settings_for(urls, home, "bench_ingest"))
    try:
        progress("ingestion: upload, ingest, raw embedder, vector projector")
        await measure_ingestion(container, tenant_id, scale, report)
    finally:
        await container.close()
    # A database of its own: the space has no HNSW index yet, so build_indexes builds it over the loaded rows.
    settings = settings_for(urls, home, "bench_search")
    container, _ = await start_container(settings)
    try:
        progress("search: synthetic chunks, HNSW build, exact / HNSW / hybrid")
        assert settings.database_url
        await measure_search(container, settings.database_url, scale, report)
    finally:
        await container.close()
    return report


def main(argv: list[str] | None = None) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    cli("python -m bench.knowledge", __doc__ or "", run, QUICK, FULL, argv)


if __name__ == "__main__":
    main()
