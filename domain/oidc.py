"""OpenID Connect sign-in per tenant: the providers a tenant admin registers, and the pure rules of their
configuration and of mapping an ID token's claims to a role.

One ``OidcDirectory`` per tenant (deterministic id) holds the tenant's providers, so that listing them and
keeping their slugs unique needs no read model. Client secrets arrive sealed (``client_secret_encrypted``):
the application layer encrypts them, as it does provider API keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Invalid, NotFound
from domain.identity import ROLES, check_domain, check_role

__all__ = [
    "OidcDirectory",
    "OidcProviderSettings",
    "check_provider_settings",
    "map_role",
    "oidc_directory_id",
]

MAX_PROVIDERS = 32
MAX_SCOPES = 16
MAX_DOMAINS = 64
MAX_ROLE_MAP = 64
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,64}$")  # RFC 6749 scope-token
_CLAIM = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
ROLE_PRECEDENCE = ("admin", "auditor", "premium", "user", "guest", "pending")
"""Where a user's claim values map to several roles, the first of these wins."""
assert set(ROLE_PRECEDENCE) == set(ROLES)


def oidc_directory_id(tenant_id: UUID | str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/oidc")


@dataclass(frozen=True)
class OidcProviderSettings:
    """What a tenant admin says of a provider (the secret apart)."""

    name: str
    issuer: str
    client_id: str
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    allowed_domains: tuple[str, ...] = ()
    role_claim: str | None = None
    role_map: Mapping[str, str] | None = None
    create_users: bool = True
    default_role: str = "user"
    enabled: bool = True


def check_provider_settings(s: OidcProviderSettings) -> OidcProviderSettings:
    """The settings, normalised, or ``Invalid`` naming the field."""
    name = s.name.strip()
    if not 1 <= len(name) <= 100 or any(ord(c) < 32 for c in name):
        raise Invalid("INVALID_NAME", "a provider's name is 1 to 100 printable characters", field="name")
    issuer = s.issuer.strip().rstrip("/")
    if not re.match(r"^https?://[^\s/?#@]+(/[^\s?#]*)?$", issuer) or len(issuer) > 500:
        raise Invalid("INVALID_ISSUER", "the issuer is an http(s) URL without query or fragment", field="issuer")
    client_id = s.client_id.strip()
    if not 1 <= len(client_id) <= 255 or any(ord(c) < 33 for c in client_id):
        raise Invalid("INVALID_CLIENT_ID", "the client id is 1 to 255 visible characters", field="client_id")
    scopes = tuple(dict.fromkeys(s.scopes))
    if "openid" not in scopes or len(scopes) > MAX_SCOPES or not all(_SCOPE.match(x) for x in scopes):
        raise Invalid("INVALID_SCOPES", f"scopes include 'openid', at most {MAX_SCOPES} scope tokens", field="scopes")
    if len(s.allowed_domains) > MAX_DOMAINS:
        raise Invalid("INVALID_DOMAIN", f"at most {MAX_DOMAINS} allowed domains", field="allowed_domains")
    domains = tuple(dict.fromkeys(check_domain(d) for d in s.allowed_domains))
    role_claim = s.role_claim.strip() if s.role_claim else None
    if role_claim is not None and not _CLAIM.match(role_claim):
        raise Invalid("INVALID_CLAIM", "the role claim is a claim name", field="role_claim")
    role_map = dict(s.role_map or {})
    if len(role_map) > MAX_ROLE_MAP or any(not 1 <= len(k) <= 200 for k in role_map):
        raise Invalid(
            "INVALID_ROLE_MAP", f"at most {MAX_ROLE_MAP} claim values of 1 to 200 characters", field="role_map"
        )
    for role in role_map.values():
        check_role(role)
    if role_map and role_claim is None:
        raise Invalid("INVALID_ROLE_MAP", "a role map needs the claim it reads (role_claim)", field="role_claim")
    check_role(s.default_role)
    if s.default_role in ("admin", "auditor"):
        raise Invalid(
            "INVALID_ROLE", "users created on sign-in cannot default to admin or auditor", field="default_role"
        )
    return OidcProviderSettings(
        name=name,
        issuer=issuer,
        client_id=client_id,
        scopes=scopes,
        allowed_domains=domains,
        role_claim=role_claim,
        role_map=role_map,
        create_users=s.create_users,
        default_role=s.default_role,
        enabled=s.enabled,
    )


def map_role(claims: Mapping[str, Any], role_claim: str | None, role_map: Mapping[str, str]) -> str | None:
    """The role the ID token's ``role_claim`` (a string or a list of strings) maps to; None where no value
    maps. Where several map, the most privileged (``ROLE_PRECEDENCE``) wins."""
    if not role_claim or not role_map:
        return None
    value = claims.get(role_claim)
    values: Iterable[Any] = value if isinstance(value, list) else [value]
    mapped = {role_map[v] for v in values if isinstance(v, str) and v in role_map}
    return next((r for r in ROLE_PRECEDENCE if r in mapped), None)


class OidcDirectory(Aggregate):
    """A tenant's OpenID Connect providers, by id; each a plain dict of its settings."""

    @staticmethod
    def create_id(tenant_id: str, **_: Any) -> UUID:
        return oidc_directory_id(tenant_id)

    @event("OidcDirectoryOpened")
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.providers: dict[str, dict[str, Any]] = {}

    @staticmethod
    def provider_not_found() -> NoReturn:
        raise NotFound("OIDC_PROVIDER_NOT_FOUND", "no such OpenID Connect provider")

    def provider(self, provider_id: str) -> dict[str, Any]:
        found = self.providers.get(provider_id)
        if found is None:
            raise NotFound("OIDC_PROVIDER_NOT_FOUND", "no such OpenID Connect provider")
        return found

    def by_slug(self, slug: str) -> dict[str, Any]:
        for p in self.providers.values():
            if p["slug"] == slug:
                return p
        raise NotFound("OIDC_PROVIDER_NOT_FOUND", "no such OpenID Connect provider")

    def register(self, provider_id: UUID, slug: str, s: OidcProviderSettings, client_secret_encrypted: str) -> None:
        if not _SLUG.match(slug):
            raise Invalid("INVALID_SLUG", "a slug is 1 to 40 lowercase letters, digits and dashes", field="slug")
        if any(p["slug"] == slug for p in self.providers.values()):
            raise Conflict("OIDC_PROVIDER_EXISTS", "this tenant has a provider with this slug", field="slug")
        if len(self.providers) >= MAX_PROVIDERS:
            raise Conflict("TOO_MANY_OIDC_PROVIDERS", f"a tenant has at most {MAX_PROVIDERS} providers")
        self._register(
            provider_id=provider_id, slug=slug, client_secret_encrypted=client_secret_encrypted, **_fields(s)
        )

    @event("OidcProviderRegistered")
    def _register(
        self,
        provider_id: UUID,
        slug: str,
        client_secret_encrypted: str,
        name: str,
        issuer: str,
        client_id: str,
        scopes: list[str],
        allowed_domains: list[str],
        role_claim: str | None,
        role_map: dict[str, str],
        create_users: bool,
        default_role: str,
        enabled: bool,
    ) -> None:
        settings = {
            "name": name,
            "issuer": issuer,
            "client_id": client_id,
            "scopes": scopes,
            "allowed_domains": allowed_domains,
            "role_claim": role_claim,
            "role_map": role_map,
            "create_users": create_users,
            "default_role": default_role,
            "enabled": enabled,
        }
        self.providers[str(provider_id)] = {
            "id": str(provider_id),
            "slug": slug,
            "client_secret_encrypted": client_secret_encrypted,
            **settings,
        }

    def change(self, provider_id: UUID, s: OidcProviderSettings, client_secret_encrypted: str | None) -> None:
        self.provider(str(provider_id))
        self._change(provider_id=provider_id, client_secret_encrypted=client_secret_encrypted, **_fields(s))

    @event("OidcProviderChanged")
    def _change(
        self,
        provider_id: UUID,
        client_secret_encrypted: str | None,
        name: str,
        issuer: str,
        client_id: str,
        scopes: list[str],
        allowed_domains: list[str],
        role_claim: str | None,
        role_map: dict[str, str],
        create_users: bool,
        default_role: str,
        enabled: bool,
    ) -> None:
        p = self.providers[str(provider_id)]
        p.update(
            {
                "name": name,
                "issuer": issuer,
                "client_id": client_id,
                "scopes": scopes,
                "allowed_domains": allowed_domains,
                "role_claim": role_claim,
                "role_map": role_map,
                "create_users": create_users,
                "default_role": default_role,
                "enabled": enabled,
            }
        )
        if client_secret_encrypted is not None:
            p["client_secret_encrypted"] = client_secret_encrypted

    def remove(self, provider_id: UUID) -> None:
        self.provider(str(provider_id))
        self._remove(provider_id=provider_id)

    @event("OidcProviderRemoved")
    def _remove(self, provider_id: UUID) -> None:
        del self.providers[str(provider_id)]


def _fields(s: OidcProviderSettings) -> dict[str, Any]:
    return {
        "name": s.name,
        "issuer": s.issuer,
        "client_id": s.client_id,
        "scopes": list(s.scopes),
        "allowed_domains": list(s.allowed_domains),
        "role_claim": s.role_claim,
        "role_map": dict(s.role_map or {}),
        "create_users": s.create_users,
        "default_role": s.default_role,
        "enabled": s.enabled,
    }
