"""Administering a tenant's quota policy through HTTP: each setting, the audit trail, bad input, who may
read and change it, tenants kept apart, and a limit that takes effect on the next message."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from application.conversations import LOCAL_MODEL
from domain.quotas import DEFAULT_RATE_LIMITS, DEFAULT_ROLE_LIMITS
from tests.conftest import Pipeline
from tests.tenants import tenant_with_admin
from workers.bootstrap import Container

pytestmark = pytest.mark.timeout(180)

PASSWORD = "correct horse 9"
Q = "/api/v1/quotas"


# --- helpers -------------------------------------------------------------------------------------------
def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


async def join(
    client: httpx.AsyncClient, email: str, tenant: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Registers and signs in: (user, tokens)."""
    headers = {"X-Tenant": tenant} if tenant else {}
    r = await client.post(
        "/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": "Someone"}, headers=headers
    )
    assert r.status_code == 201, r.text
    r2 = await client.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD}, headers=headers)
    assert r2.status_code == 200, r2.text
    return r.json(), r2.json()


async def head(container: Container) -> int:
    return await container.store.call(container.store.max_id)


async def policy(client: httpx.AsyncClient, tokens: dict[str, Any]) -> dict[str, Any]:
    r = await client.get(Q, headers=bearer(tokens))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def put(client: httpx.AsyncClient, tokens: dict[str, Any], path: str, body: Any) -> httpx.Response:
    return await client.put(f"{Q}{path}", json=body, headers=bearer(tokens))


# --- reading and changing the policy -------------------------------------------------------------------
async def test_defaults_then_admin_sets_each_setting_and_get_reflects_it(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, tokens = await join(client, "admin@example.com")
    user, _ = await join(client, "user@example.com")
    assert admin["role"] == "admin" and user["role"] == "user"

    body = await policy(client, tokens)
    assert body == {
        "timezone": "UTC",
        "role_limits": DEFAULT_ROLE_LIMITS,
        "user_limits": {},
        "model_limits": {},
        "tenant_cap": None,
        "rate_limits": DEFAULT_RATE_LIMITS,
    }

    steps: list[tuple[str, str, Any]] = [
        ("/roles/user", "PUT", {"limit": 1234}),
        ("/roles/premium", "PUT", {"limit": None}),
        (f"/users/{user['id']}", "PUT", {"limit": 77}),
        (f"/models/{LOCAL_MODEL}", "PUT", {"limit": 999}),
        ("/tenant", "PUT", {"cap": 10**9}),
        ("/timezone", "PUT", {"timezone": "Europe/Paris"}),
        ("/rate-limits", "PUT", {"user_per_minute": 30, "sign_in_per_ip_per_minute": 5}),
    ]
    for path, method, payload in steps:
        r = await client.request(method, f"{Q}{path}", json=payload, headers=bearer(tokens))
        assert r.status_code == 200, f"{path}: {r.text}"

    expected = {
        "timezone": "Europe/Paris",
        "role_limits": {**DEFAULT_ROLE_LIMITS, "user": 1234, "premium": None},
        "user_limits": {user["id"]: 77},
        "model_limits": {LOCAL_MODEL: 999},
        "tenant_cap": 10**9,
        "rate_limits": {**DEFAULT_RATE_LIMITS, "user_per_minute": 30, "sign_in_per_ip_per_minute": 5},
    }
    assert r.json() == expected  # each change answers the updated policy
    assert await policy(client, tokens) == expected

    # A user override of null means unlimited (it stays an override); DELETE clears it (the role's applies).
    r = await put(client, tokens, f"/users/{user['id']}", {"limit": None})
    assert r.status_code == 200 and r.json()["user_limits"] == {user["id"]: None}, r.text
    r = await client.delete(f"{Q}/users/{user['id']}", headers=bearer(tokens))
    assert r.status_code == 200 and r.json()["user_limits"] == {}, r.text
    # Null model limit removes it; null cap removes the cap.
    r = await put(client, tokens, f"/models/{LOCAL_MODEL}", {"limit": None})
    assert r.status_code == 200 and r.json()["model_limits"] == {}
    r = await put(client, tokens, "/tenant", {"cap": None})
    assert r.status_code == 200 and r.json()["tenant_cap"] is None
    assert (await policy(client, tokens))["user_limits"] == {}

    # Every change is in the audit log, with the admin as actor.
    await pipeline.settle()
    r = await client.get("/api/v1/audit", params={"limit": 200}, headers=bearer(tokens))
    assert r.status_code == 200, r.text
    rows = [
        row
        for row in r.json()["items"]
        if row["action"].endswith(("QuotaSet", "QuotaCapSet", "TimezoneSet", "RateLimitsSet"))
    ]
    actions = sorted(row["action"] for row in rows)
    assert actions == sorted(
        ["RoleQuotaSet"] * 2
        + ["UserQuotaSet"] * 3
        + ["ModelQuotaSet"] * 2
        + ["TenantQuotaCapSet"] * 2
        + ["QuotaTimezoneSet", "RateLimitsSet"]
    ), actions
    assert {row["actor"] for row in rows} == {f"user:{admin['id']}"}


async def test_bad_input_is_refused_with_a_code_and_records_nothing(
    client: httpx.AsyncClient, container: Container
) -> None:
    _, tokens = await join(client, "admin@example.com")
    user, _ = await join(client, "user@example.com")
    before_policy = await policy(client, tokens)
    before = await head(container)

    cases: list[tuple[str, str, Any, int, set[str]]] = [
        ("PUT", "/roles/user", {"limit": -1}, 422, {"INVALID_LIMIT"}),
        ("PUT", "/roles/user", {"limit": 10**12 + 1}, 422, {"INVALID_LIMIT"}),
        ("PUT", "/roles/user", {"limit": 10**30}, 422, {"INVALID_LIMIT", "VALIDATION_FAILED"}),
        ("PUT", "/roles/user", {"limit": True}, 422, {"INVALID_LIMIT", "VALIDATION_FAILED"}),
        ("PUT", "/roles/user", {"limit": 1.5}, 422, {"INVALID_LIMIT", "VALIDATION_FAILED"}),
        ("PUT", "/roles/user", {}, 400, {"VALIDATION_FAILED"}),
        ("PUT", "/roles/user", {"limit": 5, "extra": 1}, 400, {"VALIDATION_FAILED"}),
        ("PUT", "/roles/wizard", {"limit": 5}, 422, {"INVALID_ROLE"}),
        ("PUT", f"/users/{user['id']}", {"limit": -5}, 422, {"INVALID_LIMIT"}),
        ("PUT", f"/users/{uuid.uuid4()}", {"limit": 5}, 404, {"USER_NOT_FOUND"}),
        ("DELETE", f"/users/{uuid.uuid4()}", None, 404, {"USER_NOT_FOUND"}),
        ("PUT", "/models/no-such-model", {"limit": 5}, 404, {"MODEL_NOT_FOUND"}),
        ("PUT", f"/models/{LOCAL_MODEL}", {"limit": False}, 422, {"INVALID_LIMIT", "VALIDATION_FAILED"}),
        ("PUT", "/tenant", {"cap": -1}, 422, {"INVALID_LIMIT"}),
        ("PUT", "/tenant", {"limit": 5}, 400, {"VALIDATION_FAILED"}),
        ("PUT", "/timezone", {"timezone": "Mars/Olympus"}, 422, {"INVALID_TIMEZONE"}),
        ("PUT", "/timezone", {"timezone": ""}, 400, {"VALIDATION_FAILED", "INVALID_TIMEZONE"}),
        ("PUT", "/timezone", {"timezone": "../../etc/passwd"}, 422, {"INVALID_TIMEZONE"}),
        ("PUT", "/timezone", {"timezone": "UTC", "tz": "x"}, 400, {"VALIDATION_FAILED"}),
        ("PUT", "/rate-limits", {"user_per_minute": 0}, 422, {"INVALID_RATE_LIMIT"}),
        ("PUT", "/rate-limits", {"user_per_minute": 100_001}, 422, {"INVALID_RATE_LIMIT"}),
        ("PUT", "/rate-limits", {"user_per_minute": True}, 422, {"INVALID_RATE_LIMIT", "VALIDATION_FAILED"}),
        ("PUT", "/rate-limits", {"chats_per_minute": 5}, 400, {"VALIDATION_FAILED"}),
        ("PUT", "/rate-limits", {}, 422, {"INVALID_RATE_LIMIT"}),
    ]
    for method, path, body, status, codes in cases:
        r = await client.request(method, f"{Q}{path}", json=body, headers=bearer(tokens))
        # Malformed bodies fail decoding (400); well-formed values that break a rule are 422; unknown ids 404.
        code = error_code(r) if r.status_code >= 400 else f"HTTP {r.status_code}: {r.text}"
        assert code in codes and r.status_code == (400 if code == "VALIDATION_FAILED" else status), (
            f"{method} {path} {body}: {r.status_code} {r.text}"
        )
    # A malformed user id in the path matches no route.
    r = await put(client, tokens, "/users/not-a-uuid", {"limit": 5})
    assert 400 <= r.status_code < 500
    assert await head(container) == before
    assert await policy(client, tokens) == before_policy


# --- who may read and change it ------------------------------------------------------------------------
async def test_non_admin_is_refused(client: httpx.AsyncClient, container: Container) -> None:
    await join(client, "admin@example.com")
    me, tokens = await join(client, "user@example.com")
    before = await head(container)
    for method, path, body in (
        ("GET", "", None),
        ("PUT", "/roles/user", {"limit": 10**9}),
        ("PUT", f"/users/{me['id']}", {"limit": None}),
        ("DELETE", f"/users/{me['id']}", None),
        ("PUT", f"/models/{LOCAL_MODEL}", {"limit": None}),
        ("PUT", "/tenant", {"cap": None}),
        ("PUT", "/timezone", {"timezone": "Asia/Tokyo"}),
        ("PUT", "/rate-limits", {"user_per_minute": 100_000}),
    ):
        r = await client.request(method, f"{Q}{path}", json=body, headers=bearer(tokens))
        assert r.status_code == 403 and error_code(r) == "ADMIN_REQUIRED", f"{method} {path}: {r.text}"
    r = await client.get(Q)
    assert r.status_code == 401
    assert await head(container) == before


async def test_another_tenants_admin_cannot_see_or_change_this_tenants_policy(
    client: httpx.AsyncClient, container: Container
) -> None:
    _, root = await join(client, "root@example.com")
    _, a_admin = await tenant_with_admin(client, bearer(root), "acme", "boss@acme.test")
    a_user, _ = await join(client, "worker@acme.test", "acme")
    _, b_admin = await tenant_with_admin(client, bearer(root), "beta", "boss@beta.test")

    r = await put(client, a_admin, "/roles/user", {"limit": 4321})
    assert r.status_code == 200, r.text
    r = await put(client, a_admin, f"/users/{a_user['id']}", {"limit": 12})
    assert r.status_code == 200, r.text

    # B's admin sees B's own (default) policy, never A's.
    b_policy = await policy(client, b_admin)
    assert b_policy["role_limits"]["user"] == DEFAULT_ROLE_LIMITS["user"] and b_policy["user_limits"] == {}

    before = await head(container)
    # Claiming tenant A with B's credential is refused.
    r = await client.get(Q, headers={**bearer(b_admin), "X-Tenant": "acme"})
    assert r.status_code == 403 and error_code(r) == "TENANT_MISMATCH"
    r = await client.put(f"{Q}/roles/user", json={"limit": 1}, headers={**bearer(b_admin), "X-Tenant": "acme"})
    assert r.status_code == 403 and error_code(r) == "TENANT_MISMATCH"
    # A's user is no user of B's: B's admin can't set or clear their limit.
    r = await put(client, b_admin, f"/users/{a_user['id']}", {"limit": 0})
    assert r.status_code == 404 and error_code(r) == "USER_NOT_FOUND"
    r = await client.delete(f"{Q}/users/{a_user['id']}", headers=bearer(b_admin))
    assert r.status_code == 404 and error_code(r) == "USER_NOT_FOUND"
    assert await head(container) == before

    a_policy = await policy(client, a_admin)
    assert a_policy["role_limits"]["user"] == 4321 and a_policy["user_limits"] == {a_user["id"]: 12}


# --- enforcement ---------------------------------------------------------------------------------------
async def test_a_user_limit_of_zero_refuses_their_next_message(client: httpx.AsyncClient, container: Container) -> None:
    _, tokens = await join(client, "admin@example.com")
    user, user_tokens = await join(client, "user@example.com")
    r = await client.post("/api/v1/chats", json={"title": "Quota"}, headers=bearer(user_tokens))
    assert r.status_code == 201, r.text
    chat_id = r.json()["id"]

    r = await put(client, tokens, f"/users/{user['id']}", {"limit": 0})
    assert r.status_code == 200 and r.json()["user_limits"] == {user["id"]: 0}, r.text

    r = await client.post(
        f"/api/v1/chats/{chat_id}/messages",
        json={"content": "Hello", "model": LOCAL_MODEL},
        headers=bearer(user_tokens),
    )
    assert r.status_code == 429 and error_code(r) == "QUOTA_EXCEEDED", r.text
    detail = r.json()["error"]["detail"]
    assert detail["scope"] == "user" and detail["limit"] == 0
    reset_at = datetime.fromisoformat(detail["reset_at"])
    assert reset_at.tzinfo is not None and (reset_at.hour, reset_at.minute) == (0, 0)

    # Clearing the override restores the role's default: the message is accepted.
    r = await client.delete(f"{Q}/users/{user['id']}", headers=bearer(tokens))
    assert r.status_code == 200 and r.json()["user_limits"] == {}
    r = await client.post(
        f"/api/v1/chats/{chat_id}/messages",
        json={"content": "Hello again", "model": LOCAL_MODEL},
        headers=bearer(user_tokens),
    )
    assert r.status_code == 202, r.text
