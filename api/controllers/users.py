"""Users of the caller's tenant (tenant admins) and tenants of the platform (platform admins)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api import dto
from api.controllers.auths import user_dto
from api.controllers.invitations import invitation_dto
from api.deps import App, Caller, command_context
from domain.errors import Forbidden
from domain.identity import check_role
from projections.identity import list_tenants, list_users


class UserController(Controller):
    path = "/api/v1/users"
    tags = ["users"]

    @get("/", operation_id="ListUsers")
    async def list(
        self,
        c: App,
        caller: Caller,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
        role: Annotated[str | None, QueryParameter(max_length=20)] = None,
        q: Annotated[str | None, QueryParameter(max_length=100, pattern=dto.NO_CONTROL_CHARS)] = None,
    ) -> dto.UserPage:
        caller.require_admin()
        if role is not None:
            check_role(role)
        items, total = await list_users(c.engine, caller.tenant_id, limit=limit, offset=offset, role=role, q=q)
        return dto.UserPage(items=items, total=total, limit=limit, offset=offset)

    @post("/", operation_id="CreateUser", status_code=HTTP_201_CREATED)
    async def create(self, request: Request[Any, Any, Any], data: JSONBody[dto.UserCreate], c: App, caller: Caller) -> dto.User:
        user = await c.identity.create_user(
            command_context(request, caller), caller, email=data.email, password=data.password, name=data.name, role=data.role
        )
        return user_dto(user)

    @get("/{user_id:uuid}", operation_id="GetUser")
    async def get(self, user_id: FromPath[UUID], c: App, caller: Caller) -> dto.User:
        return user_dto(await c.identity.get_user(caller, user_id))

    @patch("/{user_id:uuid}", operation_id="UpdateUser")
    async def update(
        self, request: Request[Any, Any, Any], user_id: FromPath[UUID], data: JSONBody[dto.UserUpdate], c: App, caller: Caller
    ) -> dto.User:
        def given(v: Any) -> Any:
            return None if v is msgspec.UNSET else v

        user = await c.identity.update_user(
            command_context(request, caller),
            caller,
            user_id,
            name=given(data.name),
            role=given(data.role),
            active=given(data.active),
            password=given(data.password),
        )
        return user_dto(user)


    @delete("/{user_id:uuid}", operation_id="DeleteUser", status_code=HTTP_200_OK)
    async def delete(
        self,
        request: Request[Any, Any, Any],
        user_id: FromPath[UUID],
        c: App,
        caller: Caller,
        erase: Annotated[bool, QueryParameter(description="erase the user's personal data (GDPR art. 17)")] = False,
    ) -> dto.User:
        """Without ``erase`` the account is deactivated (it can be reactivated); with ``erase=true`` the
        user is erased for good: every key sealing their personal data destroyed, their chats, uploads and
        generations purged, their usage kept as numbers under their id."""
        ctx = command_context(request, caller)
        if erase:
            return user_dto(await c.identity.erase_user(ctx, caller, user_id))
        return user_dto(await c.identity.update_user(ctx, caller, user_id, active=False))


class TenantController(Controller):
    path = "/api/v1/tenants"
    tags = ["tenants"]

    @get("/", operation_id="ListTenants")
    async def list(self, c: App, caller: Caller) -> list[dto.Tenant]:
        if not c.identity.is_platform_admin(caller):
            raise Forbidden("PLATFORM_ADMIN_REQUIRED", "only a platform admin can list tenants")
        return [dto.Tenant(**{k: v for k, v in t.items() if k != "created_at"}) for t in await list_tenants(c.engine)]

    @post("/", operation_id="CreateTenant", status_code=HTTP_201_CREATED)
    async def create(self, request: Request[Any, Any, Any], data: JSONBody[dto.TenantCreate], c: App, caller: Caller) -> dto.Tenant:
        t = await c.identity.create_tenant(
            command_context(request, caller),
            caller,
            slug=data.slug,
            name=data.name,
            allow_signup=data.allow_signup,
            default_role=data.default_role,
            domains=data.domains,
        )
        await c.models.ensure_local(str(t.id))
        invitation = None
        if data.admin_email is not None:
            invitation = invitation_dto(
                await c.identity.invite(
                    command_context(request, caller), caller, tenant=t.slug, email=data.admin_email, role="admin"
                )
            )
        return dto.Tenant(
            id=t.id,
            slug=t.slug,
            name=t.name,
            allow_signup=t.allow_signup,
            default_role=t.default_role,
            domains=t.domains,
            invitation=invitation,
        )
