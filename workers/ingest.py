"""The ingestion worker: pulls ingestion jobs from the ``PARLEY_JOBS`` work queue and turns each uploaded
document into ``DocumentExtracted`` + ``DocumentChunked`` (or ``DocumentFailed``) events; and, beside it,
the background re-embedder that prepares a knowledge base's switch to another embedding model, and the
builder of each new embedding space's HNSW index.

A job is acked only after its outcome is in the event store; the outcome is recorded only while the
document is still queued, in one transaction, so a job delivered twice (a worker killed after recording,
before acking) changes nothing the second time: every document is ingested exactly once. A document
that crashes the worker every time (a parser bug on a hostile file) is failed after ``max_attempts``
deliveries instead of looping forever.

The re-embedder fills the embedding cache with the new model's vectors for every chunk of a knowledge
base that asked for another model, then records ``EmbeddingSwitched``; the vector projector then rewrites
the knowledge base's rows from the cache in one transaction, so search never has a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from typing import Any

import structlog
from sqlalchemy import select

from adapters import tracing
from application.context import CommandContext
from domain.knowledge import embedding_space
from projections.knowledge import pending_reembeddings
from projections.vectors import build_indexes, cached_vectors, embed_text, session_lock
from schema.jobs import IngestJob, decode_ingest_job
from schema.tables import chunks
from workers.bootstrap import Container
from workers.jobs import run_every, run_jobs

__all__ = ["IndexBuilder", "IngestionWorker", "ReEmbedder"]

log = structlog.get_logger("parley.ingest")


class IngestionWorker:
    def __init__(
        self,
        c: Container,
        *,
        js: Any,
        name: str | None = None,
        concurrency: int = 2,
        ack_wait_s: float = 30.0,
        heartbeat_s: float = 5.0,
        max_attempts: int = 3,
    ) -> None:
        self.c = c
        self.js = js
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.concurrency = concurrency
        self.ack_wait_s = ack_wait_s
        self.heartbeat_s = heartbeat_s
        self.max_attempts = max_attempts

    async def run(self, stop: asyncio.Event) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        subjects = self.c.subjects
        sub = await self.js.pull_subscribe(
            subjects.ingest_all,
            durable=subjects.ingest_durable,
            stream=subjects.jobs_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_s,
                # One more than the attempts we make, so the last delivery records the failure.
                max_deliver=self.max_attempts + 1,
                max_ack_pending=10_000,
            ),
        )
        log.info("ingestion_worker_started", worker=self.name, concurrency=self.concurrency)
        try:
            await run_jobs(sub, self._handle, concurrency=self.concurrency, stop=stop)
        finally:
            await sub.unsubscribe()

    async def _heartbeat(self, msg: Any) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _handle(self, msg: Any) -> None:
        """One upload to ingest, in the trace of the request that uploaded it (the job's traceparent)."""
        job = decode_ingest_job(msg.data)
        attempt = int(msg.metadata.num_delivered)
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "parley.document_id": job.document_id,
            "parley.attempt": attempt,
            "parley.correlation_id": job.correlation_id or "",
        }
        with tracing.span(
            "ingest document", parent=(msg.headers or {}).get("traceparent"), kind=tracing.SpanKind.CONSUMER,
            attributes=attributes,
        ):  # fmt: skip
            await self._ingest(msg, job, attempt)

    async def _ingest(self, msg: Any, job: IngestJob, attempt: int) -> None:
        ctx = CommandContext.caused_by(
            job.tenant_id, f"worker:{self.name}", event_id=job.event_id, correlation_id=job.correlation_id
        )
        document_id = uuid.UUID(job.document_id)
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            if attempt > self.max_attempts:
                await self.c.knowledge.fail_ingestion(
                    ctx, document_id, "INGESTION_CRASHED", f"ingestion stopped {self.max_attempts} times on this document"
                )
                status: str | None = "failed"
            else:
                status = await self.c.knowledge.ingest(ctx, document_id)
            await msg.ack()
            log.info("document_ingested", document_id=job.document_id, status=status or "unchanged", attempt=attempt)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as exc:
            log.exception("ingestion_crashed", document_id=job.document_id, attempt=attempt, error_type=type(exc).__name__)
            with contextlib.suppress(Exception):
                await msg.nak(delay=2)
        finally:
            heartbeat.cancel()


class ReEmbedder:
    """Prepares pending embedding-model changes (one knowledge base at a time per deployment)."""

    RETRY_REFUSED_S = 60.0

    def __init__(self, c: Container, *, name: str | None = None, poll_s: float = 2.0, batch: int = 256) -> None:
        self.c = c
        self._refused: dict[tuple[str, str], float] = {}
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.poll_s = poll_s
        self.batch = batch

    async def run(self, stop: asyncio.Event) -> None:
        async def pending_changes() -> None:
            for pending in await pending_reembeddings(self.c.engine):
                if stop.is_set():
                    return
                refused_at = self._refused.get((pending["knowledge_id"], embedding_space(pending["embedding"])))
                if refused_at is not None and time.monotonic() - refused_at < self.RETRY_REFUSED_S:
                    continue
                await self.reembed(pending["tenant_id"], pending["knowledge_id"], pending["embedding"])

        await run_every(self.poll_s, stop, pending_changes, name="reembedding")

    async def reembed(self, tenant_id: str, knowledge_id: str, embedding: dict[str, Any]) -> bool:
        """Embed every chunk of the knowledge base in ``embedding``'s space (into the cache), then switch.
        False when another re-embedder holds this knowledge base."""
        space = embedding_space(embedding)
        async with self.c.engine.connect() as lock_conn, session_lock(lock_conn, f"reembed:{knowledge_id}") as held:
            if not held:
                return False
            rows = (
                await lock_conn.execute(
                    select(chunks.c.content_sha, chunks.c.heading, chunks.c.text)
                    .where(chunks.c.tenant_id == tenant_id, chunks.c.knowledge_id == knowledge_id)
                    .distinct()
                )
            ).all()
            await lock_conn.commit()
            texts = {sha: embed_text(heading, body) for sha, heading, body in rows}
            hashes = list(texts)
            for start in range(0, len(hashes), self.batch):
                part = {sha: texts[sha] for sha in hashes[start : start + self.batch]}
                async with self.c.engine.begin() as conn:
                    vectors = await cached_vectors(conn, self.c.embedders, tenant_id, embedding, part)
                if any(v is None for v in vectors.values()):
                    # The new model refuses (bad key, unknown model): keep the old one and try later.
                    self._refused[(knowledge_id, space)] = time.monotonic()
                    log.warning("reembedding_refused", knowledge_id=knowledge_id, space=space)
                    return False
                log.info("reembedding_progress", knowledge_id=knowledge_id, space=space, done=min(start + self.batch, len(hashes)), total=len(hashes))
            ctx = CommandContext(tenant_id=tenant_id, actor=f"worker:{self.name}")
            switched = await self.c.knowledge.switch_embedding(ctx, uuid.UUID(knowledge_id), space)
            log.info("reembedding_done", knowledge_id=knowledge_id, space=space, chunks=len(hashes), switched=switched)
            return switched

class IndexBuilder:
    """Builds the HNSW index of each new embedding space, concurrently with the writers (a build can take
    minutes on a large index; inside the vector projector's transaction it would stop all indexing)."""

    def __init__(self, c: Container, *, poll_s: float = 2.0) -> None:
        self.c = c
        self.poll_s = poll_s

    async def run(self, stop: asyncio.Event) -> None:
        async def build() -> None:
            await build_indexes(self.c.engine)

        await run_every(self.poll_s, stop, build, name="vector_index_build")
