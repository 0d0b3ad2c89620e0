"""Request and response bodies (msgspec Structs). Unknown fields are rejected; every string is bounded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

__all__ = [
    "RegisterBody",
    "LoginBody",
    "RefreshBody",
    "LogoutBody",
    "PasswordBody",
    "ApiKeyCreate",
    "UserCreate",
    "UserUpdate",
    "TenantCreate",
    "User",
    "Tokens",
    "ApiKey",
    "ApiKeyCreated",
    "Tenant",
    "UserPage",
    "AuditEntry",
    "AuditPage",
]

NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"
"""For free-text query parameters: Postgres text cannot hold NUL, and no filter needs a control character."""

Email = Annotated[str, Meta(min_length=3, max_length=254)]
Password = Annotated[str, Meta(min_length=1, max_length=256)]
Name = Annotated[str, Meta(min_length=1, max_length=100)]
Role = Annotated[str, Meta(max_length=20)]
Slug = Annotated[str, Meta(min_length=1, max_length=40)]
Domain = Annotated[str, Meta(min_length=1, max_length=253)]
Token = Annotated[str, Meta(min_length=1, max_length=512)]


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RegisterBody(_Body):
    email: Email
    password: Password
    name: Name


class LoginBody(_Body):
    email: Email
    password: Password


class RefreshBody(_Body):
    refresh_token: Token


class LogoutBody(_Body):
    everywhere: bool = False


class PasswordBody(_Body):
    current_password: Password
    new_password: Password


RoleMap = Annotated[dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=20)]], Meta(max_length=32)]


class ApiKeyCreate(_Body):
    """``gateway`` in ``scopes`` (tenant admins only): the key of an application in front of parley that
    names each request's end user (``X-OpenWebUI-User-*`` or ``X-Parley-User-*`` headers); ``role_map``
    turns the role it forwards into the parley role of end users it creates (else the tenant's default)."""

    name: Name
    scopes: Annotated[list[Annotated[str, Meta(max_length=20)]], Meta(max_length=4)] = msgspec.field(
        default_factory=lambda: ["read", "write"]
    )
    expires_in_days: int | None = None
    role_map: RoleMap | None = None


class ApiKeyUpdate(_Body):
    role_map: RoleMap


class UserCreate(_Body):
    email: Email
    password: Password
    name: Name
    role: Role = "user"


class UserUpdate(_Body):
    name: Name | UnsetType = UNSET
    role: Role | UnsetType = UNSET
    active: bool | UnsetType = UNSET
    password: Password | UnsetType = UNSET


class TenantCreate(_Body):
    """``admin_email``: the tenant's first admin, invited (the invitation's token is in the answer, once).
    Without it, invite them later (``POST /api/v1/tenants/{slug}/invitations``): nobody can sign up into a
    tenant that has no admin yet."""

    slug: Slug
    name: Name
    allow_signup: bool = True
    default_role: Role = "user"
    domains: Annotated[list[Domain], Meta(max_length=20)] = []
    admin_email: Email | None = None


class InvitationCreate(_Body):
    email: Email
    role: Role = "user"
    expires_in_days: Annotated[int, Meta(ge=1, le=30)] = 7


class InvitationCreated(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: str
    email: str
    role: str
    token: str
    """Shown once: the invitee accepts with it (``POST /api/v1/auths/invitations/accept``)."""
    expires_at: datetime


class InvitationAccept(_Body):
    token: Annotated[str, Meta(min_length=1, max_length=200)]
    name: Name
    password: Password


class User(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: str
    email: str
    name: str
    role: str
    active: bool
    created_at: datetime


class Tokens(msgspec.Struct, kw_only=True):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class ApiKey(msgspec.Struct, kw_only=True):
    id: UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    role_map: dict[str, str] | None = None


class ApiKeyCreated(msgspec.Struct, kw_only=True):
    id: UUID
    name: str
    key: str
    prefix: str
    scopes: list[str]
    expires_at: datetime | None = None
    role_map: dict[str, str] | None = None


class Tenant(msgspec.Struct, kw_only=True):
    id: UUID
    slug: str
    name: str
    allow_signup: bool
    default_role: str
    domains: list[str]
    user_count: int | None = None
    invitation: InvitationCreated | None = None
    """The first admin's invitation, when the tenant was created with ``admin_email``."""


class UserPage(msgspec.Struct, kw_only=True):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


class AuditEntry(msgspec.Struct, kw_only=True):
    seq: int
    occurred_at: datetime
    actor: str
    via: str | None = None
    action: str
    target_type: str
    target_id: str
    ip: str | None = None
    user_agent: str | None = None
    correlation_id: str
    detail: dict[str, Any]
    event_id: UUID
    hash: str


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[dict[str, Any]]
    next_before: int | None = None


def aware(t: datetime | None) -> datetime | None:
    """A query's or body's time as UTC when it came without a zone."""
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t
