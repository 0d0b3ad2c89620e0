"""Tenants through HTTP: an admin of one tenant sees and touches nothing of another, a credential works
only in its own tenant, and only the platform admin (an admin of the default tenant) manages tenants."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from domain.identity import tenant_id_for
from tests.conftest import Pipeline
from workers.bootstrap import Container

PASSWORD = "correct horse 9"


# --- helpers -------------------------------------------------------------------------------------------
def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


async def register(
    client: httpx.AsyncClient, email: str, tenant: str | None = None, name: str = "Someone"
) -> dict[str, Any]:
    headers = {"X-Tenant": tenant} if tenant else {}
    r = await client.post(
        "/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": name}, headers=headers
    )
    assert r.status_code == 201, r.text
    return r.json()


async def login(client: httpx.AsyncClient, email: str, tenant: str | None = None) -> dict[str, Any]:
    headers = {"X-Tenant": tenant} if tenant else {}
    r = await client.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def accept(client: httpx.AsyncClient, token: str, name: str) -> dict[str, Any]:
    r = await client.post("/api/v1/auths/invitations/accept", json={"token": token, "name": name, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return r.json()


async def head(container: Container) -> int:
    return await container.store.call(container.store.max_id)


@dataclass
class Tenants:
    platform: dict[str, Any]  # tokens of the default tenant's admin
    a_admin: dict[str, Any]
    a_user: dict[str, Any]  # the user record
    a_user_tokens: dict[str, Any]
    a_key: dict[str, Any]  # the A user's API key
    b_admin: dict[str, Any]
    b_admin_user: dict[str, Any]


async def create_tenant(
    client: httpx.AsyncClient, platform: dict[str, Any], slug: str, **extra: Any
) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/tenants", json={"slug": slug, "name": slug.title(), **extra}, headers=bearer(platform)
    )
    assert r.status_code == 201, r.text
    return r.json()


async def two_tenants(client: httpx.AsyncClient) -> Tenants:
    """Tenants ``acme`` (A) and ``beta`` (B), each with its own admin; A also has a plain user with an API key."""
    await register(client, "root@example.com", name="Root")
    platform = await login(client, "root@example.com")
    acme = await create_tenant(client, platform, "acme", admin_email="boss@acme.test")
    beta = await create_tenant(client, platform, "beta", admin_email="boss@beta.test")

    await accept(client, acme["invitation"]["token"], "Acme Boss")
    a_user = await register(client, "worker@acme.test", "acme", "Acme Worker")
    assert a_user["role"] == "user"
    a_user_tokens = await login(client, "worker@acme.test", "acme")
    r = await client.post(
        "/api/v1/auths/api-keys", json={"name": "acme script"}, headers=bearer(a_user_tokens)
    )
    assert r.status_code == 201, r.text
    b_admin_user = await accept(client, beta["invitation"]["token"], "Beta Boss")
    assert b_admin_user["role"] == "admin"
    return Tenants(
        platform=platform,
        a_admin=await login(client, "boss@acme.test", "acme"),
        a_user=a_user,
        a_user_tokens=a_user_tokens,
        a_key=r.json(),
        b_admin=await login(client, "boss@beta.test", "beta"),
        b_admin_user=b_admin_user,
    )


# --- users ---------------------------------------------------------------------------------------------
async def test_each_tenant_gets_its_own_first_admin(client, container) -> None:
    t = await two_tenants(client)
    assert t.b_admin_user["tenant_id"] == str(tenant_id_for("beta"))
    assert t.a_user["tenant_id"] == str(tenant_id_for("acme"))
    r = await client.get("/api/v1/auths/me", headers=bearer(t.a_admin))
    assert r.json()["role"] == "admin" and r.json()["tenant_id"] == str(tenant_id_for("acme"))


async def test_same_email_may_exist_in_two_tenants(client, container) -> None:
    t = await two_tenants(client)
    twin = await register(client, "worker@acme.test", "beta", "Beta Worker")
    assert twin["id"] != t.a_user["id"] and twin["tenant_id"] == str(tenant_id_for("beta"))

    in_a = await client.get(
        "/api/v1/auths/me", headers=bearer(await login(client, "worker@acme.test", "acme"))
    )
    in_b = await client.get(
        "/api/v1/auths/me", headers=bearer(await login(client, "worker@acme.test", "beta"))
    )
    assert (in_a.json()["id"], in_a.json()["name"]) == (t.a_user["id"], "Acme Worker")
    assert (in_b.json()["id"], in_b.json()["name"]) == (twin["id"], "Beta Worker")
    # Still unique inside each tenant.
    r = await client.post(
        "/api/v1/auths/register",
        json={"email": "WORKER@acme.test", "password": PASSWORD, "name": "Again"},
        headers={"X-Tenant": "beta"},
    )
    assert r.status_code == 409 and error_code(r) == "EMAIL_TAKEN"


async def test_credentials_of_one_tenant_do_not_sign_in_to_another(client, container) -> None:
    await two_tenants(client)
    r = await client.post(
        "/api/v1/auths/login",
        json={"email": "worker@acme.test", "password": PASSWORD},
        headers={"X-Tenant": "beta"},
    )
    assert r.status_code == 401 and error_code(r) == "INVALID_CREDENTIALS"
    r = await client.post("/api/v1/auths/login", json={"email": "worker@acme.test", "password": PASSWORD})
    assert r.status_code == 401 and error_code(r) == "INVALID_CREDENTIALS"  # not in the default tenant either


async def test_admin_of_one_tenant_cannot_list_read_or_change_users_of_another(
    client, container, pipeline: Pipeline
) -> None:
    t = await two_tenants(client)
    await pipeline.settle()

    r = await client.get("/api/v1/users", params={"limit": 200}, headers=bearer(t.b_admin))
    assert r.status_code == 200, r.text
    assert [u["email"] for u in r.json()["items"]] == ["boss@beta.test"] and r.json()["total"] == 1
    r = await client.get("/api/v1/users", params={"q": "acme"}, headers=bearer(t.b_admin))
    assert r.json()["items"] == [] and r.json()["total"] == 0
    # Control: A's admin sees A's users.
    r = await client.get("/api/v1/users", headers=bearer(t.a_admin))
    assert sorted(u["email"] for u in r.json()["items"]) == ["boss@acme.test", "worker@acme.test"]

    before = await head(container)
    r = await client.get(f"/api/v1/users/{t.a_user['id']}", headers=bearer(t.b_admin))
    assert r.status_code == 404 and error_code(r) == "USER_NOT_FOUND"
    for change in (
        {"name": "Hijacked"},
        {"role": "guest"},
        {"active": False},
        {"password": "battery staple 42"},
    ):
        r = await client.patch(f"/api/v1/users/{t.a_user['id']}", json=change, headers=bearer(t.b_admin))
        assert r.status_code == 404 and error_code(r) == "USER_NOT_FOUND", r.text
    assert await head(container) == before

    # A's user is untouched: same name, same role, still signed in.
    r = await client.get("/api/v1/auths/me", headers=bearer(t.a_user_tokens))
    assert r.status_code == 200 and (r.json()["name"], r.json()["role"], r.json()["active"]) == (
        "Acme Worker",
        "user",
        True,
    )


async def test_admin_of_one_tenant_cannot_create_users_in_another(client, container) -> None:
    t = await two_tenants(client)
    r = await client.post(
        "/api/v1/users",
        json={"email": "mole@acme.test", "password": PASSWORD, "name": "Mole", "role": "admin"},
        headers={**bearer(t.b_admin), "X-Tenant": "acme"},
    )
    assert r.status_code == 403 and error_code(r) == "TENANT_MISMATCH"
    r = await client.post(
        "/api/v1/users",
        json={"email": "mole@acme.test", "password": PASSWORD, "name": "Mole", "role": "admin"},
        headers=bearer(t.b_admin),
    )
    assert r.status_code == 201 and r.json()["tenant_id"] == str(tenant_id_for("beta"))
    r = await client.post(
        "/api/v1/auths/login",
        json={"email": "mole@acme.test", "password": PASSWORD},
        headers={"X-Tenant": "acme"},
    )
    assert r.status_code == 401


# --- audit ---------------------------------------------------------------------------------------------
async def audit(client: httpx.AsyncClient, tokens: dict[str, Any], **filters: Any) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/audit", params={"limit": 500, **filters}, headers=bearer(tokens))
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def test_audit_of_one_tenant_shows_nothing_of_another(client, container, pipeline: Pipeline) -> None:
    t = await two_tenants(client)
    await pipeline.settle()

    a_rows = await audit(client, t.a_admin)
    b_rows = await audit(client, t.b_admin)
    a_targets = {row["target_id"] for row in a_rows}
    assert {t.a_user["id"], t.a_key["id"], str(tenant_id_for("acme"))} <= a_targets
    assert a_targets.isdisjoint(row["target_id"] for row in b_rows)
    assert {row["event_id"] for row in a_rows}.isdisjoint(row["event_id"] for row in b_rows)
    assert [row["target_id"] for row in b_rows if row["action"] == "UserRegistered"] == [t.b_admin_user["id"]]

    # Filtering by A's ids from B finds nothing.
    assert await audit(client, t.b_admin, target_id=t.a_user["id"]) == []
    assert await audit(client, t.b_admin, actor=f"user:{t.a_user['id']}") == []
    assert await audit(client, t.b_admin, action="ApiKeyCreated") == []


async def test_replay_of_another_tenants_aggregate_is_not_found(client, container) -> None:
    t = await two_tenants(client)
    for aggregate_id in (t.a_user["id"], t.a_key["id"], str(tenant_id_for("acme"))):
        r = await client.get(
            "/api/v1/audit/replay", params={"aggregate_id": aggregate_id}, headers=bearer(t.b_admin)
        )
        assert r.status_code == 404 and error_code(r) == "AGGREGATE_NOT_FOUND", r.text
        # Control: A's admin can replay it.
        r = await client.get(
            "/api/v1/audit/replay", params={"aggregate_id": aggregate_id}, headers=bearer(t.a_admin)
        )
        assert r.status_code == 200 and r.json()["aggregate_id"] == aggregate_id, r.text
    r = await client.get(
        "/api/v1/audit/replay", params={"aggregate_id": t.a_user["id"]}, headers=bearer(t.a_admin)
    )
    assert r.json()["state"]["email"] == "worker@acme.test"
    assert not any("hash" in key for key in r.json()["state"])


# --- API keys ------------------------------------------------------------------------------------------
async def test_admin_of_one_tenant_cannot_revoke_another_tenants_api_keys(client, container) -> None:
    t = await two_tenants(client)
    before = await head(container)
    r = await client.delete(f"/api/v1/auths/api-keys/{t.a_key['id']}", headers=bearer(t.b_admin))
    assert r.status_code == 404 and error_code(r) == "API_KEY_NOT_FOUND"
    assert await head(container) == before
    assert (await client.get("/api/v1/auths/me", headers={"X-API-Key": t.a_key["key"]})).status_code == 200
    # Control: A's admin may revoke it.
    r = await client.delete(f"/api/v1/auths/api-keys/{t.a_key['id']}", headers=bearer(t.a_admin))
    assert r.status_code == 204, r.text
    r = await client.get("/api/v1/auths/me", headers={"X-API-Key": t.a_key["key"]})
    assert r.status_code == 401 and error_code(r) == "API_KEY_REVOKED"


async def test_api_key_listing_shows_only_the_callers_own_keys(client, container, pipeline: Pipeline) -> None:
    t = await two_tenants(client)
    await pipeline.settle()
    r = await client.get("/api/v1/auths/api-keys", headers=bearer(t.a_user_tokens))
    assert [k["id"] for k in r.json()] == [t.a_key["id"]]
    assert "key" not in r.json()[0]  # the secret is shown once, at creation
    for other in (t.a_admin, t.b_admin):
        r = await client.get("/api/v1/auths/api-keys", headers=bearer(other))
        assert r.status_code == 200 and r.json() == []


# --- credentials and the tenant they belong to ---------------------------------------------------------
async def test_credential_sent_with_another_tenants_name_is_refused(client, container) -> None:
    t = await two_tenants(client)
    for credential in (bearer(t.a_user_tokens), {"X-API-Key": t.a_key["key"]}):
        r = await client.get("/api/v1/auths/me", headers={**credential, "X-Tenant": "beta"})
        assert r.status_code == 403 and error_code(r) == "TENANT_MISMATCH", r.text
        r = await client.get("/api/v1/auths/me", headers={**credential, "X-Tenant": "ACME"})
        assert r.status_code == 200, r.text
        r = await client.get(
            "/api/v1/auths/me", headers={**credential, "X-Tenant": str(tenant_id_for("acme"))}
        )
        assert r.status_code == 200, r.text
    r = await client.get("/api/v1/users", headers={**bearer(t.b_admin), "X-Tenant": "acme"})
    assert r.status_code == 403 and error_code(r) == "TENANT_MISMATCH"
    r = await client.get("/api/v1/users", headers={**bearer(t.platform), "X-Tenant": "acme"})
    assert r.status_code == 403 and error_code(r) == "TENANT_MISMATCH"  # the platform admin too


async def test_tenant_is_found_by_its_domain_before_sign_in(client, container, pipeline: Pipeline) -> None:
    await register(client, "root@example.com", name="Root")
    platform = await login(client, "root@example.com")
    host = f"chat-{uuid.uuid4().hex[:8]}.gamma.test"
    gamma = await create_tenant(client, platform, "gamma", domains=[host.upper()], admin_email="boss@gamma.test")
    await accept(client, gamma["invitation"]["token"], "Gamma Boss")
    await pipeline.settle()

    r = await client.post(
        "/api/v1/auths/register",
        json={"email": "first@gamma.test", "password": PASSWORD, "name": "Gamma"},
        headers={"Host": f"{host}:443"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["tenant_id"] == str(tenant_id_for("gamma")) and r.json()["role"] == "user"
    # An unclaimed host falls back to the default tenant.
    r = await client.post(
        "/api/v1/auths/register",
        json={"email": "first@gamma.test", "password": PASSWORD, "name": "Default"},
        headers={"Host": f"unclaimed-{uuid.uuid4().hex[:8]}.test"},
    )
    assert r.status_code == 201 and r.json()["tenant_id"] == str(tenant_id_for("default"))


# --- managing tenants ----------------------------------------------------------------------------------
async def test_only_the_platform_admin_manages_tenants(client, container, pipeline: Pipeline) -> None:
    t = await two_tenants(client)
    plain_default = await register(client, "plain@example.com")
    assert plain_default["role"] == "user"
    plain_tokens = await login(client, "plain@example.com")

    before = await head(container)
    for tokens in (t.b_admin, t.a_admin, t.a_user_tokens, plain_tokens):
        r = await client.post(
            "/api/v1/tenants", json={"slug": "rogue", "name": "Rogue"}, headers=bearer(tokens)
        )
        assert r.status_code == 403 and error_code(r) == "PLATFORM_ADMIN_REQUIRED", r.text
        r = await client.get("/api/v1/tenants", headers=bearer(tokens))
        assert r.status_code == 403 and error_code(r) == "PLATFORM_ADMIN_REQUIRED", r.text
    assert await head(container) == before
    r = await client.post(
        "/api/v1/auths/register",
        json={"email": "x@rogue.test", "password": PASSWORD, "name": "X"},
        headers={"X-Tenant": "rogue"},
    )
    assert r.status_code == 404 and error_code(r) == "TENANT_NOT_FOUND"

    await pipeline.settle()
    r = await client.get("/api/v1/tenants", headers=bearer(t.platform))
    assert r.status_code == 200, r.text
    counts = {tenant["slug"]: tenant["user_count"] for tenant in r.json()}
    assert counts == {"default": 2, "acme": 2, "beta": 1}


async def test_tenant_sign_up_policy_applies_to_its_own_sign_ups(client, container) -> None:
    await register(client, "root@example.com", name="Root")
    platform = await login(client, "root@example.com")
    closed = await create_tenant(client, platform, "closed", allow_signup=False, admin_email="owner@closed.test")
    guests = await create_tenant(client, platform, "guests", default_role="guest", admin_email="owner@guests.test")

    first = await accept(client, closed["invitation"]["token"], "Owner")
    assert first["role"] == "admin"  # the invited first admin gets in where sign-up is closed
    before = await head(container)
    r = await client.post(
        "/api/v1/auths/register",
        json={"email": "second@closed.test", "password": PASSWORD, "name": "Second"},
        headers={"X-Tenant": "closed"},
    )
    assert r.status_code == 403 and error_code(r) == "SIGNUP_DISABLED"
    assert await head(container) == before

    assert (await accept(client, guests["invitation"]["token"], "Owner"))["role"] == "admin"
    assert (await register(client, "visitor@guests.test", "guests"))["role"] == "guest"
    assert (await register(client, "visitor@example.com"))[
        "role"
    ] == "user"  # the default tenant is unchanged
