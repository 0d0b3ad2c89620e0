"""LDAP sign-in per tenant: where the tenant's directory is, how a user is found in it, and how its groups
become parley roles. No I/O here: the application layer binds and searches (``adapters.ldap``).

One ``LdapDirectory`` per tenant (a deterministic id: configuring twice changes the one directory). The
service account's password is kept only sealed (``bind_password_encrypted``: never on the wire, never in
the audit log, never returned). The user filter names the login with ``{login}``; the value put there is
escaped per RFC 4515 when the search is made, so a login cannot widen the filter.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Invalid
from domain.identity import ROLES

__all__ = [
    "ROLE_PRECEDENCE",
    "LdapDirectory",
    "LdapSettings",
    "check_ldap_settings",
    "ldap_directory_id",
    "role_for_groups",
]

ROLE_PRECEDENCE = ("admin", "auditor", "premium", "user", "guest", "pending")
"""Which role a user in several mapped groups gets: the first of these that any of their groups maps to."""
assert set(ROLE_PRECEDENCE) == set(ROLES)
MAX_GROUP_MAP = 64
MAX_TIMEOUT_S = 30
MAX_CA_PEM_CHARS = 65536
_HOST = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
_ATTRIBUTE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
# A DN: RDNs of attr=value; the directory is the judge of the rest (a bad base fails the search).
_DN = re.compile(r"^[A-Za-z][A-Za-z0-9-]*=[^,=]+(?:\s*,\s*[A-Za-z][A-Za-z0-9-]*=[^,=]+)*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

LdapSettings = dict[str, Any]
"""The checked settings, as the events carry them (every key of ``check_ldap_settings``'s result)."""


def ldap_directory_id(tenant_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/ldap")


def _text(value: Any, field: str, *, limit: int = 1024, empty: bool = False) -> str:
    if not isinstance(value, str) or _CONTROL.search(value) or len(value.strip()) > limit or (not empty and not value.strip()):
        raise Invalid("INVALID_LDAP_SETTINGS", f"{field} must be 1-{limit} characters without control characters", field=field)
    return value.strip()


def _dn(value: Any, field: str, *, empty: bool = False) -> str:
    text = _text(value, field, empty=empty)
    if text and not _DN.match(text):
        raise Invalid("INVALID_LDAP_SETTINGS", f"{field} is not a distinguished name (attr=value,...)", field=field)
    return text


def _url(value: Any) -> str:
    """``scheme://host:port`` with the port made explicit; IPv6 hosts in brackets."""
    text = _text(value, "url", limit=300)
    refusal = Invalid("INVALID_LDAP_SETTINGS", "url must be ldap://host[:port] or ldaps://host[:port]", field="url")
    try:
        parts = urlsplit(text)
        port, host = parts.port, parts.hostname
    except ValueError:
        raise refusal from None
    if parts.scheme not in ("ldap", "ldaps") or not host or parts.path not in ("", "/") or parts.query or parts.username:
        raise refusal
    if ":" in host:
        try:
            host = f"[{ipaddress.IPv6Address(host)}]"
        except ValueError:
            raise refusal from None
    elif not _HOST.match(host):
        raise refusal
    default = 636 if parts.scheme == "ldaps" else 389
    return f"{parts.scheme}://{host}:{port or default}"


def _filter(value: Any) -> str:
    text = _text(value, "user_filter", limit=512)
    if text.count("{login}") < 1 or not (text.startswith("(") and text.endswith(")")):
        raise Invalid(
            "INVALID_LDAP_SETTINGS",
            "user_filter is an LDAP filter in parentheses naming the login as {login}, e.g. (uid={login})",
            field="user_filter",
        )
    if text.count("(") != text.count(")") or re.search(r"\{(?!login\})", text):
        raise Invalid("INVALID_LDAP_SETTINGS", "user_filter is not a well-formed LDAP filter", field="user_filter")
    return text


def _optional_filter(value: Any, field: str) -> str:
    if value is None or value == "":
        return ""
    text = _text(value, field, limit=512)
    if not (text.startswith("(") and text.endswith(")")) or text.count("(") != text.count(")") or "{" in text:
        raise Invalid("INVALID_LDAP_SETTINGS", f"{field} is an LDAP filter in parentheses", field=field)
    return text


def _ca_pem(value: Any) -> str:
    if value is None or value == "":
        return ""
    if (
        not isinstance(value, str)
        or len(value) > MAX_CA_PEM_CHARS
        or "-----BEGIN CERTIFICATE-----" not in value
        or "PRIVATE KEY" in value
    ):
        raise Invalid(
            "INVALID_LDAP_SETTINGS", "tls_ca_pem holds PEM certificates (-----BEGIN CERTIFICATE-----), no keys", field="tls_ca_pem"
        )
    return value.strip() + "\n"


def _attribute(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ATTRIBUTE.match(value):
        raise Invalid("INVALID_LDAP_SETTINGS", f"{field} is an attribute name (letters, digits, '-')", field=field)
    return value


def _group_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_GROUP_MAP:
        raise Invalid("INVALID_LDAP_SETTINGS", f"group_roles maps at most {MAX_GROUP_MAP} group DNs to roles", field="group_roles")
    checked: dict[str, str] = {}
    for group, role in value.items():
        dn = _dn(group, "group_roles")
        if not isinstance(role, str) or role not in ROLES:
            raise Invalid("INVALID_LDAP_SETTINGS", f"group_roles maps group DNs to roles among {', '.join(ROLES)}", field="group_roles")
        checked[normalize_dn(dn)] = role
    return checked


def normalize_dn(dn: str) -> str:
    """A DN as group maps compare it: lower-cased, no spaces around the separators (directories answer
    ``cn=Staff,ou=groups`` for what an admin wrote ``CN=staff, ou=Groups``)."""
    return ",".join("=".join(p.strip() for p in rdn.split("=", 1)) for rdn in dn.split(",")).lower()


def check_ldap_settings(raw: dict[str, Any]) -> LdapSettings:
    """Every setting checked; raises ``Invalid`` (``INVALID_LDAP_SETTINGS``) naming the first bad field."""
    start_tls = raw.get("start_tls", False)
    url = _url(raw.get("url"))
    if not isinstance(start_tls, bool) or (start_tls and url.startswith("ldaps:")):
        raise Invalid("INVALID_LDAP_SETTINGS", "start_tls is true or false, and not with ldaps:// (already TLS)", field="start_tls")
    timeout = raw.get("timeout_s", 5)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise Invalid("INVALID_LDAP_SETTINGS", f"timeout_s is a number of seconds up to {MAX_TIMEOUT_S}", field="timeout_s")
    default_role = raw.get("default_role")
    if default_role is not None and (not isinstance(default_role, str) or default_role not in ROLES):
        raise Invalid("INVALID_LDAP_SETTINGS", f"default_role is one of {', '.join(ROLES)}", field="default_role")
    create_users = raw.get("create_users", True)
    enabled = raw.get("enabled", True)
    verify_tls = raw.get("verify_tls", True)
    link_password_accounts = raw.get("link_password_accounts", False)
    flags = (
        ("create_users", create_users), ("enabled", enabled), ("verify_tls", verify_tls),
        ("link_password_accounts", link_password_accounts),
    )  # fmt: skip
    for name, flag in flags:
        if not isinstance(flag, bool):
            raise Invalid("INVALID_LDAP_SETTINGS", f"{name} is true or false", field=name)
    return {
        "url": url,
        "start_tls": start_tls,
        "verify_tls": verify_tls,
        "tls_ca_pem": _ca_pem(raw.get("tls_ca_pem")),
        "bind_dn": _dn(raw.get("bind_dn"), "bind_dn"),
        "search_base": _dn(raw.get("search_base"), "search_base"),
        "user_filter": _filter(raw.get("user_filter", "(uid={login})")),
        "disabled_filter": _optional_filter(raw.get("disabled_filter"), "disabled_filter"),
        "email_attribute": _attribute(raw.get("email_attribute", "mail"), "email_attribute"),
        "name_attribute": _attribute(raw.get("name_attribute", "cn"), "name_attribute"),
        "group_base": _dn(raw.get("group_base") or "", "group_base", empty=True),
        "group_roles": _group_map(raw.get("group_roles", {})),
        "default_role": default_role,
        "create_users": create_users,
        "link_password_accounts": link_password_accounts,
        "enabled": enabled,
        "timeout_s": float(timeout),
    }


def role_for_groups(group_roles: dict[str, str], groups: list[str]) -> str | None:
    """The role the user's groups give (``ROLE_PRECEDENCE`` among several), or None when none is mapped."""
    mapped = {group_roles[g] for g in (normalize_dn(dn) for dn in groups) if g in group_roles}
    return next((role for role in ROLE_PRECEDENCE if role in mapped), None)


class LdapDirectory(Aggregate):
    """A tenant's LDAP directory, as its admin configured it."""

    @staticmethod
    def create_id(tenant_id: str, **_: Any) -> UUID:
        return ldap_directory_id(tenant_id)

    @event("LdapDirectoryConfigured")
    def __init__(self, tenant_id: str, settings: LdapSettings, bind_password_encrypted: str) -> None:
        self.tenant_id = tenant_id
        self.settings = dict(settings)
        self.bind_password_encrypted = bind_password_encrypted

    def reconfigure(self, settings: LdapSettings, bind_password_encrypted: str | None) -> None:
        """New settings; ``bind_password_encrypted`` None keeps the sealed password there is."""
        sealed = bind_password_encrypted or self.bind_password_encrypted
        if settings != self.settings or sealed != self.bind_password_encrypted:
            self._reconfigure(settings=settings, bind_password_encrypted=sealed)

    @event("LdapDirectoryChanged")
    def _reconfigure(self, settings: LdapSettings, bind_password_encrypted: str) -> None:
        self.settings = dict(settings)
        self.bind_password_encrypted = bind_password_encrypted
