"""Shared chats: share links to a branch of one's chat as it stood (made, listed and revoked by the chat's
owner), the read-only snapshot behind a link, copying it into one's own chats, and the tenant's policy on
public links (tenant admin). A share that is revoked, whose chat was deleted or whose owner was erased, or
that belongs to another tenant, is 404 for everyone."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from api import dto_chat
from api.controllers.chats import chat_dto
from api.deps import App, Caller, TenantSlug, command_context
from application.identity import Principal
from application.sharing import Shares
from domain.errors import NotFound
from domain.identity import tenant_id_for
from domain.sharing import Share as ShareAggregate
from projections.sharing import get_share, list_shares, shared_branch
from workers.bootstrap import Container

__all__ = ["ChatSharesController", "SharedController", "SharingSettingsController"]

MaybeCaller = NamedDependency[Principal | None]


def shares_service(c: Container) -> Shares:
    return Shares(store=c.store)


class ShareCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    leaf_message_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    """The last message of the shared branch; absent: the chat's newest message."""
    public: bool = False
    """Readable by anyone with the link, signed in or not (only where the tenant allows public links)."""


class Share(msgspec.Struct, kw_only=True):
    id: str
    chat_id: str
    leaf_message_id: str
    title: str
    public: bool
    url: str
    """The link's path: ``/api/v1/shared/{id}``."""
    created_at: datetime | None = None


class SharedMessage(msgspec.Struct, kw_only=True):
    id: str
    parent_id: str | None
    role: str
    content: str
    model: str | None = None
    status: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    images: list[dict[str, Any]] | None = None
    created_at: datetime | None = None


class SharedChat(msgspec.Struct, kw_only=True):
    """The shared branch, first message first, as it stood when shared."""

    id: str
    title: str
    public: bool
    shared_at: datetime
    messages: list[SharedMessage]


class SharingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    allow_public_links: bool
    """Whether shares may be public (readable without signing in); off unless a tenant admin allows it.
    Turning it off makes existing public shares readable by the tenant's signed-in users only."""


def _share_dto(row: ShareAggregate | dict[str, Any]) -> Share:
    if isinstance(row, dict):
        share_id, chat_id, leaf, title, public = (
            row["share_id"], row["chat_id"], row["leaf_message_id"], row["title"], row["public"],
        )  # fmt: skip
        created_at = row["created_at"]
    else:
        share_id, chat_id, leaf, title, public = row.id, row.chat_id, row.leaf_message_id, row.title, row.public
        created_at = row.created_on
    return Share(
        id=str(share_id),
        chat_id=str(chat_id),
        leaf_message_id=leaf,
        title=title,
        public=public,
        url=f"/api/v1/shared/{share_id}",
        created_at=created_at,
    )


class ChatSharesController(Controller):
    path = "/api/v1/chats/{chat_id:uuid}/shares"
    tags = ["sharing"]

    @post("/", operation_id="CreateShare", status_code=HTTP_201_CREATED)
    async def create(
        self,
        request: Request[Any, Any, Any],
        chat_id: FromPath[UUID],
        c: App,
        caller: Caller,
        data: JSONBody[ShareCreate | None] = None,
    ) -> Share:
        """Share the branch of the chat that ends at ``leaf_message_id`` (default: its newest message) as it
        stands now: what the chat does later does not change the share."""
        body = data or ShareCreate()
        share = await shares_service(c).create(
            command_context(request, caller), caller, chat_id, leaf_message_id=body.leaf_message_id, public=body.public
        )
        return _share_dto(share)

    @get("/", operation_id="ListShares")
    async def list(self, chat_id: FromPath[UUID], c: App, caller: Caller) -> list[Share]:
        """The caller's live shares of their chat, newest first."""
        await c.chats.get(caller, chat_id)  # the caller's chat, or 404
        rows = await list_shares(c.engine, caller.tenant_id, str(caller.user_id), str(chat_id))
        return [_share_dto(r) for r in rows]


class SharedController(Controller):
    path = "/api/v1/shared"
    tags = ["sharing"]

    @get("/{share_id:uuid}", operation_id="GetSharedChat")
    async def read(
        self, share_id: FromPath[UUID], c: App, maybe_caller: MaybeCaller, tenant: TenantSlug
    ) -> SharedChat:
        """The shared branch. Signed-in users of the share's tenant read any of its shares; anyone at all
        (no credential; the tenant is the request's host or ``X-Tenant``) reads a public one while the
        tenant allows public links."""
        row = await get_share(c.engine, str(share_id))
        if row is None:
            raise NotFound("SHARE_NOT_FOUND", "no such share")
        if maybe_caller is not None:
            visible = maybe_caller.tenant_id == row["tenant_id"]
        else:
            visible = row["public"] and row["allow_public_links"] and str(tenant_id_for(tenant)) == row["tenant_id"]
        if not visible:
            raise NotFound("SHARE_NOT_FOUND", "no such share")
        branch = await shared_branch(c.engine, row["chat_id"], row["leaf_message_id"])
        if not branch:  # the chat went in the meantime (deleted, its owner erased)
            raise NotFound("SHARE_NOT_FOUND", "no such share")
        return SharedChat(
            id=str(row["share_id"]),
            title=row["title"],
            public=row["public"],
            shared_at=row["created_at"],
            messages=[SharedMessage(id=m.pop("message_id"), **m) for m in branch],
        )

    @delete("/{share_id:uuid}", operation_id="RevokeShare", status_code=HTTP_204_NO_CONTENT)
    async def revoke(self, request: Request[Any, Any, Any], share_id: FromPath[UUID], c: App, caller: Caller) -> None:
        """The share's owner ends it: 404 for everyone from then on."""
        await shares_service(c).revoke(command_context(request, caller), caller, share_id)

    @post("/{share_id:uuid}/copy", operation_id="CopySharedChat", status_code=HTTP_201_CREATED)
    async def copy(
        self, request: Request[Any, Any, Any], share_id: FromPath[UUID], c: App, caller: Caller
    ) -> dto_chat.Chat:
        """A new chat of the caller's with the shared branch's messages and tree, to continue."""
        chat = await shares_service(c).copy(command_context(request, caller), caller, share_id)
        return chat_dto(chat)


class SharingSettingsController(Controller):
    path = "/api/v1/sharing/settings"
    tags = ["sharing"]

    @get("/", operation_id="GetSharingSettings")
    async def read(self, c: App, caller: Caller) -> SharingSettings:
        return SharingSettings(allow_public_links=await shares_service(c).public_links_allowed(caller))

    @put("/", operation_id="SetSharingSettings")
    async def write(
        self, request: Request[Any, Any, Any], data: JSONBody[SharingSettings], c: App, caller: Caller
    ) -> SharingSettings:
        """Tenant admin."""
        allowed = await shares_service(c).set_public_links(
            command_context(request, caller), caller, data.allow_public_links
        )
        return SharingSettings(allow_public_links=allowed)
