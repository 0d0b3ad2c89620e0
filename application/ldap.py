"""LDAP sign-in per tenant: a tenant admin configures the tenant's directory; a user signs in with their
directory login and password, and ends signed in exactly as after a password sign-in
(``Identity.sign_in_external``: the user is created or updated from the directory entry, then a session).

The directory is the judge of LDAP passwords: when it cannot be reached the sign-in is refused with 503
``LDAP_UNAVAILABLE``, never tried against a local password. Every refusal is a ``SignInFailed`` in the
tenant's audit log. The directory adapter is synchronous (ldap3): it runs on a worker thread, bounded by the
directory's timeout.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from application.context import CommandContext
from application.identity import ExternalAccount, Identity, Principal, TokenPair
from application.ports import EventStorePort, SecretBox
from domain.errors import Forbidden, Invalid, NotFound, Unauthenticated, Unavailable
from domain.identity import SIGNUP_ROLES
from domain.ldap import LdapDirectory, LdapSettings, check_ldap_settings, ldap_directory_id, role_for_groups

__all__ = [
    "Directory",
    "DirectoryUser",
    "LdapAccountLocked",
    "LdapConfig",
    "LdapDirectories",
    "LdapRefused",
    "LdapUnavailable",
    "LdapUnknownUser",
    "LdapWrongPassword",
]

log = structlog.get_logger("parley.ldap")

MAX_LOGIN_CHARS = 256
MAX_PASSWORD_CHARS = 1024


@dataclass(frozen=True)
class DirectoryUser:
    """A user as the directory holds them, after their password was accepted."""

    dn: str
    email: str | None
    name: str | None
    groups: list[str] = field(default_factory=list)


class LdapRefused(Exception):
    """The directory refused the sign-in; ``code`` is the stable code the client sees."""

    code = "LDAP_REFUSED"
    reason = "LDAP_REFUSED"
    """What the audit log records (finer than ``code``: a wrong password and an unknown login answer alike)."""
    message = "the directory refused this sign-in"

    def __init__(self, code: str | None = None, message: str | None = None) -> None:
        self.code = code or self.code
        self.reason = code or self.reason
        self.message = message or self.message
        super().__init__(self.code)


class LdapUnknownUser(LdapRefused):
    code = "INVALID_CREDENTIALS"
    reason = "LDAP_UNKNOWN_LOGIN"


class LdapWrongPassword(LdapRefused):
    code = "INVALID_CREDENTIALS"
    reason = "LDAP_WRONG_PASSWORD"


class LdapAccountLocked(LdapRefused):
    code = "LDAP_ACCOUNT_LOCKED"
    reason = "LDAP_ACCOUNT_LOCKED"
    message = "this directory account is locked or disabled"


class LdapUnavailable(Exception):
    """The directory could not be reached or answered with an error (never the user's fault)."""


class Directory(Protocol):
    def authenticate(self, settings: LdapSettings, bind_password: str, login: str, password: str) -> DirectoryUser:
        """Bind as the service account, find ``login``, bind as them with ``password``, read their groups.
        Raises ``LdapRefused`` (its subclasses) or ``LdapUnavailable``. Synchronous."""
        ...


@dataclass(frozen=True)
class LdapConfig:
    """A tenant's LDAP settings as an admin reads them: never the service account's password."""

    settings: LdapSettings
    has_bind_password: bool


class LdapDirectories:
    def __init__(self, *, store: EventStorePort, secrets: SecretBox, identity: Identity, directory: Directory) -> None:
        self.store = store
        self.secrets = secrets
        self.identity = identity
        self.directory = directory

    def _find(self, tenant_id: str) -> LdapDirectory | None:
        return self.store.find(LdapDirectory, ldap_directory_id(tenant_id))

    async def get(self, principal: Principal) -> LdapConfig:
        principal.require_admin()
        found = await self.store.call(self._find, principal.tenant_id)
        if found is None:
            raise NotFound("LDAP_NOT_CONFIGURED", "this tenant has no LDAP directory")
        return LdapConfig(dict(found.settings), bool(found.bind_password_encrypted))

    async def configure(self, ctx: CommandContext, principal: Principal, raw: dict[str, Any]) -> LdapConfig:
        """Set the tenant's LDAP settings (all of them). ``bind_password`` is required the first time; left
        out later, the sealed one stays."""
        principal.require_admin()
        bind_password = raw.get("bind_password")
        if bind_password is not None and (not isinstance(bind_password, str) or not 0 < len(bind_password) <= MAX_PASSWORD_CHARS):
            raise Invalid("INVALID_LDAP_SETTINGS", "bind_password is 1-1024 characters", field="bind_password")
        settings = check_ldap_settings({k: v for k, v in raw.items() if k != "bind_password"})
        if settings["default_role"] is not None and settings["default_role"] not in SIGNUP_ROLES:
            raise Invalid("INVALID_LDAP_SETTINGS", "default_role cannot be admin or auditor (map a group)", field="default_role")
        sealed = self.secrets.encrypt(bind_password) if bind_password else None

        def command() -> LdapDirectory:
            directory = self._find(principal.tenant_id)
            if directory is None:
                if sealed is None:
                    raise Invalid("INVALID_LDAP_SETTINGS", "bind_password is required", field="bind_password")
                directory = LdapDirectory(tenant_id=principal.tenant_id, settings=settings, bind_password_encrypted=sealed)
            else:
                directory.reconfigure(settings, sealed)
            self.store.save(directory)
            return directory

        directory = await self.store.execute(ctx, command)
        return LdapConfig(dict(directory.settings), True)

    async def sign_in(self, ctx: CommandContext, *, tenant: str, login: str, password: str) -> TokenPair:
        t = await self.identity.tenant(tenant)
        tenant_id = str(t.id)
        ctx = ctx.replace(tenant_id=tenant_id)
        login = login.strip() if isinstance(login, str) else ""
        if not 0 < len(login) <= MAX_LOGIN_CHARS or len(password) > MAX_PASSWORD_CHARS:
            raise Invalid("INVALID_LOGIN", f"login is 1-{MAX_LOGIN_CHARS} characters", field="login")
        found = await self.store.call(self._find, tenant_id)
        if found is None or not found.settings.get("enabled", True):
            raise NotFound("LDAP_NOT_CONFIGURED", "this tenant does not sign in with LDAP")
        settings = dict(found.settings)
        bind_password = self.secrets.decrypt(found.bind_password_encrypted)
        try:
            # The adapter bounds each socket operation by the timeout; this bounds the whole exchange (a
            # handful of round trips) should the directory trickle its answers.
            user = await asyncio.wait_for(
                asyncio.to_thread(self.directory.authenticate, settings, bind_password, login, password),
                timeout=settings["timeout_s"] * 4,
            )
        except (LdapUnavailable, TimeoutError) as exc:
            # For the operator: which directory and why (never the login or a password).
            log.warning("ldap_unavailable", tenant_id=tenant_id, url=settings["url"], reason=str(exc) or type(exc).__name__)
            await self.identity.record_sign_in_failure(ctx, tenant_id, "LDAP_UNAVAILABLE", email=login)
            raise Unavailable("LDAP_UNAVAILABLE", "the LDAP directory cannot be reached; try again later") from None
        except LdapRefused as refused:
            await self.identity.record_sign_in_failure(ctx, tenant_id, refused.reason, email=login)
            if refused.code == "INVALID_CREDENTIALS":
                raise Unauthenticated("INVALID_CREDENTIALS", "login or password is wrong") from None
            raise Forbidden(refused.code, refused.message) from None
        if not user.email:
            await self.identity.record_sign_in_failure(ctx, tenant_id, "LDAP_EMAIL_MISSING", email=login)
            raise Forbidden("LDAP_EMAIL_MISSING", f"the directory entry has no {settings['email_attribute']}")
        create_role = (settings["default_role"] or t.default_role) if settings["create_users"] else None
        account = ExternalAccount(
            source=f"ldap:{tenant_id}",
            subject=user.dn.lower(),
            email=user.email,
            email_verified=True,  # the tenant's own directory, which its admin configured, vouches for it
            name=user.name,
            role=role_for_groups(settings["group_roles"], user.groups),
            create_role=create_role,
            code_prefix="LDAP",
            # A directory's e-mail is what its users may be able to write into their own entry: an account
            # here that signs in with a password is linked only where the admin says the directory is trusted.
            link_password_accounts=bool(settings.get("link_password_accounts", False)),
        )
        return await self.identity.sign_in_external(ctx, tenant_id, account)
