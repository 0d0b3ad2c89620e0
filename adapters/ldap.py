"""The LDAP directory adapter (ldap3): bind as the tenant's service account, find the user, bind as the user
with the password given, read their groups. ldap3 is synchronous: the application calls ``authenticate`` on
a worker thread, and every socket operation here has the configured timeout, so a directory that hangs
costs a sign-in at most a few timeouts, never the event loop."""

from __future__ import annotations

import math
import ssl
from typing import Any

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars

from application.ldap import (
    DirectoryUser,
    LdapAccountLocked,
    LdapRefused,
    LdapUnavailable,
    LdapUnknownUser,
    LdapWrongPassword,
)
from domain.ldap import LdapSettings

__all__ = ["Ldap3Directory"]

LOCKED_ATTRIBUTE = "pwdAccountLockedTime"
"""OpenLDAP's password policy (ppolicy, draft-behera) marks a locked account with this operational attribute."""


def _first(entry: Any, attribute: str) -> str | None:
    values = entry["attributes"].get(attribute) if isinstance(entry, dict) else None
    if isinstance(values, list):
        values = values[0] if values else None
    return str(values) if values not in (None, "") else None


class Ldap3Directory:
    """Implements ``application.ldap.Directory``."""

    def _server(self, settings: LdapSettings) -> ldap3.Server:
        host, _, port = settings["url"].split("://", 1)[1].rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # an IPv6 address
        # The tenant's CA certificates, where given, in place of the system's (a company's own CA).
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if settings["verify_tls"] else ssl.CERT_NONE,
            ca_certs_data=settings["tls_ca_pem"] or None,
        )
        return ldap3.Server(
            host,
            port=int(port),
            use_ssl=settings["url"].startswith("ldaps:"),
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=settings["timeout_s"],
        )

    def _bind(self, server: ldap3.Server, settings: LdapSettings, dn: str, password: str) -> ldap3.Connection | None:
        """A bound connection, or None when the directory refused the credentials (result 49)."""
        conn = ldap3.Connection(
            server,
            user=dn,
            password=password,
            receive_timeout=max(1, math.ceil(settings["timeout_s"])),  # ldap3 packs it as whole seconds
            raise_exceptions=False,
            read_only=True,
        )
        try:
            conn.open()
            if settings["start_tls"] and not conn.start_tls():
                conn.unbind()
                raise LdapUnavailable("StartTLS was refused")
            if conn.bind():
                return conn
            code = conn.result.get("result") if conn.result else None
            conn.unbind()
        except (ldap_errors.LDAPSocketOpenError, ldap_errors.LDAPSocketReceiveError, ldap_errors.LDAPSocketSendError,
                ldap_errors.LDAPSessionTerminatedByServerError, ldap_errors.LDAPStartTLSError, ssl.SSLError, OSError) as exc:
            raise LdapUnavailable(type(exc).__name__) from None
        except ldap_errors.LDAPException as exc:
            raise LdapUnavailable(type(exc).__name__) from None
        if code == 49:  # invalidCredentials
            return None
        raise LdapUnavailable(f"bind answered {code}")

    def _search(
        self, conn: ldap3.Connection, base: str, search_filter: str, attributes: list[str], size_limit: int = 0
    ) -> list[dict[str, Any]]:
        try:
            conn.search(base, search_filter, search_scope=ldap3.SUBTREE, attributes=attributes, size_limit=size_limit)
        except ldap_errors.LDAPException as exc:
            raise LdapUnavailable(type(exc).__name__) from None
        code = conn.result.get("result") if conn.result else None
        if code not in (0, 4, 32):  # success, sizeLimitExceeded (we asked for 2), noSuchObject
            raise LdapUnavailable(f"search answered {code}")
        return [e for e in conn.response or [] if e.get("type") == "searchResEntry"]

    def authenticate(self, settings: LdapSettings, bind_password: str, login: str, password: str) -> DirectoryUser:
        if not password:  # an empty password is an anonymous bind that "succeeds" (RFC 4513 5.1.2)
            raise LdapWrongPassword()
        server = self._server(settings)
        service = self._bind(server, settings, settings["bind_dn"], bind_password)
        if service is None:
            raise LdapUnavailable("the service account's bind was refused")
        try:
            user_filter = settings["user_filter"].replace("{login}", escape_filter_chars(login))
            attributes = [settings["email_attribute"], settings["name_attribute"], LOCKED_ATTRIBUTE]
            found = self._search(service, settings["search_base"], user_filter, attributes, size_limit=2)
            if not found:
                raise LdapUnknownUser()
            if len(found) > 1:
                raise LdapRefused("LDAP_AMBIGUOUS_LOGIN", "the login matches more than one directory entry")
            entry = found[0]
            dn = str(entry["dn"])
            if _first(entry, LOCKED_ATTRIBUTE):
                raise LdapAccountLocked()
            if settings["disabled_filter"]:
                disabled = f"(&{user_filter}{settings['disabled_filter']})"
                if self._search(service, dn, disabled, ["1.1"]):
                    raise LdapAccountLocked()
            groups = self._search(
                service,
                settings["group_base"] or settings["search_base"],
                f"(|(member={escape_filter_chars(dn)})(uniqueMember={escape_filter_chars(dn)}))",
                ["1.1"],
            )
        finally:
            service.unbind()
        user = self._bind(server, settings, dn, password)
        if user is None:
            raise LdapWrongPassword()
        user.unbind()
        return DirectoryUser(
            dn=dn,
            email=_first(entry, settings["email_attribute"]),
            name=_first(entry, settings["name_attribute"]),
            groups=[str(g["dn"]) for g in groups],
        )
