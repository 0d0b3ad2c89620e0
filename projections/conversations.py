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
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import Column, Table, Text, and_, case, cast, func, literal_column, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.identity import ERASED
from domain.models import default_capabilities
from projections.runtime import HandlesTypes, copy_rows
from schema.contract import (
    AnswerRecorded,
    ChatArchived,
    ChatCreated,
    ChatDeleted,
    ChatFileAttached,
    ChatFiled,
    ChatFileDetached,
    ChatImported,
    ChatKnowledgeChanged,
    ChatPinned,
    ChatRenamed,
    ChatTagsChanged,
    ChatUnarchived,
    ChatUnpinned,
    EventData,
    GenerationCancelled,
    GenerationCancelRequested,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    GenerationStarted,
    MessageImported,
    MessagePosted,
    ModelAccessGranted,
    ModelAccessRevoked,
    ModelCapabilitiesChanged,
    ModelChanged,
    ModelKnowledgeChanged,
    ModelRegistered,
    ProviderChanged,
    ProviderRegistered,
    ToolResultPosted,
    UserErased,
    decode_data,
)
from schema.events import EventEnvelope
from schema.tables import chats, folders, generations, messages, models, providers

__all__ = [
    "MAX_PAGE",
    "UNFILED",
    "ChatFilter",
    "ChatsProjector",
    "ModelsProjector",
    "get_chat",
    "get_chats",
    "get_generation",
    "list_all_models",
    "list_chats",
    "list_models",
    "list_tags",
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
        aggregate_id = str(e.aggregate_id)
        this_model = models.c.model_id == aggregate_id
        match data := decode_data(e.type, e.data):
            case ProviderRegistered():
                await conn.execute(
                    providers.insert().values(
                        provider_id=aggregate_id,
                        tenant_id=data.tenant_id,
                        name=_fit(providers.c.name, data.name),
                        kind=_fit(providers.c.kind, data.kind),
                        base_url=_fit(providers.c.base_url, data.base_url),
                        has_api_key=data.has_api_key,
                        created_at=e.occurred_at,
                        updated_at=e.occurred_at,
                    )
                )
            case ProviderChanged():
                await conn.execute(
                    providers.update()
                    .where(providers.c.provider_id == aggregate_id)
                    .values(
                        base_url=_fit(providers.c.base_url, data.base_url),
                        has_api_key=data.has_api_key,
                        updated_at=e.occurred_at,
                    )
                )
            case ModelRegistered():
                await conn.execute(
                    models.insert().values(
                        model_id=aggregate_id,
                        tenant_id=data.tenant_id,
                        name=_fit(models.c.name, data.name),
                        display_name=_fit(models.c.display_name, data.display_name),
                        provider_id=str(data.provider_id),
                        provider_kind=_fit(models.c.provider_kind, data.provider_kind),
                        upstream_model=_fit(models.c.upstream_model, data.upstream_model),
                        defaults=data.defaults,
                        open_to_tenant=data.open_to_tenant,
                        base_model_id=None if data.base_model_id is None else str(data.base_model_id),
                        base_model=_fit(models.c.base_model, data.base_model),
                        active=True,
                        granted_users=[],
                        granted_roles=[],
                        created_at=e.occurred_at,
                        updated_at=e.occurred_at,
                    )
                )
            case ModelChanged():
                await conn.execute(
                    models.update()
                    .where(this_model)
                    .values(
                        display_name=_fit(models.c.display_name, data.display_name),
                        defaults=data.defaults,
                        open_to_tenant=data.open_to_tenant,
                        active=data.active,
                        updated_at=e.occurred_at,
                    )
                )
            case ModelKnowledgeChanged():
                await conn.execute(
                    models.update().where(this_model).values(knowledge_ids=data.knowledge_ids, updated_at=e.occurred_at)
                )
            case ModelCapabilitiesChanged():
                await conn.execute(
                    models.update()
                    .where(this_model)
                    .values(capabilities=msgspec.to_builtins(data.capabilities), updated_at=e.occurred_at)
                )
            case ModelAccessGranted() | ModelAccessRevoked():
                granting = isinstance(data, ModelAccessGranted)
                changes: dict[str, Any] = {"updated_at": e.occurred_at}
                for item, column in ((data.user_id, models.c.granted_users), (data.role, models.c.granted_roles)):
                    if item:
                        changes[column.name] = (
                            column.op("||", return_type=JSONB)(func.jsonb_build_array(cast(item, Text)))
                            if granting
                            else column.op("-", return_type=JSONB)(cast(item, Text))
                        )
                await conn.execute(models.update().where(this_model).values(**changes))


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
            "ChatPinned",
            "ChatUnpinned",
            "ChatFiled",
            "ChatTagsChanged",
            "MessageImported",
            "ChatImported",
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
        data = decode_data(e.type, e.data)
        if isinstance(data, UserErased):
            await _erase_user(conn, str(e.aggregate_id))
        elif e.type in self._generation_types:
            await self._apply_generation(conn, e, data)
        else:
            await self._apply_chat(conn, e, data)

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
            data = decode_data(e.type, e.data)
            if isinstance(data, UserErased):  # after what came before it, whether in memory or written
                await _copy_grouped(conn, chats, list(new_chats.values()))
                await _copy_grouped(conn, messages, new_messages)
                await _copy_grouped(conn, generations, list(new_generations.values()))
                new_chats, new_messages, new_generations = {}, [], {}
                await _erase_user(conn, key)
            elif e.type in self._generation_types:
                if isinstance(data, GenerationRequested):
                    new_generations[key] = _generation_row(e, data)
                elif key in new_generations:
                    new_generations[key].update(_generation_changes(e, data))
                else:
                    await self._apply_generation(conn, e, data)
            elif isinstance(data, ChatCreated):
                new_chats[key] = _chat_row(e, data)
            elif key in new_chats:
                _fold_chat_event(new_chats[key], new_messages, e, data)
            else:
                await self._apply_chat(conn, e, data)
            if isinstance(data, ChatDeleted):  # its generations of this batch, as _apply_chat does those written
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

    async def _apply_chat(self, conn: AsyncConnection, e: EventEnvelope, data: EventData) -> None:
        chat_id = str(e.aggregate_id)
        this_chat = chats.c.chat_id == chat_id
        match data:
            case ChatCreated():
                await conn.execute(chats.insert().values(**_chat_row(e, data)))
            case ChatRenamed():
                await conn.execute(
                    chats.update()
                    .where(this_chat)
                    .values(title=_fit(chats.c.title, data.title), updated_at=e.occurred_at)
                )
            case ChatArchived() | ChatUnarchived():
                await conn.execute(
                    chats.update()
                    .where(this_chat)
                    .values(archived=isinstance(data, ChatArchived), updated_at=e.occurred_at)
                )
            case ChatDeleted():  # its content is shredded: nothing of it stays but that it existed
                await conn.execute(
                    chats.update().where(this_chat).values(**_DELETED_CHAT, updated_at=e.occurred_at)
                )
                await conn.execute(messages.delete().where(messages.c.chat_id == chat_id))
                await conn.execute(
                    generations.update().where(generations.c.chat_id == chat_id).values(**_SHREDDED_GENERATION)
                )
            case MessagePosted() | ToolResultPosted() | MessageImported():
                row = _imported_row(e, data) if isinstance(data, MessageImported) else _message_row(e, data)
                tenant_id = await self._touch(conn, chat_id, e, head=row["message_id"])
                if tenant_id is not None:
                    await conn.execute(messages.insert().values(**row, tenant_id=tenant_id))
            case ChatPinned() | ChatUnpinned() | ChatFiled() | ChatTagsChanged() | ChatImported():
                await conn.execute(
                    chats.update().where(this_chat, chats.c.deleted.is_(False)).values(**_organised(data))
                )
            case ChatKnowledgeChanged():
                await conn.execute(
                    chats.update().where(this_chat).values(knowledge_ids=data.knowledge_ids, updated_at=e.occurred_at)
                )
            case ChatFileAttached(document_id=document_id) | ChatFileDetached(document_id=document_id):
                current = await conn.execute(select(chats.c.file_ids).where(this_chat).with_for_update())
                files = [f for f in (current.scalar() or []) if f != document_id]
                if isinstance(data, ChatFileAttached):
                    files.append(document_id)
                await conn.execute(chats.update().where(this_chat).values(file_ids=files, updated_at=e.occurred_at))
            case AnswerRecorded():
                row = _answer_row(e, data)
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

    async def _apply_generation(self, conn: AsyncConnection, e: EventEnvelope, data: EventData) -> None:
        if isinstance(data, GenerationRequested):
            await conn.execute(generations.insert().values(**_generation_row(e, data)))
        else:
            await conn.execute(
                generations.update()
                .where(generations.c.generation_id == str(e.aggregate_id))
                .values(**_generation_changes(e, data))
            )


_SHREDDED_GENERATION = {"text": None, "error_message": None, "tool_calls": None}
_DELETED_CHAT = {"deleted": True, "title": ERASED, "tags": [], "pinned": False, "folder_id": None}
"""What a chat row keeps once the chat is deleted: that it existed."""
"""What a generation row keeps of its content once its chat is deleted: nothing."""


async def _erase_user(conn: AsyncConnection, user_id: str) -> None:
    """An erased user's chats, their messages and the user's generations leave the read model."""
    owned = select(chats.c.chat_id).where(chats.c.owner_id == user_id)
    await conn.execute(messages.delete().where(messages.c.chat_id.in_(owned)))
    await conn.execute(generations.delete().where(generations.c.user_id == user_id))
    await conn.execute(chats.delete().where(chats.c.owner_id == user_id))


# --- rows the chats projector writes, from the events -------------------------------------------------
def _json(items: Sequence[msgspec.Struct] | None) -> Any:
    """Nested Structs of an event (tool calls, images, citations) as the JSON they travel as; none, or an
    erased (emptied) list, as SQL NULL."""
    return msgspec.to_builtins(items) if items else None


def _chat_row(e: EventEnvelope, data: ChatCreated) -> dict[str, Any]:
    return {
        "chat_id": str(e.aggregate_id),
        "tenant_id": data.tenant_id,
        "owner_id": str(data.owner_id),
        "title": _fit(chats.c.title, data.title),
        "source": _fit(chats.c.source, data.source),
        "client_chat_id": _fit(chats.c.client_chat_id, data.client_chat_id),
        "archived": False,
        "deleted": False,
        "pinned": False,
        "folder_id": None,
        "tags": [],
        "message_count": 0,
        "created_at": e.occurred_at,
        "updated_at": e.occurred_at,
    }


def _message_row(e: EventEnvelope, data: MessagePosted | ToolResultPosted) -> dict[str, Any]:
    """A ``MessagePosted`` or ``ToolResultPosted`` message, but for its ``tenant_id`` (its chat's)."""
    m = messages.c
    tool_call_id: str | None = None
    tool_name: str | None = None
    latency_ms: float | None = None
    if isinstance(data, ToolResultPosted):
        role, tool_calls, images = "tool", None, None
        tool_call_id, tool_name, latency_ms = data.tool_call_id, data.name, data.latency_ms
    else:
        role, tool_calls, images = data.role, _json(data.tool_calls), _json(data.images)
    return {
        "message_id": _fit(m.message_id, data.message_id),
        "chat_id": str(e.aggregate_id),
        "seq": e.id,
        "role": role,
        "content": _fit(m.content, data.content),
        "parent_id": _fit(m.parent_id, data.parent_id),
        "tool_calls": tool_calls,
        "images": images,
        "tool_call_id": _fit(m.tool_call_id, tool_call_id),
        "tool_name": _fit(m.tool_name, tool_name),
        "tool_latency_ms": latency_ms,
        "created_at": e.occurred_at,
    }


def _imported_row(e: EventEnvelope, data: MessageImported) -> dict[str, Any]:
    """A ``MessageImported`` message, with the time the export gives it, but for its ``tenant_id``."""
    m = messages.c
    tool = data.role == "tool"
    return {
        "message_id": _fit(m.message_id, data.message_id),
        "chat_id": str(e.aggregate_id),
        "seq": e.id,
        "role": data.role,
        "content": _fit(m.content, data.content),
        "parent_id": _fit(m.parent_id, data.parent_id),
        "model": _fit(m.model, data.model),
        "thinking": _fit(m.thinking, data.thinking),
        "tool_calls": _json(data.tool_calls),
        "images": None,
        "tool_call_id": _fit(m.tool_call_id, data.tool_call_id) if tool else None,
        "tool_name": _fit(m.tool_name, data.tool_name) if tool else None,
        "tool_latency_ms": None,
        "created_at": data.created_at,
    }


def _organised(data: EventData) -> dict[str, Any]:
    """What pinning, filing, tagging or an import's end sets on the chat's row. Organising a chat is not
    activity: ``updated_at`` moves only for an import, to the chat's own time."""
    match data:
        case ChatPinned() | ChatUnpinned():
            return {"pinned": isinstance(data, ChatPinned)}
        case ChatFiled():
            return {"folder_id": _uuid(data.folder_id) if data.folder_id is not None else None}
        case ChatTagsChanged():
            return {"tags": [t[:100] for t in data.tags]}
        case ChatImported():
            changes: dict[str, Any] = {"created_at": data.created_at, "updated_at": data.updated_at}
            if data.head_id is not None:
                changes["head_id"] = _fit(messages.c.message_id, data.head_id)
            return changes
    raise TypeError(f"{type(data).__name__} does not organise a chat")


def _answer_row(e: EventEnvelope, data: AnswerRecorded) -> dict[str, Any]:
    """An ``AnswerRecorded`` message, but for its ``tenant_id`` (its chat's)."""
    m = messages.c
    return {
        "message_id": _fit(m.message_id, data.message_id),
        "chat_id": str(e.aggregate_id),
        "seq": e.id,
        "role": "assistant",
        "content": _fit(m.content, data.content),
        "parent_id": _fit(m.parent_id, data.parent_id),
        "model": _fit(m.model, data.model),
        "generation_id": str(data.generation_id),
        "thinking": _fit(m.thinking, data.thinking),
        "status": data.status,
        "prompt_tokens": data.prompt_tokens,
        "completion_tokens": data.completion_tokens,
        "timings": msgspec.to_builtins(data.timings),
        "citations": _json(data.citations),
        "tool_calls": _json(data.tool_calls),
        "created_at": e.occurred_at,
    }


def _generation_row(e: EventEnvelope, data: GenerationRequested) -> dict[str, Any]:
    g = generations.c
    return {
        "generation_id": str(e.aggregate_id),
        "tenant_id": data.tenant_id,
        "chat_id": str(data.chat_id) if data.chat_id is not None else None,
        "user_id": str(data.user_id),
        "model": _fit(g.model, data.model),
        "purpose": _fit(g.purpose, data.purpose),
        "tools_ignored": data.tools_ignored or None,
        "user_message_id": _fit(g.user_message_id, data.user_message_id),
        "answer_message_id": _fit(g.answer_message_id, data.answer_message_id),
        "params": data.params,
        "reserved_tokens": data.reserved_tokens,
        "status": "requested",
        "attempt": 0,
        "cancel_requested": False,
        "requested_at": e.occurred_at,
    }


def _generation_changes(e: EventEnvelope, data: EventData) -> dict[str, Any]:
    """What a generation event after ``GenerationRequested`` sets."""
    g = generations.c
    match data:
        case GenerationStarted():  # the latest attempt's start: a redelivered job starts over
            return {"status": "running", "attempt": data.attempt, "started_at": e.occurred_at}
        case GenerationCancelRequested():
            return {"cancel_requested": True}
        case GenerationCompleted() | GenerationFailed() | GenerationCancelled():
            changes: dict[str, Any] = {
                "status": FINISHED[e.type],
                "text": _fit(g.text, data.text),
                "prompt_tokens": data.prompt_tokens,
                "completion_tokens": data.completion_tokens,
                "finished_at": e.occurred_at,
            }
            if data.attempt:  # 0: an attempt the worker did not count
                changes["attempt"] = data.attempt
            if isinstance(data, GenerationCompleted):
                changes.update(
                    finish_reason=_fit(g.finish_reason, data.finish_reason),
                    tool_calls=_json(data.tool_calls),
                    ttft_ms=data.ttft_ms,
                    tokens_per_s=data.tokens_per_s,
                    duration_ms=data.duration_ms,
                )
            elif isinstance(data, GenerationFailed):
                changes.update(
                    error_code=_fit(g.error_code, data.code),
                    error_message=_fit(g.error_message, data.message),
                )
            return changes
    raise TypeError(f"{e.type} does not change a generation")


def _fold_chat_event(
    chat: dict[str, Any], new_messages: list[dict[str, Any]], e: EventEnvelope, data: EventData
) -> None:
    """``ChatsProjector._apply_chat`` on a chat row (and its messages) not yet written."""
    match data:
        case ChatRenamed():
            chat.update(title=_fit(chats.c.title, data.title), updated_at=e.occurred_at)
        case ChatArchived() | ChatUnarchived():
            chat.update(archived=isinstance(data, ChatArchived), updated_at=e.occurred_at)
        case ChatDeleted():
            chat.update(**_DELETED_CHAT, updated_at=e.occurred_at)
            new_messages[:] = [m for m in new_messages if m["chat_id"] != chat["chat_id"]]
        case ChatPinned() | ChatUnpinned() | ChatFiled() | ChatTagsChanged() | ChatImported():
            if not chat["deleted"]:
                chat.update(_organised(data))
        case MessagePosted() | ToolResultPosted() | AnswerRecorded() | MessageImported():
            if chat["deleted"]:
                return
            if isinstance(data, MessageImported):
                row = _imported_row(e, data)
                head = row["message_id"]
            elif isinstance(data, AnswerRecorded):
                row = _answer_row(e, data)
                # As SQL compares (a NULL matches nothing): the answer becomes the head only if its
                # question still is.
                parent = row["parent_id"]
                head = row["message_id"] if parent is not None and chat.get("head_id") == parent else chat.get("head_id")
            else:
                row = _message_row(e, data)
                head = row["message_id"]
            chat.update(message_count=chat["message_count"] + 1, head_id=head, updated_at=e.occurred_at)
            row["tenant_id"] = chat["tenant_id"]
            new_messages.append(row)
        case ChatKnowledgeChanged():
            chat.update(knowledge_ids=data.knowledge_ids, updated_at=e.occurred_at)
        case ChatFileAttached(document_id=document_id) | ChatFileDetached(document_id=document_id):
            files = [f for f in chat.get("file_ids", []) if f != document_id]
            if isinstance(data, ChatFileAttached):
                files.append(document_id)
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
        "base_model": row.base_model,
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
        "pinned": row.pinned,
        "folder_id": row.live_folder_id,
        "tags": list(row.tags or []),
        "message_count": row.message_count,
        "head_id": row.head_id,
        "knowledge_ids": list(row.knowledge_ids or []),
        "file_ids": list(row.file_ids or []),
        "client_chat_id": row.client_chat_id,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _with_folder() -> Any:
    """The chats joined to their folder where it still exists: a deleted folder's chats are unfiled."""
    return chats.outerjoin(
        folders, and_(folders.c.folder_id == chats.c.folder_id, folders.c.tenant_id == chats.c.tenant_id)
    )


LIVE_FOLDER = folders.c.folder_id.label("live_folder_id")
UNFILED = "none"
"""``folder_id`` filter value for the chats in no folder."""


class ChatFilter(msgspec.Struct, kw_only=True, frozen=True):
    """How ``list_chats`` narrows the owner's chats; every given condition must hold."""

    q: str | None = None
    """Searches titles (case-insensitive, ``%`` and ``_`` literal)."""
    archived: bool | None = None
    pinned: bool | None = None
    folder_id: str | None = None
    """A folder's id (its chats, not its subfolders'), or ``UNFILED``."""
    tags: tuple[str, ...] = ()
    """Normalised tags: chats carrying every one."""
    model: str | None = None
    """Chats with a message written by this model."""
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None


async def list_chats(
    engine: AsyncEngine,
    tenant_id: str,
    owner_id: str | uuid.UUID,
    *,
    limit: int = 50,
    offset: int = 0,
    **where: Any,
) -> tuple[list[dict[str, Any]], int]:
    """One page of the owner's chats, most recently active first, and how many match in all; ``where``
    holds the fields of ``ChatFilter``. Time bounds are inclusive after, exclusive before; ``limit`` is
    clamped to 1..``MAX_PAGE``."""
    f = ChatFilter(**where)
    tenant, owner = _uuid(tenant_id), _uuid(owner_id)
    if tenant is None or owner is None:
        return [], 0
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    conditions = [chats.c.tenant_id == tenant, chats.c.owner_id == owner, chats.c.deleted.is_(False)]
    if f.archived is not None:
        conditions.append(chats.c.archived.is_(f.archived))
    if f.pinned is not None:
        conditions.append(chats.c.pinned.is_(f.pinned))
    if f.q:
        pattern = "%" + f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        conditions.append(chats.c.title.ilike(pattern))
    if f.folder_id == UNFILED:
        conditions.append(folders.c.folder_id.is_(None))
    elif f.folder_id is not None:
        conditions.append(folders.c.folder_id == _uuid(f.folder_id))
    if f.tags:
        conditions.append(chats.c.tags.contains(list(f.tags)))
    if f.model is not None:
        conditions.append(
            select(messages.c.message_id)
            .where(messages.c.chat_id == chats.c.chat_id, messages.c.tenant_id == tenant, messages.c.model == f.model)
            .exists()
        )
    for column, after, before in (
        (chats.c.created_at, f.created_after, f.created_before),
        (chats.c.updated_at, f.updated_after, f.updated_before),
    ):
        if after is not None:
            conditions.append(column >= after)
        if before is not None:
            conditions.append(column < before)
    async with engine.connect() as conn:
        total = (
            await conn.execute(select(func.count()).select_from(_with_folder()).where(*conditions))
        ).scalar_one()
        rows = await conn.execute(
            select(chats, LIVE_FOLDER)
            .select_from(_with_folder())
            .where(*conditions)
            .order_by(chats.c.updated_at.desc(), chats.c.chat_id.desc())
            .limit(limit)
            .offset(offset)
        )
        return [_chat_dict(r) for r in rows], int(total)


async def list_tags(engine: AsyncEngine, tenant_id: str, owner_id: str | uuid.UUID) -> list[dict[str, Any]]:
    """The owner's tags (those on any of their chats), by name, with how many chats carry each."""
    tenant, owner = _uuid(tenant_id), _uuid(owner_id)
    if tenant is None or owner is None:
        return []
    tag = func.jsonb_array_elements_text(chats.c.tags).table_valued("value").alias("tag")
    stmt = (
        select(tag.c.value, func.count())
        .select_from(chats.join(tag, literal_column("true")))
        .where(chats.c.tenant_id == tenant, chats.c.owner_id == owner, chats.c.deleted.is_(False))
        .group_by(tag.c.value)
        .order_by(tag.c.value)
    )
    async with engine.connect() as conn:
        return [{"name": name, "chat_count": int(n)} for name, n in await conn.execute(stmt)]


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


async def get_chats(
    engine: AsyncEngine, tenant_id: str, owner_id: str | uuid.UUID, chat_ids: Sequence[str | uuid.UUID] | None = None
) -> list[dict[str, Any]]:
    """The owner's chats (``chat_ids`` of them, or all), oldest first, each with every message of its tree
    (each names its ``parent_id``), oldest first. One query: the chats joined to their messages."""
    tenant, owner = _uuid(tenant_id), _uuid(owner_id)
    if tenant is None or owner is None:
        return []
    conditions = [chats.c.tenant_id == tenant, chats.c.owner_id == owner, chats.c.deleted.is_(False)]
    if chat_ids is not None:
        wanted = [c for c in (_uuid(i) for i in chat_ids) if c is not None]
        if not wanted:
            return []
        conditions.append(chats.c.chat_id.in_(wanted))
    m = messages.c
    message_columns = [m[name].label(f"m_{name}") for name in _MESSAGE_COLUMNS]
    stmt = (
        select(chats, LIVE_FOLDER, *message_columns)
        .select_from(
            _with_folder().outerjoin(messages, and_(m.chat_id == chats.c.chat_id, m.tenant_id == chats.c.tenant_id))
        )
        .where(*conditions)
        .order_by(chats.c.created_at, chats.c.chat_id, m.created_at, m.seq)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        chat = out.get(r.chat_id)
        if chat is None:
            chat = out[r.chat_id] = {**_chat_dict(r), "messages": []}
        if r.m_message_id is not None:
            chat["messages"].append(
                {("id" if name == "message_id" else name): getattr(r, f"m_{name}") for name in _MESSAGE_COLUMNS}
            )
    return list(out.values())


async def get_chat(
    engine: AsyncEngine, tenant_id: str, owner_id: str | uuid.UUID, chat_id: str | uuid.UUID
) -> dict[str, Any] | None:
    """The chat with every message of its tree, oldest first; None when it does not exist, is deleted, or
    belongs to someone else."""
    found = await get_chats(engine, tenant_id, owner_id, [chat_id])
    return found[0] if found else None


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
