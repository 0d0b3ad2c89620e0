"""What erasing a user or deleting a chat does outside the event store, at once.

The event (``UserErased``, ``ChatDeleted``) is the record; the projectors purge the read models and the
shredder projector destroys the keys for certain. This adapter is the immediate part the service runs once
the event is stored: it destroys the keys (so nothing sealed by them opens from the next read on), deletes
the snapshots they sealed, deletes the subject's uploads and images from the blob store (a blob another
live document of the tenant still holds stays), and erases their generations' token chunks from
``PARLEY_TOKENS`` (JetStream's secure delete overwrites each message; the stream's one-hour age limit bounds
what a crash here leaves). What to delete is gathered before the event is stored (``gather``), while the
read models still name it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from nats.js.errors import NotFoundError
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.blobs import BlobStore
from adapters.crypto import KeyStore
from adapters.nats import TOKENS_MAX_AGE_S
from domain.privacy import shredded_by
from schema.subjects import Subjects
from schema.tables import chats, documents, generations, messages

__all__ = ["Shredding", "Doomed"]

log = structlog.get_logger("parley.shredding")


@dataclass
class Doomed:
    """What an erasure or a deletion will remove outside the event store."""

    tenant_id: str
    blobs: set[str] = field(default_factory=set)
    generation_ids: list[str] = field(default_factory=list)


class Shredding:
    def __init__(self, *, engine: AsyncEngine, keys: KeyStore, blobs: BlobStore, subjects: Subjects) -> None:
        self.engine = engine
        self.keys = keys
        self.blobs = blobs
        self.subjects = subjects
        self.js: Any = None
        """Set by the process once connected to NATS; without it token chunks are left to expire."""

    async def gather(self, tenant_id: str, *, user_id: str | None = None, chat_id: str | None = None) -> Doomed:
        doomed = Doomed(tenant_id)
        if user_id is not None:
            owned = select(chats.c.chat_id).where(chats.c.tenant_id == tenant_id, chats.c.owner_id == user_id)
            doc_where = documents.c.owner_id == user_id
            gen_where = generations.c.user_id == user_id
        else:
            owned = select(chats.c.chat_id).where(chats.c.tenant_id == tenant_id, chats.c.chat_id == chat_id)
            doc_where = documents.c.chat_id == chat_id
            gen_where = generations.c.chat_id == chat_id
        async with self.engine.connect() as conn:
            doc_rows = await conn.execute(select(documents.c.sha256).where(documents.c.tenant_id == tenant_id, doc_where))
            doomed.blobs.update(r[0] for r in doc_rows)
            images = await conn.execute(
                select(func.jsonb_array_elements(messages.c.images).op("->>")("sha256")).where(
                    messages.c.chat_id.in_(owned), func.jsonb_typeof(messages.c.images) == "array"
                )
            )
            doomed.blobs.update(r[0] for r in images if r[0])
            # Token chunks live TOKENS_MAX_AGE_S: only generations younger than that can have any left.
            recent = generations.c.requested_at > datetime.now(UTC) - timedelta(seconds=TOKENS_MAX_AGE_S + 60)
            gens = await conn.execute(
                select(generations.c.generation_id).where(generations.c.tenant_id == tenant_id, gen_where, recent)
            )
            doomed.generation_ids = [str(r[0]) for r in gens]
        return doomed

    async def shred(
        self, doomed: Doomed, *, user_id: uuid.UUID | None = None, chat_id: uuid.UUID | None = None
    ) -> None:
        scope = shredded_by("UserErased", user_id) if user_id else shredded_by("ChatDeleted", chat_id)  # type: ignore[arg-type]
        assert scope is not None
        destroyed = await asyncio.to_thread(self.keys.destroy, scope)
        sealed = await asyncio.to_thread(self.keys.keys_of, scope)
        async with self.engine.begin() as conn:
            if sealed:
                await conn.execute(
                    text("DELETE FROM parley_snapshots WHERE originator_id = ANY(CAST(:ids AS uuid[]))"),
                    {"ids": [str(k) for k in sealed]},
                )
            held = set()
            if doomed.blobs:  # a blob another live document of the tenant holds stays
                rows = await conn.execute(
                    select(documents.c.sha256).where(
                        documents.c.tenant_id == doomed.tenant_id,
                        documents.c.sha256.in_(doomed.blobs),
                        documents.c.owner_id != str(user_id) if user_id else documents.c.chat_id.is_distinct_from(str(chat_id)),
                    )
                )
                held = {r[0] for r in rows}
        for sha in doomed.blobs - held:
            await self.blobs.delete(doomed.tenant_id, sha)
        erased = await self._erase_tokens(doomed.generation_ids)
        log.info(
            "personal_data_shredded", keys=len(destroyed), blobs=len(doomed.blobs - held), token_chunks=erased,
            subject="user" if user_id else "chat",
        )  # fmt: skip

    async def _erase_tokens(self, generation_ids: list[str]) -> int:
        if self.js is None or not generation_ids:
            return 0
        erased = 0
        stream = self.subjects.tokens_stream
        for generation_id in generation_ids:
            seq = 1
            while True:
                try:
                    msg = await self.js.get_msg(stream, seq=seq, subject=self.subjects.tokens(generation_id), next=True)
                except NotFoundError:
                    break
                await self.js.delete_msg(stream, msg.seq)  # secure: the server overwrites the message
                erased += 1
                seq = msg.seq + 1
        return erased
