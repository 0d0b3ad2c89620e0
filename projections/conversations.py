"""The conversation read models and the queries the API serves from them.

Two projectors: ``models`` (providers and the models on them, with their grants) and ``chats`` (chats,
the tree of messages in each, and the generations that answer them). Every row carries ``tenant_id``
and every query filters by the caller's tenant. Times come from the events (``occurred_at``), never from
the clock, so a rebuilt read model equals the incrementally built one.

A deleted chat's messages are removed from the read model (the event store stays the truth); an answer
that finishes after its chat was deleted is not stored either.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Table, Text, and_, case, cast, func, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.identity import ERASED
from domain.models import default_capabilities
from projections.runtime import HandlesTypes, copy_rows
from schema.events import EventEnvelope
from schema.tables import chats, generations, messages, models, providers

__all__ = [
    "MAX_PAGE",
    "ChatsProjector",
    "ModelsProjector",
    "get_chat",
    "get_generation",
    "list_all_models",
    "list_chats",
    "list_models",
    "list_providers",
]

MAX_PAGE = 200
FINISHED = {
    "GenerationCompleted": "completed",
    "GenerationFailed": "failed",
    "GenerationCancelled": "cancelled",
}


def _fit(column: Column[Any], value: Any) -> str | None:
    """Text that fits the column and that Postgres can store: one odd event must not stall a projector."""
    if value is None:
        return None
    text = str(value).encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    length = getattr(column.type, "length", None)
    return text[:length] if length else text


def _uuid(value: Any) -> str | None:
    """The canonical text of a UUID, or None when ``value`` is not one (so a query finds nothing)."""
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        return None


# --- projectors ----------------------------------------------------------------------------------------
class ModelsProjector(HandlesTypes):
    name = "models"
    tables: Sequence[Table] = (providers, models)
    _types = frozenset(
        {
            "ProviderRegistered",
            "ProviderChanged",
            "ModelRegistered",
            "ModelChanged",
            "ModelAccessGranted",
            "ModelAccessRevoked",
            "ModelKnowledgeChanged",
            "ModelCapabilitiesChanged",
        }
    )

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        d = e.data
        aggregate_id = str(e.aggregate_id)
        match e.type:
            case "ProviderRegistered":
                await conn.execute(
                    providers.insert().values(
                        provider_id=aggregate_id,
                        tenant_id=d["tenant_id"],
                        name=_fit(providers.c.name, d["name"]),
                        kind=_fit(providers.c.kind, d["kind"]),
                        base_url=_fit(providers.c.base_url, d.get("base_url")),
                        has_api_key=bool(d.get("has_api_key", False)),
                        created_at=e.occurred_at,
                        updated_at=e.occurred_at,
                    )
                )
            case "ProviderChanged":
                await conn.execute(
                    providers.update()
                    .where(providers.c.provider_id == aggregate_id)
                    .values(
                        base_url=_fit(providers.c.base_url, d.get("base_url")),
                        has_api_key=bool(d.get("has_api_key", False)),
                        updated_at=e.occurred_at,
                    )
                )
            case "ModelRegistered":
                await conn.execute(
                    models.insert().values(
                        model_id=aggregate_id,
                        tenant_id=d["tenant_id"],
                        name=_fit(models.c.name, d["name"]),
                        display_name=_fit(models.c.display_name, d["display_name"]),
                        provider_id=d["provider_id"],
                        provider_kind=_fit(models.c.provider_kind, d["provider_kind"]),
                        upstream_model=_fit(models.c.upstream_model, d["upstream_model"]),
                        defaults=d.get("defaults") or {},
                        open_to_tenant=bool(d["open_to_tenant"]),
                        active=True,
                        granted_users=[],
                        granted_roles=[],
                        created_at=e.occurred_at,
                        updated_at=e.occurred_at,
                    )
                )
            case "ModelChanged":
                await conn.execute(
                    models.update()
                    .where(models.c.model_id == aggregate_id)
                    .values(
                        display_name=_fit(models.c.display_name, d["display_name"]),
                        defaults=d.get("defaults") or {},
                        open_to_tenant=bool(d["open_to_tenant"]),
                        active=bool(d["active"]),
                        updated_at=e.occurred_at,
                    )
                )
            case "ModelKnowledgeChanged":
                await conn.execute(
                    models.update()
                    .where(models.c.model_id == aggregate_id)
                    .values(knowledge_ids=list(d["knowledge_ids"]), updated_at=e.occurred_at)
                )
            case "ModelCapabilitiesChanged":
                await conn.execute(
                    models.update()
                    .where(models.c.model_id == aggregate_id)
                    .values(capabilities=d.get("capabilities"), updated_at=e.occurred_at)
                )
            case "ModelAccessGranted" | "ModelAccessRevoked":
                granting = e.type == "ModelAccessGranted"
                changes: dict[str, Any] = {"updated_at": e.occurred_at}
                for key, column in (("user_id", models.c.granted_users), ("role", models.c.granted_roles)):
                    if d.get(key):
                        item = str(d[key])
                        changes[column.name] = (
                            column.op("||", return_type=JSONB)(func.jsonb_build_array(cast(item, Text)))
                            if granting
                            else column.op("-", return_type=JSONB)(cast(item, Text))
                        )
                await conn.execute(models.update().where(models.c.model_id == aggregate_id).values(**changes))


class ChatsProjector:
    name = "chats"
    tables: Sequence[Table] = (chats, messages, generations)
    _chat_types = frozenset(
        {
            "ChatCreated",
            "ChatRenamed",
            "ChatArchived",
            "ChatUnarchived",
            "ChatDeleted",
            "MessagePosted",
            "AnswerRecorded",
            "ChatKnowledgeChanged",
            "ChatFileAttached",
            "ChatFileDetached",
            "ToolResultPosted",
        }
    )
    _generation_types = frozenset(
        {
            "GenerationRequested",
            "GenerationStarted",
            "GenerationCancelRequested",
            "GenerationCompleted",
            "GenerationFailed",
            "GenerationCancelled",
        }
    )

    def handles(self, event_type: str) -> bool:
        return event_type in self._chat_types or event_type in self._generation_types or event_type == "UserErased"

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        if e.type == "UserErased":
            await _erase_user(conn, str(e.aggregate_id))
        elif e.type in self._generation_types:
            await self._apply_generation(conn, e)
        else:
            await self._apply_chat(conn, e)

    async def apply_many(self, conn: AsyncConnection, events: Sequence[EventEnvelope]) -> None:
        """The events in order, in few statements. A chat or generation created in the batch is built in
        memory and takes the batch's later events there (a chat its messages too); they go in by ``COPY``
        at the end. An event about a chat or generation from an earlier batch runs as ``apply`` runs it:
        it touches no row of this batch, so the order between the two does not matter."""
        new_chats: dict[str, dict[str, Any]] = {}
        new_messages: list[dict[str, Any]] = []
        new_generations: dict[str, dict[str, Any]] = {}
        for e in events:
            key = str(e.aggregate_id)
            if e.type == "UserErased":  # after what came before it, whether in memory or written
                await _copy_grouped(conn, chats, list(new_chats.values()))
                await _copy_grouped(conn, messages, new_messages)
                await _copy_grouped(conn, generations, list(new_generations.values()))
                new_chats, new_messages, new_generations = {}, [], {}
                await _erase_user(conn, key)
            elif e.type in self._generation_types:
                if e.type == "GenerationRequested":
                    new_generations[key] = _generation_row(e)
                elif key in new_generations:
                    new_generations[key].update(_generation_changes(e))
                else:
                    await self._apply_generation(conn, e)
            elif e.type == "ChatCreated":
                new_chats[key] = _chat_row(e)
            elif key in new_chats:
                _fold_chat_event(new_chats[key], new_messages, e)
            else:
                await self._apply_chat(conn, e)
            if e.type == "ChatDeleted":  # its generations of this batch, as _apply_chat does those written
                for row in new_generations.values():
                    if row["chat_id"] == key:
                        row.update(_SHREDDED_GENERATION)
                if key in new_chats:
                    await conn.execute(
                        generations.update().where(generations.c.chat_id == key).values(**_SHREDDED_GENERATION)
                    )
        await _copy_grouped(conn, chats, list(new_chats.values()))
        await _copy_grouped(conn, messages, new_messages)
        await _copy_grouped(conn, generations, list(new_generations.values()))

    async def _apply_chat(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        d = e.data
        chat_id = str(e.aggregate_id)
        this_chat = chats.c.chat_id == chat_id
        match e.type:
            case "ChatCreated":
                await conn.execute(chats.insert().values(**_chat_row(e)))
            case "ChatRenamed":
                await conn.execute(
                    chats.update()
                    .where(this_chat)
                    .values(title=_fit(chats.c.title, d["title"]), updated_at=e.occurred_at)
                )
            case "ChatArchived" | "ChatUnarchived":
                await conn.execute(
                    chats.update()
                    .where(this_chat)
                    .values(archived=e.type == "ChatArchived", updated_at=e.occurred_at)
                )
            case "ChatDeleted":  # its content is shredded: nothing of it stays but that it existed
                await conn.execute(
                    chats.update().where(this_chat).values(deleted=True, title=ERASED, updated_at=e.occurred_at)
                )
                await conn.execute(messages.delete().where(messages.c.chat_id == chat_id))
                await conn.execute(
                    generations.update().where(generations.c.chat_id == chat_id).values(**_SHREDDED_GENERATION)
                )
            case "MessagePosted" | "ToolResultPosted":
                row = _message_row(e)
                tenant_id = await self._touch(conn, chat_id, e, head=row["message_id"])
                if tenant_id is not None:
                    await conn.execute(messages.insert().values(**row, tenant_id=tenant_id))
            case "ChatKnowledgeChanged":
                await conn.execute(
                    chats.update().where(this_chat).values(knowledge_ids=list(d["knowledge_ids"]), updated_at=e.occurred_at)
                )
            case "ChatFileAttached" | "ChatFileDetached":
                current = await conn.execute(select(chats.c.file_ids).where(this_chat).with_for_update())
                files = [f for f in (current.scalar() or []) if f != d["document_id"]]
                if e.type == "ChatFileAttached":
                    files.append(d["document_id"])
                await conn.execute(chats.update().where(this_chat).values(file_ids=files, updated_at=e.occurred_at))
            case "AnswerRecorded":
                row = _answer_row(e)
                # Like the aggregate: the answer becomes the head only if its question still is.
                head = case((chats.c.head_id == row["parent_id"], row["message_id"]), else_=chats.c.head_id)
                tenant_id = await self._touch(conn, chat_id, e, head=head)
                if tenant_id is not None:
                    await conn.execute(messages.insert().values(**row, tenant_id=tenant_id))

    @staticmethod
    async def _touch(conn: AsyncConnection, chat_id: str, e: EventEnvelope, *, head: Any) -> str | None:
        """Count a new message in the chat; its tenant, or None when the chat is gone (deleted)."""
        row = await conn.execute(
            chats.update()
            .where(chats.c.chat_id == chat_id, chats.c.deleted.is_(False))
            .values(message_count=chats.c.message_count + 1, head_id=head, updated_at=e.occurred_at)
            .returning(chats.c.tenant_id)
        )
        return row.scalar()

    async def _apply_generation(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        if e.type == "GenerationRequested":
            await conn.execute(generations.insert().values(**_generation_row(e)))
        else:
            await conn.execute(
                generations.update()
                .where(generations.c.generation_id == str(e.aggregate_id))
                .values(**_generation_changes(e))
            )


_SHREDDED_GENERATION = {"text": None, "error_message": None, "tool_calls": None}
"""What a generation row keeps of its content once its chat is deleted: nothing."""


async def _erase_user(conn: AsyncConnection, user_id: str) -> None:
    """An erased user's chats, their messages and the user's generations leave the read model."""
    owned = select(chats.c.chat_id).where(chats.c.owner_id == user_id)
    await conn.execute(messages.delete().where(messages.c.chat_id.in_(owned)))
    await conn.execute(generations.delete().where(generations.c.user_id == user_id))
    await conn.execute(chats.delete().where(chats.c.owner_id == user_id))


# --- rows the chats projector writes, from the events -------------------------------------------------
def _chat_row(e: EventEnvelope) -> dict[str, Any]:
    d = e.data
    return {
        "chat_id": str(e.aggregate_id),
        "tenant_id": d["tenant_id"],
        "owner_id": d["owner_id"],
        "title": _fit(chats.c.title, d["title"]),
        "source": _fit(chats.c.source, d["source"]),
        "client_chat_id": _fit(chats.c.client_chat_id, d.get("client_chat_id")),
        "archived": False,
        "deleted": False,
        "message_count": 0,
        "created_at": e.occurred_at,
        "updated_at": e.occurred_at,
    }


def _message_row(e: EventEnvelope) -> dict[str, Any]:
    """A ``MessagePosted`` or ``ToolResultPosted`` message, but for its ``tenant_id`` (its chat's)."""
    d = e.data
    m = messages.c
    return {
        "message_id": _fit(m.message_id, d["message_id"]),
        "chat_id": str(e.aggregate_id),
        "seq": e.id,
        "role": "tool" if e.type == "ToolResultPosted" else _fit(m.role, d["role"]),
        "content": _fit(m.content, d.get("content", "")),
        "parent_id": _fit(m.parent_id, d.get("parent_id")),
        "tool_calls": d.get("tool_calls") or None,
        "images": d.get("images") or None,
        "tool_call_id": _fit(m.tool_call_id, d.get("tool_call_id")),
        "tool_name": _fit(m.tool_name, d.get("name")),
        "tool_latency_ms": d.get("latency_ms"),
        "created_at": e.occurred_at,
    }


def _answer_row(e: EventEnvelope) -> dict[str, Any]:
    """An ``AnswerRecorded`` message, but for its ``tenant_id`` (its chat's)."""
    d = e.data
    m = messages.c
    return {
        "message_id": _fit(m.message_id, d["message_id"]),
        "chat_id": str(e.aggregate_id),
        "seq": e.id,
        "role": "assistant",
        "content": _fit(m.content, d.get("content", "")),
        "parent_id": _fit(m.parent_id, d.get("parent_id")),
        "model": _fit(m.model, d.get("model")),
        "generation_id": d.get("generation_id"),
        "thinking": _fit(m.thinking, d.get("thinking", "")),
        "status": _fit(m.status, d.get("status")),
        "prompt_tokens": int(d.get("prompt_tokens") or 0),
        "completion_tokens": int(d.get("completion_tokens") or 0),
        "timings": d.get("timings") or {},
        "citations": d.get("citations") or None,
        "tool_calls": d.get("tool_calls") or None,
        "created_at": e.occurred_at,
    }


def _generation_row(e: EventEnvelope) -> dict[str, Any]:
    d = e.data
    g = generations.c
    return {
        "generation_id": str(e.aggregate_id),
        "tenant_id": d["tenant_id"],
        "chat_id": d.get("chat_id"),
        "user_id": d["user_id"],
        "model": _fit(g.model, d["model"]),
        "purpose": _fit(g.purpose, d.get("purpose") or "chat"),
        "tools_ignored": d.get("tools_ignored") or None,
        "user_message_id": _fit(g.user_message_id, d["user_message_id"]),
        "answer_message_id": _fit(g.answer_message_id, d["answer_message_id"]),
        "params": d.get("params") or {},
        "reserved_tokens": int(d.get("reserved_tokens") or 0),
        "status": "requested",
        "attempt": 0,
        "cancel_requested": False,
        "requested_at": e.occurred_at,
    }


def _generation_changes(e: EventEnvelope) -> dict[str, Any]:
    """What a generation event after ``GenerationRequested`` sets."""
    d = e.data
    g = generations.c
    if e.type == "GenerationStarted":  # the latest attempt's start: a redelivered job starts over
        return {"status": "running", "attempt": int(d.get("attempt") or 0), "started_at": e.occurred_at}
    if e.type == "GenerationCancelRequested":
        return {"cancel_requested": True}
    changes: dict[str, Any] = {
        "status": FINISHED[e.type],
        "text": _fit(g.text, d.get("text", "")),
        "prompt_tokens": int(d.get("prompt_tokens") or 0),
        "completion_tokens": int(d.get("completion_tokens") or 0),
        "finished_at": e.occurred_at,
    }
    if d.get("attempt"):
        changes["attempt"] = int(d["attempt"])
    if e.type == "GenerationCompleted":
        changes.update(
            finish_reason=_fit(g.finish_reason, d.get("finish_reason")),
            tool_calls=d.get("tool_calls") or None,
            ttft_ms=d.get("ttft_ms"),
            tokens_per_s=d.get("tokens_per_s"),
            duration_ms=d.get("duration_ms"),
        )
    elif e.type == "GenerationFailed":
        changes.update(
            error_code=_fit(g.error_code, d.get("code")),
            error_message=_fit(g.error_message, d.get("message")),
        )
    return changes


def _fold_chat_event(chat: dict[str, Any], new_messages: list[dict[str, Any]], e: EventEnvelope) -> None:
    """``ChatsProjector._apply_chat`` on a chat row (and its messages) not yet written."""
    d = e.data
    match e.type:
        case "ChatRenamed":
            chat.update(title=_fit(chats.c.title, d["title"]), updated_at=e.occurred_at)
        case "ChatArchived" | "ChatUnarchived":
            chat.update(archived=e.type == "ChatArchived", updated_at=e.occurred_at)
        case "ChatDeleted":
            chat.update(deleted=True, title=ERASED, updated_at=e.occurred_at)
            new_messages[:] = [m for m in new_messages if m["chat_id"] != chat["chat_id"]]
        case "MessagePosted" | "ToolResultPosted" | "AnswerRecorded":
            if chat["deleted"]:
                return
            if e.type == "AnswerRecorded":
                row = _answer_row(e)
                # As SQL compares (a NULL matches nothing): the answer becomes the head only if its
                # question still is.
                parent = row["parent_id"]
                head = row["message_id"] if parent is not None and chat.get("head_id") == parent else chat.get("head_id")
            else:
                row = _message_row(e)
                head = row["message_id"]
            chat.update(message_count=chat["message_count"] + 1, head_id=head, updated_at=e.occurred_at)
            row["tenant_id"] = chat["tenant_id"]
            new_messages.append(row)
        case "ChatKnowledgeChanged":
            chat.update(knowledge_ids=list(d["knowledge_ids"]), updated_at=e.occurred_at)
        case "ChatFileAttached" | "ChatFileDetached":
            files = [f for f in chat.get("file_ids", []) if f != d["document_id"]]
            if e.type == "ChatFileAttached":
                files.append(d["document_id"])
            chat.update(file_ids=files, updated_at=e.occurred_at)


async def _copy_grouped(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` into ``table``, one ``COPY`` per set of columns (a column a row leaves out keeps its
    default, as it would in a one-row insert)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    for group in groups.values():
        await copy_rows(conn, table, group)


# --- queries: models -----------------------------------------------------------------------------------
def _model_dict(row: Any, *, admin: bool) -> dict[str, Any]:
    item = {
        "id": row.model_id,
        "name": row.name,
        "display_name": row.display_name,
        "provider_kind": row.provider_kind,
        "upstream_model": row.upstream_model,
        "defaults": row.defaults,
        "capabilities": row.capabilities or default_capabilities(row.provider_kind).as_dict(),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }
    if admin:
        item.update(
            provider_id=row.provider_id,
            provider=row.provider,
            open_to_tenant=row.open_to_tenant,
            active=row.active,
            granted_users=row.granted_users,
            granted_roles=row.granted_roles,
            knowledge_ids=row.knowledge_ids,
        )
    return item


async def list_models(
    engine: AsyncEngine, tenant_id: str, user_id: str | uuid.UUID, role: str
) -> list[dict[str, Any]]:
    """The models the caller may generate with (the rule of ``domain.models.Model.can_use``), by name."""
    tenant = _uuid(tenant_id)
    if tenant is None:
        return []
    stmt = select(models).where(models.c.tenant_id == tenant, models.c.active.is_(True))
    if role != "admin":
        stmt = stmt.where(
            or_(
                models.c.open_to_tenant.is_(True),
                models.c.granted_users.contains([str(user_id)]),
                models.c.granted_roles.contains([role]),
            )
        )
    async with engine.connect() as conn:
        rows = await conn.execute(stmt.order_by(models.c.name))
        return [_model_dict(r, admin=False) for r in rows]


async def list_all_models(engine: AsyncEngine, tenant_id: str) -> list[dict[str, Any]]:
    """Every model of the tenant, inactive ones included, with grants and provider name (for admins)."""
    tenant = _uuid(tenant_id)
    if tenant is None:
        return []
    stmt = (
        select(models, providers.c.name.label("provider"))
        .select_from(
            models.outerjoin(
                providers,
                and_(
                    providers.c.provider_id == models.c.provider_id,
                    providers.c.tenant_id == models.c.tenant_id,
                ),
            )
        )
        .where(models.c.tenant_id == tenant)
        .order_by(models.c.name)
    )
    async with engine.connect() as conn:
        return [_model_dict(r, admin=True) for r in await conn.execute(stmt)]


async def list_providers(engine: AsyncEngine, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's providers by name; whether each has an API key, never the key."""
    tenant = _uuid(tenant_id)
    if tenant is None:
        return []
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(providers).where(providers.c.tenant_id == tenant).order_by(providers.c.name)
        )
        return [
            {
                "id": r.provider_id,
                "name": r.name,
                "kind": r.kind,
                "base_url": r.base_url,
                "has_api_key": r.has_api_key,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
            for r in rows
        ]


# --- queries: chats and generations --------------------------------------------------------------------
def _chat_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.chat_id,
        "owner_id": row.owner_id,
        "title": row.title,
        "source": row.source,
        "archived": row.archived,
        "message_count": row.message_count,
        "head_id": row.head_id,
        "knowledge_ids": list(row.knowledge_ids or []),
        "file_ids": list(row.file_ids or []),
        "client_chat_id": row.client_chat_id,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def list_chats(
    engine: AsyncEngine,
    tenant_id: str,
    owner_id: str | uuid.UUID,
    *,
    limit: int = 50,
    offset: int = 0,
    q: str | None = None,
    archived: bool | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One page of the owner's chats, most recently active first, and how many match in all.
    ``q`` searches titles (case-insensitive, ``%`` and ``_`` literal); ``archived`` None means both;
    ``limit`` is clamped to 1..``MAX_PAGE``."""
    tenant, owner = _uuid(tenant_id), _uuid(owner_id)
    if tenant is None or owner is None:
        return [], 0
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    where = [chats.c.tenant_id == tenant, chats.c.owner_id == owner, chats.c.deleted.is_(False)]
    if archived is not None:
        where.append(chats.c.archived.is_(archived))
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append(chats.c.title.ilike(pattern))
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(chats).where(*where))).scalar_one()
        rows = await conn.execute(
            select(chats)
            .where(*where)
            .order_by(chats.c.updated_at.desc(), chats.c.chat_id.desc())
            .limit(limit)
            .offset(offset)
        )
        return [_chat_dict(r) for r in rows], int(total)


_MESSAGE_COLUMNS = (
    "message_id",
    "parent_id",
    "role",
    "content",
    "model",
    "generation_id",
    "thinking",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "timings",
    "citations",
    "tool_calls",
    "tool_call_id",
    "tool_name",
    "tool_latency_ms",
    "images",
    "created_at",
)


async def get_chat(
    engine: AsyncEngine, tenant_id: str, owner_id: str | uuid.UUID, chat_id: str | uuid.UUID
) -> dict[str, Any] | None:
    """The chat with every message of its tree (each names its ``parent_id``), oldest first; None when
    it does not exist, is deleted, or belongs to someone else. One query: the chat joined to its messages."""
    tenant, owner, chat = _uuid(tenant_id), _uuid(owner_id), _uuid(chat_id)
    if tenant is None or owner is None or chat is None:
        return None
    m = messages.c
    message_columns = [m[name].label(f"m_{name}") for name in _MESSAGE_COLUMNS]
    stmt = (
        select(chats, *message_columns)
        .select_from(
            chats.outerjoin(messages, and_(m.chat_id == chats.c.chat_id, m.tenant_id == chats.c.tenant_id))
        )
        .where(
            chats.c.tenant_id == tenant,
            chats.c.chat_id == chat,
            chats.c.owner_id == owner,
            chats.c.deleted.is_(False),
        )
        .order_by(m.created_at, m.seq)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    if not rows:
        return None
    result = _chat_dict(rows[0])
    result["messages"] = [
        {("id" if name == "message_id" else name): getattr(r, f"m_{name}") for name in _MESSAGE_COLUMNS}
        for r in rows
        if r.m_message_id is not None
    ]
    return result


def _generation_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.generation_id,
        "chat_id": row.chat_id,
        "user_id": row.user_id,
        "model": row.model,
        "user_message_id": row.user_message_id,
        "answer_message_id": row.answer_message_id,
        "params": row.params,
        "reserved_tokens": row.reserved_tokens,
        "status": row.status,
        "attempt": row.attempt,
        "cancel_requested": row.cancel_requested,
        "text": row.text,
        "finish_reason": row.finish_reason,
        "error_code": row.error_code,
        "error_message": row.error_message,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "ttft_ms": row.ttft_ms,
        "tokens_per_s": row.tokens_per_s,
        "duration_ms": row.duration_ms,
        "requested_at": row.requested_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "purpose": row.purpose,
        "tool_calls": row.tool_calls,
        "tools_ignored": row.tools_ignored,
    }


async def get_generation(
    engine: AsyncEngine,
    tenant_id: str,
    generation_id: str | uuid.UUID,
    *,
    user_id: str | uuid.UUID | None = None,
) -> dict[str, Any] | None:
    """The generation, or None when the tenant has none by that id (or, given ``user_id``, when it
    belongs to another user)."""
    tenant, wanted = _uuid(tenant_id), _uuid(generation_id)
    if tenant is None or wanted is None:
        return None
    stmt = select(generations).where(generations.c.tenant_id == tenant, generations.c.generation_id == wanted)
    if user_id is not None:
        user = _uuid(user_id)
        if user is None:
            return None
        stmt = stmt.where(generations.c.user_id == user)
    async with engine.connect() as conn:
        row = (await conn.execute(stmt)).first()
        return _generation_dict(row) if row else None
