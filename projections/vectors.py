"""The vector index: a projection of ``DocumentChunked`` events into pgvector and Postgres full text, and
hybrid search over it.

Every chunk is one row of ``rm_chunks``, embedded in the *space* (provider + model) that its knowledge base
uses at that point of the log. The ``embedding`` column is an untyped pgvector ``vector`` so one table
holds every space, whatever its dimension; each space gets a partial HNSW index on
``(embedding::vector(dims)) WHERE space = '<space>'`` (``halfvec`` past 2,000 dimensions where the server's
pgvector has it — 0.7 and later; with an older pgvector such a space is searched exactly), built
CONCURRENTLY by ``build_indexes`` (run by ``parley ingest``) outside any projector transaction; until it
exists the space is searched exactly. Queries repeat the index's expression and inline the space, so the
planner can use the index.

Embeddings go through a content-addressed cache (``embedding_cache``: tenant, space, hash of the text), so
a rebuild, or a switch to a model whose vectors the background re-embedder has computed already, embeds
nothing twice. Switching a knowledge base's model (``EmbeddingSwitched``) rewrites its rows in one
transaction: search sees the old space or the new one, never a gap.

An embedding failure that will not heal by itself (the provider refuses the key, the model is gone) stores
the chunks without a vector, so full-text search still finds them and one tenant's broken provider never
stalls everyone's index; anything else is raised, and the runtime retries the batch.

Search is hybrid: the nearest chunks by cosine distance and the best full-text matches (all of the query's
words first, then any; ``ts_rank_cd`` over a bounded set of candidates per word) are fused by reciprocal rank
(k = 60).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import msgspec
import structlog
from sqlalchemy import Table, bindparam, column, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.knowledge import LOCAL_EMBEDDING, Hit, SearchScope, embedding_space
from projections.runtime import HandlesTypes
from schema.contract import (
    ChatDeleted,
    DocumentChunked,
    DocumentDeleted,
    DocumentReuploaded,
    EmbeddingSwitched,
    KnowledgeBaseCreated,
    KnowledgeBaseDeleted,
    UserErased,
    decode_data,
)
from schema.events import EventEnvelope
from schema.locks import advisory_key
from schema.tables import chunks, documents, embedding_cache, embedding_spaces, vector_spaces

__all__ = ["DimensionChanged", "VectorIndex", "build_indexes", "ensure_space", "session_lock", "VectorsProjector", "LOCAL_EMBEDDING", "content_sha", "embed_text", "fuse"]

log = structlog.get_logger("parley.vectors")


RRF_K = 60
EXACT_UP_TO = 10_000
"""A search whose scope holds at most this many chunks is exact (a sort of the scope's rows): an HNSW scan
filtered down to one small knowledge base could return fewer than it should."""
MAX_EF_SEARCH = 1_000  # pgvector's upper bound
TEXT_POOL = 200
"""Full text ranks at most this many chunks of the scope per query word (see ``_full_text``)."""
MAX_TEXT_WORDS = 16
"""Full text searches the first this many distinct words of a query: a pasted paragraph stays one bounded query."""
LARGE_SCOPE_MEMORY_S = 30.0
"""How long search remembers that a scope is past ``EXACT_UP_TO`` (and the ``ef_search`` it needed)."""
LARGE_SCOPES_REMEMBERED = 4_096
MAX_INDEXED_DIMS = 2_000
MAX_HALFVEC_DIMS = 4_000
PERMANENT_EMBEDDING_ERRORS = frozenset(
    {"UPSTREAM_UNAUTHORIZED", "MODEL_UNAVAILABLE", "EMBEDDING_INPUT_TOO_LARGE", "EMBEDDING_DIMENSION_CHANGED"}
)
_SAFE_SPACE = re.compile(r"^[A-Za-z0-9._:/-]{1,200}$")


def embed_text(heading: str, body: str) -> str:
    """What is embedded for a chunk: its section's heading path gives a short chunk its context."""
    return f"{heading}\n{body}" if heading else body


def content_sha(heading: str, body: str) -> str:
    return hashlib.sha256(embed_text(heading, body).encode("utf-8")).hexdigest()


class _Embeddings(Protocol):
    vectors: list[list[float]]
    dims: int


class _Embedder(Protocol):
    async def embed(self, texts: Sequence[str]) -> _Embeddings: ...


class EmbedderSource(Protocol):
    """Finds the embedder of an embedding setting (``application.knowledge.Embedders``)."""

    async def get(self, tenant_id: str, embedding: dict[str, Any]) -> _Embedder: ...


class DimensionChanged(Exception):
    code = "EMBEDDING_DIMENSION_CHANGED"


def _literal(space: str) -> str:
    if not _SAFE_SPACE.match(space):
        raise ValueError(f"unexpected characters in vector space {space!r}")
    return "'" + space.replace("'", "''") + "'"


def _vector_type(dims: int, halfvec: bool) -> str:
    return f"halfvec({dims})" if halfvec and dims > MAX_INDEXED_DIMS else f"vector({dims})"


async def _pgvector_has_halfvec(conn: AsyncConnection) -> bool:
    row = await conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
    version = tuple(int(p) for p in str(row.scalar() or "0.0.0").split(".")[:2])
    return version >= (0, 7)


@asynccontextmanager
async def session_lock(conn: AsyncConnection, name: str) -> AsyncIterator[bool]:
    """Try the session-level advisory lock ``name`` on ``conn``: yields whether this session holds it
    (another process doing the same work does not), and releases it afterwards."""
    key = advisory_key(name)
    held = bool((await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar())
    try:
        yield held
    finally:
        if held:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


async def ensure_space(conn: AsyncConnection, space: str, dims: int) -> None:
    """Record a space and its dimension (once; concurrent callers serialise on an advisory lock), with
    the name of the HNSW index ``build_indexes`` will give it. A space's vectors always have one
    dimension: a provider that changes it is refused."""
    row = (await conn.execute(select(embedding_spaces.c.dims).where(embedding_spaces.c.space == space))).first()
    if row is None:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": advisory_key(space)})
        row = (await conn.execute(select(embedding_spaces.c.dims).where(embedding_spaces.c.space == space))).first()
    if row is not None:
        if row[0] != dims:
            raise DimensionChanged(f"{space} gave {dims} dimensions, not {row[0]}")
        return
    halfvec = await _pgvector_has_halfvec(conn)
    index_name: str | None = None
    if dims <= MAX_INDEXED_DIMS or (halfvec and dims <= MAX_HALFVEC_DIMS):
        index_name = "ix_rm_chunks_hnsw_" + hashlib.sha256(space.encode()).hexdigest()[:16]
    else:
        log.warning("vector_space_unindexed", space=space, dims=dims, reason="pgvector cannot index this dimension")
    await conn.execute(insert(embedding_spaces).values(space=space, dims=dims, index_name=index_name, indexed=False))


async def build_indexes(engine: AsyncEngine) -> list[str]:
    """Build the HNSW index of every space that has none yet, ``CREATE INDEX CONCURRENTLY`` (writers go
    on meanwhile), one at a time; a build that was interrupted left an invalid index, which is dropped
    and built again. Returns the spaces indexed."""
    async with engine.connect() as conn:
        pending = (
            await conn.execute(
                select(embedding_spaces.c.space, embedding_spaces.c.dims, embedding_spaces.c.index_name).where(
                    embedding_spaces.c.indexed.is_(False), embedding_spaces.c.index_name.is_not(None)
                )
            )
        ).all()
        if not pending:
            return []
        halfvec = await _pgvector_has_halfvec(conn)
    built = []
    for space, dims, index_name in pending:
        vtype = _vector_type(dims, halfvec)
        ops = "halfvec_cosine_ops" if vtype.startswith("halfvec") else "vector_cosine_ops"
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with session_lock(auto, f"index:{space}") as held:
                if not held:
                    continue  # another process is building it
                invalid = await auto.execute(
                    text(
                        "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "WHERE c.relname = :name AND NOT i.indisvalid"
                    ),
                    {"name": index_name},
                )
                if invalid.first() is not None:
                    await auto.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {index_name}"))
                started = time.perf_counter()
                await auto.execute(
                    text(
                        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index_name} ON rm_chunks USING hnsw "
                        f"((embedding::{vtype}) {ops}) WHERE space = {_literal(space)}"
                    )
                )
                await auto.execute(
                    embedding_spaces.update().where(embedding_spaces.c.space == space).values(indexed=True)
                )
                log.info("vector_index_built", space=space, index=index_name, seconds=round(time.perf_counter() - started, 1))
                built.append(space)
    return built


async def cached_vectors(
    conn: AsyncConnection, embedders: EmbedderSource, tenant_id: str, embedding: dict[str, Any], texts: dict[str, str]
) -> dict[str, list[float] | None]:
    """Vectors for ``texts`` (content hash → text) in ``embedding``'s space, from the cache or embedded now
    (and cached). A permanent embedding failure gives None for the texts it could not embed."""
    space = embedding_space(embedding)
    c = embedding_cache.c
    found: dict[str, list[float] | None] = {}
    hashes = list(texts)
    for start in range(0, len(hashes), 1000):
        rows = await conn.execute(
            select(c.content_sha, c.embedding).where(
                c.tenant_id == tenant_id, c.space == space, c.content_sha.in_(hashes[start : start + 1000])
            )
        )
        found.update({sha: [float(x) for x in vec] for sha, vec in rows})
    missing = [sha for sha in hashes if sha not in found]
    if not missing:
        return found
    try:
        embedder = await embedders.get(tenant_id, embedding)
        result = await embedder.embed([texts[sha] for sha in missing])
        async with conn.begin_nested():  # a refused dimension must not abort the projector's transaction
            await ensure_space(conn, space, result.dims)
    except Exception as exc:
        code = getattr(exc, "code", None)
        if code not in PERMANENT_EMBEDDING_ERRORS:
            raise
        log.warning("embedding_refused", space=space, tenant_id=tenant_id, code=code, chunks=len(missing))
        return {**found, **{sha: None for sha in missing}}
    await conn.execute(
        insert(embedding_cache)
        .values([{"tenant_id": tenant_id, "space": space, "content_sha": sha, "embedding": vec} for sha, vec in zip(missing, result.vectors, strict=True)])
        .on_conflict_do_nothing()
    )
    found.update(zip(missing, result.vectors, strict=True))
    return found


async def _forget_chunks(conn: AsyncConnection, event_type: str, subject_id: str) -> None:
    """The chunks of an erased user's documents (their keys name the user) or of a deleted chat's
    files, and their cached embeddings: derived from the text, they go with it."""
    if event_type == "UserErased":
        where = chunks.c.document_id.in_(
            text("SELECT key_id FROM parley_subject_keys WHERE user_id = CAST(:subject AS uuid)")
            .bindparams(subject=subject_id)
            .columns(column("key_id"))
        )
    else:
        where = chunks.c.chat_id == subject_id
    deleted = chunks.delete().where(where).returning(chunks.c.tenant_id, chunks.c.space, chunks.c.content_sha)
    gone = (await conn.execute(deleted)).all()
    if gone:
        await conn.execute(
            embedding_cache.delete().where(
                tuple_(embedding_cache.c.tenant_id, embedding_cache.c.space, embedding_cache.c.content_sha).in_(
                    [tuple(row) for row in gone]
                )
            )
        )


class VectorsProjector(HandlesTypes):
    name = "vectors"
    tables: Sequence[Table] = (vector_spaces, chunks)
    batch_size = 16
    """Events per transaction: a batch of chunk events is embedded inside it."""
    _types = frozenset(
        {
            "KnowledgeBaseCreated",
            "EmbeddingSwitched",
            "KnowledgeBaseDeleted",
            "DocumentChunked",
            "DocumentReuploaded",
            "DocumentDeleted",
            "UserErased",
            "ChatDeleted",
        }
    )

    def __init__(self, embedders: EmbedderSource) -> None:
        self.embedders = embedders

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        aggregate_id = str(e.aggregate_id)
        match data := decode_data(e.type, e.data):
            case KnowledgeBaseCreated():
                embedding = msgspec.to_builtins(data.embedding)
                await conn.execute(
                    insert(vector_spaces)
                    .values(knowledge_id=aggregate_id, tenant_id=data.tenant_id, embedding=embedding, space=embedding_space(embedding))
                    .on_conflict_do_nothing()
                )
            case KnowledgeBaseDeleted():
                await conn.execute(chunks.delete().where(chunks.c.knowledge_id == aggregate_id))
                await conn.execute(vector_spaces.delete().where(vector_spaces.c.knowledge_id == aggregate_id))
            case DocumentReuploaded() | DocumentDeleted():
                await conn.execute(chunks.delete().where(chunks.c.document_id == aggregate_id))
            case UserErased() | ChatDeleted():
                await _forget_chunks(conn, e.type, aggregate_id)
            case DocumentChunked():
                await self._index(conn, e, data)
            case EmbeddingSwitched():
                await self._switch(conn, aggregate_id, e.tenant_id, msgspec.to_builtins(data.embedding))

    async def _index(self, conn: AsyncConnection, e: EventEnvelope, data: DocumentChunked) -> None:
        knowledge_id = str(data.knowledge_id) if data.knowledge_id is not None else None
        embedding = LOCAL_EMBEDDING
        if knowledge_id is not None:
            row = (
                await conn.execute(select(vector_spaces.c.embedding).where(vector_spaces.c.knowledge_id == knowledge_id))
            ).first()
            if row is None:
                return  # the knowledge base was deleted meanwhile
            embedding = row[0]
        items = data.chunks
        if not items:  # none, or erased
            return
        hashes = [content_sha(c.heading, c.text) for c in items]
        texts = {sha: embed_text(c.heading, c.text) for sha, c in zip(hashes, items, strict=True)}
        vectors = await cached_vectors(conn, self.embedders, e.tenant_id, embedding, texts)
        space = embedding_space(embedding)
        chat_id = str(data.chat_id) if data.chat_id is not None else None
        rows = []
        for sha, c in zip(hashes, items, strict=True):
            rows.append(
                {
                    "document_id": str(e.aggregate_id),
                    "chunk_index": c.index,
                    "tenant_id": e.tenant_id,
                    "knowledge_id": knowledge_id,
                    "chat_id": chat_id,
                    "heading": c.heading,
                    "text": c.text,
                    "page": c.page,
                    "start": c.start,
                    "end": c.end,
                    "content_sha": sha,
                    "space": space,
                    "embedding": vectors[sha],
                }
            )
        stmt = insert(chunks).values(rows)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[chunks.c.document_id, chunks.c.chunk_index],
                set_={k: stmt.excluded[k] for k in ("heading", "text", "page", "start", "end", "content_sha", "space", "embedding")},
            )
        )

    async def _switch(self, conn: AsyncConnection, knowledge_id: str, tenant_id: str, embedding: dict[str, Any]) -> None:
        space = embedding_space(embedding)
        await conn.execute(
            vector_spaces.update().where(vector_spaces.c.knowledge_id == knowledge_id).values(embedding=embedding, space=space)
        )
        rows = (
            await conn.execute(
                select(chunks.c.content_sha, chunks.c.heading, chunks.c.text).where(chunks.c.knowledge_id == knowledge_id)
            )
        ).all()
        if not rows:
            return
        texts = {sha: embed_text(heading, body) for sha, heading, body in rows}
        vectors = await cached_vectors(conn, self.embedders, tenant_id, embedding, texts)
        update = (
            chunks.update()
            .where(chunks.c.knowledge_id == knowledge_id, chunks.c.content_sha == bindparam("sha"))
            .values(space=space, embedding=bindparam("vec", type_=chunks.c.embedding.type))
        )
        await conn.execute(update, [{"sha": sha, "vec": vec} for sha, vec in vectors.items()])


# --- search --------------------------------------------------------------------------------------------
Key = tuple[str, int]
"""A chunk: (document id, chunk index)."""


class VectorIndex:
    """Hybrid search over ``rm_chunks`` for one tenant."""

    exact_up_to = EXACT_UP_TO
    text_pool = TEXT_POOL
    large_scope_memory_s = LARGE_SCOPE_MEMORY_S

    def __init__(self, engine: AsyncEngine, *, candidates: int = 50, ef_search: int = 200) -> None:
        self.engine = engine
        self.candidates = candidates
        self.ef_search = ef_search
        self._indexed_spaces: dict[str, tuple[int, str]] = {}
        """Spaces whose HNSW index is built: their dimension and index, which never change again."""
        self._large_scopes: dict[str, tuple[float, int]] = {}
        """Scopes lately found past ``exact_up_to`` (by their filter): until when, and the ``ef_search``
        that kept enough of the index's candidates. Counting such a scope, even only up to
        ``exact_up_to``, reads that many rows; a scope that has shrunk since is still answered right (the
        index, then exact when it gives too few), and one that has grown was counted anyway."""

    async def search(
        self,
        tenant_id: str,
        scopes: Sequence[SearchScope],
        query: str,
        *,
        limit: int = 10,
        document_ids: Sequence[str] = (),
        vector_only: bool = False,
    ) -> list[Hit]:
        """The ``limit`` best chunks of the scopes: per scope, the ``candidates`` nearest by vector and the
        ``candidates`` best by full text, fused by reciprocal rank (``fuse``), then read."""
        n = max(self.candidates, limit)
        rankings: list[tuple[list[tuple[Key, float]], list[Key]]] = []
        async with self.engine.connect() as conn:
            for scope in scopes:
                where, params = _scope_filter(tenant_id, scope, document_ids)
                nearest = await self._nearest(conn, scope, where, params, n) if scope.vector is not None else []
                words = [] if vector_only else await self._full_text(conn, where, params, query, n)
                rankings.append((nearest, words))
            return await _fill(conn, tenant_id, fuse(rankings, limit))

    async def embeddings_of(self, tenant_id: str, knowledge_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The embedding setting each knowledge base's vectors are in now, as the index has them: during a
        switch to another model, the old one until the rows are rewritten (a query embedded with the new
        model would find nothing in the old space)."""
        if not knowledge_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(vector_spaces.c.knowledge_id, vector_spaces.c.embedding).where(
                    vector_spaces.c.tenant_id == tenant_id, vector_spaces.c.knowledge_id.in_(list(knowledge_ids))
                )
            )
            return {str(k): dict(e) for k, e in rows}

    async def nearest_exact(self, tenant_id: str, scope: SearchScope, *, limit: int) -> list[Key]:
        """The true nearest chunks (no index): the reference a benchmark's recall is measured against."""
        async with self.engine.connect() as conn:
            where, params = _scope_filter(tenant_id, scope, ())
            return [key for key, _ in await self._nearest(conn, scope, where, params, limit, exact=True)]

    async def _nearest(
        self, conn: AsyncConnection, scope: SearchScope, where: str, params: dict[str, Any], n: int, *, exact: bool | None = None
    ) -> list[tuple[Key, float]]:
        """The ``n`` nearest chunks of the scope with their cosine similarity. ``exact``: True scans the
        scope, False goes through the HNSW index with ``ef_search`` as set; None (search) decides: exact for
        a scope of at most ``exact_up_to`` chunks (counted no further than that, and not again for a while
        once past it: ``_large_scopes``); otherwise the index. pgvector (before 0.8's iterative scans)
        filters its ``ef_search`` candidates after the index scan, so a scope that is a small share of its
        space may keep fewer than ``n`` of them: then the index is asked again with ``ef_search`` raised by
        the share that passed the filter (and remembered with the scope), and the scope is searched exactly
        if even that is too few."""
        if scope.vector is None:
            return []
        space: tuple[int, str | None] | None = self._indexed_spaces.get(scope.space)
        if space is None:
            row = (await conn.execute(select(embedding_spaces).where(embedding_spaces.c.space == scope.space))).first()
            if row is None:
                return []
            space = int(row.dims), (row.index_name if row.indexed else None)
            if row.indexed and row.index_name:
                self._indexed_spaces[scope.space] = (int(row.dims), str(row.index_name))
        dims, index_name = space
        if len(scope.vector) != dims:
            # The provider changed its model's dimension: its vectors cannot be compared; full text answers
            # (as the projector keeps such chunks for full text).
            log.warning("query_dimension_changed", space=scope.space, query_dims=len(scope.vector), index_dims=dims)
            return []
        halfvec = index_name is not None and dims > MAX_INDEXED_DIMS
        vtype = _vector_type(dims, halfvec)
        distance = f"(embedding::{vtype} <=> CAST(:qv AS {vtype}))"
        values = {**params, "qv": "[" + ",".join(repr(float(x)) for x in scope.vector) + "]", "n": n}

        async def query(ef_search: int | None) -> list[tuple[Key, float]]:
            """Through the index with this ``ef_search``; None: exact ("+ 0" keeps the planner off the index)."""
            order = f"{distance} + 0" if ef_search is None else distance
            if ef_search is not None:
                # Until the transaction ends: only this module's statements scan an HNSW index, each
                # after its own SET LOCAL, and the connection goes back to the pool rolled back.
                await conn.execute(text(f"SET LOCAL hnsw.ef_search = {int(ef_search)}"))
            rows = (
                await conn.execute(
                    text(
                        f"SELECT document_id, chunk_index, 1 - {distance} AS similarity FROM rm_chunks "
                        f"WHERE {where} AND embedding IS NOT NULL ORDER BY {order} LIMIT :n"
                    ),
                    values,
                )
            ).all()
            return [((str(r[0]), int(r[1])), float(r[2])) for r in rows]

        ef_search = max(self.ef_search, n)
        if exact is not None:
            return await query(None if exact else ef_search)
        if index_name is None:
            return await query(None)
        scope_key = f"{where}|{sorted(params.items())!r}"
        now = time.monotonic()
        until, remembered_ef = self._large_scopes.get(scope_key, (0.0, 0))
        if until > now:
            ef_search = max(ef_search, remembered_ef)
        else:
            until = now + self.large_scope_memory_s  # counted again then, however often it is searched
            size = (
                await conn.execute(
                    text(f"SELECT count(*) FROM (SELECT 1 FROM rm_chunks WHERE {where} LIMIT :cap) AS scope"),
                    {**params, "cap": self.exact_up_to + 1},
                )
            ).scalar_one()
            if size <= self.exact_up_to:
                return await query(None)
        found = await query(ef_search)
        if len(found) < n and ef_search < MAX_EF_SEARCH:
            # len(found) of ef_search candidates were in the scope: ask for enough to keep about 2n.
            ef_search = MAX_EF_SEARCH if not found else min(MAX_EF_SEARCH, math.ceil(2 * n * ef_search / len(found)))
            found = await query(ef_search)
        if len(found) < n:
            self._large_scopes.pop(scope_key, None)
            return await query(None)  # the filter left too few of the index's candidates
        if len(self._large_scopes) >= LARGE_SCOPES_REMEMBERED:
            self._large_scopes = {k: v for k, v in self._large_scopes.items() if v[0] > now}
            if len(self._large_scopes) >= LARGE_SCOPES_REMEMBERED:
                self._large_scopes.clear()
        self._large_scopes[scope_key] = (until, ef_search)
        return found

    async def _full_text(self, conn: AsyncConnection, where: str, params: dict[str, Any], query: str, n: int) -> list[Key]:
        """The best full-text matches of the scope (up to ``n``): chunks with all of the query's words
        first; then those holding more of its distinctive words; then by ``ts_rank_cd`` (cover density of
        the all-words query for the first, of the any-word query for the rest).

        Only a bounded set is ranked: for each word, at most ``text_pool`` chunks of the scope that hold
        it. A word that fills no pool is distinctive: all of its chunks are candidates, and with them every
        chunk that holds all the words. A common word brings a sample (whichever chunks the scan reaches
        first), which can only order the chunks that hold no distinctive word. Ranking every chunk that
        holds a common word is what cost: of 100,000 chunks, some 40,000 hold a word such as "report", and
        ``ts_rank_cd`` over them took 150 ms and more. Each word is its own subquery with its tsquery as a
        parameter, so that Postgres plans it from its statistics of ``tsv``: the GIN index for a rare word,
        a scan stopped after ``text_pool`` rows for a common one. The lexemes are stemmed once, by
        ``plainto_tsquery``, and split at its top-level ``&`` (a hyphenated word stays one phrase)."""
        stemmed = (
            await conn.execute(text("SELECT CAST(plainto_tsquery('english', :q) AS text)"), {"q": query[:2000]})
        ).scalar_one()
        words = list(dict.fromkeys(w for w in stemmed.split(" & ") if w))[:MAX_TEXT_WORDS]
        if not words:
            return []
        pools = " UNION ALL ".join(
            f"(SELECT {i} AS word, document_id, chunk_index, tsv FROM rm_chunks "
            f"WHERE {where} AND tsv @@ CAST(:w{i} AS tsquery) LIMIT :pool)"
            for i in range(len(words))
        )
        rows = await conn.execute(
            text(
                f"WITH pooled AS ({pools}), held AS ("
                "SELECT document_id, chunk_index, count(*) OVER (PARTITION BY word) < :pool AS distinctive, "
                "tsv @@ CAST(:every AS tsquery) AS every_word, "
                "CASE WHEN tsv @@ CAST(:every AS tsquery) THEN ts_rank_cd(tsv, CAST(:every AS tsquery)) "
                "ELSE ts_rank_cd(tsv, CAST(:some AS tsquery)) END AS rank FROM pooled) "
                "SELECT document_id, chunk_index FROM held GROUP BY document_id, chunk_index "
                "ORDER BY bool_or(every_word) DESC, count(*) FILTER (WHERE distinctive) DESC, max(rank) DESC, "
                "document_id, chunk_index LIMIT :n"
            ),
            {
                **params,
                **{f"w{i}": word for i, word in enumerate(words)},
                "every": " & ".join(words),
                "some": " | ".join(words),
                "pool": self.text_pool,
                "n": n,
            },
        )
        return [(str(r[0]), int(r[1])) for r in rows]


def fuse(rankings: Sequence[tuple[Sequence[tuple[Key, float]], Sequence[Key]]], limit: int) -> list[Hit]:
    """Reciprocal rank fusion (k = ``RRF_K``) of each scope's vector ranking (with similarities) and
    full-text ranking: the ``limit`` best, ties broken by chunk, not yet read (``_fill``)."""
    ranked: dict[Key, Hit] = {}
    for nearest, words in rankings:
        for rank, (key, similarity) in enumerate(nearest, start=1):
            hit = ranked.setdefault(key, _placeholder(key))
            hit.score += 1.0 / (RRF_K + rank)
            hit.vector_rank = rank if hit.vector_rank is None else min(hit.vector_rank, rank)
            hit.similarity = similarity
        for rank, key in enumerate(words, start=1):
            hit = ranked.setdefault(key, _placeholder(key))
            hit.score += 1.0 / (RRF_K + rank)
            hit.text_rank = rank if hit.text_rank is None else min(hit.text_rank, rank)
    return sorted(ranked.values(), key=lambda h: (-h.score, h.document_id, h.chunk_index))[:limit]


def _scope_filter(tenant_id: str, scope: SearchScope, document_ids: Sequence[str]) -> tuple[str, dict[str, Any]]:
    places = []
    params: dict[str, Any] = {"tenant": tenant_id}
    if scope.knowledge_ids:
        places.append("knowledge_id = ANY(CAST(:kbs AS uuid[]))")
        params["kbs"] = list(scope.knowledge_ids)
    if scope.chat_id:
        places.append("chat_id = CAST(:chat AS uuid)")
        params["chat"] = scope.chat_id
    where = f"tenant_id = CAST(:tenant AS uuid) AND space = {_literal(scope.space)} AND ({' OR '.join(places) or 'false'})"
    if document_ids:
        where += " AND document_id = ANY(CAST(:docs AS uuid[]))"
        params["docs"] = list(document_ids)
    return where, params


def _placeholder(key: tuple[str, int]) -> Hit:
    return Hit(document_id=key[0], chunk_index=key[1], knowledge_id=None, chat_id=None, heading="", text="", page=None)


async def _fill(conn: AsyncConnection, tenant_id: str, hits: list[Hit]) -> list[Hit]:
    if not hits:
        return []
    c = chunks.c
    rows = await conn.execute(
        select(c.document_id, c.chunk_index, c.knowledge_id, c.chat_id, c.heading, c.text, c.page, documents.c.filename, documents.c.title)
        .outerjoin(documents, documents.c.document_id == c.document_id)
        .where(
            c.tenant_id == tenant_id,
            tuple_(c.document_id, c.chunk_index).in_([(h.document_id, h.chunk_index) for h in hits]),
        )
    )
    found = {(str(r.document_id), int(r.chunk_index)): r for r in rows}
    filled = []
    for hit in hits:
        r = found.get((hit.document_id, hit.chunk_index))
        if r is None:
            continue  # removed since it was ranked
        hit.knowledge_id = r.knowledge_id
        hit.chat_id = r.chat_id
        hit.heading = r.heading
        hit.text = r.text
        hit.page = r.page
        hit.filename = r.filename or ""
        hit.title = r.title
        filled.append(hit)
    return filled
