"""The share links read model (projector ``shares``) and the queries the shared-chat API serves from it.

A row per live share: revoking it, deleting its chat or erasing its owner removes the row, so every later
read is a 404. The snapshot itself is the shared branch of the chat's messages (``rm_messages``, the chats
projector's): messages are never changed once recorded, so the path from the leaf to the first message is
what it was when shared; a deleted chat's messages leave that table with it.

Who reads a share: a signed-in user of its tenant; anyone at all (``tenant_id`` then comes from the
request's host or ``X-Tenant``, as before sign-in) where the share is public and its tenant still allows
public links.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, and_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from projections.conversations import _fit, _uuid
from projections.runtime import HandlesTypes
from schema.contract import (
    ChatDeleted,
    PublicLinksSet,
    ShareCreated,
    ShareRevoked,
    SharingPolicyCreated,
    UserErased,
    decode_data,
)
from schema.events import EventEnvelope
from schema.tables import shares, sharing_policies

__all__ = ["SharesProjector", "get_share", "list_shares", "public_links_allowed", "shared_branch"]


class SharesProjector(HandlesTypes):
    name = "shares"
    tables: Sequence[Table] = (shares, sharing_policies)
    _types = frozenset(
        {"SharingPolicyCreated", "PublicLinksSet", "ShareCreated", "ShareRevoked", "ChatDeleted", "UserErased"}
    )

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        aggregate_id = str(e.aggregate_id)
        match data := decode_data(e.type, e.data):
            case SharingPolicyCreated():
                await conn.execute(
                    sharing_policies.insert().values(
                        policy_id=aggregate_id, tenant_id=data.tenant_id, allow_public_links=False, updated_at=e.occurred_at
                    )
                )
            case PublicLinksSet():
                await conn.execute(
                    sharing_policies.update()
                    .where(sharing_policies.c.policy_id == aggregate_id)
                    .values(allow_public_links=data.allowed, updated_at=e.occurred_at)
                )
            case ShareCreated():
                await conn.execute(
                    shares.insert().values(
                        share_id=aggregate_id,
                        tenant_id=data.tenant_id,
                        chat_id=str(data.chat_id),
                        owner_id=str(data.owner_id),
                        leaf_message_id=_fit(shares.c.leaf_message_id, data.leaf_message_id),
                        title=_fit(shares.c.title, data.title),
                        public=data.public,
                        created_at=e.occurred_at,
                    )
                )
            case ShareRevoked():
                await conn.execute(shares.delete().where(shares.c.share_id == aggregate_id))
            case ChatDeleted():
                await conn.execute(shares.delete().where(shares.c.chat_id == aggregate_id))
            case UserErased():
                await conn.execute(shares.delete().where(shares.c.owner_id == aggregate_id))


async def get_share(engine: AsyncEngine, share_id: str) -> dict[str, Any] | None:
    """A live share with whether its tenant allows public links now; None if there is none."""
    s, p = shares.c, sharing_policies.c
    stmt = (
        select(shares, p.allow_public_links)
        .select_from(shares.outerjoin(sharing_policies, p.tenant_id == s.tenant_id))
        .where(s.share_id == _uuid(share_id))
    )
    async with engine.connect() as conn:
        row = (await conn.execute(stmt)).mappings().first()
    return None if row is None else {**row, "allow_public_links": bool(row["allow_public_links"])}


async def list_shares(engine: AsyncEngine, tenant_id: str, owner_id: str, chat_id: str) -> list[dict[str, Any]]:
    """The caller's live shares of one of their chats, newest first."""
    s = shares.c
    stmt = (
        select(shares)
        .where(and_(s.tenant_id == _uuid(tenant_id), s.owner_id == _uuid(owner_id), s.chat_id == _uuid(chat_id)))
        .order_by(s.created_at.desc(), s.share_id)
    )
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def public_links_allowed(engine: AsyncEngine, tenant_id: str) -> bool:
    async with engine.connect() as conn:
        value = await conn.scalar(
            select(sharing_policies.c.allow_public_links).where(sharing_policies.c.tenant_id == _uuid(tenant_id))
        )
    return bool(value)


# The branch from its leaf up to its first message, by parent links, then read root first. ``depth`` bounds
# the walk where a broken read model would otherwise loop.
_BRANCH = text(
    "WITH RECURSIVE branch AS ("
    " SELECT m.*, 0 AS depth FROM rm_messages m WHERE m.message_id = :leaf AND m.chat_id = :chat"
    " UNION ALL"
    " SELECT m.*, b.depth + 1 FROM rm_messages m JOIN branch b ON m.message_id = b.parent_id"
    " WHERE m.chat_id = :chat AND b.depth < 100000"
    ") SELECT message_id, role, content, parent_id, model, status, tool_calls, tool_call_id, tool_name, images,"
    " created_at FROM branch ORDER BY depth DESC"
)


async def shared_branch(engine: AsyncEngine, chat_id: str, leaf_message_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(_BRANCH, {"leaf": leaf_message_id, "chat": _uuid(chat_id)})
        return [dict(r) for r in rows.mappings()]
