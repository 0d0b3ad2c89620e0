"""Credentials through HTTP: forged, expired and revoked access tokens, rotating refresh tokens, API keys.

A refused credential answers 401 (or 403 for a valid one that may not do this) with a stable code; a
revoked one presented again is recorded as a ``RevokedTokenUsed`` security event."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import OctKey

from adapters.security import AccessTokens
from tests.conftest import Pipeline
from workers.bootstrap import Container

PASSWORD = "correct horse 9"


# --- helpers -------------------------------------------------------------------------------------------
async def register(client: httpx.AsyncClient, email: str, name: str = "Someone") -> dict[str, Any]:
    r = await client.post("/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": name})
    assert r.status_code == 201, r.text
    return r.json()


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = await client.post("/api/v1/auths/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(credential: str | dict[str, Any]) -> dict[str, str]:
    token = credential["access_token"] if isinstance(credential, dict) else credential
    return {"Authorization": f"Bearer {token}"}


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and {"code", "message", "detail"} <= set(body["error"]), r.text
    return str(body["error"]["code"])


def refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert error_code(r) == code, r.text
    if status == 401:
        assert r.headers.get("www-authenticate") == "Bearer"


async def events_of_type(container: Container, event_type: str) -> list[Any]:
    events = await container.store.call(container.store.read, 1, 100_000)
    return [e for e in events if e.type == event_type]


async def audit_actions(
    client: httpx.AsyncClient, admin: dict[str, Any], **filters: Any
) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/audit", params={"limit": 500, **filters}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def signing_key(secret: str) -> OctKey:
    """The key ``AccessTokens`` derives from the deployment secret."""
    return OctKey.import_key(hashlib.sha256(f"jwt:{secret}".encode()).digest())


async def admin_and_user(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The tenant's first user (admin) signed in, and a second (plain) user: (admin tokens, user, user tokens)."""
    await register(client, "admin@example.com", "Admin")
    admin = await login(client, "admin@example.com")
    user = await register(client, "user@example.com", "User")
    return admin, user, await login(client, "user@example.com")


# --- access tokens -------------------------------------------------------------------------------------
async def test_access_token_past_its_expiry_is_refused_as_expired(client, container, settings) -> None:
    me = await register(client, "ann@example.com")
    expired = AccessTokens(settings.secret_key, ttl_s=-60).issue(
        user_id=uuid.UUID(me["id"]),
        tenant_id=me["tenant_id"],
        role=me["role"],
        token_version=1,
        session_id="",
    )
    refused(await client.get("/api/v1/auths/me", headers=bearer(expired)), 401, "TOKEN_EXPIRED")

    fresh = AccessTokens(settings.secret_key, ttl_s=60).issue(
        user_id=uuid.UUID(me["id"]),
        tenant_id=me["tenant_id"],
        role=me["role"],
        token_version=1,
        session_id="",
    )
    r = await client.get("/api/v1/auths/me", headers=bearer(fresh))
    assert r.status_code == 200 and r.json()["id"] == me["id"]


async def test_access_token_with_a_forged_signature_is_refused(client, container, settings) -> None:
    _admin, user, tokens = await admin_and_user(client)
    header, _payload, signature = tokens["access_token"].split(".")

    # The user promotes themself in the payload and keeps the signature.
    claims = claims_of(tokens["access_token"]) | {"role": "admin"}
    tampered = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    refused(await client.get("/api/v1/users", headers=bearer(tampered)), 401, "INVALID_TOKEN")

    # A token signed with some other secret.
    other = AccessTokens("not-the-deployment-secret-" + "y" * 40, ttl_s=300).issue(
        user_id=uuid.UUID(user["id"]),
        tenant_id=user["tenant_id"],
        role="admin",
        token_version=1,
        session_id="",
    )
    refused(await client.get("/api/v1/users", headers=bearer(other)), 401, "INVALID_TOKEN")

    # The genuine token still works: the refusals above are about the signature.
    assert (await client.get("/api/v1/auths/me", headers=bearer(tokens))).status_code == 200


async def test_unsigned_and_other_algorithm_tokens_are_refused(client, container, settings) -> None:
    _admin, _user, tokens = await admin_and_user(client)
    claims = claims_of(tokens["access_token"])

    none_header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    alg_none = f"{none_header}.{b64url(json.dumps(claims).encode())}."
    refused(await client.get("/api/v1/auths/me", headers=bearer(alg_none)), 401, "INVALID_TOKEN")

    # The right key, but an algorithm the server does not accept.
    hs512 = jwt.encode({"alg": "HS512"}, claims, signing_key(settings.secret_key), algorithms=["HS512"])
    refused(await client.get("/api/v1/auths/me", headers=bearer(hs512)), 401, "INVALID_TOKEN")

    # Signed correctly, but not an access token.
    not_access = jwt.encode({"alg": "HS256"}, claims | {"typ": "refresh"}, signing_key(settings.secret_key))
    refused(await client.get("/api/v1/auths/me", headers=bearer(not_access)), 401, "INVALID_TOKEN")

    # Control: the same claims, signed the way the server signs, are accepted.
    genuine = jwt.encode({"alg": "HS256"}, claims, signing_key(settings.secret_key))
    assert (await client.get("/api/v1/auths/me", headers=bearer(genuine))).status_code == 200


async def test_garbage_tokens_are_refused_as_invalid(client, container) -> None:
    await register(client, "ann@example.com")
    for garbage in (
        "garbage",
        "a.b.c",
        "a.b.c.d.e",
        "...",
        f"{b64url(b'[1]')}.{b64url(b'{}')}.x",
        "x" * 4000,
    ):
        refused(await client.get("/api/v1/auths/me", headers=bearer(garbage)), 401, "INVALID_TOKEN")


async def test_credentials_in_another_scheme_are_refused(client, container) -> None:
    await register(client, "ann@example.com")
    tokens = await login(client, "ann@example.com")
    basic = base64.b64encode(b"ann@example.com:" + PASSWORD.encode()).decode()
    for header in (f"Basic {basic}", f"Token {tokens['access_token']}", "Bearer", "Bearer    "):
        refused(
            await client.get("/api/v1/auths/me", headers={"Authorization": header}),
            401,
            "INVALID_AUTHORIZATION",
        )
    refused(await client.get("/api/v1/auths/me"), 401, "UNAUTHENTICATED")


async def test_password_change_revokes_earlier_tokens_and_records_their_use(
    client, container, pipeline: Pipeline
) -> None:
    await register(client, "ann@example.com")
    first = await login(client, "ann@example.com")
    second = await login(client, "ann@example.com")

    r = await client.post(
        "/api/v1/auths/password",
        json={"current_password": PASSWORD, "new_password": "battery staple 42"},
        headers=bearer(first),
    )
    assert r.status_code == 200, r.text
    renewed = r.json()

    for old in (first, second):
        refused(await client.get("/api/v1/auths/me", headers=bearer(old)), 401, "TOKEN_REVOKED")
        refused(
            await client.post("/api/v1/auths/refresh", json={"refresh_token": old["refresh_token"]}),
            401,
            "TOKEN_REVOKED",
        )
    assert (await client.get("/api/v1/auths/me", headers=bearer(renewed))).status_code == 200
    r = await client.post("/api/v1/auths/login", json={"email": "ann@example.com", "password": PASSWORD})
    refused(r, 401, "INVALID_CREDENTIALS")
    await login(client, "ann@example.com", "battery staple 42")

    # Each revoked token is recorded once, however often it comes back.
    refused(await client.get("/api/v1/auths/me", headers=bearer(first)), 401, "TOKEN_REVOKED")
    misuse = await events_of_type(container, "RevokedTokenUsed")
    assert len(misuse) == 2
    assert {e.data["token_kind"] for e in misuse} == {"access"}

    await pipeline.settle()
    rows = await audit_actions(client, renewed, action="RevokedTokenUsed")
    assert len(rows) == 2 and all(row["detail"]["token_kind"] == "access" for row in rows)


async def test_password_change_needs_the_current_password(client, container) -> None:
    await register(client, "ann@example.com")
    tokens = await login(client, "ann@example.com")
    before = await container.store.call(container.store.max_id)
    r = await client.post(
        "/api/v1/auths/password",
        json={"current_password": "not my password 1", "new_password": "battery staple 42"},
        headers=bearer(tokens),
    )
    refused(r, 401, "INVALID_CREDENTIALS")
    r = await client.post(
        "/api/v1/auths/password",
        json={"current_password": PASSWORD, "new_password": "short1"},
        headers=bearer(tokens),
    )
    refused(r, 422, "WEAK_PASSWORD")
    assert await container.store.call(container.store.max_id) == before
    assert (await client.get("/api/v1/auths/me", headers=bearer(tokens))).status_code == 200


async def test_role_change_revokes_the_users_tokens(client, container) -> None:
    admin, user, tokens = await admin_and_user(client)
    r = await client.patch(f"/api/v1/users/{user['id']}", json={"role": "premium"}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["role"] == "premium", r.text

    refused(await client.get("/api/v1/auths/me", headers=bearer(tokens)), 401, "TOKEN_REVOKED")
    assert [e.data["user_id"] for e in await events_of_type(container, "RevokedTokenUsed")] == [user["id"]]
    again = await login(client, "user@example.com")
    assert claims_of(again["access_token"])["role"] == "premium"
    r = await client.get("/api/v1/auths/me", headers=bearer(again))
    assert r.status_code == 200 and r.json()["role"] == "premium"
    # The admin's own tokens are untouched.
    assert (await client.get("/api/v1/auths/me", headers=bearer(admin))).status_code == 200


async def test_deactivation_revokes_the_users_tokens_and_api_keys(client, container) -> None:
    admin, user, tokens = await admin_and_user(client)
    r = await client.post("/api/v1/auths/api-keys", json={"name": "script"}, headers=bearer(tokens))
    assert r.status_code == 201, r.text
    key = r.json()["key"]

    r = await client.patch(f"/api/v1/users/{user['id']}", json={"active": False}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["active"] is False, r.text

    refused(await client.get("/api/v1/auths/me", headers=bearer(tokens)), 401, "TOKEN_REVOKED")
    refused(
        await client.post("/api/v1/auths/refresh", json={"refresh_token": tokens["refresh_token"]}),
        401,
        "TOKEN_REVOKED",
    )
    refused(await client.get("/api/v1/auths/me", headers={"X-API-Key": key}), 403, "USER_DEACTIVATED")
    r = await client.post("/api/v1/auths/login", json={"email": "user@example.com", "password": PASSWORD})
    refused(r, 403, "USER_DEACTIVATED")
    assert len(await events_of_type(container, "RevokedTokenUsed")) == 1


async def test_logout_everywhere_revokes_every_session_of_the_user(
    client, container, pipeline: Pipeline
) -> None:
    admin, user, laptop = await admin_and_user(client)
    phone = await login(client, "user@example.com")

    r = await client.post("/api/v1/auths/logout", json={"everywhere": True}, headers=bearer(laptop))
    assert r.status_code == 204, r.text

    for session in (laptop, phone):
        refused(await client.get("/api/v1/auths/me", headers=bearer(session)), 401, "TOKEN_REVOKED")
    refused(
        await client.post("/api/v1/auths/refresh", json={"refresh_token": laptop["refresh_token"]}),
        401,
        "SESSION_ENDED",
    )
    refused(
        await client.post("/api/v1/auths/refresh", json={"refresh_token": phone["refresh_token"]}),
        401,
        "TOKEN_REVOKED",
    )
    # Other users keep their sessions; the user can sign in again.
    assert (await client.get("/api/v1/auths/me", headers=bearer(admin))).status_code == 200
    assert (
        await client.get("/api/v1/auths/me", headers=bearer(await login(client, "user@example.com")))
    ).status_code == 200

    await pipeline.settle()
    rows = await audit_actions(client, admin, actor=f"user:{user['id']}")
    actions = [row["action"] for row in rows]
    assert "TokensRevoked" in actions and "SessionEnded" in actions
    assert len([row for row in await audit_actions(client, admin, action="RevokedTokenUsed")]) == 2


async def test_logout_ends_only_the_current_session(client, container) -> None:
    await register(client, "ann@example.com")
    laptop = await login(client, "ann@example.com")
    phone = await login(client, "ann@example.com")
    r = await client.post("/api/v1/auths/logout", headers=bearer(laptop))
    assert r.status_code == 204, r.text
    refused(
        await client.post("/api/v1/auths/refresh", json={"refresh_token": laptop["refresh_token"]}),
        401,
        "SESSION_ENDED",
    )
    r = await client.post("/api/v1/auths/refresh", json={"refresh_token": phone["refresh_token"]})
    assert r.status_code == 200, r.text
    # The ended session's access token dies with it at once; the other session's lives on.
    refused(await client.get("/api/v1/auths/me", headers=bearer(laptop)), 401, "TOKEN_REVOKED")
    assert (await client.get("/api/v1/auths/me", headers=bearer(phone))).status_code == 200


async def test_logged_out_access_token_stays_dead_when_redis_loses_its_state(client, container) -> None:
    await register(client, "ann@example.com")
    laptop = await login(client, "ann@example.com")
    assert (await client.post("/api/v1/auths/logout", headers=bearer(laptop))).status_code == 204
    await container.redis.flushdb()
    refused(await client.get("/api/v1/auths/me", headers=bearer(laptop)), 401, "TOKEN_REVOKED")
    fresh = await login(client, "ann@example.com")
    assert (await client.get("/api/v1/auths/me", headers=bearer(fresh))).status_code == 200


# --- refresh tokens ------------------------------------------------------------------------------------
async def test_refresh_rotates_the_token_pair(client, container) -> None:
    await register(client, "ann@example.com")
    first = await login(client, "ann@example.com")
    r = await client.post("/api/v1/auths/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["token_type"] == "bearer" and second["expires_in"] > 0
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert claims_of(second["access_token"])["sid"] == claims_of(first["access_token"])["sid"]
    assert (await client.get("/api/v1/auths/me", headers=bearer(second))).status_code == 200

    r = await client.post("/api/v1/auths/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 200, r.text


async def test_reused_refresh_token_ends_the_session_and_is_recorded(
    client, container, pipeline: Pipeline
) -> None:
    await register(client, "ann@example.com")
    stolen = await login(client, "ann@example.com")
    r = await client.post("/api/v1/auths/refresh", json={"refresh_token": stolen["refresh_token"]})
    assert r.status_code == 200, r.text
    newest = r.json()

    # The rotated-away token comes back: someone else holds a copy.
    r = await client.post("/api/v1/auths/refresh", json={"refresh_token": stolen["refresh_token"]})
    refused(r, 401, "REFRESH_TOKEN_REUSED")
    # The whole family is dead, the legitimate newest token included.
    r = await client.post("/api/v1/auths/refresh", json={"refresh_token": newest["refresh_token"]})
    refused(r, 401, "SESSION_ENDED")

    misuse = await events_of_type(container, "RevokedTokenUsed")
    assert [(e.data["token_kind"], e.data["reason"]) for e in misuse] == [("refresh", "REFRESH_TOKEN_REUSED")]
    assert [e.data["reason"] for e in await events_of_type(container, "SessionEnded")] == [
        "refresh_token_reused"
    ]

    # The alarm lands in the user's tenant's audit trail, where its admin can see it.
    await pipeline.settle()
    admin = await login(client, "ann@example.com")
    rows = await audit_actions(client, admin, action="RevokedTokenUsed")
    assert len(rows) == 1 and rows[0]["detail"]["token_kind"] == "refresh"
    assert "SessionEnded" in [row["action"] for row in await audit_actions(client, admin)]
    # Access tokens of the ended family are refused too, not only its refresh tokens.
    refused(await client.get("/api/v1/auths/me", headers=bearer(newest)), 401, "TOKEN_REVOKED")


async def test_malformed_or_unknown_refresh_tokens_are_refused(client, container) -> None:
    await register(client, "ann@example.com")
    tokens = await login(client, "ann@example.com")
    session_hex = tokens["refresh_token"].partition(".")[0]
    for bad in (
        "garbage",
        "x.y",
        f"{uuid.uuid4().hex}.{'a' * 43}",
        f"{session_hex}.{'a' * 43}",
        tokens["access_token"],
    ):
        refused(
            await client.post("/api/v1/auths/refresh", json={"refresh_token": bad}),
            401,
            "INVALID_REFRESH_TOKEN",
        )
    # None of that hurt the real session.
    assert (
        await client.post("/api/v1/auths/refresh", json={"refresh_token": tokens["refresh_token"]})
    ).status_code == 200


# --- API keys ------------------------------------------------------------------------------------------
async def create_key(client: httpx.AsyncClient, tokens: dict[str, Any], **body: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/auths/api-keys", json={"name": "key", **body}, headers=bearer(tokens))
    assert r.status_code == 201, r.text
    return r.json()


async def test_revoked_api_key_is_refused_and_its_use_recorded(client, container) -> None:
    await register(client, "ann@example.com")
    tokens = await login(client, "ann@example.com")
    key = await create_key(client, tokens)
    assert (await client.get("/api/v1/auths/me", headers={"X-API-Key": key["key"]})).status_code == 200

    r = await client.delete(f"/api/v1/auths/api-keys/{key['id']}", headers=bearer(tokens))
    assert r.status_code == 204, r.text
    refused(await client.get("/api/v1/auths/me", headers={"X-API-Key": key["key"]}), 401, "API_KEY_REVOKED")
    refused(await client.get("/api/v1/auths/me", headers=bearer(key["key"])), 401, "API_KEY_REVOKED")
    misuse = await events_of_type(container, "RevokedTokenUsed")
    assert [e.data["token_kind"] for e in misuse] == ["api_key"]


async def test_malformed_or_wrong_api_keys_are_refused(client, container) -> None:
    await register(client, "ann@example.com")
    tokens = await login(client, "ann@example.com")
    key = await create_key(client, tokens)
    right_id_wrong_secret = key["key"][: len("pk_") + 32] + "_" + "A" * 43
    unknown_id = f"pk_{uuid.uuid4().hex}_{'A' * 43}"
    for bad in ("pk_", "pk_nonsense", "pk_zz_short", right_id_wrong_secret, unknown_id):
        refused(await client.get("/api/v1/auths/me", headers={"X-API-Key": bad}), 401, "INVALID_API_KEY")
    assert (await client.get("/api/v1/auths/me", headers={"X-API-Key": key["key"]})).status_code == 200


async def test_read_only_api_key_cannot_change_anything(client, container) -> None:
    await register(client, "ann@example.com")
    tokens = await login(client, "ann@example.com")
    key = await create_key(client, tokens, scopes=["read"])
    assert key["scopes"] == ["read"]
    headers = {"X-API-Key": key["key"]}
    assert (await client.get("/api/v1/auths/me", headers=headers)).status_code == 200

    before = await container.store.call(container.store.max_id)
    refused(
        await client.post("/api/v1/auths/api-keys", json={"name": "more"}, headers=headers),
        403,
        "SCOPE_REQUIRED",
    )
    refused(
        await client.post("/api/v1/auths/logout", json={"everywhere": True}, headers=headers),
        403,
        "SCOPE_REQUIRED",
    )
    refused(
        await client.delete(f"/api/v1/auths/api-keys/{key['id']}", headers=headers), 403, "SCOPE_REQUIRED"
    )
    assert await container.store.call(container.store.max_id) == before


async def test_api_key_without_admin_scope_cannot_administer_even_for_an_admin(client, container) -> None:
    await register(client, "ann@example.com")
    tokens = await login(client, "ann@example.com")
    plain = await create_key(client, tokens)  # read + write
    refused(await client.get("/api/v1/users", headers={"X-API-Key": plain["key"]}), 403, "ADMIN_REQUIRED")
    admin_key = await create_key(client, tokens, scopes=["read", "write", "admin"])
    assert (await client.get("/api/v1/users", headers={"X-API-Key": admin_key["key"]})).status_code == 200
    # Keys come from signed-in sessions, not from other keys.
    r = await client.post(
        "/api/v1/auths/api-keys", json={"name": "child"}, headers={"X-API-Key": admin_key["key"]}
    )
    refused(r, 403, "SESSION_REQUIRED")


async def test_non_admin_cannot_create_an_admin_scoped_key(client, container) -> None:
    _admin, _user, tokens = await admin_and_user(client)
    before = await container.store.call(container.store.max_id)
    r = await client.post(
        "/api/v1/auths/api-keys", json={"name": "sneaky", "scopes": ["read", "admin"]}, headers=bearer(tokens)
    )
    refused(r, 403, "SCOPE_NOT_ALLOWED")
    assert await container.store.call(container.store.max_id) == before


async def test_user_cannot_revoke_someone_elses_api_key(client, container) -> None:
    admin, _user, tokens = await admin_and_user(client)
    admins_key = await create_key(client, admin)
    before = await container.store.call(container.store.max_id)
    refused(
        await client.delete(f"/api/v1/auths/api-keys/{admins_key['id']}", headers=bearer(tokens)),
        404,
        "API_KEY_NOT_FOUND",
    )
    assert await container.store.call(container.store.max_id) == before
    assert (await client.get("/api/v1/auths/me", headers={"X-API-Key": admins_key["key"]})).status_code == 200


async def test_access_token_lifetime_matches_the_settings(client, container, settings) -> None:
    await register(client, "ann@example.com")
    tokens = await login(client, "ann@example.com")
    claims = claims_of(tokens["access_token"])
    assert tokens["expires_in"] == settings.access_token_ttl_s
    assert abs(claims["exp"] - (int(time.time()) + settings.access_token_ttl_s)) <= 5
