"""The knowledge read model: knowledge bases (with who may read and write them) and their documents, with
each document's ingestion status; and the queries the API serves from them.

Whether a caller may read a knowledge base is decided in SQL from ``readers`` (the grantees
``user:<id>``, ``role:<role>`` and ``tenant``), the owner and the admin role, so a listing never loads
what the caller may not see. How far a document's chunks are indexed is read from the vector index
itself (``rm_chunks``), which the vector projector owns.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.knowledge import Reader, access_level
from projections.access import readable_by
from projections.conversations import MAX_PAGE, _fit, _uuid
from projections.runtime import HandlesTypes
from schema.contract import (
    ChatDeleted,
    DocumentDeleted,
    DocumentExtracted,
    DocumentFailed,
    DocumentReuploaded,
    DocumentUploaded,
    EmbeddingChangeCancelled,
    EmbeddingChangeRequested,
    EmbeddingSwitched,
    KnowledgeAccessGranted,
    KnowledgeAccessRevoked,
    KnowledgeBaseCreated,
    KnowledgeBaseDeleted,
    KnowledgeBaseUpdated,
    UserErased,
    decode_data,
)
from schema.events import EventEnvelope
from schema.tables import chunks, documents, knowledge_bases

__all__ = [
    "KnowledgeProjector",
    "get_document",
    "get_knowledge",
    "list_documents",
    "document_count",
    "list_knowledge",
    "pending_reembeddings",
    "storage_used",
]


class KnowledgeProjector(HandlesTypes):
    name = "knowledge"
    tables: Sequence[Table] = (knowledge_bases, documents)
    _types = frozenset(
        {
            "KnowledgeBaseCreated",
            "KnowledgeBaseUpdated",
            "KnowledgeAccessGranted",
            "KnowledgeAccessRevoked",
            "EmbeddingChangeRequested",
            "EmbeddingChangeCancelled",
            "EmbeddingSwitched",
            "KnowledgeBaseDeleted",
            "DocumentUploaded",
            "DocumentReuploaded",
            "DocumentExtracted",
            "DocumentFailed",
            "DocumentDeleted",
            "UserErased",
            "ChatDeleted",
        }
    )

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        kb = knowledge_bases.c
        aggregate_id = str(e.aggregate_id)
        where_kb = kb.knowledge_id == aggregate_id
        where_doc = documents.c.document_id == aggregate_id
        match data := decode_data(e.type, e.data):
            case KnowledgeBaseCreated():
                await conn.execute(
                    knowledge_bases.insert().values(
                        knowledge_id=aggregate_id,
                        tenant_id=data.tenant_id,
                        owner_id=str(data.owner_id),
                        name=_fit(kb.name, data.name),
                        description=_fit(kb.description, data.description),
                        embedding=msgspec.to_builtins(data.embedding),
                        pending_embedding=None,
                        chunk_size=data.chunk_size,
                        chunk_overlap=data.chunk_overlap,
                        access={},
                        readers=[],
                        created_at=e.occurred_at,
                        updated_at=e.occurred_at,
                    )
                )
            case KnowledgeBaseUpdated():
                changes = msgspec.to_builtins(data.changes)  # only the settings it changed (the rest are unset)
                if "name" in changes:
                    changes["name"] = _fit(kb.name, changes["name"])
                await conn.execute(knowledge_bases.update().where(where_kb).values(**changes, updated_at=e.occurred_at))
            case KnowledgeAccessGranted() | KnowledgeAccessRevoked():
                row = await conn.execute(select(kb.access).where(where_kb).with_for_update())
                access = dict(row.scalar() or {})
                if isinstance(data, KnowledgeAccessGranted):
                    access[data.grantee] = data.level
                else:
                    access.pop(data.grantee, None)
                await conn.execute(
                    knowledge_bases.update()
                    .where(where_kb)
                    .values(access=access, readers=sorted(access), updated_at=e.occurred_at)
                )
            case EmbeddingChangeRequested():
                await conn.execute(
                    knowledge_bases.update()
                    .where(where_kb)
                    .values(pending_embedding=msgspec.to_builtins(data.embedding), updated_at=e.occurred_at)
                )
            case EmbeddingChangeCancelled():
                await conn.execute(
                    knowledge_bases.update().where(where_kb).values(pending_embedding=None, updated_at=e.occurred_at)
                )
            case EmbeddingSwitched():
                await conn.execute(
                    knowledge_bases.update()
                    .where(where_kb)
                    .values(embedding=msgspec.to_builtins(data.embedding), pending_embedding=None, updated_at=e.occurred_at)
                )
            case KnowledgeBaseDeleted():
                await conn.execute(documents.delete().where(documents.c.knowledge_id == aggregate_id))
                await conn.execute(knowledge_bases.delete().where(where_kb))
            case UserErased():  # the documents they uploaded go (their keys are destroyed)
                await conn.execute(documents.delete().where(documents.c.owner_id == aggregate_id))
            case ChatDeleted():  # and so do the files uploaded into a deleted chat
                await conn.execute(documents.delete().where(documents.c.chat_id == aggregate_id))
            case DocumentUploaded() | DocumentReuploaded():
                values = dict(
                    filename=_fit(documents.c.filename, data.filename),
                    media_type=_fit(documents.c.media_type, data.media_type),
                    size=data.size,
                    source_url=data.source_url,
                    title=None,
                    status="queued",
                    chars=0,
                    chunk_count=0,
                    error_code=None,
                    error_message=None,
                    updated_at=e.occurred_at,
                )
                if isinstance(data, DocumentReuploaded):
                    await conn.execute(documents.update().where(where_doc).values(**values))
                    return
                knowledge_id = str(data.knowledge_id) if data.knowledge_id is not None else None
                if knowledge_id is not None:
                    exists = await conn.execute(select(kb.knowledge_id).where(kb.knowledge_id == knowledge_id))
                    if exists.first() is None:
                        return  # its knowledge base was deleted meanwhile
                await conn.execute(
                    documents.insert().values(
                        document_id=aggregate_id,
                        tenant_id=data.tenant_id,
                        knowledge_id=knowledge_id,
                        chat_id=str(data.chat_id) if data.chat_id is not None else None,
                        owner_id=str(data.owner_id),
                        sha256=data.sha256,
                        created_at=e.occurred_at,
                        **values,
                    )
                )
            case DocumentExtracted():
                await conn.execute(
                    documents.update()
                    .where(where_doc)
                    .values(
                        title=data.title,
                        media_type=_fit(documents.c.media_type, data.media_type),
                        status="chunked",
                        chars=data.chars,
                        chunk_count=data.chunk_count,
                        updated_at=e.occurred_at,
                    )
                )
            case DocumentFailed():
                await conn.execute(
                    documents.update()
                    .where(where_doc)
                    .values(
                        status="failed",
                        error_code=_fit(documents.c.error_code, data.code),
                        error_message=data.message,
                        updated_at=e.occurred_at,
                    )
                )
            case DocumentDeleted():
                await conn.execute(documents.delete().where(where_doc))


# --- queries -------------------------------------------------------------------------------------------
def _readable(reader: Reader) -> Any:
    """``access_level`` in SQL (what a listing may return), on the grantees kept in ``readers``."""
    return readable_by(knowledge_bases, reader)


def _level(reader: Reader, row: Any) -> str:
    return access_level(row.owner_id, row.access, reader) or "read"


def _kb(reader: Reader, row: Any, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": row.knowledge_id,
        "name": row.name,
        "description": row.description,
        "owner_id": row.owner_id,
        "embedding": row.embedding,
        "pending_embedding": row.pending_embedding,
        "chunk_size": row.chunk_size,
        "chunk_overlap": row.chunk_overlap,
        "access": row.access if _level(reader, row) == "write" else {},
        "your_access": _level(reader, row),
        "document_count": counts.get(row.knowledge_id, 0),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def _counts(conn: AsyncConnection, table: Table, key: str, tenant_id: str, ids: list[str]) -> dict[str, int]:
    """Rows of ``table`` per value of its column ``key``, for the ``ids`` given (of one tenant)."""
    if not ids:
        return {}
    column = table.c[key]
    rows = await conn.execute(
        select(column, func.count()).where(table.c.tenant_id == tenant_id, column.in_(ids)).group_by(column)
    )
    return {r[0]: int(r[1]) for r in rows}


async def document_count(engine: AsyncEngine, tenant_id: str, knowledge_id: str | uuid.UUID) -> int:
    """The documents of one knowledge base, as its listings count them."""
    async with engine.connect() as conn:
        counts = await _counts(conn, documents, "knowledge_id", tenant_id, [str(knowledge_id)])
    return counts.get(str(knowledge_id), 0)


async def list_knowledge(engine: AsyncEngine, reader: Reader, *, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(knowledge_bases)
                .where(_readable(reader))
                .order_by(knowledge_bases.c.created_at.desc(), knowledge_bases.c.knowledge_id)
                .limit(min(limit, MAX_PAGE))
                .offset(offset)
            )
        ).all()
        counts = await _counts(conn, documents, "knowledge_id", reader.tenant_id, [r.knowledge_id for r in rows])
    return [_kb(reader, r, counts) for r in rows]


async def get_knowledge(engine: AsyncEngine, reader: Reader, knowledge_id: uuid.UUID | str) -> dict[str, Any] | None:
    kid = _uuid(knowledge_id)
    if kid is None:
        return None
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(knowledge_bases).where(_readable(reader), knowledge_bases.c.knowledge_id == kid))
        ).first()
        if row is None:
            return None
        counts = await _counts(conn, documents, "knowledge_id", reader.tenant_id, [kid])
    return _kb(reader, row, counts)


def _document(row: Any, indexed: int) -> dict[str, Any]:
    status = row.status
    if status == "chunked" and indexed >= row.chunk_count:
        status = "indexed"
    return {
        "id": row.document_id,
        "knowledge_id": row.knowledge_id,
        "chat_id": row.chat_id,
        "owner_id": row.owner_id,
        "filename": row.filename,
        "media_type": row.media_type,
        "size": row.size,
        "sha256": row.sha256,
        "source_url": row.source_url,
        "title": row.title,
        "status": status,
        "chars": row.chars,
        "chunk_count": row.chunk_count,
        "chunks_indexed": indexed,
        "error": {"code": row.error_code, "message": row.error_message} if row.error_code else None,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def list_documents(
    engine: AsyncEngine,
    tenant_id: str,
    *,
    knowledge_id: str | None = None,
    chat_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Documents of one knowledge base or one chat; the caller has checked it may read that place."""
    d = documents.c
    where = [d.tenant_id == tenant_id]
    where.append(d.knowledge_id == knowledge_id if knowledge_id is not None else d.chat_id == chat_id)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(documents).where(*where).order_by(d.created_at.desc(), d.document_id).limit(min(limit, MAX_PAGE)).offset(offset)
            )
        ).all()
        indexed = await _counts(conn, chunks, "document_id", tenant_id, [r.document_id for r in rows])
    return [_document(r, indexed.get(r.document_id, 0)) for r in rows]


async def get_document(engine: AsyncEngine, tenant_id: str, document_id: uuid.UUID | str) -> dict[str, Any] | None:
    did = _uuid(document_id)
    if did is None:
        return None
    async with engine.connect() as conn:
        row = (await conn.execute(select(documents).where(documents.c.tenant_id == tenant_id, documents.c.document_id == did))).first()
        if row is None:
            return None
        indexed = await _counts(conn, chunks, "document_id", tenant_id, [did])
    return _document(row, indexed.get(did, 0))


async def storage_used(engine: AsyncEngine, tenant_id: str) -> int:
    """Bytes of the tenant's documents (what the per-tenant storage limit counts)."""
    async with engine.connect() as conn:
        row = await conn.execute(select(func.coalesce(func.sum(documents.c.size), 0)).where(documents.c.tenant_id == tenant_id))
        return int(row.scalar_one())


async def pending_reembeddings(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Knowledge bases (of every tenant) waiting for a re-embedding: work for the background re-embedder."""
    kb = knowledge_bases.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(kb.knowledge_id, kb.tenant_id, kb.pending_embedding).where(kb.pending_embedding.is_not(None))
        )
        return [{"knowledge_id": r[0], "tenant_id": r[1], "embedding": r[2]} for r in rows]
