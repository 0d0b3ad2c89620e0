"""Identity: tenants, users, e-mail uniqueness, API keys, sign-in sessions and security incidents.

Aggregate methods are the commands; the ``@event`` names are the (past-tense) events. No I/O here:
hashing is done by the application layer, which hands in hashes.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from confusable_homoglyphs import confusables
from email_validator import EmailNotValidError, validate_email
from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Forbidden, Invalid, Unauthenticated

ERASED = "[erased]"
"""What erased personal text reads as (the value sealed with a destroyed key, an erased user's name)."""

__all__ = [
    "ROLES",
    "SIGNUP_ROLES",
    "Tenant",
    "User",
    "EmailIndex",
    "DomainIndex",
    "Invitation",
    "ApiKey",
    "Session",
    "SignInAttempt",
    "TokenMisuse",
    "ExternalIdentity",
    "external_identity_id",
    "tenant_id_for",
    "email_index_id",
    "domain_index_id",
    "normalize_email",
    "check_password_strength",
    "check_role",
    "check_slug",
    "check_name",
    "check_domain",
]

ROLES = ("admin", "user", "premium", "guest", "pending", "auditor")
"""``auditor``: reads the tenant's audit log, its replays and its usage reports; an admin of nothing else."""
SIGNUP_ROLES = ("user", "premium", "guest", "pending")
API_KEY_SCOPES = ("read", "write", "admin", "gateway")
"""``gateway``: the key belongs to an application in front of parley (Open WebUI, any chat front end) that
names the end user of each request; that user's rights, quotas and audit apply, never the key owner's."""
MAX_ROLE_MAP = 32

# Postgres text cannot hold NUL, and no name or e-mail needs a control character: refuse them at the door
# rather than let one event stall a projector.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_COMMON_PASSWORDS = frozenset(
    {
        "password", "password1", "password123", "passw0rd", "12345678", "123456789", "1234567890",
        "qwerty123", "qwertyuiop", "iloveyou", "letmein1", "welcome1", "admin123", "abc12345",
        "changeme", "changeme1", "football1", "baseball1", "sunshine1", "trustno1",
    }
)


# --- pure checks -------------------------------------------------------------------------------------------
def tenant_id_for(slug: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{slug}")


def email_index_id(tenant_id: UUID | str, email: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/emails/{email}")


def external_identity_id(tenant_id: UUID | str, source: str, subject: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/external/{source}/{subject}")


def domain_index_id(domain: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/domains/{domain}")


def _invisible(ch: str) -> bool:
    """Characters that change how text reads without being seen: format characters (zero-width space,
    joiners, bidi overrides and isolates, the BOM, variation selectors) and control characters."""
    return unicodedata.category(ch) in ("Cf", "Cc") or 0xFE00 <= ord(ch) <= 0xFE0F or 0xE0100 <= ord(ch) <= 0xE01EF


@functools.lru_cache(maxsize=4096)
def _reads_as_ascii(ch: str) -> bool:
    """A character other than ASCII that Unicode's confusables table (TR39) says reads as ASCII letters."""
    if ch.isascii():
        return False
    found = confusables.is_confusable(ch, greedy=True, preferred_aliases=[]) or []
    return any(h["c"].isascii() and h["c"].isalnum() for item in found for h in item["homoglyphs"])


def normalize_email(email: str) -> str:
    """The one form of an e-mail address that accounts are told apart by: the local part NFKC-normalised
    (fullwidth and other compatibility forms fold to their plain letters) and lower-cased, the domain in its
    IDNA (ASCII) form. Refused: what is not an address (email-validator's syntax rules, RFC 5321/6531),
    invisible or direction-changing characters, symbols (emoji), local parts that mix scripts (Unicode TR39
    mixed-script detection), and local parts with letters that read as ASCII ones (TR39's confusables):
    among ASCII letters, or making up every letter — "алиса" stays a real address, "асе" reads as "ace"."""
    raw = email.strip()
    if any(_invisible(ch) for ch in raw):
        raise Invalid("INVALID_EMAIL", "the e-mail address holds invisible or direction-changing characters", field="email")
    try:
        # Self-hosted: intranet domains (.internal, .test) are real there; a domain still needs a dot.
        parsed = validate_email(
            raw, check_deliverability=False, allow_smtputf8=True, globally_deliverable=False, test_environment=True
        )
    except (EmailNotValidError, ValueError):
        raise Invalid("INVALID_EMAIL", "not a valid e-mail address", field="email") from None
    if "." not in parsed.domain:
        raise Invalid("INVALID_EMAIL", "not a valid e-mail address", field="email")
    local = unicodedata.normalize("NFKC", parsed.local_part).lower()
    if any(unicodedata.category(ch).startswith("S") for ch in local):
        raise Invalid("INVALID_EMAIL", "an e-mail address holds no symbols or emoji", field="email")
    if confusables.is_mixed_script(local, allowed_aliases=["COMMON"]):
        raise Invalid("INVALID_EMAIL", "the e-mail address mixes scripts (look-alike letters)", field="email")
    letters = [ch for ch in local if ch.isalpha()]
    lookalikes = [ch for ch in letters if _reads_as_ascii(ch)]
    if lookalikes and (any(ch.isascii() for ch in letters) or len(lookalikes) == len(letters)):
        # "pаypal" (a Cyrillic а among Latin letters), "ɡ00" (a Latin script g), "асе" (all Cyrillic, read
        # as "ace"): each reads as an address someone else may own.
        raise Invalid("INVALID_EMAIL", "the e-mail address reads as another one (look-alike letters)", field="email")
    value = f"{local}@{(parsed.ascii_domain or parsed.domain).lower()}"
    if len(value) > 254 or "@" in local:
        raise Invalid("INVALID_EMAIL", "not a valid e-mail address", field="email")
    return value


def check_password_strength(password: str, email: str = "") -> None:
    problems = []
    if len(password) < 10:
        problems.append("at least 10 characters")
    if len(password) > 256:
        problems.append("at most 256 characters")
    if not re.search(r"[A-Za-z]", password) or not re.search(r"[^A-Za-z]", password):
        problems.append("letters and at least one digit or symbol")
    if password.lower() in _COMMON_PASSWORDS or len(set(password)) < 5:
        problems.append("not a common or repetitive password")
    local = email.partition("@")[0].lower()
    if len(local) >= 4 and local in password.lower():
        problems.append("not containing the e-mail address")
    if problems:
        raise Invalid("WEAK_PASSWORD", "password needs " + ", ".join(problems), field="password")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise Invalid("INVALID_ROLE", f"role must be one of {', '.join(ROLES)}", field="role")


def check_role_map(role_map: dict[str, str]) -> dict[str, str]:
    """Front-end role (case aside) -> parley role; admin and auditor are never given through a gateway."""
    if len(role_map) > MAX_ROLE_MAP:
        raise Invalid("INVALID_ROLE_MAP", f"a role map has at most {MAX_ROLE_MAP} entries", field="role_map")
    checked = {}
    for theirs, ours in role_map.items():
        if not isinstance(theirs, str) or not 0 < len(theirs) <= 64 or not isinstance(ours, str):
            raise Invalid("INVALID_ROLE_MAP", "a role map maps role names to parley roles", field="role_map")
        check_role(ours)
        if ours not in SIGNUP_ROLES:
            raise Invalid("INVALID_ROLE_MAP", "a gateway cannot make admins or auditors", field="role_map")
        checked[theirs.strip().lower()] = ours
    return checked


def check_slug(slug: str) -> None:
    if not _SLUG.match(slug):
        raise Invalid("INVALID_SLUG", "slug must be 1-40 lowercase letters, digits or '-'", field="slug")


_NAME_INVISIBLE = frozenset("\u200b\u2060\ufeff\u180e") | frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C))


def check_name(name: str, field: str = "name") -> str:
    """A name others see: 1-100 characters, NFC; no control characters, no invisible spaces and no bidi
    controls (a right-to-left override makes "evil.exe" read otherwise). Joiners stay: scripts and emoji
    sequences need them."""
    value = unicodedata.normalize("NFC", name.strip())
    if not 1 <= len(value) <= 100 or _CONTROL.search(value) or any(ch in _NAME_INVISIBLE for ch in value):
        raise Invalid(
            "INVALID_NAME", f"{field} must be 1-100 characters without control, invisible or bidi-control characters", field=field
        )
    return value


def check_domain(domain: str) -> str:
    value = domain.strip().lower()
    if not _HOST.match(value):
        raise Invalid("INVALID_DOMAIN", "not a valid host name", field="domains", domain=domain[:253])
    return value


# --- aggregates --------------------------------------------------------------------------------------------
class Tenant(Aggregate):
    @staticmethod
    def create_id(slug: str, **_: Any) -> UUID:  # deterministic: the slug is unique without a read model
        return tenant_id_for(slug)

    @event("TenantCreated")
    def __init__(
        self, slug: str, name: str, allow_signup: bool, default_role: str, domains: list[str]
    ) -> None:
        self.slug = slug
        self.name = name
        self.allow_signup = allow_signup
        self.default_role = default_role
        self.domains = list(domains)
        self.first_admin_id: UUID | None = None

    @property
    def tenant_id(self) -> str:
        return str(self.id)

    @event("TenantSettingsChanged")
    def change_settings(
        self, name: str, allow_signup: bool, default_role: str, domains: list[str]
    ) -> None:
        self.name = name
        self.allow_signup = allow_signup
        self.default_role = default_role
        self.domains = list(domains)

    @property
    def allows_self_erasure(self) -> bool:
        return bool(getattr(self, "self_erasure", False))

    def set_self_erasure(self, allowed: bool) -> None:
        """Whether the tenant's users may erase themselves (GDPR art. 17 without asking an admin)."""
        if allowed != self.allows_self_erasure:
            self._set_self_erasure(allowed=allowed)

    @event("SelfErasureSet")
    def _set_self_erasure(self, allowed: bool) -> None:
        self.self_erasure = allowed

    def claim_first_admin(self, user_id: UUID) -> None:
        if self.first_admin_id is not None:
            raise Conflict("FIRST_ADMIN_TAKEN", "this tenant already has its first admin")
        self._claim_first_admin(user_id=user_id)

    @event("FirstAdminClaimed")
    def _claim_first_admin(self, user_id: UUID) -> None:
        self.first_admin_id = user_id


class User(Aggregate):
    @event("UserRegistered")
    def __init__(
        self, tenant_id: str, email: str, name: str, role: str, password_hash: str | None, created_by: str
    ) -> None:
        """``password_hash`` is None for a user who signs in elsewhere (named by a gateway): no password
        opens that account."""
        self.tenant_id = tenant_id
        self.email = email
        self.name = name
        self.role = role
        self.password_hash = password_hash
        self.active = True
        # Every access token carries the version it was issued under; bumping it revokes them all.
        self.token_version = 1

    def check_active(self) -> None:
        if not self.active:
            raise Forbidden("USER_DEACTIVATED", "this account is deactivated")

    def change_password(self, password_hash: str) -> None:
        self.check_active()
        self._change_password(password_hash=password_hash)

    @event("PasswordChanged")
    def _change_password(self, password_hash: str) -> None:
        self.password_hash = password_hash
        self.token_version += 1

    def change_role(self, role: str) -> None:
        check_role(role)
        if role != self.role:
            self._change_role(role=role, previous_role=self.role)

    @event("RoleChanged")
    def _change_role(self, role: str, previous_role: str) -> None:
        self.role = role
        self.token_version += 1

    def rename(self, name: str) -> None:
        name = check_name(name)
        if name != self.name:
            self._rename(name=name)

    @event("UserRenamed")
    def _rename(self, name: str) -> None:
        self.name = name

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()

    @event("UserDeactivated")
    def _deactivate(self) -> None:
        self.active = False
        self.token_version += 1

    def reactivate(self) -> None:
        self.check_not_erased()
        if not self.active:
            self._reactivate()

    def check_not_erased(self) -> None:
        if getattr(self, "erased", False):
            raise Conflict("USER_ERASED", "this user's personal data was erased")

    def erase(self, erased_by: str) -> None:
        """Erase the user (GDPR art. 17): the account is closed for good and every key sealing the
        user's personal data is destroyed (by the service, after this event is stored)."""
        self.check_not_erased()
        self._erase(erased_by=erased_by)

    @event("UserErased")
    def _erase(self, erased_by: str) -> None:
        self.erased = True
        self.active = False
        self.email = ERASED
        self.name = ERASED
        self.password_hash = None
        self.token_version += 1

    @event("UserReactivated")
    def _reactivate(self) -> None:
        self.active = True

    @event("TokensRevoked")
    def revoke_tokens(self, reason: str) -> None:
        self.token_version += 1


class EmailIndex(Aggregate):
    """One per (tenant, e-mail): creating it twice conflicts in the event store, which is what makes
    e-mails unique per tenant without a read model."""

    @staticmethod
    def create_id(tenant_id: str, email: str, **_: Any) -> UUID:
        return email_index_id(tenant_id, email)

    @event("EmailClaimed")
    def __init__(self, tenant_id: str, email: str, user_id: UUID) -> None:
        self.tenant_id = tenant_id
        self.email = email
        self.user_id = user_id


class DomainIndex(Aggregate):
    """One per host name: creating it twice conflicts in the event store, so a domain belongs to one
    tenant (requests are routed to a tenant by their host name)."""

    @staticmethod
    def create_id(domain: str, **_: Any) -> UUID:
        return domain_index_id(domain)

    @event("DomainClaimed")
    def __init__(self, domain: str, tenant_id: str) -> None:
        self.domain = domain
        self.tenant_id = tenant_id


class Invitation(Aggregate):
    """A one-time invitation to join a tenant with a role: how a tenant gets its first admin (the platform
    admin invites them) and how admins bring people into a tenant whose sign-up is closed. Only a hash of
    the token is kept; it expires, and it is used once."""

    @staticmethod
    def create_id(invitation_id: UUID, **_: Any) -> UUID:  # the id is part of the token the invitee holds
        return invitation_id

    @event("InvitationIssued")
    def __init__(
        self, invitation_id: UUID, tenant_id: str, email: str, role: str, token_hash: str, expires_at: datetime
    ) -> None:
        self.tenant_id = tenant_id
        self.email = email
        self.role = role
        self.token_hash = token_hash
        self.expires_at = expires_at
        self.accepted_by: UUID | None = None
        self.revoked = False

    def check_acceptable(self, now: datetime) -> None:
        if self.accepted_by is not None:
            raise Conflict("INVITATION_USED", "this invitation was used already")
        if self.revoked:
            raise Forbidden("INVITATION_REVOKED", "this invitation was revoked")
        if now >= self.expires_at:
            raise Forbidden("INVITATION_EXPIRED", "this invitation has expired; ask for a new one")

    @event("InvitationAccepted")
    def accept(self, user_id: UUID) -> None:
        self.accepted_by = user_id

    def revoke(self) -> None:
        if not self.revoked and self.accepted_by is None:
            self._revoke()

    @event("InvitationRevoked")
    def _revoke(self) -> None:
        self.revoked = True


class ApiKey(Aggregate):
    @staticmethod
    def create_id(key_id: UUID, **_: Any) -> UUID:  # the id is part of the key the user holds
        return key_id

    @event("ApiKeyCreated")
    def __init__(
        self,
        key_id: UUID,
        tenant_id: str,
        user_id: UUID,
        name: str,
        prefix: str,
        key_hash: str,
        scopes: list[str],
        expires_at: datetime | None,
        role_map: dict[str, str] | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.name = name
        self.prefix = prefix
        self.key_hash = key_hash
        self.scopes = list(scopes)
        self.expires_at = expires_at
        self.revoked = False
        self.role_map: dict[str, str] = dict(role_map or {})

    @property
    def is_gateway(self) -> bool:
        return "gateway" in self.scopes

    def set_role_map(self, role_map: dict[str, str]) -> None:
        """How a gateway's end users' roles (as the front end names them) become parley roles for users
        it creates; a role not in the map gets the tenant's default role."""
        if not self.is_gateway:
            raise Invalid("NOT_A_GATEWAY_KEY", "only gateway keys map roles", field="role_map")
        checked = check_role_map(role_map)
        if checked != self.role_map:
            self._set_role_map(role_map=checked)

    @event("ApiKeyRoleMapChanged")
    def _set_role_map(self, role_map: dict[str, str]) -> None:
        self.role_map = dict(role_map)

    def check_usable(self, now: datetime) -> None:
        if self.revoked:
            raise Unauthenticated("API_KEY_REVOKED", "this API key was revoked")
        if self.expires_at is not None and now >= self.expires_at:
            raise Unauthenticated("API_KEY_EXPIRED", "this API key has expired")

    def revoke(self) -> None:
        if not self.revoked:
            self._revoke()

    @event("ApiKeyRevoked")
    def _revoke(self) -> None:
        self.revoked = True


class Session(Aggregate):
    """A sign-in session: one family of rotating refresh tokens. Presenting a refresh token that was
    already rotated away means it leaked: the whole session is revoked."""

    @staticmethod
    def create_id(session_id: UUID, **_: Any) -> UUID:  # the id is part of the refresh token
        return session_id

    @event("SessionStarted")
    def __init__(
        self,
        session_id: UUID,
        tenant_id: str,
        user_id: UUID,
        refresh_hash: str,
        token_version: int,
        expires_at: datetime,
    ) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.refresh_hash = refresh_hash
        self.used_hashes: list[str] = []
        self.token_version = token_version
        self.expires_at = expires_at
        self.ended = False

    def check_refreshable(self, presented_hash: str, now: datetime, token_version: int) -> None:
        if self.ended:
            raise Unauthenticated("SESSION_ENDED", "this session has ended; sign in again")
        if presented_hash in self.used_hashes:
            raise Unauthenticated("REFRESH_TOKEN_REUSED", "refresh token was already used")
        if presented_hash != self.refresh_hash:
            raise Unauthenticated("INVALID_REFRESH_TOKEN", "refresh token is not valid")
        if now >= self.expires_at:
            raise Unauthenticated("REFRESH_TOKEN_EXPIRED", "refresh token has expired; sign in again")
        if token_version != self.token_version:
            raise Unauthenticated("TOKEN_REVOKED", "this session was revoked; sign in again")

    @event("SessionRefreshed")
    def rotate(self, refresh_hash: str, expires_at: datetime) -> None:
        self.used_hashes.append(self.refresh_hash)
        self.refresh_hash = refresh_hash
        self.expires_at = expires_at

    def end(self, reason: str) -> None:
        if not self.ended:
            self._end(reason=reason)

    @event("SessionEnded")
    def _end(self, reason: str) -> None:
        self.ended = True


class SignInAttempt(Aggregate):
    """A failed sign-in: a security event that changes no other aggregate, kept for the audit log."""

    @event("SignInFailed")
    def __init__(self, tenant_id: str, email: str, reason: str, user_id: UUID | None = None) -> None:
        """``user_id``: the account the address belongs to, where there is one (its erasure shreds this)."""
        self.tenant_id = tenant_id
        self.email = email
        self.reason = reason
        self.user_id = user_id


class TokenMisuse(Aggregate):
    """A revoked or reused token was presented."""

    @event("RevokedTokenUsed")
    def __init__(self, tenant_id: str, user_id: UUID | None, token_kind: str, reason: str) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.token_kind = token_kind
        self.reason = reason


class ExternalIdentity(Aggregate):
    """A user's account at an outside identity provider (an OIDC issuer's subject, an LDAP entry), linked to
    one parley user: the id is deterministic in (tenant, source, subject), so one outside account links to
    one user without a read model, and a later sign-in finds the user even after their e-mail changed."""

    @staticmethod
    def create_id(tenant_id: str, source: str, subject: str, **_: Any) -> UUID:
        return external_identity_id(tenant_id, source, subject)

    @event("ExternalIdentityLinked")
    def __init__(self, tenant_id: str, source: str, subject: str, user_id: UUID) -> None:
        """``source``: which provider (``oidc:<provider id>``, ``ldap:<directory>``); ``subject``: the
        account's stable id there (an ID token's ``sub``, an entry's DN)."""
        self.tenant_id = tenant_id
        self.source = source
        self.subject = subject
        self.user_id = user_id
