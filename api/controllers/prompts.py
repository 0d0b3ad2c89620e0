"""The prompt library: a user's saved prompts and the tenant's, each with a ``/command``, shared as
knowledge bases are (``PUT /api/v1/prompts/{id}/access/{grantee}``), rendered with their variables."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, delete, get, patch, post, put
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from api import dto_knowledge
from api import dto_workspace as dto
from api.deps import App, Caller, command_context
from application.identity import Principal
from domain.access import Reader, access_level
from domain.prompts import Prompt as PromptAggregate
from domain.prompts import variables_of
from projections.conversations import MAX_PAGE
from projections.prompts import get_prompt, list_prompts

__all__ = ["PromptController"]


def reader_of(caller: Principal) -> Reader:
    return Reader(tenant_id=caller.tenant_id, user_id=caller.user_id, role=caller.role, is_admin=caller.is_admin)


def prompt_dto(p: PromptAggregate | dict[str, Any], caller: Principal) -> dto.Prompt:
    if isinstance(p, dict):
        return dto.Prompt(**{**p, "id": str(p["id"]), "owner_id": str(p["owner_id"])})
    level = access_level(p.owner_id, p.access, reader_of(caller)) or "read"
    return dto.Prompt(
        id=str(p.id),
        owner_id=str(p.owner_id),
        scope=p.scope,
        command=p.command,
        title=p.title,
        content=p.content,
        variables=variables_of(p.content),
        level=level,
        access=dict(p.access) if level == "write" else None,
        created_at=p.created_on,
        updated_at=p.modified_on,
    )


class PromptController(Controller):
    path = "/api/v1/prompts"
    tags = ["prompts"]

    @get("/", operation_id="ListPrompts")
    async def list(
        self,
        c: App,
        caller: Caller,
        command: Annotated[str | None, QueryParameter(max_length=41, pattern=r"^/?[a-zA-Z0-9_-]*$", description="commands starting so")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> dto.PromptPage:
        items, total = await list_prompts(c.engine, reader_of(caller), command=command, limit=limit, offset=offset)
        return dto.PromptPage(items=[prompt_dto(i, caller) for i in items], total=total, limit=limit, offset=offset)

    @post("/", operation_id="CreatePrompt", status_code=HTTP_201_CREATED)
    async def create(self, request: Request[Any, Any, Any], data: JSONBody[dto.PromptCreate], c: App, caller: Caller) -> dto.Prompt:
        caller.require_scope("write")
        prompt = await c.prompts.create(
            command_context(request, caller), caller, command=data.command, title=data.title, content=data.content, scope=data.scope
        )
        return prompt_dto(prompt, caller)

    @get("/{prompt_id:uuid}", operation_id="GetPrompt")
    async def get(self, prompt_id: FromPath[UUID], c: App, caller: Caller) -> dto.Prompt:
        row = await get_prompt(c.engine, reader_of(caller), prompt_id)
        if row is not None:
            return prompt_dto(row, caller)
        return prompt_dto(await c.prompts.get(caller, prompt_id), caller)  # not projected yet, or not theirs

    @patch("/{prompt_id:uuid}", operation_id="UpdatePrompt")
    async def update(
        self, request: Request[Any, Any, Any], prompt_id: FromPath[UUID], data: JSONBody[dto.PromptUpdate], c: App, caller: Caller
    ) -> dto.Prompt:
        caller.require_scope("write")

        def given(v: Any) -> Any:
            return None if v is dto.UNSET else v

        prompt = await c.prompts.update(
            command_context(request, caller),
            caller,
            prompt_id,
            command=given(data.command),
            title=given(data.title),
            content=given(data.content),
        )
        return prompt_dto(prompt, caller)

    @delete("/{prompt_id:uuid}", operation_id="DeletePrompt", status_code=HTTP_204_NO_CONTENT)
    async def remove(self, request: Request[Any, Any, Any], prompt_id: FromPath[UUID], c: App, caller: Caller) -> None:
        caller.require_scope("write")
        await c.prompts.delete(command_context(request, caller), caller, prompt_id)

    @put("/{prompt_id:uuid}/access/{grantee:str}", operation_id="GrantPromptAccess")
    async def grant(
        self,
        request: Request[Any, Any, Any],
        prompt_id: FromPath[UUID],
        grantee: FromPath[str],
        data: JSONBody[dto_knowledge.AccessBody],
        c: App,
        caller: Caller,
    ) -> dto.Prompt:
        caller.require_scope("write")
        prompt = await c.prompts.grant(command_context(request, caller), caller, prompt_id, grantee, data.level)
        return prompt_dto(prompt, caller)

    @delete("/{prompt_id:uuid}/access/{grantee:str}", operation_id="RevokePromptAccess", status_code=HTTP_204_NO_CONTENT)
    async def revoke(
        self, request: Request[Any, Any, Any], prompt_id: FromPath[UUID], grantee: FromPath[str], c: App, caller: Caller
    ) -> None:
        caller.require_scope("write")
        await c.prompts.revoke(command_context(request, caller), caller, prompt_id, grantee)

    @post("/{prompt_id:uuid}/render", operation_id="RenderPrompt", status_code=200)
    async def render(
        self, prompt_id: FromPath[UUID], c: App, caller: Caller, data: JSONBody[dto.PromptRender | None] = None
    ) -> dto.Rendered:
        """The prompt's text with each ``{{name}}`` filled from ``variables``; 422 ``MISSING_VARIABLES``
        (``detail.missing``) names those without a value."""
        prompt, text = await c.prompts.render(caller, prompt_id, data.variables if data is not None else {})
        return dto.Rendered(prompt_id=str(prompt.id), command=prompt.command, text=text)
