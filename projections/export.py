"""What the read models hold about one data subject, for a personal-data export (``application.privacy``).

Every query filters by the tenant, then by the subject, and reads in keyset pages (``PAGE`` rows, in the
order of a unique key, each page starting after the last row of the one before): no connection is held
while the consumer of a page is busy (an export streams to a download that may be slow), and no page
costs more than its rows, however far into the subject's history it is. The pages of one listing are
separate snapshots; an export is a copy of a moment give or take what is written while it runs.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.tables import (
    api_keys,
    audit_log,
    chats,
    documents,
    generations,
    messages,
    tenants,
    usage_daily,
    usage_tools,
    users,
)

__all__ = ["PAGE", "ReadModelExport"]

PAGE = 500

_CHAT_FIELDS = {
    "id": chats.c.chat_id,
    "title": chats.c.title,
    "source": chats.c.source,
    "archived": chats.c.archived,
    "deleted": chats.c.deleted,
    "message_count": chats.c.message_count,
    "head_id": chats.c.head_id,
    "knowledge_ids": chats.c.knowledge_ids,
    "file_ids": chats.c.file_ids,
    "client_chat_id": chats.c.client_chat_id,
    "created_at": chats.c.created_at,
    "updated_at": chats.c.updated_at,
}
_MESSAGE_FIELDS = {
    "id": messages.c.message_id,
    "parent_id": messages.c.parent_id,
    "role": messages.c.role,
    "content": messages.c.content,
    "model": messages.c.model,
    "created_at": messages.c.created_at,
    "generation_id": messages.c.generation_id,
    "status": messages.c.status,
    "thinking": messages.c.thinking,
    "prompt_tokens": messages.c.prompt_tokens,
    "completion_tokens": messages.c.completion_tokens,
    "timings": messages.c.timings,
    "tool_calls": messages.c.tool_calls,
    "tool_call_id": messages.c.tool_call_id,
    "tool_name": messages.c.tool_name,
    "tool_latency_ms": messages.c.tool_latency_ms,
    "images": messages.c.images,
    "citations": messages.c.citations,
}
_DOCUMENT_FIELDS = {
    "id": documents.c.document_id,
    "knowledge_id": documents.c.knowledge_id,
    "chat_id": documents.c.chat_id,
    "filename": documents.c.filename,
    "media_type": documents.c.media_type,
    "size": documents.c.size,
    "sha256": documents.c.sha256,
    "source_url": documents.c.source_url,
    "title": documents.c.title,
    "status": documents.c.status,
    "chars": documents.c.chars,
    "chunk_count": documents.c.chunk_count,
    "error_code": documents.c.error_code,
    "error_message": documents.c.error_message,
    "created_at": documents.c.created_at,
    "updated_at": documents.c.updated_at,
}
_GENERATION_FIELDS = {
    "id": generations.c.generation_id,
    **{c.name: c for c in generations.columns if c.name not in ("generation_id", "tenant_id", "user_id")},
}
_USAGE_FIELDS = {c.name: c for c in usage_daily.columns if c.name not in ("tenant_id", "user_id")}
_TOOL_FIELDS = {c.name: c for c in usage_tools.columns if c.name not in ("tenant_id", "user_id")}
_AUDIT_FIELDS = {c.name: c for c in audit_log.columns if c.name not in ("tenant_id", "prev_hash", "notification_id")}
_API_KEY_FIELDS = {
    "id": api_keys.c.key_id,
    "name": api_keys.c.name,
    "prefix": api_keys.c.prefix,  # what the key shows of itself; never its secret or hash
    "scopes": api_keys.c.scopes,
    "created_at": api_keys.c.created_at,
    "expires_at": api_keys.c.expires_at,
    "revoked_at": api_keys.c.revoked_at,
}
_OTHERS_TARGETS = ("User", "EmailIndex", "Invitation")
"""Audit targets that are people: the subject's own actions on someone else (an admin creating a user)
are listed, without the event's detail, which is that other person's data."""


def _uuid(value: Any) -> str | None:
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        return None


def _select(fields: dict[str, ColumnElement[Any]]) -> Select[Any]:
    return select(*[column.label(name) for name, column in fields.items()])


async def _keyset(
    engine: AsyncEngine, stmt: Select[Any], key: Sequence[ColumnElement[Any]], labels: Sequence[str]
) -> AsyncIterator[dict[str, Any]]:
    """The rows of ``stmt`` in the order of ``key`` (unique, ascending; ``labels`` name its columns in
    the rows), ``PAGE`` at a time, each page one short query of its own."""
    after: tuple[Any, ...] | None = None
    while True:
        page = stmt.order_by(*key).limit(PAGE)
        if after is not None:
            bound = [bindparam(None, value, type_=column.type) for column, value in zip(key, after, strict=True)]
            page = page.where(tuple_(*key) > tuple_(*bound))
        async with engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(page)).mappings()]
        for row in rows:
            yield row
        if len(rows) < PAGE:
            return
        after = tuple(rows[-1][label] for label in labels)


class ReadModelExport:
    """``application.ports.PersonalData`` over the read models of ``engine``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def profile(self, tenant_id: str, user_id: str) -> dict[str, Any] | None:
        stmt = (
            select(users, tenants.c.slug.label("tenant_slug"), tenants.c.name.label("tenant_name"))
            .select_from(users.outerjoin(tenants, tenants.c.tenant_id == users.c.tenant_id))
            .where(users.c.tenant_id == tenant_id, users.c.user_id == _uuid(user_id))
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        return {
            "id": row.user_id,
            "email": row.email,
            "name": row.name,
            "role": row.role,
            "status": "active" if row.active else "deactivated",
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "tenant": {"id": row.tenant_id, "slug": row.tenant_slug, "name": row.tenant_name},
        }

    def api_keys(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]:
        stmt = _select(_API_KEY_FIELDS).where(api_keys.c.tenant_id == tenant_id, api_keys.c.user_id == _uuid(user_id))
        return _keyset(self.engine, stmt, [api_keys.c.created_at, api_keys.c.key_id], ["created_at", "id"])

    async def sessions(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]:
        """Sign-in sessions, from the audit log (sessions have no read model of their own): when each
        started, from where, until when it could be renewed, its last renewal and its end."""
        a = audit_log.c
        started = select(a.seq, a.target_id, a.occurred_at, a.ip, a.user_agent, a.detail).where(
            a.tenant_id == tenant_id, a.action == "SessionStarted", a.detail["user_id"].astext == _uuid(user_id)
        )
        page: list[dict[str, Any]] = []
        async for row in _keyset(self.engine, started, [a.seq], ["seq"]):
            page.append(row)
            if len(page) == PAGE:
                for session in await self._sessions(tenant_id, page):
                    yield session
                page = []
        for session in await self._sessions(tenant_id, page):
            yield session

    async def _sessions(self, tenant_id: str, started: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not started:
            return []
        a = audit_log.c
        later = (
            select(a.target_id, a.action, a.occurred_at, a.detail)
            .where(
                a.tenant_id == tenant_id,
                a.target_type == "Session",
                a.action.in_(("SessionRefreshed", "SessionEnded")),
                a.target_id.in_([s["target_id"] for s in started]),
            )
            .order_by(a.seq)
        )
        sessions = {
            s["target_id"]: {
                "id": s["target_id"],
                "started_at": s["occurred_at"],
                "ip": s["ip"],
                "user_agent": s["user_agent"],
                "expires_at": s["detail"].get("expires_at"),
                "refreshes": 0,
                "last_refreshed_at": None,
                "ended_at": None,
                "end_reason": None,
            }
            for s in started
        }
        async with self.engine.connect() as conn:
            for row in await conn.execute(later):
                session = sessions[row.target_id]
                if row.action == "SessionRefreshed":
                    session["refreshes"] += 1
                    session["last_refreshed_at"] = row.occurred_at
                    session["expires_at"] = row.detail.get("expires_at", session["expires_at"])
                else:
                    session["ended_at"] = row.occurred_at
                    session["end_reason"] = row.detail.get("reason")
        return list(sessions.values())

    def chats(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]:
        """Every chat the subject owns that the read model still has, deleted and archived ones too."""
        stmt = _select(_CHAT_FIELDS).where(chats.c.tenant_id == tenant_id, chats.c.owner_id == _uuid(user_id))
        return _keyset(self.engine, stmt, [chats.c.created_at, chats.c.chat_id], ["created_at", "id"])

    def messages(self, tenant_id: str, chat_id: str) -> AsyncIterator[dict[str, Any]]:
        """The chat's whole tree, oldest first (each message names its ``parent_id``)."""
        m = messages.c
        stmt = _select({**_MESSAGE_FIELDS, "seq": m.seq}).where(m.tenant_id == tenant_id, m.chat_id == _uuid(chat_id))
        return _without(
            _keyset(self.engine, stmt, [m.created_at, m.seq, m.message_id], ["created_at", "seq", "id"]), ["seq"]
        )

    def documents(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]:
        d = documents.c
        stmt = _select(_DOCUMENT_FIELDS).where(d.tenant_id == tenant_id, d.owner_id == _uuid(user_id))
        return _keyset(self.engine, stmt, [d.created_at, d.document_id], ["created_at", "id"])

    def usage_days(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]:
        u = usage_daily.c
        stmt = _select(_USAGE_FIELDS).where(u.tenant_id == _uuid(tenant_id), u.user_id == _uuid(user_id))
        return _keyset(self.engine, stmt, [u.day, u.model], ["day", "model"])

    def tool_days(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]:
        t = usage_tools.c
        stmt = _select(_TOOL_FIELDS).where(t.tenant_id == _uuid(tenant_id), t.user_id == _uuid(user_id))
        return _keyset(self.engine, stmt, [t.day, t.tool], ["day", "tool"])

    def generations(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]:
        g = generations.c
        stmt = _select(_GENERATION_FIELDS).where(g.tenant_id == _uuid(tenant_id), g.user_id == _uuid(user_id))
        return _keyset(self.engine, stmt, [g.requested_at, g.generation_id], ["requested_at", "id"])

    async def audit(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]:
        """Rows where the subject acted (in person or through one of their API keys) or was acted on."""
        subject = _uuid(user_id) or ""
        async with self.engine.connect() as conn:
            keys = (
                await conn.execute(
                    select(api_keys.c.key_id).where(api_keys.c.tenant_id == tenant_id, api_keys.c.user_id == subject)
                )
            ).scalars()
            actors = [f"user:{subject}", *(f"apikey:{k}" for k in keys)]
        a = audit_log.c
        stmt = _select(_AUDIT_FIELDS).where(
            a.tenant_id == tenant_id,
            or_(a.actor.in_(actors), and_(a.target_type == "User", a.target_id == subject)),
        )
        async for row in _keyset(self.engine, stmt, [a.seq], ["seq"]):
            if row["target_type"] in _OTHERS_TARGETS and row["target_id"] != subject:
                row["detail"] = None  # another person's data: the row says what was done, not to whom in detail
            yield row


async def _without(rows: AsyncIterator[dict[str, Any]], names: Iterable[str]) -> AsyncIterator[dict[str, Any]]:
    dropped = tuple(names)
    async for row in rows:
        for name in dropped:
            row.pop(name, None)
        yield row
