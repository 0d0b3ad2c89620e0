"""Administering a tenant's users through HTTP: roles, renames, deactivation, listings; and the
operational endpoints (OpenAPI document, health, readiness)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Pipeline
from workers.bootstrap import Container

PASSWORD = "correct horse 9"


# --- helpers -------------------------------------------------------------------------------------------
def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


async def register(client: httpx.AsyncClient, email: str, name: str = "Someone") -> dict[str, Any]:
    r = await client.post("/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": name})
    assert r.status_code == 201, r.text
    return r.json()


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = await client.post("/api/v1/auths/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


async def head(container: Container) -> int:
    return await container.store.call(container.store.max_id)


async def admin(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tenant's first user, signed in: (user, tokens)."""
    user = await register(client, "admin@example.com", "Admin")
    return user, await login(client, "admin@example.com")


async def create_user(
    client: httpx.AsyncClient, tokens: dict[str, Any], email: str, role: str = "user", name: str = "Someone"
) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/users",
        json={"email": email, "password": PASSWORD, "name": name, "role": role},
        headers=bearer(tokens),
    )
    assert r.status_code == 201, r.text
    return r.json()


async def patch_user(
    client: httpx.AsyncClient, tokens: dict[str, Any], user_id: str, **changes: Any
) -> httpx.Response:
    return await client.patch(f"/api/v1/users/{user_id}", json=changes, headers=bearer(tokens))


# --- roles ---------------------------------------------------------------------------------------------
async def test_first_user_is_admin_and_later_sign_ups_get_the_default_role(client, container) -> None:
    first = await register(client, "first@example.com", "First")
    second = await register(client, "second@example.com", "Second")
    third = await register(client, "third@example.com", "Third")
    assert [u["role"] for u in (first, second, third)] == ["admin", "user", "user"]
    assert all(u["active"] for u in (first, second, third))
    r = await client.get("/api/v1/auths/me", headers=bearer(await login(client, "second@example.com")))
    assert r.json()["role"] == "user"


async def test_admin_creates_a_user_with_a_role(client, container) -> None:
    _, tokens = await admin(client)
    created = await create_user(client, tokens, "Pat@Example.com", role="premium", name="  Pat  ")
    assert (created["email"], created["name"], created["role"]) == ("pat@example.com", "Pat", "premium")
    r = await client.get(f"/api/v1/users/{created['id']}", headers=bearer(tokens))
    assert r.status_code == 200 and r.json()["role"] == "premium"
    pat = await login(client, "pat@example.com")
    r = await client.get("/api/v1/auths/me", headers=bearer(pat))
    assert (r.json()["id"], r.json()["role"]) == (created["id"], "premium")
    # Admins may create admins.
    assert (await create_user(client, tokens, "deputy@example.com", role="admin"))["role"] == "admin"


async def test_non_admin_is_refused_user_administration(client, container) -> None:
    admin_user, _ = await admin(client)
    me = await register(client, "user@example.com", "User")
    tokens = await login(client, "user@example.com")

    before = await head(container)
    for method, path, body in (
        ("GET", "/api/v1/users", None),
        ("GET", f"/api/v1/users/{admin_user['id']}", None),
        (
            "POST",
            "/api/v1/users",
            {"email": "x@example.com", "password": PASSWORD, "name": "X", "role": "admin"},
        ),
        ("PATCH", f"/api/v1/users/{admin_user['id']}", {"active": False}),
        ("PATCH", f"/api/v1/users/{me['id']}", {"role": "admin"}),  # not even on oneself
        ("GET", "/api/v1/audit", None),
        ("GET", "/api/v1/audit/replay?aggregate_id=" + me["id"], None),
    ):
        r = await client.request(method, path, json=body, headers=bearer(tokens))
        assert r.status_code == 403 and error_code(r) == "ADMIN_REQUIRED", f"{method} {path}: {r.text}"
    assert await head(container) == before
    # A user may read their own record.
    r = await client.get(f"/api/v1/users/{me['id']}", headers=bearer(tokens))
    assert r.status_code == 200 and r.json()["email"] == "user@example.com"


# --- changing users ------------------------------------------------------------------------------------
async def test_admin_renames_a_user_and_changes_their_role(client, container, pipeline: Pipeline) -> None:
    _, tokens = await admin(client)
    user = await register(client, "user@example.com", "User")

    r = await patch_user(client, tokens, user["id"], name="  Renamed User ")
    assert r.status_code == 200 and r.json()["name"] == "Renamed User", r.text
    r = await patch_user(client, tokens, user["id"], role="premium")
    assert r.status_code == 200 and r.json()["role"] == "premium", r.text
    r = await patch_user(client, tokens, user["id"], name="Both", role="guest")
    assert (r.json()["name"], r.json()["role"]) == ("Both", "guest")

    # A PATCH that changes nothing records nothing.
    before = await head(container)
    assert (await patch_user(client, tokens, user["id"], name="Both", role="guest")).status_code == 200
    assert (await patch_user(client, tokens, user["id"])).status_code == 200
    assert await head(container) == before

    await pipeline.settle()
    r = await client.get("/api/v1/users", params={"q": "user@example.com"}, headers=bearer(tokens))
    [row] = r.json()["items"]
    assert (row["name"], row["role"], row["active"]) == ("Both", "guest", True)
    r = await client.get("/api/v1/audit", params={"target_id": user["id"]}, headers=bearer(tokens))
    actions = [row["action"] for row in r.json()["items"]]
    assert actions.count("UserRenamed") == 2 and actions.count("RoleChanged") == 2
    role_changes = [row["detail"] for row in r.json()["items"] if row["action"] == "RoleChanged"]
    assert {(d["previous_role"], d["role"]) for d in role_changes} == {
        ("user", "premium"),
        ("premium", "guest"),
    }


async def test_deactivated_user_cannot_sign_in_until_reactivated(
    client, container, pipeline: Pipeline
) -> None:
    _, tokens = await admin(client)
    user = await register(client, "user@example.com", "User")

    r = await patch_user(client, tokens, user["id"], active=False)
    assert r.status_code == 200 and r.json()["active"] is False, r.text
    r = await client.post("/api/v1/auths/login", json={"email": "user@example.com", "password": PASSWORD})
    assert r.status_code == 403 and error_code(r) == "USER_DEACTIVATED"
    r = await client.get(f"/api/v1/users/{user['id']}", headers=bearer(tokens))
    assert r.json()["active"] is False

    await pipeline.settle()
    r = await client.get("/api/v1/users", params={"q": "user@"}, headers=bearer(tokens))
    assert [u["active"] for u in r.json()["items"]] == [False]
    r = await client.get("/api/v1/audit", params={"action": "SignInFailed"}, headers=bearer(tokens))
    assert [row["detail"]["reason"] for row in r.json()["items"]] == ["deactivated"]

    r = await patch_user(client, tokens, user["id"], active=True)
    assert r.status_code == 200 and r.json()["active"] is True
    again = await login(client, "user@example.com")
    assert (await client.get("/api/v1/auths/me", headers=bearer(again))).status_code == 200


async def test_admin_sets_a_new_password_for_a_user(client, container) -> None:
    _, tokens = await admin(client)
    user = await register(client, "user@example.com", "User")
    old_session = await login(client, "user@example.com")

    r = await patch_user(client, tokens, user["id"], password="battery staple 42")
    assert r.status_code == 200, r.text
    r = await client.post("/api/v1/auths/login", json={"email": "user@example.com", "password": PASSWORD})
    assert r.status_code == 401 and error_code(r) == "INVALID_CREDENTIALS"
    await login(client, "user@example.com", "battery staple 42")
    r = await client.get("/api/v1/auths/me", headers=bearer(old_session))
    assert r.status_code == 401 and error_code(r) == "TOKEN_REVOKED"


async def test_admin_cannot_demote_or_deactivate_themself(client, container) -> None:
    me, tokens = await admin(client)
    before = await head(container)
    for change in (
        {"role": "user"},
        {"role": "guest"},
        {"active": False},
        {"name": "Still Me", "role": "premium"},
    ):
        r = await patch_user(client, tokens, me["id"], **change)
        assert r.status_code == 403 and error_code(r) == "CANNOT_DEMOTE_SELF", r.text
    assert await head(container) == before
    r = await client.get("/api/v1/auths/me", headers=bearer(tokens))
    assert (r.status_code, r.json()["role"], r.json()["name"]) == (200, "admin", "Admin")
    # Harmless changes to oneself are fine.
    r = await patch_user(client, tokens, me["id"], name="Chief", role="admin", active=True)
    assert r.status_code == 200 and (r.json()["name"], r.json()["role"]) == ("Chief", "admin")
    # ...and another admin may demote this one.
    await create_user(client, tokens, "deputy@example.com", role="admin")
    deputy = await login(client, "deputy@example.com")
    r = await patch_user(client, deputy, me["id"], role="user")
    assert r.status_code == 200 and r.json()["role"] == "user"


# --- listing users -------------------------------------------------------------------------------------
async def test_user_list_pages_and_filters_by_role_and_text(client, container, pipeline: Pipeline) -> None:
    me, tokens = await admin(client)
    people = [
        ("alice@example.com", "Alice Archer", "premium"),
        ("bob@example.com", "Bob Baker", "user"),
        ("carol@sample.org", "Carol Cook", "premium"),
        ("dave@example.com", "Dave 100% Done", "guest"),
        ("erin@sample.org", "Erin_Underscore", "user"),
    ]
    created = [await create_user(client, tokens, email, role, name) for email, name, role in people]
    await pipeline.settle()

    async def page(**params: Any) -> dict[str, Any]:
        r = await client.get("/api/v1/users", params=params, headers=bearer(tokens))
        assert r.status_code == 200, r.text
        return dict(r.json())

    everyone = await page()
    assert everyone["total"] == 6 and everyone["limit"] == 50 and everyone["offset"] == 0
    # Oldest first, so pages are stable.
    assert [u["id"] for u in everyone["items"]] == [me["id"], *(u["id"] for u in created)]
    pages = [await page(limit=2, offset=offset) for offset in (0, 2, 4, 6)]
    assert [len(p["items"]) for p in pages] == [2, 2, 2, 0]
    assert all(p["total"] == 6 for p in pages)
    assert [u["id"] for p in pages for u in p["items"]] == [u["id"] for u in everyone["items"]]

    premium = await page(role="premium")
    assert sorted(u["email"] for u in premium["items"]) == ["alice@example.com", "carol@sample.org"]
    assert premium["total"] == 2
    assert [u["email"] for u in (await page(role="admin"))["items"]] == ["admin@example.com"]
    assert (await page(role="pending"))["items"] == []

    assert sorted(u["email"] for u in (await page(q="SAMPLE.ORG"))["items"]) == [
        "carol@sample.org",
        "erin@sample.org",
    ]
    assert [u["email"] for u in (await page(q="baker"))["items"]] == ["bob@example.com"]
    assert [u["email"] for u in (await page(q="sample", role="user"))["items"]] == ["erin@sample.org"]
    # LIKE wildcards in the search text are matched literally.
    assert [u["email"] for u in (await page(q="100%"))["items"]] == ["dave@example.com"]
    assert [u["email"] for u in (await page(q="_"))["items"]] == ["erin@sample.org"]
    assert (await page(q="%"))["total"] == 1
    assert set(everyone["items"][0]) >= {"id", "email", "name", "role", "active", "created_at"}
    assert not any("password" in key or "hash" in key for key in everyone["items"][0])


# --- operations ----------------------------------------------------------------------------------------
async def test_openapi_document_names_every_operation(client, container) -> None:
    r = await client.get("/schema")
    assert r.status_code == 200
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200, r.text
    document = r.json()
    assert document["openapi"].startswith("3.") and document["info"]["title"] == "parley"
    operations = [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]
    missing = [(path, method) for path, method, op in operations if not op.get("operationId")]
    assert missing == []
    ids = [op["operationId"] for _, _, op in operations]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    assert {
        "Register",
        "Login",
        "RefreshTokens",
        "Logout",
        "GetMe",
        "ChangePassword",
        "ListApiKeys",
        "CreateApiKey",
        "RevokeApiKey",
        "ListUsers",
        "CreateUser",
        "GetUser",
        "UpdateUser",
        "ListTenants",
        "CreateTenant",
        "ListAuditEntries",
        "ReplayAggregate",
        "Health",
        "Ready",
    } <= set(ids)
    assert document["paths"]["/api/v1/users/{user_id}"]["patch"]["operationId"] == "UpdateUser"


async def test_health_and_readiness_report_ok(client, container) -> None:
    r = await client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await client.get("/health/ready")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"event_store": "ok", "nats": "ok", "redis": "ok", "engines": "no_workers"}
    assert r.headers.get("x-request-id")


async def test_metrics_count_requests_by_route_and_report_pipeline_lag(client, pipeline) -> None:
    await client.get("/health")
    await client.get("/api/v1/users/00000000-0000-0000-0000-000000000000")
    await pipeline.settle()
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'parley_http_requests_total{method="GET",route="/health",status="200"} 1.0' in text
    assert 'route="/api/v1/users/{user_id}",status="401"' in text, "ids are not labels"
    assert "parley_event_store_head " in text
    assert 'parley_consumer_lag_events{consumer="relay:relay"} 0.0' in text
    assert 'parley_consumer_lag_events{consumer="projector:audit"} 0.0' in text
