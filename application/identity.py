"""Identity and tenants: sign-up, sign-in, sessions, token revocation, users and API keys.

Every use case is: validate input, do slow work (password hashing) outside the command, then run the
command (load aggregates, call their methods, save) on the event store, retried once on a version
conflict. Read-side listings are served by ``projections.identity``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from application.context import CommandContext
from application.credentials import (
    new_api_key,
    new_invitation_token,
    new_refresh_token,
    parse_api_key,
    parse_invitation_token,
    parse_refresh_token,
    secret_hash,
    secrets_equal,
)
from application.ports import AccessTokenIssuer, EventStorePort, PasswordHasher, Shredder, TokenVersionCache
from domain.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from domain.identity import (
    API_KEY_SCOPES,
    SIGNUP_ROLES,
    ApiKey,
    DomainIndex,
    EmailIndex,
    ExternalIdentity,
    Invitation,
    Session,
    SignInAttempt,
    Tenant,
    TokenMisuse,
    User,
    check_domain,
    check_name,
    check_password_strength,
    check_role,
    check_role_map,
    check_slug,
    domain_index_id,
    email_index_id,
    external_identity_id,
    normalize_email,
    tenant_id_for,
)

__all__ = [
    "AccessClaims",
    "EndUser",
    "ExternalAccount",
    "Identity",
    "Principal",
    "TokenPair",
    "UserInfo",
    "TenantInfo",
    "NewApiKey",
    "NewInvitation",
    "check_user_of_tenant",
]


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    tenant_id: str
    role: str
    token_version: int
    session_id: str
    jti: str
    expires_at: int


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user through a session's access token, through one of their API keys, or an end
    user named by a gateway key (``via`` "gateway": ``api_key_id`` is the gateway's key)."""

    tenant_id: str
    user_id: uuid.UUID
    role: str
    via: str  # "token", "api_key" or "gateway"
    session_id: str | None = None
    api_key_id: uuid.UUID | None = None
    scopes: tuple[str, ...] = ("read", "write", "admin")

    @property
    def actor(self) -> str:
        return f"apikey:{self.api_key_id}" if self.via == "api_key" else f"user:{self.user_id}"

    @property
    def on_behalf_via(self) -> str | None:
        """The gateway key through which an end user acts (what the audit log names beside the user)."""
        return f"apikey:{self.api_key_id}" if self.via == "gateway" else None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin" and "admin" in self.scopes

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("ADMIN_REQUIRED", "this needs the admin role")

    @property
    def is_auditor(self) -> bool:
        """May read the audit log, replays and usage reports: an auditor (not through a gateway, which never
        passes on more than a user's rights, as it passes on no admin's), or an admin."""
        return self.is_admin or (self.role == "auditor" and self.via != "gateway" and "read" in self.scopes)

    def require_auditor(self) -> None:
        # The code stays ADMIN_REQUIRED: clients switch on it, and these routes answered it before auditors.
        if not self.is_auditor:
            raise Forbidden("ADMIN_REQUIRED", "this needs the admin or auditor role")

    def require_gateway(self) -> None:
        """Only a key with the ``gateway`` scope may name the end user of a request."""
        if self.via != "api_key" or "gateway" not in self.scopes:
            raise Forbidden(
                "GATEWAY_SCOPE_REQUIRED", "only an API key with the 'gateway' scope may name the end user of a request"
            )

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden("SCOPE_REQUIRED", f"this API key lacks the '{scope}' scope", scope=scope)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


@dataclass(frozen=True)
class UserInfo:
    id: uuid.UUID
    tenant_id: str
    email: str
    name: str
    role: str
    active: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserInfo:
        return cls(user.id, user.tenant_id, user.email, user.name, user.role, user.active, user.created_on)


@dataclass(frozen=True)
class TenantInfo:
    id: uuid.UUID
    slug: str
    name: str
    allow_signup: bool
    default_role: str
    domains: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, tenant: Tenant) -> TenantInfo:
        return cls(tenant.id, tenant.slug, tenant.name, tenant.allow_signup, tenant.default_role, tenant.domains)


@dataclass(frozen=True)
class NewApiKey:
    id: uuid.UUID
    name: str
    key: str  # shown once
    prefix: str
    scopes: list[str]
    expires_at: datetime | None
    role_map: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NewInvitation:
    id: uuid.UUID
    tenant_id: str
    email: str
    role: str
    token: str  # shown once
    expires_at: datetime


INVITATION_DAYS = 7
MAX_INVITATION_DAYS = 30


@dataclass(frozen=True)
class EndUser:
    """The end user a gateway names: as its front end forwarded them."""

    email: str
    name: str | None = None
    role: str | None = None


class _PasswordAccountExists(Exception):
    def __init__(self, user_id: uuid.UUID) -> None:
        self.user_id = user_id


@dataclass(frozen=True)
class ExternalAccount:
    """Who an outside identity provider (OIDC, LDAP) says signed in, and what its configuration allows.

    ``source`` names the provider (``oidc:<provider id>``, ``ldap:<directory>``) and ``subject`` the account
    there (``sub``, a DN); ``role`` is the role its claims or groups map to (None: no mapping matched);
    ``allowed_domains`` empty allows any domain; ``create_role`` is the role of a user created on first
    sign-in, None where unknown users are refused. ``code_prefix`` starts the codes of refusals
    (``OIDC_EMAIL_UNVERIFIED``, ``LDAP_DOMAIN_NOT_ALLOWED``)."""

    source: str
    subject: str
    email: str
    email_verified: bool
    name: str | None = None
    role: str | None = None
    allowed_domains: tuple[str, ...] = ()
    create_role: str | None = None
    code_prefix: str = "EXTERNAL"
    link_password_accounts: bool = True
    """Whether an account found by e-mail that has a local password may be linked (and so signed in to).
    False where the provider's e-mail is only as good as what its users may write into it (a directory whose
    users edit their own ``mail``): such an account is refused, ``<PREFIX>_ACCOUNT_EXISTS``."""


def check_user_of_tenant(store: EventStorePort, tenant_id: str, user_id: str | uuid.UUID) -> None:
    """A reference to a user (a grant) must name a user of the same tenant: 404 ``USER_NOT_FOUND`` for
    another tenant's user or no one. Sync: inside a command."""
    try:
        user = store.find(User, user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(user_id))
    except ValueError:
        user = None
    if user is None or user.tenant_id != tenant_id:
        raise NotFound("USER_NOT_FOUND", "no such user in this tenant", field="user_id")


def _now() -> datetime:
    return datetime.now(UTC)


def _uuid_or_nil(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        return uuid.UUID(int=0)


class Identity:
    def __init__(
        self,
        *,
        store: EventStorePort,
        passwords: PasswordHasher,
        tokens: AccessTokenIssuer,
        token_versions: TokenVersionCache,
        refresh_ttl_s: int,
        platform_tenant: str = "default",
    ) -> None:
        self.store = store
        self.passwords = passwords
        self.tokens = tokens
        self.token_versions = token_versions
        self.refresh_ttl = timedelta(seconds=refresh_ttl_s)
        self.platform_tenant_id = str(tenant_id_for(platform_tenant))
        self.shredder: Shredder | None = None
        """Set by the composition root: what erasing does outside the event store, at once."""

    # --- tenants ----------------------------------------------------------------------------------------
    def _tenant(self, slug_or_id: str) -> Tenant:
        try:
            tenant_id = uuid.UUID(slug_or_id)
        except ValueError:
            tenant_id = tenant_id_for(slug_or_id)
        tenant = self.store.find(Tenant, tenant_id)
        if tenant is None:
            raise NotFound("TENANT_NOT_FOUND", "no such tenant", tenant=slug_or_id)
        return tenant

    async def tenant(self, slug_or_id: str) -> TenantInfo:
        return TenantInfo.of(await self.store.call(self._tenant, slug_or_id))

    def is_platform_admin(self, principal: Principal) -> bool:
        return principal.is_admin and principal.tenant_id == self.platform_tenant_id

    async def create_tenant(
        self,
        ctx: CommandContext,
        principal: Principal | None,
        *,
        slug: str,
        name: str,
        allow_signup: bool = True,
        default_role: str = "user",
        domains: Sequence[str] = (),
    ) -> TenantInfo:
        """Platform admins create tenants (``principal=None`` is the operator's CLI)."""
        if principal is not None and not self.is_platform_admin(principal):
            raise Forbidden("PLATFORM_ADMIN_REQUIRED", "only a platform admin can create tenants")
        check_slug(slug)
        name = check_name(name)
        check_role(default_role)
        if default_role not in SIGNUP_ROLES:
            raise Invalid("INVALID_ROLE", "sign-ups cannot default to admin or auditor", field="default_role")
        domains = [check_domain(d) for d in domains]
        tenant_id = str(tenant_id_for(slug))

        def command() -> Tenant:
            if self.store.find(Tenant, uuid.UUID(tenant_id)) is not None:
                raise Conflict("TENANT_EXISTS", "a tenant with this slug exists", slug=slug)
            for domain in domains:
                if self.store.find(DomainIndex, domain_index_id(domain)) is not None:
                    raise Conflict("DOMAIN_TAKEN", "another tenant holds this domain", field="domains", domain=domain)
            tenant = Tenant(
                slug=slug, name=name, allow_signup=allow_signup, default_role=default_role, domains=domains
            )
            claims = [DomainIndex(domain=d, tenant_id=tenant.tenant_id) for d in dict.fromkeys(domains)]
            self.store.save(tenant, *claims)
            return tenant

        return TenantInfo.of(await self.store.execute(ctx.replace(tenant_id=tenant_id), command))

    async def ensure_tenant(self, slug: str, name: str) -> TenantInfo:
        """Idempotent: the default tenant at start-up."""
        try:
            return await self.tenant(slug)
        except NotFound:
            pass
        try:
            return await self.create_tenant(CommandContext(tenant_id="", actor="system"), None, slug=slug, name=name)
        except Conflict:
            return await self.tenant(slug)

    # --- users ------------------------------------------------------------------------------------------
    async def register(self, ctx: CommandContext, *, tenant: str, email: str, password: str, name: str) -> UserInfo:
        """Self sign-up, where the tenant allows it. The first user of the platform tenant (the embedded
        single-tenant start) becomes its admin; any other tenant's first admin comes by invitation."""
        email = normalize_email(email)
        name = check_name(name)
        check_password_strength(password, email)
        password_hash = await self.store.call(self.passwords.hash, password)

        def command() -> User:
            t = self._tenant(tenant)
            if t.first_admin_id is None:
                if t.tenant_id != self.platform_tenant_id:
                    # Whoever guessed a new tenant's slug would own it: its first admin is invited.
                    raise Forbidden(
                        "TENANT_NOT_READY", "this tenant has no admin yet; its first admin joins by invitation"
                    )
                return self._add_user(t, email, name, "admin", password_hash, ctx.actor)
            if not t.allow_signup:
                raise Forbidden("SIGNUP_DISABLED", "sign-up is closed for this tenant")
            return self._add_user(t, email, name, t.default_role, password_hash, ctx.actor)

        return UserInfo.of(await self.store.execute(ctx, command))

    def _add_user(self, t: Tenant, email: str, name: str, role: str, password_hash: str | None, by: str) -> User:
        user, aggregates = self._new_user(t, email, name, role, password_hash, by)
        self.store.save(*aggregates)
        return user

    def _new_user(
        self, t: Tenant, email: str, name: str, role: str, password_hash: str | None, by: str
    ) -> tuple[User, list[Any]]:
        """A new user of ``t`` and every aggregate to save with it (the tenant's first admin claims it)."""
        if self.store.find(EmailIndex, email_index_id(t.tenant_id, email)) is not None:
            raise Conflict("EMAIL_TAKEN", "an account with this e-mail exists in this tenant", field="email")
        user = User(tenant_id=t.tenant_id, email=email, name=name, role=role, password_hash=password_hash, created_by=by)
        index = EmailIndex(tenant_id=t.tenant_id, email=email, user_id=user.id)
        if t.first_admin_id is None and role == "admin":
            t.claim_first_admin(user.id)
            return user, [t, user, index]
        return user, [user, index]

    async def create_user(
        self, ctx: CommandContext, principal: Principal, *, email: str, password: str, name: str, role: str
    ) -> UserInfo:
        principal.require_admin()
        email = normalize_email(email)
        name = check_name(name)
        check_role(role)
        check_password_strength(password, email)
        password_hash = await self.store.call(self.passwords.hash, password)

        def command() -> User:
            return self._add_user(self._tenant(principal.tenant_id), email, name, role, password_hash, ctx.actor)

        return UserInfo.of(await self.store.execute(ctx, command))

    # --- invitations ----------------------------------------------------------------------------------------
    async def invite(
        self,
        ctx: CommandContext,
        principal: Principal | None,
        *,
        tenant: str,
        email: str,
        role: str = "user",
        expires_in_days: int = INVITATION_DAYS,
    ) -> NewInvitation:
        """A one-time invitation into ``tenant`` with ``role``: by the platform admin into any tenant (how a
        tenant gets its first admin), by a tenant's admin into their own, by the operator (``principal``
        None, the CLI)."""
        t = await self.store.call(self._tenant, tenant)
        if principal is not None and not self.is_platform_admin(principal):
            principal.require_admin()
            if principal.tenant_id != t.tenant_id:
                raise NotFound("TENANT_NOT_FOUND", "no such tenant", tenant=tenant)
        email = normalize_email(email)
        check_role(role)
        if not 1 <= expires_in_days <= MAX_INVITATION_DAYS:
            raise Invalid("INVALID_EXPIRY", f"expires_in_days must be between 1 and {MAX_INVITATION_DAYS}", field="expires_in_days")
        invitation_id = uuid.uuid4()
        token = new_invitation_token(invitation_id)
        expires_at = _now() + timedelta(days=expires_in_days)

        def command() -> Invitation:
            if self.store.find(EmailIndex, email_index_id(t.tenant_id, email)) is not None:
                raise Conflict("EMAIL_TAKEN", "an account with this e-mail exists in this tenant", field="email")
            invitation = Invitation(
                invitation_id=invitation_id,
                tenant_id=t.tenant_id,
                email=email,
                role=role,
                token_hash=secret_hash(token),
                expires_at=expires_at,
            )
            self.store.save(invitation)
            return invitation

        invitation = await self.store.execute(ctx.replace(tenant_id=t.tenant_id), command)
        return NewInvitation(invitation.id, t.tenant_id, email, role, token, expires_at)

    async def accept_invitation(self, ctx: CommandContext, *, token: str, name: str, password: str) -> UserInfo:
        """The invitee joins the invitation's tenant with its e-mail and role; the invitation is spent."""
        invitation_id = parse_invitation_token(token)
        known = await self.store.call(self.store.find, Invitation, invitation_id)
        if known is None or not secrets_equal(known.token_hash, secret_hash(token)):
            raise Unauthenticated("INVALID_INVITATION", "this invitation is not valid")
        known.check_acceptable(_now())
        name = check_name(name)
        check_password_strength(password, known.email)
        password_hash = await self.store.call(self.passwords.hash, password)

        def command() -> User:
            invitation = self.store.get(Invitation, invitation_id)
            invitation.check_acceptable(_now())
            t = self._tenant(invitation.tenant_id)
            user, aggregates = self._new_user(
                t, invitation.email, name, invitation.role, password_hash, f"invitation:{invitation.id}"
            )
            invitation.accept(user.id)
            self.store.save(*aggregates, invitation)
            return user

        return UserInfo.of(await self.store.execute(ctx.replace(tenant_id=known.tenant_id), command))

    def _user_of_tenant(self, tenant_id: str, user_id: uuid.UUID) -> User:
        user = self.store.find(User, user_id)
        if user is None or user.tenant_id != tenant_id:  # another tenant's user does not exist for you
            raise NotFound("USER_NOT_FOUND", "no such user")
        return user

    async def get_user(self, principal: Principal, user_id: uuid.UUID) -> UserInfo:
        if principal.user_id != user_id:
            principal.require_admin()
        return UserInfo.of(await self.store.call(self._user_of_tenant, principal.tenant_id, user_id))

    async def update_user(
        self,
        ctx: CommandContext,
        principal: Principal,
        user_id: uuid.UUID,
        *,
        name: str | None = None,
        role: str | None = None,
        active: bool | None = None,
        password: str | None = None,
    ) -> UserInfo:
        principal.require_admin()
        if role is not None:
            check_role(role)
        if user_id == principal.user_id and (active is False or (role is not None and role != "admin")):
            raise Forbidden("CANNOT_DEMOTE_SELF", "an admin cannot demote or deactivate themselves")
        password_hash = None
        if password is not None:
            check_password_strength(password)
            password_hash = await self.store.call(self.passwords.hash, password)

        def command() -> User:
            user = self._user_of_tenant(principal.tenant_id, user_id)
            if name is not None:
                user.rename(name)
            if role is not None:
                user.change_role(role)
            if active is False:
                user.deactivate()
            elif active is True:
                user.reactivate()
            if password_hash is not None:
                user.change_password(password_hash)
            self.store.save(user)
            return user

        user = await self.store.execute(ctx, command)
        await self.token_versions.set(str(user.id), user.token_version)
        return UserInfo.of(user)

    async def erase_user(self, ctx: CommandContext, principal: Principal, user_id: uuid.UUID) -> UserInfo:
        """Erase a user (GDPR art. 17), by a tenant admin, or by the user where the tenant allows it
        (``set_self_erasure``; an admin never erases themselves): ``UserErased`` is stored, then every key sealing
        the user's personal data is destroyed, their uploads and images deleted and their generations'
        token chunks erased; the projectors purge the read models. Final: an erased user stays erased."""
        if user_id != principal.user_id:
            principal.require_admin()
        elif principal.is_admin:
            raise Forbidden("CANNOT_ERASE_SELF", "an admin cannot erase themselves; another admin can")
        elif not (await self.store.call(self._tenant, principal.tenant_id)).allows_self_erasure:
            raise Forbidden("SELF_ERASURE_DISABLED", "this tenant's users cannot erase themselves; ask an admin")
        await self.store.call(self._user_of_tenant, principal.tenant_id, user_id)  # 404 before gathering
        doomed = None
        if self.shredder is not None:
            doomed = await self.shredder.gather(principal.tenant_id, user_id=str(user_id))

        def command() -> User:
            user = self._user_of_tenant(principal.tenant_id, user_id)
            user.erase(erased_by=ctx.actor)
            self.store.save(user)
            return user

        user = await self.store.execute(ctx, command)
        await self.token_versions.set(str(user.id), user.token_version)
        if self.shredder is not None:
            await self.shredder.shred(doomed, user_id=user_id)
        return UserInfo.of(user)

    async def set_self_erasure(self, ctx: CommandContext, principal: Principal, allowed: bool) -> bool:
        """Tenant admin: whether the tenant's users may erase themselves."""
        principal.require_admin()

        def command() -> bool:
            tenant = self._tenant(principal.tenant_id)
            tenant.set_self_erasure(allowed)
            self.store.save(tenant)
            return tenant.allows_self_erasure

        return await self.store.execute(ctx, command)

    async def self_erasure(self, principal: Principal) -> bool:
        return (await self.store.call(self._tenant, principal.tenant_id)).allows_self_erasure

    async def change_password(
        self, ctx: CommandContext, principal: Principal, *, current: str, new: str
    ) -> TokenPair:
        """Changing one's password revokes every outstanding token and starts a fresh session."""
        if principal.via != "token":
            raise Forbidden("SESSION_REQUIRED", "sign in with a password to change it")
        user = await self.store.call(self._user_of_tenant, principal.tenant_id, principal.user_id)
        if not await self.store.call(self.passwords.verify, user.password_hash, current):
            raise Unauthenticated("INVALID_CREDENTIALS", "current password is wrong")
        check_password_strength(new, user.email)
        password_hash = await self.store.call(self.passwords.hash, new)

        def command() -> User:
            u = self._user_of_tenant(principal.tenant_id, principal.user_id)
            u.change_password(password_hash)
            self.store.save(u)
            return u

        user = await self.store.execute(ctx, command)
        await self.token_versions.set(str(user.id), user.token_version)
        return await self._start_session(ctx, user)

    # --- sign-in, sessions, tokens --------------------------------------------------------------------------
    async def login(self, ctx: CommandContext, *, tenant: str, email: str, password: str) -> TokenPair:
        t = await self.store.call(self._tenant, tenant)
        ctx = ctx.replace(tenant_id=t.tenant_id)
        try:
            email = normalize_email(email)
        except Invalid:
            email = email.strip().lower()[:254]
        index = await self.store.call(self.store.find, EmailIndex, email_index_id(t.tenant_id, email))
        user = await self.store.call(self.store.find, User, index.user_id) if index else None
        valid = await self.store.call(self.passwords.verify, user.password_hash if user else None, password)
        if user is None or not valid:
            reason = "unknown_email" if user is None else "wrong_password"
            await self.store.execute(
                ctx,
                lambda: self.store.save(
                    SignInAttempt(tenant_id=t.tenant_id, email=email, reason=reason, user_id=user.id if user else None)
                ),
            )
            raise Unauthenticated("INVALID_CREDENTIALS", "e-mail or password is wrong")
        if not user.active:
            await self.store.execute(
                ctx,
                lambda: self.store.save(
                    SignInAttempt(tenant_id=t.tenant_id, email=email, reason="deactivated", user_id=user.id)
                ),
            )
            raise Forbidden("USER_DEACTIVATED", "this account is deactivated")
        signed_in = user
        if user.password_hash and self.passwords.needs_rehash(user.password_hash):
            signed_in = await self._rehash(ctx.replace(actor=f"user:{user.id}"), user, password)
        await self.token_versions.set(str(user.id), signed_in.token_version)
        return await self._start_session(ctx.replace(actor=f"user:{user.id}"), signed_in)

    async def _rehash(self, ctx: CommandContext, user: User, password: str) -> User:
        """A hash of another scheme (bcrypt, imported from Open WebUI) replaced by argon2id at the first
        sign-in that proves the password."""
        password_hash = await self.store.call(self.passwords.hash, password)

        def command() -> User:
            u = self.store.get(User, user.id)
            u.change_password(password_hash)
            self.store.save(u)
            return u

        return await self.store.execute(ctx, command)

    # --- sign-in by an outside identity provider (OIDC, LDAP) --------------------------------------------------
    async def record_sign_in_failure(
        self, ctx: CommandContext, tenant_id: str, code: str, *, email: str = "", user_id: uuid.UUID | None = None
    ) -> None:
        """A refused sign-in as a security event (``SignInFailed``, reason ``code``) in the tenant's audit log."""
        attempt = SignInAttempt(tenant_id=tenant_id, email=email[:254], reason=code, user_id=user_id)
        await self.store.execute(ctx.replace(tenant_id=tenant_id), lambda: self.store.save(attempt))

    async def sign_in_external(self, ctx: CommandContext, tenant: str, account: ExternalAccount) -> TokenPair:
        """Sign in a user an outside provider vouched for, ending as a password sign-in does (a session,
        access and refresh tokens). The user is the one linked to ``account`` before; else the user with its
        e-mail, linked now; else a new user (``create_role``), linked. Before any of it the e-mail must be
        verified and of an allowed domain, so that an unverified claim never takes over a password account.
        A mapped role is applied at every sign-in. Refusals are audited and raised with
        ``<code_prefix>_EMAIL_UNVERIFIED`` / ``_DOMAIN_NOT_ALLOWED`` / ``_USER_UNKNOWN`` (403)."""
        t = await self.store.call(self._tenant, tenant)
        tenant_id = t.tenant_id
        ctx = ctx.replace(tenant_id=tenant_id)
        prefix = account.code_prefix
        try:
            email = normalize_email(account.email)
        except Invalid:
            await self.record_sign_in_failure(ctx, tenant_id, f"{prefix}_EMAIL_INVALID", email=account.email)
            raise Forbidden(f"{prefix}_EMAIL_INVALID", "the identity provider gave no usable e-mail address") from None
        if account.role is not None:
            check_role(account.role)
        if account.create_role is not None:
            check_role(account.create_role)

        async def refuse(code: str, message: str, user_id: uuid.UUID | None = None) -> Forbidden:
            await self.record_sign_in_failure(ctx, tenant_id, code, email=email, user_id=user_id)
            return Forbidden(code, message)

        if not account.email_verified:
            raise await refuse(f"{prefix}_EMAIL_UNVERIFIED", "the identity provider has not verified this e-mail")
        domain = email.rsplit("@", 1)[1]
        if account.allowed_domains and domain not in account.allowed_domains:
            raise await refuse(f"{prefix}_DOMAIN_NOT_ALLOWED", "this e-mail domain may not sign in here")
        name = account.name
        try:
            name = check_name(name or "")
        except Invalid:
            name = check_name(email.split("@", 1)[0][:100] or "user")
        link_id = external_identity_id(tenant_id, account.source, account.subject)

        def command() -> User | None:
            link = self.store.find(ExternalIdentity, link_id)
            if link is not None:
                user = self.store.get(User, link.user_id)
                if account.role is not None and user.active:
                    user.change_role(account.role)
                    self.store.save(user)
                return user
            index = self.store.find(EmailIndex, email_index_id(tenant_id, email))
            if index is not None:
                user = self.store.get(User, index.user_id)
                if user.password_hash is not None and not account.link_password_accounts:
                    raise _PasswordAccountExists(user.id)
                if account.role is not None and user.active:
                    user.change_role(account.role)
                aggregates: list[Any] = [user]
            elif account.create_role is None:
                return None
            else:
                role = account.role or account.create_role
                user, aggregates = self._new_user(self._tenant(tenant_id), email, name, role, None, account.source)
            link = ExternalIdentity(
                tenant_id=tenant_id, source=account.source, subject=account.subject, user_id=user.id
            )
            self.store.save(*aggregates, link)
            return user

        found: User | None
        try:
            try:
                found = await self.store.execute(ctx, command)
            except Conflict:  # a sign-in beside this one linked or created them first
                found = await self.store.execute(ctx, command)
        except _PasswordAccountExists as exists:
            raise await refuse(
                f"{prefix}_ACCOUNT_EXISTS",
                "an account with this e-mail signs in with its password here; an administrator may allow linking it",
                exists.user_id,
            ) from None
        if found is None:
            raise await refuse(f"{prefix}_USER_UNKNOWN", "no account here has this e-mail, and none is created")
        user = found
        if not user.active:
            raise await refuse("USER_DEACTIVATED", "this account is deactivated", user.id)
        await self.token_versions.set(str(user.id), user.token_version)
        return await self._start_session(ctx.replace(actor=f"user:{user.id}"), user)

    async def _start_session(self, ctx: CommandContext, user: User) -> TokenPair:
        session_id = uuid.uuid4()
        refresh = new_refresh_token(session_id)

        def command() -> None:
            session = Session(
                session_id=session_id,
                tenant_id=user.tenant_id,
                user_id=user.id,
                refresh_hash=secret_hash(refresh),
                token_version=user.token_version,
                expires_at=_now() + self.refresh_ttl,
            )
            self.store.save(session)

        await self.store.execute(ctx.replace(actor=f"user:{user.id}"), command)
        return self._pair(user, str(session_id), refresh)

    def _pair(self, user: User, session_id: str, refresh: str) -> TokenPair:
        access = self.tokens.issue(
            user_id=user.id,
            tenant_id=user.tenant_id,
            role=user.role,
            token_version=user.token_version,
            session_id=session_id,
        )
        return TokenPair(access_token=access, refresh_token=refresh, expires_in=self.tokens.ttl_s)

    async def refresh(self, ctx: CommandContext, refresh_token: str) -> TokenPair:
        session_id = parse_refresh_token(refresh_token)
        presented = secret_hash(refresh_token)
        rotated = new_refresh_token(session_id)
        # The caller is not signed in: the session says whose events these are, so that they (a reuse
        # alarm above all) land in that tenant's audit trail, not in no tenant's.
        known = await self.store.call(self.store.find, Session, session_id)
        if known is not None:
            ctx = ctx.replace(tenant_id=known.tenant_id)

        def command() -> User:
            session = self.store.find(Session, session_id)
            if session is None:
                raise Unauthenticated("INVALID_REFRESH_TOKEN", "refresh token is not valid")
            user = self.store.get(User, session.user_id)
            try:
                session.check_refreshable(presented, _now(), user.token_version)
            except Unauthenticated as exc:
                if exc.code == "REFRESH_TOKEN_REUSED":
                    # A rotated-away token came back: someone else has it. End the whole family.
                    session.end("refresh_token_reused")
                    misuse = TokenMisuse(
                        tenant_id=session.tenant_id, user_id=user.id, token_kind="refresh", reason=exc.code
                    )
                    self.store.save(session, misuse)
                raise
            session.rotate(refresh_hash=secret_hash(rotated), expires_at=_now() + self.refresh_ttl)
            self.store.save(session)
            return user

        try:
            user = await self.store.execute(ctx, command)
        except Unauthenticated as exc:
            if exc.code == "REFRESH_TOKEN_REUSED":
                await self.token_versions.end_session(str(session_id), self.tokens.ttl_s)
            raise
        if not user.active:
            raise Forbidden("USER_DEACTIVATED", "this account is deactivated")
        return self._pair(user, str(session_id), rotated)

    async def logout(self, ctx: CommandContext, principal: Principal, *, everywhere: bool = False) -> None:
        def command() -> User | None:
            user = None
            if everywhere:
                user = self._user_of_tenant(principal.tenant_id, principal.user_id)
                user.revoke_tokens(reason="logout_everywhere")
            session = self.store.find(Session, uuid.UUID(principal.session_id)) if principal.session_id else None
            if session is not None and session.user_id == principal.user_id:
                session.end("logout")
            self.store.save(user, session)
            return user

        user = await self.store.execute(ctx, command)
        if principal.session_id:
            await self.token_versions.end_session(principal.session_id, self.tokens.ttl_s)
        if user is not None:
            await self.token_versions.set(str(user.id), user.token_version)

    async def _token_still_valid(self, claims: AccessClaims) -> bool:
        version, session_ended = await self.token_versions.state(str(claims.user_id), claims.session_id)
        if version is None:  # Redis lost its state: the event store knows
            user = await self.store.call(self.store.find, User, claims.user_id)
            version = user.token_version if user is not None else -1
            await self.token_versions.set(str(claims.user_id), version)
            session = await self.store.call(self.store.find, Session, _uuid_or_nil(claims.session_id))
            if session is not None and session.ended:
                session_ended = True
                await self.token_versions.end_session(claims.session_id, self.tokens.ttl_s)
        return version == claims.token_version and not session_ended

    async def authenticate(self, ctx: CommandContext, credential: str) -> Principal:
        """An access token (JWT) or an API key, as presented in ``Authorization: Bearer`` or ``X-API-Key``."""
        if credential.startswith(("pk_", "sk-")):  # sk-: a key imported from Open WebUI
            return await self._authenticate_api_key(ctx, credential)
        claims: AccessClaims = self.tokens.verify(credential)
        if not await self._token_still_valid(claims):
            await self._record_misuse(ctx, claims.tenant_id, claims.user_id, "access", claims.jti)
            raise Unauthenticated("TOKEN_REVOKED", "this token was revoked; sign in again")
        return Principal(
            tenant_id=claims.tenant_id,
            user_id=claims.user_id,
            role=claims.role,
            via="token",
            session_id=claims.session_id or None,
        )

    async def _authenticate_api_key(self, ctx: CommandContext, credential: str) -> Principal:
        key_id = parse_api_key(credential)
        key = await self.store.call(self.store.find, ApiKey, key_id)
        if key is None or not secrets_equal(key.key_hash, secret_hash(credential)):
            raise Unauthenticated("INVALID_API_KEY", "API key is not valid")
        try:
            key.check_usable(_now())
        except Unauthenticated:
            await self._record_misuse(ctx, key.tenant_id, key.user_id, "api_key", key_id.hex)
            raise
        user = await self.store.call(self.store.find, User, key.user_id)
        if user is None or not user.active:
            raise Forbidden("USER_DEACTIVATED", "the owner of this API key is deactivated")
        return Principal(
            tenant_id=key.tenant_id,
            user_id=user.id,
            role=user.role,
            via="api_key",
            api_key_id=key.id,
            scopes=tuple(key.scopes),
        )

    async def gateway_principal(self, ctx: CommandContext, gateway: Principal, end_user: EndUser) -> Principal:
        """The end user a gateway key names, as a principal of the key's tenant: found by e-mail, or
        created on first sight (an event, by the key) with the role the key's role map gives the
        forwarded role, else the tenant's default role. Refused as a sign-in would be: deactivated (403
        ``USER_DEACTIVATED``) or awaiting approval (403 ``USER_PENDING``). The end user acts with the
        key's read/write scopes, never as an admin of anything."""
        gateway.require_gateway()
        try:
            email = normalize_email(end_user.email)
        except Invalid:
            raise Invalid("INVALID_END_USER", "the forwarded end-user e-mail is not an e-mail address", field="email") from None
        tenant_id = gateway.tenant_id
        index = await self.store.call(self.store.find, EmailIndex, email_index_id(tenant_id, email))
        user = await self.store.call(self.store.find, User, index.user_id) if index is not None else None
        if user is None:
            user = await self._create_end_user(ctx, gateway, email, end_user)
        if not user.active:
            raise Forbidden("USER_DEACTIVATED", "this account is deactivated")
        if user.role == "pending":
            raise Forbidden("USER_PENDING", "this account awaits an administrator's approval")
        return Principal(
            tenant_id=tenant_id,
            user_id=user.id,
            role=user.role,
            via="gateway",
            api_key_id=gateway.api_key_id,
            scopes=tuple(s for s in gateway.scopes if s in ("read", "write")),
        )

    async def _create_end_user(self, ctx: CommandContext, gateway: Principal, email: str, end_user: EndUser) -> User:
        try:
            name = check_name(end_user.name or "")
        except Invalid:
            name = check_name(email.split("@", 1)[0][:100] or "user")

        def command() -> User:
            key = self.store.get(ApiKey, gateway.api_key_id) if gateway.api_key_id else None
            tenant = self._tenant(gateway.tenant_id)
            mapped = key.role_map.get((end_user.role or "").strip().lower()) if key is not None else None
            return self._add_user(tenant, email, name, mapped or tenant.default_role, None, ctx.actor)

        try:
            return await self.store.execute(ctx, command)
        except Conflict:  # a request beside this one created them first
            index = await self.store.call(self.store.find, EmailIndex, email_index_id(gateway.tenant_id, email))
            if index is None:
                raise
            return await self.store.call(self.store.get, User, index.user_id)

    async def _record_misuse(
        self, ctx: CommandContext, tenant_id: str, user_id: uuid.UUID, kind: str, token_id: str
    ) -> None:
        if not await self.token_versions.first_sighting(f"{kind}:{token_id}"):
            return
        misuse = TokenMisuse(tenant_id=tenant_id, user_id=user_id, token_kind=kind, reason="revoked")
        await self.store.execute(ctx.replace(tenant_id=tenant_id), lambda: self.store.save(misuse))

    # --- API keys -----------------------------------------------------------------------------------------
    async def create_api_key(
        self,
        ctx: CommandContext,
        principal: Principal,
        *,
        name: str,
        scopes: Sequence[str] = ("read", "write"),
        expires_in_days: int | None = None,
        role_map: dict[str, str] | None = None,
    ) -> NewApiKey:
        if principal.via != "token":
            raise Forbidden("SESSION_REQUIRED", "API keys are created from a signed-in session")
        if principal.role in ("pending",):
            raise Forbidden("ROLE_NOT_ALLOWED", "pending accounts cannot create API keys")
        name = check_name(name)
        bad = [s for s in scopes if s not in API_KEY_SCOPES]
        if bad or not scopes:
            raise Invalid("INVALID_SCOPE", f"scopes must be among {', '.join(API_KEY_SCOPES)}", field="scopes")
        if "admin" in scopes and principal.role != "admin":
            raise Forbidden("SCOPE_NOT_ALLOWED", "only admins can create admin-scoped keys")
        if "gateway" in scopes and principal.role != "admin":
            raise Forbidden("SCOPE_NOT_ALLOWED", "only tenant admins can create gateway keys")
        if role_map and "gateway" not in scopes:
            raise Invalid("NOT_A_GATEWAY_KEY", "only gateway keys map roles", field="role_map")
        checked_map = check_role_map(role_map or {})
        if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
            raise Invalid("INVALID_EXPIRY", "expires_in_days must be between 1 and 3650", field="expires_in_days")
        key_id = uuid.uuid4()
        secret = new_api_key(key_id)
        expires_at = _now() + timedelta(days=expires_in_days) if expires_in_days else None
        prefix = secret[:11]

        def command() -> ApiKey:
            self._user_of_tenant(principal.tenant_id, principal.user_id).check_active()
            key = ApiKey(
                key_id=key_id,
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                name=name,
                prefix=prefix,
                key_hash=secret_hash(secret),
                scopes=sorted(set(scopes)),
                expires_at=expires_at,
                role_map=checked_map,
            )
            self.store.save(key)
            return key

        key = await self.store.execute(ctx, command)
        return NewApiKey(key.id, key.name, secret, prefix, key.scopes, key.expires_at, key.role_map)

    async def set_role_map(
        self, ctx: CommandContext, principal: Principal, key_id: uuid.UUID, role_map: dict[str, str]
    ) -> dict[str, str]:
        """A tenant admin changes how a gateway key's end users' roles map (for users it creates next)."""
        principal.require_admin()

        def command() -> dict[str, str]:
            key = self.store.find(ApiKey, key_id)
            if key is None or key.tenant_id != principal.tenant_id:
                raise NotFound("API_KEY_NOT_FOUND", "no such API key")
            key.set_role_map(role_map)
            self.store.save(key)
            return dict(key.role_map)

        return await self.store.execute(ctx, command)

    async def revoke_api_key(self, ctx: CommandContext, principal: Principal, key_id: uuid.UUID) -> None:
        def command() -> None:
            key = self.store.find(ApiKey, key_id)
            if key is None or key.tenant_id != principal.tenant_id:
                raise NotFound("API_KEY_NOT_FOUND", "no such API key")
            if key.user_id != principal.user_id and not principal.is_admin:
                raise NotFound("API_KEY_NOT_FOUND", "no such API key")
            key.revoke()
            self.store.save(key)

        await self.store.execute(ctx, command)

