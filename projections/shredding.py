"""The shredder: destroys the data keys an erasure or a deletion names, exactly once per event.

The service that erases a user or deletes a chat destroys the keys itself as soon as its event is stored,
so the content is unreadable before the answer; this projector makes that certain when the process died
in between, and deletes the snapshots sealed with those keys (they could no longer be opened; the
aggregate is rebuilt from its events, whose erased fields read as markers). Key rows and the projector's
position are written in one transaction, so kill -9 at any point is safe; a rebuild runs it again and
changes nothing (destroying is idempotent, and a destroyed key stays destroyed): it owns no table to empty.

What it destroys is ``domain.privacy.shredded_by``'s rule, the one the services, the migration and every
process's caches follow.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.privacy import SHREDDING_EVENTS, shredded_by
from projections.runtime import HandlesTypes
from schema.events import EventEnvelope

__all__ = ["ShredderProjector", "DESTROY_KEYS_SQL"]

_IN_SCOPE = (
    "(user_id = CAST(:user_id AS uuid) OR chat_id = CAST(:chat_id AS uuid) OR key_id = CAST(:key_id AS uuid))"
)
DESTROY_KEYS_SQL = text(
    f"UPDATE parley_subject_keys SET wrapped = NULL, destroyed_at = now() WHERE wrapped IS NOT NULL AND {_IN_SCOPE}"
    " RETURNING key_id"
)
_KEYS_IN_SCOPE = text(f"SELECT key_id FROM parley_subject_keys WHERE {_IN_SCOPE}")
_DELETE_SNAPSHOTS = text("DELETE FROM parley_snapshots WHERE originator_id = ANY(CAST(:ids AS uuid[]))")


class ShredderProjector(HandlesTypes):
    name = "shredder"
    tables: Sequence[Table] = ()
    sealed = True  # it reads no content
    _types = SHREDDING_EVENTS

    def __init__(self, forget: Callable[[Iterable[uuid.UUID]], None] | None = None) -> None:
        """``forget``: drops destroyed keys from this process's key cache (the event store's)."""
        self.forget = forget

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        scope = shredded_by(e.type, e.aggregate_id)
        if scope is None:
            return
        names = {k: None if v is None else str(v) for k, v in vars(scope).items()}
        destroyed = [row[0] for row in await conn.execute(DESTROY_KEYS_SQL, names)]
        # Snapshots of every aggregate the scope's keys sealed, destroyed now or before (a service's own
        # destruction beat this projector to the keys).
        ids = [str(row[0]) for row in await conn.execute(_KEYS_IN_SCOPE, names)]
        if ids:
            await conn.execute(_DELETE_SNAPSHOTS, {"ids": ids})
        if destroyed and self.forget is not None:
            self.forget(destroyed)
