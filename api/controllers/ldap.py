"""LDAP per tenant: a tenant admin's settings (``/api/v1/auth/ldap``; the service account's password goes in,
never out) and sign-in by directory login and password (``POST /api/v1/auths/ldap``, answering the same
tokens as ``POST /api/v1/auths/login``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post, put
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK
from msgspec import Meta

from api import dto
from api.controllers.auths import tokens_dto
from api.deps import App, Caller, TenantSlug, check_rate, client_ip, command_context
from api.openapi import refusals
from application.ldap import LdapConfig

Text = Annotated[str, Meta(max_length=1024)]


class LdapSettingsBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """All of a tenant's LDAP settings. ``bind_password`` is required the first time; left out later, the one
    stored stays. ``{login}`` in ``user_filter`` is the login as typed, escaped (RFC 4515)."""

    url: Annotated[str, Meta(max_length=300, description="ldap://host[:port] or ldaps://host[:port]")]
    bind_dn: Text
    bind_password: Annotated[str, Meta(min_length=1, max_length=1024)] | None = None
    search_base: Text
    user_filter: Annotated[str, Meta(max_length=512)] = "(uid={login})"
    disabled_filter: Annotated[str, Meta(max_length=512)] = ""
    start_tls: bool = False
    verify_tls: bool = True
    tls_ca_pem: Annotated[str, Meta(max_length=65536, description="PEM CA certificates to trust; empty: the system's")] = ""
    email_attribute: Annotated[str, Meta(max_length=64)] = "mail"
    name_attribute: Annotated[str, Meta(max_length=64)] = "cn"
    group_base: Text = ""
    group_roles: dict[Text, Annotated[str, Meta(max_length=20)]] = {}
    default_role: Annotated[str, Meta(max_length=20)] | None = None
    create_users: bool = True
    link_password_accounts: Annotated[
        bool,
        Meta(
            description="Whether a directory sign-in may link an account here that signs in with a password (the "
            "directory's e-mail decides who it is: allow only where users cannot edit their own mail)"
        ),
    ] = False
    enabled: bool = True
    timeout_s: Annotated[float, Meta(gt=0, le=30)] = 5.0


class LdapSettings(msgspec.Struct, kw_only=True):
    url: str
    start_tls: bool
    verify_tls: bool
    tls_ca_pem: str
    bind_dn: str
    has_bind_password: bool
    search_base: str
    user_filter: str
    disabled_filter: str
    email_attribute: str
    name_attribute: str
    group_base: str
    group_roles: dict[str, str]
    default_role: str | None
    create_users: bool
    enabled: bool
    timeout_s: float
    link_password_accounts: bool = False


class LdapLoginBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    login: Annotated[str, Meta(min_length=1, max_length=256, description="The directory login ({login} in the filter).")]
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


def _view(config: LdapConfig) -> LdapSettings:
    return LdapSettings(has_bind_password=config.has_bind_password, **config.settings)


class LdapSettingsController(Controller):
    path = "/api/v1/auth/ldap"
    tags = ["auth"]

    @get("", operation_id="GetLdapSettings", responses=refusals(403, 404))
    async def get_settings(self, c: App, caller: Caller) -> LdapSettings:
        return _view(await c.ldap.get(caller))

    @put("", operation_id="SetLdapSettings", status_code=HTTP_200_OK, responses=refusals(403, 422))
    async def set_settings(
        self, request: Request[Any, Any, Any], data: JSONBody[LdapSettingsBody], c: App, caller: Caller
    ) -> LdapSettings:
        raw = msgspec.structs.asdict(data)
        if raw["bind_password"] is None:
            del raw["bind_password"]
        return _view(await c.ldap.configure(command_context(request, caller), caller, raw))


class LdapSignInController(Controller):
    path = "/api/v1/auths/ldap"
    tags = ["auth"]

    @post("", operation_id="LoginLdap", status_code=HTTP_200_OK, responses=refusals(401, 403, 404, 429, 503))
    async def login(
        self, request: Request[Any, Any, Any], data: JSONBody[LdapLoginBody], c: App, tenant: TenantSlug
    ) -> dto.Tokens:
        """Sign in with the tenant's LDAP directory: 401 ``INVALID_CREDENTIALS`` for an unknown login or a wrong
        password, 403 ``LDAP_ACCOUNT_LOCKED`` for a locked or disabled entry, 503 ``LDAP_UNAVAILABLE`` when the
        directory cannot be reached (never a fallback to a local password). Limited per client IP as
        password sign-in is (the same budget)."""
        t = await c.identity.tenant(tenant)
        ip = client_ip(request) or "unknown"
        await check_rate(request.app.state, str(t.id), f"sign-in:{t.id}:{ip}", "sign_in_per_ip_per_minute")
        pair = await c.ldap.sign_in(
            command_context(request, tenant_id=str(t.id)), tenant=str(t.id), login=data.login, password=data.password
        )
        return tokens_dto(pair)
