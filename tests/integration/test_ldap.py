"""LDAP sign-in against a real OpenLDAP ``slapd`` (started once for the module, tests/integration/ldap_server.py):
a tenant admin configures the directory (its service account's password sealed, never returned); a directory
user signs in and ends exactly as after a password sign-in, with the role their groups map to; a wrong
password, a locked or disabled entry and an unreachable directory are refused with stable codes and audited,
and never fall back to a local password."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ldap3
import pytest

from tests.integration.ldap_server import (
    ROOT_DN,
    ROOT_PASSWORD,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SUFFIX,
    Slapd,
    free_port,
    start_slapd,
)
from workers.bootstrap import Container

pytestmark = pytest.mark.skipif(
    shutil.which("slapd") is None and not Path("/usr/sbin/slapd").exists(),
    reason="slapd is not installed (make test installs it: apt-get install slapd ldap-utils)",
)

ADMIN_PASSWORD = "correct horse 9"


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    home = Path(tempfile.mkdtemp(prefix="parley-slapd-"))
    try:
        server = start_slapd(home)
        yield server
        server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def settings_for(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": url,
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PASSWORD,
        "search_base": f"ou=people,{SUFFIX}",
        "user_filter": "(&(objectClass=inetOrgPerson)(uid={login}))",
        "disabled_filter": "(employeeType=disabled)",
        "group_base": f"ou=groups,{SUFFIX}",
        "group_roles": {f"CN=Admins, ou=groups,{SUFFIX}": "admin", f"cn=staff,ou=groups,{SUFFIX}": "premium"},
        "timeout_s": 2,
        **extra,
    }


async def admin_headers(client: httpx.AsyncClient) -> dict[str, str]:
    r = await client.post(
        "/api/v1/auths/register", json={"email": "root@example.com", "password": ADMIN_PASSWORD, "name": "Root"}
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/auths/login", json={"email": "root@example.com", "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def ldap_login(client: httpx.AsyncClient, login: str, password: str) -> httpx.Response:
    return await client.post("/api/v1/auths/ldap", json={"login": login, "password": password})


async def me(client: httpx.AsyncClient, tokens: dict[str, Any]) -> dict[str, Any]:
    r = await client.get("/api/v1/auths/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def written_since(c: Container, before: int) -> list[Any]:
    return await c.store.call(c.store.read, before + 1, 100)


async def head(c: Container) -> int:
    return await c.store.call(c.store.max_id)


def code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


async def test_admin_configures_the_directory_and_never_reads_its_password_back(
    client: httpx.AsyncClient, container: Container, slapd: Slapd
) -> None:
    admin = await admin_headers(client)
    r = await client.get("/api/v1/auth/ldap", headers=admin)
    assert r.status_code == 404 and code(r) == "LDAP_NOT_CONFIGURED"
    r = await ldap_login(client, "alice", "alice pass 1")
    assert r.status_code == 404 and code(r) == "LDAP_NOT_CONFIGURED"

    before = await head(container)
    r = await client.put("/api/v1/auth/ldap", json=settings_for(slapd.url), headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["has_bind_password"] is True and "bind_password" not in body
    assert body["group_roles"] == {f"cn=admins,ou=groups,{SUFFIX}": "admin", f"cn=staff,ou=groups,{SUFFIX}": "premium"}
    events = await written_since(container, before)
    assert [e.type for e in events] == ["LdapDirectoryConfigured"]
    assert SERVICE_PASSWORD not in repr(events[0].data) and events[0].data["has_bind_password"] is True

    # Changed without a password: the sealed one stays (sign-in below still binds with it).
    changed = settings_for(slapd.url, create_users=True)
    del changed["bind_password"]
    r = await client.put("/api/v1/auth/ldap", json=changed, headers=admin)
    assert r.status_code == 200 and r.json()["has_bind_password"] is True
    r = await client.get("/api/v1/auth/ldap", headers=admin)
    assert r.status_code == 200 and "bind_password" not in r.json() and r.json()["url"] == slapd.url

    for bad, field in (
        ({"url": "http://127.0.0.1:389"}, "url"),
        ({"user_filter": "(uid=alice)"}, "user_filter"),
        ({"start_tls": True, "url": "ldaps://127.0.0.1"}, "start_tls"),
        ({"group_roles": {"not a dn": "admin"}}, "group_roles"),
        ({"group_roles": {f"cn=x,{SUFFIX}": "emperor"}}, "group_roles"),
        ({"default_role": "admin"}, "default_role"),
    ):
        r = await client.put("/api/v1/auth/ldap", json=settings_for(slapd.url) | bad, headers=admin)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["detail"].get("field") == field, (bad, r.text)

    # An account here that signs in with a password is not taken over by whoever the directory says has its
    # e-mail (a directory's users may be able to edit their own mail), unless the admin allows linking.
    r = await client.post(
        "/api/v1/auths/register", json={"email": "alice@example.org", "password": ADMIN_PASSWORD, "name": "Local Alice"}
    )
    assert r.status_code == 201, r.text
    before = await head(container)
    r = await ldap_login(client, "alice", "alice pass 1")
    assert r.status_code == 403 and code(r) == "LDAP_ACCOUNT_EXISTS", r.text
    assert [e.data["reason"] for e in await written_since(container, before) if e.type == "SignInFailed"] == [
        "LDAP_ACCOUNT_EXISTS"
    ]
    r = await client.put("/api/v1/auth/ldap", json=changed | {"link_password_accounts": True}, headers=admin)
    assert r.status_code == 200 and r.json()["link_password_accounts"] is True, r.text

    alice = (await ldap_login(client, "alice", "alice pass 1")).json()
    r = await client.get("/api/v1/auth/ldap", headers={"Authorization": f"Bearer {alice['access_token']}"})
    assert r.status_code == 200  # alice is an admin by her group
    bob = (await ldap_login(client, "bob", "bob pass 2")).json()
    r = await client.put(
        "/api/v1/auth/ldap", json=settings_for(slapd.url), headers={"Authorization": f"Bearer {bob['access_token']}"}
    )
    assert r.status_code == 403 and code(r) == "ADMIN_REQUIRED"


async def test_directory_users_sign_in_with_the_roles_their_groups_map_to(
    client: httpx.AsyncClient, container: Container, slapd: Slapd
) -> None:
    admin = await admin_headers(client)
    assert (await client.put("/api/v1/auth/ldap", json=settings_for(slapd.url), headers=admin)).status_code == 200

    before = await head(container)
    r = await ldap_login(client, "alice", "alice pass 1")
    assert r.status_code == 200, r.text
    alice = r.json()
    assert alice["token_type"] == "bearer" and alice["refresh_token"]
    profile = await me(client, alice)
    # In cn=admins and cn=staff: admin goes first.
    assert (profile["email"], profile["name"], profile["role"]) == ("alice@example.org", "Alice Liddell", "admin")
    types = [e.type for e in await written_since(container, before)]
    assert {"UserRegistered", "EmailClaimed", "ExternalIdentityLinked", "SessionStarted"} <= set(types)

    bob = (await ldap_login(client, "bob", "bob pass 2")).json()
    assert (await me(client, bob))["role"] == "premium"
    dave = (await ldap_login(client, "dave", "dave pass 4")).json()
    assert (await me(client, dave))["role"] == "user"  # no mapped group: the tenant's default role

    # It ends as a password sign-in does: the refresh token rotates.
    r = await client.post("/api/v1/auths/refresh", json={"refresh_token": alice["refresh_token"]})
    assert r.status_code == 200, r.text

    # A second sign-in finds the same user (no new account), and the login's case is the directory's business.
    before = await head(container)
    again = await ldap_login(client, "ALICE", "alice pass 1")
    assert again.status_code == 200, again.text
    assert (await me(client, again.json()))["id"] == profile["id"]
    assert "UserRegistered" not in [e.type for e in await written_since(container, before)]

    # A directory user has no local password: the password route never signs them in.
    r = await client.post("/api/v1/auths/login", json={"email": "alice@example.org", "password": "alice pass 1"})
    assert r.status_code == 401 and code(r) == "INVALID_CREDENTIALS"

    # The groups are read at every sign-in: bob joins cn=admins in the directory and signs in as an admin.
    with ldap3.Connection(ldap3.Server(slapd.url), ROOT_DN, ROOT_PASSWORD, auto_bind=True) as directory:
        assert directory.modify(
            f"cn=admins,ou=groups,{SUFFIX}", {"member": [(ldap3.MODIFY_ADD, [f"uid=bob,ou=people,{SUFFIX}"])]}
        )
    bob = (await ldap_login(client, "bob", "bob pass 2")).json()
    assert (await me(client, bob))["role"] == "admin"

    # Directory users unknown here are refused once the tenant stops creating them; known ones still sign in.
    assert (
        await client.put("/api/v1/auth/ldap", json=settings_for(slapd.url, create_users=False), headers=admin)
    ).status_code == 200
    before = await head(container)
    r = await ldap_login(client, "frank", "frank pass 6")
    assert (r.status_code, code(r)) == (403, "LDAP_USER_UNKNOWN"), r.text
    assert [e.type for e in await written_since(container, before)] == ["SignInFailed"]
    assert (await ldap_login(client, "dave", "dave pass 4")).status_code == 200


async def test_wrong_password_locked_entries_and_outages_are_refused_and_audited(
    client: httpx.AsyncClient, container: Container, slapd: Slapd
) -> None:
    admin = await admin_headers(client)
    assert (await client.put("/api/v1/auth/ldap", json=settings_for(slapd.url), headers=admin)).status_code == 200

    async def refused(login: str, password: str, status: int, error: str, reason: str) -> None:
        before = await head(container)
        r = await ldap_login(client, login, password)
        assert (r.status_code, code(r)) == (status, error), r.text
        events = await written_since(container, before)
        assert [(e.type, e.data["reason"]) for e in events] == [("SignInFailed", reason)], events

    await refused("alice", "not her password", 401, "INVALID_CREDENTIALS", "LDAP_WRONG_PASSWORD")
    await refused("nobody", "whatever 1", 401, "INVALID_CREDENTIALS", "LDAP_UNKNOWN_LOGIN")
    # The login is escaped (RFC 4515): a wildcard is a literal "*", not every entry.
    await refused("*", "alice pass 1", 401, "INVALID_CREDENTIALS", "LDAP_UNKNOWN_LOGIN")
    await refused("alice)(uid=*", "alice pass 1", 401, "INVALID_CREDENTIALS", "LDAP_UNKNOWN_LOGIN")
    # Locked by the password policy (pwdAccountLockedTime), and disabled by the configured filter: refused
    # even with the right password.
    await refused("carol", "carol pass 3", 403, "LDAP_ACCOUNT_LOCKED", "LDAP_ACCOUNT_LOCKED")
    await refused("erin", "erin pass 5", 403, "LDAP_ACCOUNT_LOCKED", "LDAP_ACCOUNT_LOCKED")

    # alice has signed in before; the directory goes down: 503, never her (absent) local password.
    assert (await ldap_login(client, "alice", "alice pass 1")).status_code == 200
    closed = free_port()
    assert (await client.put("/api/v1/auth/ldap", json=settings_for(f"ldap://127.0.0.1:{closed}"), headers=admin)).status_code == 200
    await refused("alice", "alice pass 1", 503, "LDAP_UNAVAILABLE", "LDAP_UNAVAILABLE")

    # A directory that accepts connections and never answers: refused within the configured timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"ldap://127.0.0.1:{silent.getsockname()[1]}"
        r = await client.put("/api/v1/auth/ldap", json=settings_for(url, timeout_s=1), headers=admin)
        assert r.status_code == 200
        started = time.monotonic()
        await refused("alice", "alice pass 1", 503, "LDAP_UNAVAILABLE", "LDAP_UNAVAILABLE")
        assert time.monotonic() - started < 10


async def test_tls_to_the_directory_is_checked_against_the_configured_ca(
    client: httpx.AsyncClient, container: Container, slapd: Slapd
) -> None:
    admin = await admin_headers(client)

    async def sign_in_over(**tls: Any) -> httpx.Response:
        r = await client.put("/api/v1/auth/ldap", json=settings_for(slapd.url) | tls, headers=admin)
        assert r.status_code == 200, r.text
        return await ldap_login(client, "dave", "dave pass 4")

    assert (await sign_in_over(url=slapd.ldaps_url, tls_ca_pem=slapd.ca_pem)).status_code == 200
    assert (await sign_in_over(start_tls=True, tls_ca_pem=slapd.ca_pem)).status_code == 200
    # A certificate the configured (here: the system's) CAs did not sign: no sign-in, whatever the password.
    for tls in ({"url": slapd.ldaps_url}, {"start_tls": True}):
        r = await sign_in_over(**tls)
        assert (r.status_code, code(r)) == (503, "LDAP_UNAVAILABLE"), (tls, r.text)
    # Checking switched off (a test directory): the same servers serve.
    assert (await sign_in_over(url=slapd.ldaps_url, verify_tls=False)).status_code == 200
    r = await client.put("/api/v1/auth/ldap", json=settings_for(slapd.url) | {"tls_ca_pem": "not a certificate"}, headers=admin)
    assert (r.status_code, r.json()["error"]["detail"].get("field")) == (422, "tls_ca_pem")
