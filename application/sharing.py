"""Sharing chats: share links to a branch as it stood, the tenant's policy on public links, and copying a
shared branch into one's own chats to continue it. Reading a share is a query (``projections.sharing``).
"""

from __future__ import annotations

import uuid

from application.context import CommandContext
from application.identity import Principal
from application.ports import EventStorePort
from domain.chats import Chat
from domain.errors import Conflict, NotFound
from domain.identity import User
from domain.sharing import Share, SharingPolicy, sharing_policy_id_for

__all__ = ["Shares"]


class Shares:
    def __init__(self, *, store: EventStorePort) -> None:
        self.store = store

    # --- the tenant's policy --------------------------------------------------------------------------------
    def _policy(self, tenant_id: str) -> SharingPolicy | None:
        return self.store.find(SharingPolicy, sharing_policy_id_for(tenant_id))

    async def public_links_allowed(self, principal: Principal) -> bool:
        policy = await self.store.call(self._policy, principal.tenant_id)
        return policy is not None and policy.allow_public_links

    async def set_public_links(self, ctx: CommandContext, principal: Principal, allowed: bool) -> bool:
        """Tenant admin: whether shares may be public (readable by anyone with the link)."""
        principal.require_admin()

        def command() -> bool:
            policy = self._policy(principal.tenant_id) or SharingPolicy(tenant_id=principal.tenant_id)
            policy.set_public_links(allowed)
            self.store.save(policy)
            return policy.allow_public_links

        return await self.store.execute(ctx, command)

    # --- shares ---------------------------------------------------------------------------------------------
    def _own_chat(self, principal: Principal, chat_id: uuid.UUID) -> Chat:
        chat = self.store.find(Chat, chat_id)
        if chat is None or chat.tenant_id != principal.tenant_id:
            raise NotFound("CHAT_NOT_FOUND", "no such chat")
        chat.check_owner(principal.user_id)
        return chat

    async def create(
        self,
        ctx: CommandContext,
        principal: Principal,
        chat_id: uuid.UUID,
        *,
        leaf_message_id: str | None = None,
        public: bool = False,
    ) -> Share:
        """Share the branch of one's chat that ends at ``leaf_message_id`` (default: the chat's newest
        message), under the chat's title as it is now."""

        def command() -> Share:
            chat = self._own_chat(principal, chat_id)
            leaf = leaf_message_id or chat.head
            if leaf is None:
                raise Conflict("CHAT_EMPTY", "a chat without messages cannot be shared")
            chat.check_parent(leaf)
            policy = self._policy(principal.tenant_id)
            (policy or SharingPolicy(tenant_id=principal.tenant_id)).check_may_share(public)
            share = Share(
                tenant_id=principal.tenant_id,
                chat_id=chat.id,
                owner_id=principal.user_id,
                leaf_message_id=leaf,
                title=chat.title,
                public=public,
            )
            self.store.save(share)
            return share

        return await self.store.execute(ctx, command)

    def _share(self, tenant_id: str, share_id: uuid.UUID) -> Share:
        share = self.store.find(Share, share_id)
        if share is None:
            raise NotFound("SHARE_NOT_FOUND", "no such share")
        share.check_visible(tenant_id)
        return share

    async def revoke(self, ctx: CommandContext, principal: Principal, share_id: uuid.UUID) -> None:
        def command() -> None:
            share = self._share(principal.tenant_id, share_id)
            share.revoke(principal.user_id)
            self.store.save(share)

        await self.store.execute(ctx, command)

    async def copy(self, ctx: CommandContext, principal: Principal, share_id: uuid.UUID) -> Chat:
        """A new chat of the caller's holding the shared branch (new message ids, the same tree), to go on
        with. A share whose chat was deleted or whose owner was erased is gone (404)."""

        def command() -> Chat:
            share = self._share(principal.tenant_id, share_id)
            source = self.store.find(Chat, share.chat_id)
            owner = self.store.find(User, share.owner_id)
            if source is None or source.deleted or owner is None or getattr(owner, "erased", False):
                raise NotFound("SHARE_NOT_FOUND", "no such share")
            chat = Chat(tenant_id=principal.tenant_id, owner_id=principal.user_id, title=share.title, source="api")
            parent: str | None = None
            for message in source.branch(share.leaf_message_id):
                message_id = uuid.uuid4().hex
                if message["role"] == "tool":
                    chat.post_tool_result(
                        message_id,
                        parent or "",
                        tool_call_id=message.get("tool_call_id") or "",
                        name=message.get("name"),
                        content=message["content"],
                        latency_ms=None,
                    )
                else:
                    chat.post(
                        message_id,
                        message["role"],
                        message["content"],
                        parent,
                        tool_calls=message.get("tool_calls") or (),
                        images=message.get("images") or (),
                    )
                parent = message_id
            self.store.save(chat)
            return chat

        return await self.store.execute(ctx, command)
