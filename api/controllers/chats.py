"""The caller's chats: listing and filtering (title, folder, tags, pinned, archived, model, dates), the
message tree of one chat, organising it (pin, tags, folder), sending a message (which requests an answer)
and regenerating an answer, export and import (Open WebUI's chat JSON or parley's own). Only the owner
sees or touches a chat; others get 404."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from api import dto, dto_chat, dto_organise
from api.deps import App, Caller, command_context
from api.openapi import refusals
from application.chat_exchange import MAX_IMPORT_BYTES, exchanged, render_openwebui, render_parley
from application.conversations import ROOT, Sent
from domain.chats import Chat as ChatAggregate
from domain.chats import normalise_tags
from domain.errors import Invalid, NotFound
from projections.conversations import MAX_PAGE, UNFILED, get_chat, get_chats, list_chats, list_tags
from projections.folders import folder_paths

__all__ = ["ChatController"]


ExportFormat = Annotated[
    Literal["openwebui", "parley"], QueryParameter(description="Open WebUI's chat JSON, or parley's own")
]


def chat_dto(chat: ChatAggregate | dict[str, Any]) -> dto_chat.Chat:
    if isinstance(chat, dict):
        return dto_chat.Chat(
            id=str(chat["id"]),
            title=chat["title"],
            source=chat["source"],
            archived=chat["archived"],
            pinned=chat.get("pinned", False),
            folder_id=chat.get("folder_id"),
            tags=list(chat.get("tags", [])),
            message_count=chat["message_count"],
            head_id=chat["head_id"],
            knowledge_ids=list(chat.get("knowledge_ids", [])),
            file_ids=list(chat.get("file_ids", [])),
            created_at=chat["created_at"],
            updated_at=chat["updated_at"],
        )
    return dto_chat.Chat(
        id=str(chat.id),
        title=chat.title,
        source=chat.source,
        archived=chat.archived,
        pinned=chat.pinned,
        folder_id=chat.folder_id,
        tags=list(chat.tags),
        message_count=len(chat.messages),
        head_id=chat.head,
        knowledge_ids=list(chat.knowledge_ids),
        file_ids=list(chat.file_ids),
        created_at=chat.created_on,
        updated_at=chat.modified_on,
    )


def _message(m: dict[str, Any]) -> dto_chat.Message:
    fields = {k: v for k, v in m.items() if k in dto_chat.Message.__struct_fields__}
    if m.get("role") == "tool" and "name" in m:  # the aggregate's name of a tool message
        fields["tool_name"] = m["name"]
    if fields.get("generation_id") is not None:
        fields["generation_id"] = str(fields["generation_id"])
    return dto_chat.Message(**fields)


def chat_detail_dto(chat: ChatAggregate | dict[str, Any]) -> dto_chat.ChatDetail:
    summary = chat_dto(chat)
    messages = chat["messages"] if isinstance(chat, dict) else list(chat.messages.values())
    return dto_chat.ChatDetail(
        id=summary.id,
        title=summary.title,
        source=summary.source,
        archived=summary.archived,
        pinned=summary.pinned,
        folder_id=summary.folder_id,
        tags=summary.tags,
        head_id=summary.head_id,
        message_count=summary.message_count,
        knowledge_ids=summary.knowledge_ids,
        file_ids=summary.file_ids,
        created_at=summary.created_at,
        updated_at=summary.updated_at,
        messages=[_message(m) for m in messages],
    )


def accepted(sent: Sent) -> dto_chat.Accepted:
    assert sent.chat_id is not None
    return dto_chat.Accepted(
        chat_id=str(sent.chat_id),
        message_id=sent.message_id,
        generation_id=str(sent.generation_id),
        answer_message_id=sent.answer_message_id,
    )


class ChatController(Controller):
    path = "/api/v1/chats"
    tags = ["chats"]

    @get("/", operation_id="ListChats")
    async def list(
        self,
        c: App,
        caller: Caller,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
        q: Annotated[str | None, QueryParameter(max_length=100, pattern=dto.NO_CONTROL_CHARS)] = None,
        archived: Annotated[
            bool | None, QueryParameter(description="only (un)archived chats; both if absent")
        ] = None,
        pinned: Annotated[bool | None, QueryParameter(description="only (un)pinned chats; both if absent")] = None,
        folder_id: Annotated[
            str | None,
            QueryParameter(max_length=64, description=f"the chats in this folder of yours; '{UNFILED}': in none"),
        ] = None,
        tag: Annotated[
            list[str] | None,
            QueryParameter(max_length=200, description="chats with this tag (repeat it: with every one)"),
        ] = None,
        model: Annotated[
            str | None, QueryParameter(max_length=100, description="chats with an answer by this model")
        ] = None,
        created_after: Annotated[datetime | None, QueryParameter(description="created at or after")] = None,
        created_before: Annotated[datetime | None, QueryParameter(description="created before")] = None,
        updated_after: Annotated[datetime | None, QueryParameter(description="last active at or after")] = None,
        updated_before: Annotated[datetime | None, QueryParameter(description="last active before")] = None,
    ) -> dto_chat.ChatPage:
        """Your chats, most recently active first, narrowed by every filter given."""
        if folder_id is not None and folder_id != UNFILED:
            try:
                folder_id = str(UUID(folder_id))
            except ValueError:
                raise Invalid("INVALID_FOLDER_ID", f"folder_id is a folder's id or '{UNFILED}'", field="folder_id") from None
        items, total = await list_chats(
            c.engine,
            caller.tenant_id,
            caller.user_id,
            limit=limit,
            offset=offset,
            q=q,
            archived=archived,
            pinned=pinned,
            folder_id=folder_id,
            tags=tuple(normalise_tags(tag or [])),
            model=model,
            created_after=created_after,
            created_before=created_before,
            updated_after=updated_after,
            updated_before=updated_before,
        )
        return dto_chat.ChatPage(items=[chat_dto(i) for i in items], total=total, limit=limit, offset=offset)

    @get("/tags", operation_id="ListChatTags")
    async def list_tags(self, c: App, caller: Caller) -> list[dto_organise.TagCount]:
        """Your tags (those on any of your chats), with how many chats carry each."""
        return [dto_organise.TagCount(**t) for t in await list_tags(c.engine, caller.tenant_id, caller.user_id)]

    @get("/export", operation_id="ExportChats")
    async def export_all(
        self, c: App, caller: Caller, format: ExportFormat = "openwebui"
    ) -> Response[Any]:
        """All your chats (archived ones too) as Open WebUI's export writes them, or in parley's format:
        every branch, role, model and time, with tags, folder, pinned and archived."""
        return await _export(c, caller, None, format)

    @get("/{chat_id:uuid}/export", operation_id="ExportChat")
    async def export_one(
        self, chat_id: FromPath[UUID], c: App, caller: Caller, format: ExportFormat = "openwebui"
    ) -> Response[Any]:
        """One chat, as ``ExportChats`` writes it (a list of one, in Open WebUI's format)."""
        return await _export(c, caller, chat_id, format)

    @post(
        "/import",
        operation_id="ImportChats",
        status_code=200,
        request_max_body_size=MAX_IMPORT_BYTES,
        responses=refusals(413),
    )
    async def import_chats(
        self, request: Request[Any, Any, Any], data: JSONBody[Any], c: App, caller: Caller
    ) -> dto_organise.ImportResult:
        """Chats exported by Open WebUI (its list of chats, or its import body ``{"chats": [...]}``) or by
        parley (``{"format": "parley.chats", ...}``), with their whole message trees. The same export
        imported twice adds nothing (its chats are ``skipped``). Too many chats or messages: 413
        ``IMPORT_TOO_LARGE``; a body of neither shape, or a broken tree: 422 ``INVALID_IMPORT``."""
        report = await c.exchange.import_chats(command_context(request, caller), caller, data)
        return dto_organise.ImportResult(
            format=report.format, imported=report.imported, skipped=report.skipped, messages=report.messages
        )

    @post("/", operation_id="CreateChat", status_code=HTTP_201_CREATED)
    async def create(
        self,
        request: Request[Any, Any, Any],
        c: App,
        caller: Caller,
        data: JSONBody[dto_chat.ChatCreate | None] = None,
    ) -> dto_chat.Chat:
        title = data.title if data is not None else "New chat"
        return chat_dto(await c.chats.create(command_context(request, caller), caller, title=title))

    @get("/{chat_id:uuid}", operation_id="GetChat")
    async def get(self, chat_id: FromPath[UUID], c: App, caller: Caller) -> dto_chat.ChatDetail:
        row = await get_chat(c.engine, caller.tenant_id, caller.user_id, chat_id)
        if row is not None:
            return chat_detail_dto(row)
        # Not projected yet (just created), or not the caller's: the event store answers either way.
        return chat_detail_dto(await c.chats.get(caller, chat_id))

    @patch("/{chat_id:uuid}", operation_id="UpdateChat")
    async def update(
        self,
        request: Request[Any, Any, Any],
        chat_id: FromPath[UUID],
        data: JSONBody[dto_chat.ChatUpdate],
        c: App,
        caller: Caller,
    ) -> dto_chat.Chat:
        chat = await c.chats.update(
            command_context(request, caller),
            caller,
            chat_id,
            title=None if data.title is msgspec.UNSET else data.title,
            archived=None if data.archived is msgspec.UNSET else data.archived,
            knowledge_ids=None if data.knowledge_ids is msgspec.UNSET else data.knowledge_ids,
            pinned=None if data.pinned is msgspec.UNSET else data.pinned,
            tags=None if data.tags is msgspec.UNSET else data.tags,
            folder_id=data.folder_id,
        )
        return chat_dto(chat)

    @delete("/{chat_id:uuid}", operation_id="DeleteChat", status_code=HTTP_204_NO_CONTENT)
    async def delete(
        self, request: Request[Any, Any, Any], chat_id: FromPath[UUID], c: App, caller: Caller
    ) -> None:
        await c.chats.delete(command_context(request, caller), caller, chat_id)

    @post(
        "/{chat_id:uuid}/messages", operation_id="SendMessage", status_code=HTTP_202_ACCEPTED, responses=refusals(503)
    )
    async def send_message(
        self,
        request: Request[Any, Any, Any],
        chat_id: FromPath[UUID],
        data: JSONBody[dto_chat.MessageSend],
        c: App,
        caller: Caller,
    ) -> dto_chat.Accepted:
        """Appends the message and requests an answer; stream it from ``/api/v1/generations/{id}/stream``."""
        sent = await c.chats.send_message(
            command_context(request, caller),
            caller,
            chat_id,
            content=data.content,
            model=data.model,
            params=data.params,
            parent_id=None if data.parent_id is msgspec.UNSET else (data.parent_id or ROOT),
        )
        return accepted(sent)

    @post(
        "/{chat_id:uuid}/messages/{message_id:str}/regenerate",
        operation_id="RegenerateAnswer",
        status_code=HTTP_202_ACCEPTED,
        responses=refusals(503),
    )
    async def regenerate(
        self,
        request: Request[Any, Any, Any],
        chat_id: FromPath[UUID],
        message_id: Annotated[str, PathParameter(max_length=64)],
        data: JSONBody[dto_chat.RegenerateBody],
        c: App,
        caller: Caller,
    ) -> dto_chat.Accepted:
        """A new answer to one of the chat's user messages, as a branch beside the earlier answers."""
        sent = await c.chats.regenerate(
            command_context(request, caller),
            caller,
            chat_id,
            message_id,
            model=data.model,
            params=data.params,
        )
        return accepted(sent)


async def _export(c: Any, caller: Any, chat_id: UUID | None, format: str) -> Response[Any]:
    chats = await get_chats(c.engine, caller.tenant_id, caller.user_id, None if chat_id is None else [chat_id])
    if chat_id is not None and not chats:
        raise NotFound("CHAT_NOT_FOUND", "no such chat")
    paths = await folder_paths(c.engine, caller.tenant_id, caller.user_id)
    items = [exchanged(chat, paths.get(chat["folder_id"]) if chat["folder_id"] else None) for chat in chats]
    now = datetime.now(UTC)
    body = (
        render_parley(items, exported_at=now)
        if format == "parley"
        else render_openwebui(items, user_id=str(caller.user_id))
    )
    name = f"chat-export-{int(now.timestamp() * 1000)}.json"
    return Response(body, headers={"Content-Disposition": f'attachment; filename="{name}"'})
