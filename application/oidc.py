"""OpenID Connect sign-in per tenant: the providers a tenant admin registers, and the authorization-code
flow (PKCE S256, ``state`` and ``nonce`` kept server-side, each sign-in's state good once and briefly)
that ends as a password sign-in does, through ``Identity.sign_in_external``.

Every refusal is a security event in the tenant's audit log (``SignInFailed`` with the refusal's code as
its reason) and an error with that stable code: ``OIDC_STATE_INVALID``, ``OIDC_NONCE_MISMATCH``,
``OIDC_TOKEN_EXPIRED``, ``OIDC_AUDIENCE_MISMATCH``, ``OIDC_ISSUER_MISMATCH``, ``OIDC_SIGNATURE_INVALID``,
``OIDC_EMAIL_UNVERIFIED``, ``OIDC_DOMAIN_NOT_ALLOWED`` and the others below.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from application.context import CommandContext
from application.identity import ExternalAccount, Identity, Principal, TokenPair
from application.ports import EventStorePort, SecretBox
from domain.errors import Forbidden, Invalid, ParleyError, Unauthenticated
from domain.identity import Tenant, tenant_id_for
from domain.oidc import OidcDirectory, OidcProviderSettings, check_provider_settings, map_role, oidc_directory_id

__all__ = ["OidcProvider", "OidcProviders", "OidcFlowStore", "ProviderMetadata", "RelyingParty"]

FLOW_TTL_S = 600
"""How long a started sign-in may take at the provider (its state then expires)."""


@dataclass(frozen=True)
class ProviderMetadata:
    """What a provider's discovery document says, as far as parley uses it."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...] = ("RS256",)


class RelyingParty(Protocol):
    """The wire side (``adapters.oidc``): discovery, the code exchange and ID-token validation; its
    refusals are ``Unauthenticated`` with an ``OIDC_*`` code, an unreachable provider ``Unavailable``."""

    async def discover(self, issuer: str) -> ProviderMetadata: ...

    async def exchange_code(
        self,
        metadata: ProviderMetadata,
        *,
        client_id: str,
        client_secret: str,
        code: str,
        redirect_uri: str,
        code_verifier: str,
    ) -> str: ...

    async def verify_id_token(
        self, metadata: ProviderMetadata, id_token: str, *, client_id: str, nonce: str
    ) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class OidcFlowStore(Protocol):
    """Sign-ins in flight, by state; ``take`` returns one at most once."""

    async def put(self, state: str, flow: str, ttl_s: int) -> None: ...

    async def take(self, state: str) -> str | None: ...


@dataclass(frozen=True)
class OidcProvider:
    """A provider as its admins see it: everything but the secret."""

    id: uuid.UUID
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
    has_client_secret: bool = True

    @classmethod
    def of(cls, p: dict[str, Any]) -> OidcProvider:
        return cls(
            id=uuid.UUID(p["id"]),
            slug=p["slug"],
            name=p["name"],
            issuer=p["issuer"],
            client_id=p["client_id"],
            scopes=list(p["scopes"]),
            allowed_domains=list(p["allowed_domains"]),
            role_claim=p["role_claim"],
            role_map=dict(p["role_map"]),
            create_users=p["create_users"],
            default_role=p["default_role"],
            enabled=p["enabled"],
        )


@dataclass(frozen=True)
class _Flow:
    tenant_id: str
    provider_id: str
    nonce: str
    code_verifier: str
    redirect_uri: str


@dataclass
class OidcProviders:
    store: EventStorePort
    secrets: SecretBox
    identity: Identity
    relying_party: RelyingParty
    flows: OidcFlowStore
    flow_ttl_s: int = FLOW_TTL_S

    async def aclose(self) -> None:
        await self.relying_party.aclose()

    # --- providers (tenant admins) ----------------------------------------------------------------------
    async def list_providers(self, principal: Principal) -> list[OidcProvider]:
        principal.require_admin()
        directory = await self.store.call(self.store.find, OidcDirectory, oidc_directory_id(principal.tenant_id))
        if directory is None:
            return []
        return sorted((OidcProvider.of(p) for p in directory.providers.values()), key=lambda p: p.slug)

    async def get(self, principal: Principal, provider_id: uuid.UUID) -> OidcProvider:
        principal.require_admin()
        directory = await self.store.call(self.store.find, OidcDirectory, oidc_directory_id(principal.tenant_id))
        if directory is None:
            return OidcDirectory.provider_not_found()
        return OidcProvider.of(directory.provider(str(provider_id)))

    async def register(
        self,
        ctx: CommandContext,
        principal: Principal,
        *,
        slug: str,
        settings: OidcProviderSettings,
        client_secret: str,
    ) -> OidcProvider:
        principal.require_admin()
        settings = check_provider_settings(settings)
        sealed = self.secrets.encrypt(_check_secret(client_secret))
        provider_id = uuid.uuid4()

        def command() -> dict[str, Any]:
            directory = self.store.find(OidcDirectory, oidc_directory_id(principal.tenant_id))
            if directory is None:
                directory = OidcDirectory(tenant_id=principal.tenant_id)
            directory.register(provider_id, slug, settings, sealed)
            self.store.save(directory)
            return directory.provider(str(provider_id))

        return OidcProvider.of(await self.store.execute(ctx, command))

    async def change(
        self,
        ctx: CommandContext,
        principal: Principal,
        provider_id: uuid.UUID,
        *,
        changes: dict[str, Any],
        client_secret: str | None = None,
    ) -> OidcProvider:
        """``changes``: the settings to change (others stay); ``client_secret`` None keeps the secret."""
        principal.require_admin()
        sealed = self.secrets.encrypt(_check_secret(client_secret)) if client_secret is not None else None
        known = set(OidcProviderSettings.__dataclass_fields__)
        unknown = set(changes) - known
        if unknown:
            raise Invalid("UNKNOWN_FIELD", f"unknown settings: {', '.join(sorted(unknown))}", field=sorted(unknown)[0])

        def command() -> dict[str, Any]:
            directory = self._directory(principal.tenant_id)
            current = directory.provider(str(provider_id))
            merged = {k: current[k] for k in known} | changes
            settings = check_provider_settings(
                OidcProviderSettings(
                    **{**merged, "scopes": tuple(merged["scopes"]), "allowed_domains": tuple(merged["allowed_domains"])}
                )
            )
            directory.change(provider_id, settings, sealed)
            self.store.save(directory)
            return directory.provider(str(provider_id))

        return OidcProvider.of(await self.store.execute(ctx, command))

    async def remove(self, ctx: CommandContext, principal: Principal, provider_id: uuid.UUID) -> None:
        principal.require_admin()

        def command() -> None:
            directory = self._directory(principal.tenant_id)
            directory.remove(provider_id)
            self.store.save(directory)

        await self.store.execute(ctx, command)

    def _directory(self, tenant_id: str) -> OidcDirectory:
        directory = self.store.find(OidcDirectory, oidc_directory_id(tenant_id))
        if directory is None:
            return OidcDirectory.provider_not_found()
        return directory

    def _tenant_and_provider(self, tenant: str, slug: str) -> tuple[Tenant, dict[str, Any]]:
        try:
            tenant_id = uuid.UUID(tenant)
        except ValueError:
            tenant_id = tenant_id_for(tenant)
        t = self.store.find(Tenant, tenant_id)
        directory = self.store.find(OidcDirectory, oidc_directory_id(str(tenant_id))) if t is not None else None
        if t is None or directory is None:
            return OidcDirectory.provider_not_found()
        provider = directory.by_slug(slug)
        if not provider["enabled"]:
            raise Forbidden("OIDC_PROVIDER_DISABLED", "this provider is disabled")
        return t, provider

    # --- sign-in --------------------------------------------------------------------------------------------
    async def begin(self, tenant: str, slug: str, *, redirect_uri: str) -> str:
        """Start a sign-in: the provider's authorization URL to send the browser to. ``redirect_uri`` is
        this deployment's callback URL for the provider."""
        t, provider = await self.store.call(self._tenant_and_provider, tenant, slug)
        metadata = await self.relying_party.discover(provider["issuer"])
        state = generate_token(43)
        nonce = generate_token(43)
        verifier = generate_token(64)  # RFC 7636 §4.1: 43 to 128 characters
        flow = _Flow(t.tenant_id, provider["id"], nonce, verifier, redirect_uri)
        await self.flows.put(state, json.dumps(flow.__dict__), self.flow_ttl_s)
        return str(
            prepare_grant_uri(
                metadata.authorization_endpoint,
                client_id=provider["client_id"],
                response_type="code",
                redirect_uri=redirect_uri,
                scope=" ".join(provider["scopes"]),
                state=state,
                nonce=nonce,
                code_challenge=create_s256_code_challenge(verifier),
                code_challenge_method="S256",
            )
        )

    async def complete(
        self,
        ctx: CommandContext,
        tenant: str,
        slug: str,
        *,
        state: str | None,
        code: str | None,
        error: str | None = None,
    ) -> TokenPair:
        """Finish a sign-in at the callback: the state taken (once), the code exchanged, the ID token
        validated, the user signed in by ``Identity.sign_in_external``: the token pair. Every refusal is
        audited."""
        t, provider = await self.store.call(self._tenant_and_provider, tenant, slug)
        ctx = ctx.replace(tenant_id=t.tenant_id)
        raw = await self.flows.take(state) if state and len(state) <= 200 else None
        flow = _Flow(**json.loads(raw)) if raw else None
        if flow is None or flow.tenant_id != t.tenant_id or flow.provider_id != provider["id"]:
            # Unknown, spent, expired, or another tenant's or provider's sign-in.
            await self._refuse(
                ctx, t.tenant_id, Unauthenticated("OIDC_STATE_INVALID", "this sign-in is not valid; start again")
            )
        if error or not code:
            await self._refuse(
                ctx,
                t.tenant_id,
                Unauthenticated(
                    "OIDC_PROVIDER_DENIED",
                    "the identity provider did not sign you in",
                    provider_error=(error or "no code")[:100],
                ),
            )
        try:
            metadata = await self.relying_party.discover(provider["issuer"])
            id_token = await self.relying_party.exchange_code(
                metadata,
                client_id=provider["client_id"],
                client_secret=self.secrets.decrypt(provider["client_secret_encrypted"]),
                code=code,
                redirect_uri=flow.redirect_uri,
                code_verifier=flow.code_verifier,
            )
            claims = await self.relying_party.verify_id_token(
                metadata, id_token, client_id=provider["client_id"], nonce=flow.nonce
            )
        except ParleyError as exc:
            await self._refuse(ctx, t.tenant_id, exc)
        account = ExternalAccount(
            source=f"oidc:{provider['id']}",
            subject=str(claims["sub"]),
            email=str(claims.get("email") or ""),
            email_verified=claims.get("email_verified") is True,
            name=claims.get("name") if isinstance(claims.get("name"), str) else None,
            role=map_role(claims, provider["role_claim"], provider["role_map"]),
            allowed_domains=tuple(provider["allowed_domains"]),
            create_role=provider["default_role"] if provider["create_users"] else None,
            code_prefix="OIDC",
        )
        if not account.email:
            await self._refuse(
                ctx,
                t.tenant_id,
                Forbidden("OIDC_EMAIL_MISSING", "the identity provider gave no e-mail; ask for the 'email' scope"),
            )
        return await self.identity.sign_in_external(ctx, t.tenant_id, account)

    async def _refuse(self, ctx: CommandContext, tenant_id: str, exc: ParleyError) -> NoReturn:
        await self.identity.record_sign_in_failure(ctx, tenant_id, exc.code)
        raise exc


def _check_secret(secret: str) -> str:
    if not 1 <= len(secret) <= 1024 or any(ord(c) < 32 for c in secret):
        raise Invalid(
            "INVALID_CLIENT_SECRET", "the client secret is 1 to 1024 printable characters", field="client_secret"
        )
    return secret


def provider_settings(
    *,
    name: str,
    issuer: str,
    client_id: str,
    scopes: Sequence[str] = ("openid", "email", "profile"),
    allowed_domains: Sequence[str] = (),
    role_claim: str | None = None,
    role_map: dict[str, str] | None = None,
    create_users: bool = True,
    default_role: str = "user",
    enabled: bool = True,
) -> OidcProviderSettings:
    return OidcProviderSettings(
        name=name,
        issuer=issuer,
        client_id=client_id,
        scopes=tuple(scopes),
        allowed_domains=tuple(allowed_domains),
        role_claim=role_claim,
        role_map=role_map,
        create_users=create_users,
        default_role=default_role,
        enabled=enabled,
    )
