"""OpenID Connect per tenant: providers (tenant admins register, change and remove them; the client secret is
never returned) and sign-in (the authorization-code flow with PKCE, ending with parley's own tokens, as a
password sign-in does).

A browser starts at ``GET /api/v1/auth/oidc/{tenant}/{provider}/login`` (redirected to the provider) and
comes back to ``.../callback``, which answers the token pair. Register ``.../callback`` at the provider as
the redirect URI, with this deployment's public address.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT, HTTP_302_FOUND
from msgspec import UNSET, Meta, UnsetType

from api import dto
from api.controllers.auths import tokens_dto
from api.deps import App, Caller, check_rate, client_ip, command_context
from api.openapi import refusals
from application.oidc import OidcProvider, provider_settings

__all__ = ["OidcProviderController", "OidcSignInController"]

Slug = Annotated[str, Meta(min_length=1, max_length=40, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")]
Short = Annotated[str, Meta(min_length=1, max_length=255)]
Domains = Annotated[list[Annotated[str, Meta(max_length=253)]], Meta(max_length=64)]
Scopes = Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(min_length=1, max_length=16)]
RoleMap = Annotated[dict[Annotated[str, Meta(max_length=200)], str], Meta(max_length=64)]


class OidcProviderCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    slug: Slug
    """The provider's name in sign-in URLs (``/api/v1/auth/oidc/{tenant}/{slug}/login``)."""
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    issuer: Annotated[str, Meta(min_length=1, max_length=500)]
    """The issuer URL; ``{issuer}/.well-known/openid-configuration`` is read from it."""
    client_id: Short
    client_secret: Annotated[str, Meta(min_length=1, max_length=1024)]
    """Stored encrypted; never returned."""
    scopes: Scopes = msgspec.field(default_factory=lambda: ["openid", "email", "profile"])
    allowed_domains: Domains = []
    """E-mail domains that may sign in; empty: any."""
    role_claim: Short | None = None
    """The ID-token claim (a string or a list of strings, ``groups``) the role map reads."""
    role_map: RoleMap = {}
    """Claim value -> parley role, applied at every sign-in; the most privileged match wins."""
    create_users: bool = True
    """Whether a first sign-in creates an unknown user; false: only existing accounts (linked by verified
    e-mail) sign in."""
    default_role: str = "user"
    """The role of a created user whose claims map to none."""
    enabled: bool = True


class OidcProviderUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=100)] | UnsetType = UNSET
    issuer: Annotated[str, Meta(min_length=1, max_length=500)] | UnsetType = UNSET
    client_id: Short | UnsetType = UNSET
    client_secret: Annotated[str, Meta(min_length=1, max_length=1024)] | UnsetType = UNSET
    scopes: Scopes | UnsetType = UNSET
    allowed_domains: Domains | UnsetType = UNSET
    role_claim: Short | None | UnsetType = UNSET
    role_map: RoleMap | UnsetType = UNSET
    create_users: bool | UnsetType = UNSET
    default_role: str | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET


class OidcProviderOut(msgspec.Struct, kw_only=True):
    id: UUID
    slug: str
    name: str
    issuer: str
    client_id: str
    scopes: list[str]
    allowed_domains: list[str]
    role_claim: str | None
    role_map: dict[str, str]
    create_users: bool
    default_role: str
    enabled: bool
    has_client_secret: bool
    login_path: str


def _out(p: OidcProvider, tenant_slug: str) -> OidcProviderOut:
    return OidcProviderOut(
        **{f: getattr(p, f) for f in OidcProviderOut.__struct_fields__ if f != "login_path"},
        login_path=f"/api/v1/auth/oidc/{tenant_slug}/{p.slug}/login",
    )


class OidcProviderController(Controller):
    path = "/api/v1/auth/providers"
    tags = ["auth"]

    async def _slug(self, c: App, caller: Caller) -> str:
        return (await c.identity.tenant(caller.tenant_id)).slug

    @get("/", operation_id="ListOidcProviders", responses=refusals(403))
    async def list_providers(self, c: App, caller: Caller) -> list[OidcProviderOut]:
        slug = await self._slug(c, caller)
        return [_out(p, slug) for p in await c.oidc.list_providers(caller)]

    @post("/", operation_id="CreateOidcProvider", status_code=HTTP_201_CREATED, responses=refusals(403, 409))
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[OidcProviderCreate], c: App, caller: Caller
    ) -> OidcProviderOut:
        settings = provider_settings(
            name=data.name,
            issuer=data.issuer,
            client_id=data.client_id,
            scopes=data.scopes,
            allowed_domains=data.allowed_domains,
            role_claim=data.role_claim,
            role_map=data.role_map,
            create_users=data.create_users,
            default_role=data.default_role,
            enabled=data.enabled,
        )
        provider = await c.oidc.register(
            command_context(request, caller),
            caller,
            slug=data.slug,
            settings=settings,
            client_secret=data.client_secret,
        )
        return _out(provider, await self._slug(c, caller))

    @get("/{provider_id:uuid}", operation_id="GetOidcProvider", responses=refusals(403, 404))
    async def get_provider(self, c: App, caller: Caller, provider_id: FromPath[UUID]) -> OidcProviderOut:
        return _out(await c.oidc.get(caller, provider_id), await self._slug(c, caller))

    @patch(
        "/{provider_id:uuid}", operation_id="UpdateOidcProvider", status_code=HTTP_200_OK, responses=refusals(403, 404)
    )
    async def update(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[OidcProviderUpdate],
        c: App,
        caller: Caller,
        provider_id: FromPath[UUID],
    ) -> OidcProviderOut:
        changes = {
            f: getattr(data, f)
            for f in data.__struct_fields__
            if f != "client_secret" and getattr(data, f) is not UNSET
        }
        secret = data.client_secret if isinstance(data.client_secret, str) else None
        provider = await c.oidc.change(
            command_context(request, caller), caller, provider_id, changes=changes, client_secret=secret
        )
        return _out(provider, await self._slug(c, caller))

    @delete(
        "/{provider_id:uuid}",
        operation_id="DeleteOidcProvider",
        status_code=HTTP_204_NO_CONTENT,
        responses=refusals(403, 404),
    )
    async def remove(
        self, request: Request[Any, Any, Any], c: App, caller: Caller, provider_id: FromPath[UUID]
    ) -> None:
        await c.oidc.remove(command_context(request, caller), caller, provider_id)


def _callback_url(request: Request[Any, Any, Any], tenant_slug: FromPath[str], provider: FromPath[str]) -> str:
    return f"{str(request.base_url).rstrip('/')}/api/v1/auth/oidc/{tenant_slug}/{provider}/callback"


class OidcSignInController(Controller):
    path = "/api/v1/auth/oidc/{tenant_slug:str}/{provider:str}"
    tags = ["auth"]

    @get("/login", operation_id="StartOidcSignIn", status_code=HTTP_302_FOUND, responses=refusals(403, 404, 429, 503))
    async def login(
        self, request: Request[Any, Any, Any], c: App, tenant_slug: FromPath[str], provider: FromPath[str]
    ) -> Response[None]:
        """Redirects the browser to the provider to sign in (a fresh state, nonce and PKCE verifier)."""
        t = await c.identity.tenant(tenant_slug)
        ip = client_ip(request) or "unknown"
        await check_rate(request.app.state, str(t.id), f"sign-in:{t.id}:{ip}", "sign_in_per_ip_per_minute")
        url = await c.oidc.begin(str(t.id), provider, redirect_uri=_callback_url(request, tenant_slug, provider))
        return Response(None, status_code=HTTP_302_FOUND, headers={"Location": url, "Cache-Control": "no-store"})

    @get("/callback", operation_id="CompleteOidcSignIn", responses=refusals(401, 403, 404, 429, 503))
    async def callback(
        self,
        request: Request[Any, Any, Any],
        c: App,
        tenant_slug: FromPath[str],
        provider: FromPath[str],
        oidc_state: Annotated[str | None, QueryParameter(query="state", max_length=200)] = None,
        code: Annotated[str | None, QueryParameter(max_length=2048)] = None,
        error: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> dto.Tokens:
        """Where the provider sends the browser back: parley's access and refresh tokens, as after a password
        sign-in; refusals carry an ``OIDC_*`` code and are in the tenant's audit log."""
        t = await c.identity.tenant(tenant_slug)
        ip = client_ip(request) or "unknown"
        await check_rate(request.app.state, str(t.id), f"sign-in:{t.id}:{ip}", "sign_in_per_ip_per_minute")
        pair = await c.oidc.complete(
            command_context(request, tenant_id=str(t.id)), str(t.id), provider, state=oidc_state, code=code, error=error
        )
        return tokens_dto(pair)
