"""Sign-up, sign-in, token refresh and revocation, the caller's own profile, personal API keys."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from api import dto
from api.deps import App, Caller, TenantSlug, check_rate, client_ip, command_context
from api.openapi import refusals
from application.credentials import parse_refresh_token
from application.identity import TokenPair, UserInfo
from projections.identity import get_user_row, list_api_keys


def user_dto(u: UserInfo | dict[str, Any]) -> dto.User:
    if isinstance(u, dict):
        return dto.User(**{k: u[k] for k in ("id", "tenant_id", "email", "name", "role", "active", "created_at")})
    return dto.User(
        id=u.id, tenant_id=u.tenant_id, email=u.email, name=u.name, role=u.role, active=u.active, created_at=u.created_at
    )


def tokens_dto(t: TokenPair) -> dto.Tokens:
    return dto.Tokens(
        access_token=t.access_token, refresh_token=t.refresh_token, token_type=t.token_type, expires_in=t.expires_in
    )


class AuthController(Controller):
    path = "/api/v1/auths"
    tags = ["auth"]

    @post("/register", operation_id="Register", status_code=HTTP_201_CREATED, responses=refusals(403))
    async def register(self, request: Request[Any, Any, Any], data: JSONBody[dto.RegisterBody], c: App, tenant: TenantSlug) -> dto.User:
        t = await c.identity.tenant(tenant)
        user = await c.identity.register(
            command_context(request, tenant_id=str(t.id)),
            tenant=str(t.id),
            email=data.email,
            password=data.password,
            name=data.name,
        )
        return user_dto(user)

    @post("/login", operation_id="Login", status_code=HTTP_200_OK, responses=refusals(401, 403, 429))
    async def login(self, request: Request[Any, Any, Any], data: JSONBody[dto.LoginBody], c: App, tenant: TenantSlug) -> dto.Tokens:
        t = await c.identity.tenant(tenant)
        ip = client_ip(request) or "unknown"
        await check_rate(request.app.state, str(t.id), f"sign-in:{t.id}:{ip}", "sign_in_per_ip_per_minute")
        pair = await c.identity.login(
            command_context(request, tenant_id=str(t.id)), tenant=str(t.id), email=data.email, password=data.password
        )
        return tokens_dto(pair)

    @post("/refresh", operation_id="RefreshTokens", status_code=HTTP_200_OK, responses=refusals(401, 403, 429))
    async def refresh(
        self, request: Request[Any, Any, Any], data: JSONBody[dto.RefreshBody], c: App, tenant: TenantSlug
    ) -> dto.Tokens:
        """Limited per client IP (under the limits of the tenant the request names, as sign-in is) and per
        session (the token names it), before the token is checked."""
        t = await c.identity.tenant(tenant)
        ip = client_ip(request) or "unknown"
        await check_rate(request.app.state, str(t.id), f"refresh:{t.id}:{ip}", "refresh_per_ip_per_minute")
        session = parse_refresh_token(data.refresh_token)
        await check_rate(request.app.state, str(t.id), f"refresh-session:{session}", "refresh_per_session_per_minute")
        return tokens_dto(await c.identity.refresh(command_context(request), data.refresh_token))

    @post("/logout", operation_id="Logout", status_code=HTTP_204_NO_CONTENT)
    async def logout(
        self, request: Request[Any, Any, Any], c: App, caller: Caller, data: JSONBody[dto.LogoutBody | None] = None
    ) -> None:
        everywhere = data.everywhere if data else False
        await c.identity.logout(command_context(request, caller), caller, everywhere=everywhere)

    @get("/me", operation_id="GetMe")
    async def me(self, c: App, caller: Caller) -> dto.User:
        row = await get_user_row(c.engine, caller.tenant_id, str(caller.user_id))
        if row is not None:
            return user_dto(row)
        # Just registered and not projected yet: the event store answers.
        return user_dto(await c.identity.get_user(caller, caller.user_id))

    @post("/password", operation_id="ChangePassword", status_code=HTTP_200_OK)
    async def change_password(
        self, request: Request[Any, Any, Any], data: JSONBody[dto.PasswordBody], c: App, caller: Caller
    ) -> dto.Tokens:
        pair = await c.identity.change_password(
            command_context(request, caller), caller, current=data.current_password, new=data.new_password
        )
        return tokens_dto(pair)

    @get("/api-keys", operation_id="ListApiKeys")
    async def list_keys(self, c: App, caller: Caller) -> list[dto.ApiKey]:
        rows = await list_api_keys(c.engine, caller.tenant_id, str(caller.user_id))
        return [dto.ApiKey(**r) for r in rows]

    @post("/api-keys", operation_id="CreateApiKey", status_code=HTTP_201_CREATED)
    async def create_key(
        self, request: Request[Any, Any, Any], data: JSONBody[dto.ApiKeyCreate], c: App, caller: Caller
    ) -> dto.ApiKeyCreated:
        key = await c.identity.create_api_key(
            command_context(request, caller),
            caller,
            name=data.name,
            scopes=data.scopes,
            expires_in_days=data.expires_in_days,
            role_map=data.role_map,
        )
        return dto.ApiKeyCreated(
            id=key.id,
            name=key.name,
            key=key.key,
            prefix=key.prefix,
            scopes=key.scopes,
            expires_at=key.expires_at,
            role_map=key.role_map or None,
        )

    @patch("/api-keys/{key_id:uuid}", operation_id="UpdateApiKey")
    async def update_key(
        self, request: Request[Any, Any, Any], key_id: FromPath[UUID], data: JSONBody[dto.ApiKeyUpdate], c: App, caller: Caller
    ) -> dict[str, Any]:
        """A tenant admin changes a gateway key's role map (for the end users it creates from now on)."""
        role_map = await c.identity.set_role_map(command_context(request, caller), caller, key_id, data.role_map)
        return {"id": str(key_id), "role_map": role_map}

    @delete("/api-keys/{key_id:uuid}", operation_id="RevokeApiKey", status_code=HTTP_204_NO_CONTENT)
    async def revoke_key(self, request: Request[Any, Any, Any], key_id: FromPath[UUID], c: App, caller: Caller) -> None:
        await c.identity.revoke_api_key(command_context(request, caller), caller, key_id)
