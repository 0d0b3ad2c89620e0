"""The shredder: destroys the data keys an erasure or a deletion names, exactly once per event.

The service that erases a user or deletes a chat destroys the keys itself as soon as its event is stored,
so the content is unreadable before the answer; this projector makes that certain when the process died
in between, and deletes the snapshots sealed with those keys (they could no longer be opened; the
aggregate is rebuilt from its events, whose erased fields read as markers). Key rows and the projector's
position are written in one transaction, so kill -9 at any point is safe; a rebuild runs it again and
changes nothing (destroying is idempotent, and a destroyed key stays destroyed): it owns no table to empty.

What it destroys: ``UserErased`` every key naming the user (their own aggregate, chats they own, their
generations and documents); ``ChatDeleted`` every key naming the chat (the chat, its generations, the
files uploaded into it); ``DocumentDeleted`` the document's key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from projections.runtime import HandlesTypes
from schema.events import EventEnvelope

__all__ = ["ShredderProjector", "DESTROY_KEYS_SQL"]

DESTROY_KEYS_SQL = text(
    "UPDATE parley_subject_keys SET wrapped = NULL, destroyed_at = now()"
    " WHERE wrapped IS NOT NULL AND (user_id = CAST(:user_id AS uuid) OR chat_id = CAST(:chat_id AS uuid)"
    " OR key_id = CAST(:key_id AS uuid)) RETURNING key_id"
)
_DELETE_SNAPSHOTS = text("DELETE FROM parley_snapshots WHERE originator_id = ANY(CAST(:ids AS uuid[]))")


class ShredderProjector(HandlesTypes):
    name = "shredder"
    tables: Sequence[Table] = ()
    sealed = True  # it reads no content
    _types = frozenset({"UserErased", "ChatDeleted", "DocumentDeleted"})

    def __init__(self, forget: Callable[[Iterable[uuid.UUID]], None] | None = None) -> None:
        """``forget``: drops destroyed keys from this process's key cache (the event store's)."""
        self.forget = forget

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        subject = str(e.aggregate_id)
        names = {
            "UserErased": {"user_id": subject, "chat_id": None, "key_id": None},
            "ChatDeleted": {"user_id": None, "chat_id": subject, "key_id": subject},
            "DocumentDeleted": {"user_id": None, "chat_id": None, "key_id": subject},
        }[e.type]
        destroyed = [row[0] for row in await conn.execute(DESTROY_KEYS_SQL, names)]
        # Snapshots of every aggregate the subject's keys sealed, destroyed now or before (a service's own
        # destruction beat this projector to the keys).
        sealed_by = text(
            "SELECT key_id FROM parley_subject_keys WHERE user_id = CAST(:user_id AS uuid)"
            " OR chat_id = CAST(:chat_id AS uuid) OR key_id = CAST(:key_id AS uuid)"
        )
        ids = [str(row[0]) for row in await conn.execute(sealed_by, names)]
        if ids:
            await conn.execute(_DELETE_SNAPSHOTS, {"ids": ids})
        if destroyed and self.forget is not None:
            self.forget(destroyed)
