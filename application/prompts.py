"""The prompt library: saved prompts with a ``/command``, shared as knowledge bases are, rendered with
their ``{{variables}}`` filled. A user's commands are unique among their own prompts; the tenant's (made
by admins, read by all) among the tenant's."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from application.context import CommandContext
from application.identity import Principal, check_user_of_tenant
from application.ports import EventStorePort
from domain.errors import Forbidden, Invalid, NotFound
from domain.prompts import (
    PROMPT_SCOPES,
    Prompt,
    PromptCommand,
    check_command,
    check_content,
    check_title,
    command_id_for,
    render,
)

__all__ = ["Prompts"]


class Prompts:
    def __init__(self, *, store: EventStorePort) -> None:
        self.store = store

    def _prompt(self, principal: Principal, prompt_id: uuid.UUID) -> Prompt:
        prompt = self.store.find(Prompt, prompt_id)
        if prompt is None or prompt.tenant_id != principal.tenant_id:
            raise NotFound(*Prompt.NOT_FOUND)
        prompt.check_readable(principal.user_id, principal.role, is_admin=principal.is_admin)
        return prompt

    def _claim(self, tenant_id: str, owner: str, command: str, prompt_id: uuid.UUID) -> PromptCommand:
        index = self.store.find(PromptCommand, command_id_for(tenant_id, owner, command))
        if index is None:
            return PromptCommand(tenant_id=tenant_id, owner=owner, command=command, prompt_id=prompt_id)
        index.claim(prompt_id)
        return index

    async def get(self, principal: Principal, prompt_id: uuid.UUID) -> Prompt:
        return await self.store.call(self._prompt, principal, prompt_id)

    async def create(
        self, ctx: CommandContext, principal: Principal, *, command: str, title: str, content: str, scope: str = "user"
    ) -> Prompt:
        if principal.role in ("guest", "pending"):
            raise Forbidden("ROLE_CANNOT_CREATE", f"a {principal.role} account cannot save prompts")
        if scope not in PROMPT_SCOPES:
            raise Invalid("INVALID_SCOPE", "scope is 'user' or 'tenant'", field="scope")
        if scope == "tenant":
            principal.require_admin()
        command, title, content = check_command(command), check_title(title), check_content(content)

        def create() -> Prompt:
            prompt = Prompt(
                tenant_id=principal.tenant_id,
                owner_id=principal.user_id,
                scope=scope,
                command=command,
                title=title,
                content=content,
                subject_id=principal.user_id if scope == "user" else None,
            )
            index = self._claim(principal.tenant_id, prompt.command_owner, command, prompt.id)
            self.store.save(prompt, index)
            return prompt

        return await self.store.execute(ctx, create)

    async def _change(
        self, ctx: CommandContext, principal: Principal, prompt_id: uuid.UUID, change: Callable[[Prompt], Sequence[Any] | None], *, manage: bool
    ) -> Prompt:
        """One change by someone who may write the prompt (``manage``: its owner or an admin), saved in one
        transaction with the aggregates ``change`` returns (its command's index)."""

        def command() -> Prompt:
            prompt = self._prompt(principal, prompt_id)
            check = prompt.check_manageable if manage else prompt.check_writable
            check(principal.user_id, principal.role, is_admin=principal.is_admin)
            others = change(prompt) or ()
            self.store.save(prompt, *others)
            return prompt

        return await self.store.execute(ctx, command)

    async def update(
        self,
        ctx: CommandContext,
        principal: Principal,
        prompt_id: uuid.UUID,
        *,
        command: str | None = None,
        title: str | None = None,
        content: str | None = None,
    ) -> Prompt:
        def change(prompt: Prompt) -> list[PromptCommand]:
            before = prompt.command
            prompt.update(command=command, title=title, content=content)
            if prompt.command == before:
                return []
            owner = prompt.command_owner  # the new command claimed, the old one freed, with the prompt's change
            old = self.store.get(PromptCommand, command_id_for(prompt.tenant_id, owner, before))
            old.release(prompt.id)
            return [old, self._claim(prompt.tenant_id, owner, prompt.command, prompt.id)]

        return await self._change(ctx, principal, prompt_id, change, manage=False)

    async def grant(self, ctx: CommandContext, principal: Principal, prompt_id: uuid.UUID, grantee: str, level: str) -> Prompt:
        def change(prompt: Prompt) -> None:
            if grantee.startswith("user:"):
                check_user_of_tenant(self.store, principal.tenant_id, grantee.removeprefix("user:"))
            prompt.grant(grantee, level)
            return None

        return await self._change(ctx, principal, prompt_id, change, manage=True)

    async def revoke(self, ctx: CommandContext, principal: Principal, prompt_id: uuid.UUID, grantee: str) -> Prompt:
        return await self._change(ctx, principal, prompt_id, lambda p: p.revoke(grantee), manage=True)

    async def delete(self, ctx: CommandContext, principal: Principal, prompt_id: uuid.UUID) -> None:
        def change(prompt: Prompt) -> list[PromptCommand]:
            prompt.delete()
            index = self.store.get(PromptCommand, command_id_for(prompt.tenant_id, prompt.command_owner, prompt.command))
            index.release(prompt.id)
            return [index]

        await self._change(ctx, principal, prompt_id, change, manage=True)

    async def render(self, principal: Principal, prompt_id: uuid.UUID, variables: dict[str, str]) -> tuple[Prompt, str]:
        """The prompt's content with its variables filled (422 ``MISSING_VARIABLES`` names those not given)."""
        prompt = await self.get(principal, prompt_id)
        return prompt, render(prompt.content, variables)
