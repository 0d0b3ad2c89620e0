"""Bad input through HTTP: each gets a 4xx with a stable error code (never a 500, never a stack trace),
and a rejected command writes no event. (A failed sign-in is the one exception: it writes a
``SignInFailed`` security event by design.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from adapters.settings import Settings
from workers.bootstrap import Container

PASSWORD = "correct horse 9"
NEWCOMER = {"email": "new@example.com", "password": PASSWORD, "name": "Newcomer"}


# --- helpers -------------------------------------------------------------------------------------------
async def head(container: Container) -> int:
    """The newest notification id: unchanged means no event was written."""
    return await container.store.call(container.store.max_id)


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and {"code", "message", "detail"} <= set(body["error"]), r.text
    assert "Traceback" not in r.text
    return str(body["error"]["code"])


async def rejected(container: Container, send: Any, status: int, code: str) -> httpx.Response:
    """Send the request; it must be refused with ``status`` and ``code`` and leave the event store as it was."""
    before = await head(container)
    r = await send
    assert r.status_code == status, r.text
    assert error_code(r) == code, r.text
    assert await head(container) == before, "a rejected request wrote an event"
    return r


async def signed_in_admin(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, str]]:
    r = await client.post(
        "/api/v1/auths/register", json={"email": "admin@example.com", "password": PASSWORD, "name": "Admin"}
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/auths/login", json={"email": "admin@example.com", "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json(), {"Authorization": f"Bearer {r.json()['access_token']}"}


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def raw(body: bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": content_type}}


# --- sign-up bodies ------------------------------------------------------------------------------------
SIGN_UP_CASES: list[tuple[str, Callable[[Settings], dict[str, Any]], int, str]] = [
    ("malformed JSON", lambda s: raw(b'{"email": "new@example.com", '), 400, "MALFORMED_JSON"),
    ("JSON with a lone surrogate", lambda s: raw(b'{"email": "\\ud800"}'), 400, "MALFORMED_JSON"),
    ("form-encoded body", lambda s: {"data": NEWCOMER}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    (
        "XML body",
        lambda s: raw(b"<user><email>new@example.com</email></user>", "application/xml"),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ),
    ("empty body", lambda s: raw(b""), 400, "VALIDATION_FAILED"),
    ("array instead of object", lambda s: {"json": [NEWCOMER]}, 400, "VALIDATION_FAILED"),
    ("number where a string goes", lambda s: {"json": NEWCOMER | {"email": 42}}, 400, "VALIDATION_FAILED"),
    ("boolean where a string goes", lambda s: {"json": NEWCOMER | {"name": True}}, 400, "VALIDATION_FAILED"),
    ("null where a string goes", lambda s: {"json": NEWCOMER | {"password": None}}, 400, "VALIDATION_FAILED"),
    (
        "missing password",
        lambda s: {"json": {"email": "new@example.com", "name": "Newcomer"}},
        400,
        "VALIDATION_FAILED",
    ),
    ("missing everything", lambda s: {"json": {}}, 400, "VALIDATION_FAILED"),
    ("unknown field", lambda s: {"json": NEWCOMER | {"role": "admin"}}, 400, "VALIDATION_FAILED"),
    ("name of 101 characters", lambda s: {"json": NEWCOMER | {"name": "n" * 101}}, 400, "VALIDATION_FAILED"),
    (
        "email over 254 characters",
        lambda s: {"json": NEWCOMER | {"email": "a" * 64 + "@" + "b" * 186 + ".com"}},
        400,
        "VALIDATION_FAILED",
    ),
    (
        "password over 256 characters",
        lambda s: {"json": NEWCOMER | {"password": "p4ss " * 52}},
        400,
        "VALIDATION_FAILED",
    ),
    ("empty name", lambda s: {"json": NEWCOMER | {"name": ""}}, 400, "VALIDATION_FAILED"),
    ("blank name", lambda s: {"json": NEWCOMER | {"name": "    "}}, 422, "INVALID_NAME"),
    ("NUL in the name", lambda s: {"json": NEWCOMER | {"name": "New\x00comer"}}, 422, "INVALID_NAME"),
    ("line break in the name", lambda s: {"json": NEWCOMER | {"name": "New\ncomer"}}, 422, "INVALID_NAME"),
    ("not an email address", lambda s: {"json": NEWCOMER | {"email": "not-an-email"}}, 422, "INVALID_EMAIL"),
    ("email without a domain", lambda s: {"json": NEWCOMER | {"email": "new@"}}, 422, "INVALID_EMAIL"),
    (
        "NUL in the email",
        lambda s: {"json": NEWCOMER | {"email": "new\x00@example.com"}},
        422,
        "INVALID_EMAIL",
    ),
    ("short password", lambda s: {"json": NEWCOMER | {"password": "short1"}}, 422, "WEAK_PASSWORD"),
    ("common password", lambda s: {"json": NEWCOMER | {"password": "password123"}}, 422, "WEAK_PASSWORD"),
    (
        "letters-only password",
        lambda s: {"json": NEWCOMER | {"password": "onlylettershere"}},
        422,
        "WEAK_PASSWORD",
    ),
    (
        "password made of the email",
        lambda s: {"json": NEWCOMER | {"email": "zebra.crossing@example.com", "password": "zebra.crossing9"}},
        422,
        "WEAK_PASSWORD",
    ),
    (
        "body over the size limit",
        lambda s: raw(b'{"name": "' + b"x" * s.max_request_bytes + b'"}'),
        413,
        "PAYLOAD_TOO_LARGE",
    ),
    (
        "streamed body over the size limit",
        lambda s: {"content": chunks(b'{"name": "', b"x" * s.max_request_bytes, b'"}')},
        413,
        "PAYLOAD_TOO_LARGE",
    ),
    (
        "unknown tenant",
        lambda s: {"json": NEWCOMER, "headers": {"X-Tenant": "no-such-tenant"}},
        404,
        "TENANT_NOT_FOUND",
    ),
]


@pytest.mark.parametrize(
    ("request_of", "status", "code"), [c[1:] for c in SIGN_UP_CASES], ids=[c[0] for c in SIGN_UP_CASES]
)
async def test_sign_up_with_bad_input_is_refused_and_writes_nothing(
    client, container, settings, request_of, status, code
) -> None:
    await signed_in_admin(client)  # a tenant with history, so "nothing written" is measured against something
    await rejected(container, client.post("/api/v1/auths/register", **request_of(settings)), status, code)
    r = await client.post("/api/v1/auths/login", json={"email": "new@example.com", "password": PASSWORD})
    assert r.status_code == 401  # nobody was created


async def test_validation_errors_say_which_field_is_wrong(client, container) -> None:
    r = await rejected(
        container,
        client.post("/api/v1/auths/register", json=NEWCOMER | {"email": 42}),
        400,
        "VALIDATION_FAILED",
    )
    assert [e["key"] for e in r.json()["error"]["detail"]["errors"]] == ["email"]
    r = await rejected(
        container,
        client.post("/api/v1/auths/register", json=NEWCOMER | {"colour": "blue"}),
        400,
        "VALIDATION_FAILED",
    )
    assert "colour" in json.dumps(r.json()["error"]["detail"])
    r = await rejected(
        container,
        client.post("/api/v1/auths/register", json=NEWCOMER | {"password": "short1"}),
        422,
        "WEAK_PASSWORD",
    )
    assert r.json()["error"]["detail"] == {"field": "password"}


async def test_json_sent_as_text_plain_is_still_read(client, container) -> None:
    # Lenient on purpose: the body decodes, so the label does not matter.
    r = await client.post("/api/v1/auths/register", **raw(json.dumps(NEWCOMER).encode(), "text/plain"))
    assert r.status_code == 201, r.text


async def test_duplicate_email_is_a_conflict_whatever_its_case(client, container) -> None:
    _, auth = await signed_in_admin(client)
    r = await client.post("/api/v1/auths/register", json=NEWCOMER | {"email": "Ann.Lee@Example.com"})
    assert r.status_code == 201, r.text
    for email in ("ann.lee@example.com", "ANN.LEE@EXAMPLE.COM", "  Ann.Lee@example.COM "):
        r = await rejected(
            container,
            client.post("/api/v1/auths/register", json=NEWCOMER | {"email": email}),
            409,
            "EMAIL_TAKEN",
        )
        assert r.json()["error"]["detail"] == {"field": "email"}
    # An admin creating the account hits the same rule.
    await rejected(
        container,
        client.post(
            "/api/v1/users", json=NEWCOMER | {"email": "ANN.LEE@example.com", "role": "user"}, headers=auth
        ),
        409,
        "EMAIL_TAKEN",
    )


async def test_failed_sign_in_writes_only_its_security_event(client, container) -> None:
    await signed_in_admin(client)
    for body in (
        {"email": "admin@example.com", "password": "wrong password 1"},
        {"email": "nobody@example.com", "password": PASSWORD},
        {"email": "not-an-email", "password": PASSWORD},
    ):
        before = await head(container)
        r = await client.post("/api/v1/auths/login", json=body)
        assert r.status_code == 401 and error_code(r) == "INVALID_CREDENTIALS", r.text
        written = await container.store.call(container.store.read, before + 1, 100)
        assert [e.type for e in written] == ["SignInFailed"]

    # A sign-in that does not even parse, or names no tenant, writes nothing.
    await rejected(
        container,
        client.post("/api/v1/auths/login", json={"email": "admin@example.com"}),
        400,
        "VALIDATION_FAILED",
    )
    await rejected(container, client.post("/api/v1/auths/login", **raw(b"{nope")), 400, "MALFORMED_JSON")
    await rejected(
        container,
        client.post(
            "/api/v1/auths/login",
            json={"email": "admin@example.com", "password": PASSWORD},
            headers={"X-Tenant": "nope"},
        ),
        404,
        "TENANT_NOT_FOUND",
    )


# --- signed-in commands --------------------------------------------------------------------------------
async def test_admin_commands_with_bad_bodies_are_refused_and_write_nothing(client, container) -> None:
    _me, auth = await signed_in_admin(client)
    r = await client.post("/api/v1/users", json=NEWCOMER | {"role": "user"}, headers=auth)
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("PATCH", f"/api/v1/users/{user_id}", {"json": {"nickname": "x"}}, 400, "VALIDATION_FAILED"),
        ("PATCH", f"/api/v1/users/{user_id}", {"json": {"active": "yes"}}, 400, "VALIDATION_FAILED"),
        ("PATCH", f"/api/v1/users/{user_id}", {"json": {"name": None}}, 400, "VALIDATION_FAILED"),
        ("PATCH", f"/api/v1/users/{user_id}", {"json": {"name": "n" * 101}}, 400, "VALIDATION_FAILED"),
        ("PATCH", f"/api/v1/users/{user_id}", {"json": {"role": "wizard"}}, 422, "INVALID_ROLE"),
        ("PATCH", f"/api/v1/users/{user_id}", {"json": {"password": "short1"}}, 422, "WEAK_PASSWORD"),
        ("PATCH", f"/api/v1/users/{user_id}", raw(b'{"name": '), 400, "MALFORMED_JSON"),
        (
            "POST",
            "/api/v1/users",
            {"json": NEWCOMER | {"email": "b@example.com", "role": "wizard"}},
            422,
            "INVALID_ROLE",
        ),
        (
            "POST",
            "/api/v1/users",
            {"json": NEWCOMER | {"email": "b@example.com", "role": "r" * 21}},
            400,
            "VALIDATION_FAILED",
        ),
        ("POST", "/api/v1/auths/api-keys", {"json": {"name": "k", "scopes": ["root"]}}, 422, "INVALID_SCOPE"),
        ("POST", "/api/v1/auths/api-keys", {"json": {"name": "k", "scopes": []}}, 422, "INVALID_SCOPE"),
        (
            "POST",
            "/api/v1/auths/api-keys",
            {"json": {"name": "k", "expires_in_days": 0}},
            422,
            "INVALID_EXPIRY",
        ),
        (
            "POST",
            "/api/v1/auths/api-keys",
            {"json": {"name": "k", "expires_in_days": 1.5}},
            400,
            "VALIDATION_FAILED",
        ),
        ("POST", "/api/v1/auths/api-keys", {"json": {"name": "k\x00"}}, 422, "INVALID_NAME"),
        ("POST", "/api/v1/auths/logout", {"json": {"everywhere": "yes"}}, 400, "VALIDATION_FAILED"),
        (
            "POST",
            "/api/v1/auths/password",
            {"json": {"new_password": "battery staple 42"}},
            400,
            "VALIDATION_FAILED",
        ),
        ("POST", "/api/v1/tenants", {"json": {"slug": "Bad Slug", "name": "Bad"}}, 422, "INVALID_SLUG"),
        ("POST", "/api/v1/tenants", {"json": {"slug": "s" * 41, "name": "Long"}}, 400, "VALIDATION_FAILED"),
        (
            "POST",
            "/api/v1/tenants",
            {"json": {"slug": "acme", "name": "Acme", "default_role": "admin"}},
            422,
            "INVALID_ROLE",
        ),
        (
            "POST",
            "/api/v1/tenants",
            {"json": {"slug": "acme", "name": "Acme", "domains": ["not a host"]}},
            422,
            "INVALID_DOMAIN",
        ),
        (
            "POST",
            "/api/v1/tenants",
            {"json": {"slug": "acme", "name": "Acme", "domains": ["acme\x00.test"]}},
            422,
            "INVALID_DOMAIN",
        ),
    ]
    for method, path, kwargs, status, code in cases:
        headers = {**kwargs.pop("headers", {}), **auth}
        before = await head(container)
        r = await client.request(method, path, headers=headers, **kwargs)
        assert (r.status_code, error_code(r)) == (status, code), f"{method} {path} {kwargs}: {r.text}"
        assert await head(container) == before, f"{method} {path} {kwargs} wrote an event"


async def test_tenant_slug_that_exists_is_a_conflict(client, container) -> None:
    _, auth = await signed_in_admin(client)
    await rejected(
        container,
        client.post("/api/v1/tenants", json={"slug": "default", "name": "Again"}, headers=auth),
        409,
        "TENANT_EXISTS",
    )


# --- paths, query parameters, routes -------------------------------------------------------------------
async def test_malformed_ids_in_the_path_are_not_found(client, container) -> None:
    _, auth = await signed_in_admin(client)
    for method, path in (
        ("GET", "/api/v1/users/not-a-uuid"),
        ("PATCH", "/api/v1/users/12345"),
        ("DELETE", "/api/v1/auths/api-keys/zzz"),
        ("DELETE", "/api/v1/auths/api-keys/00000000-0000-0000-0000-00000000000g"),
    ):
        kwargs = {"json": {"name": "x"}} if method == "PATCH" else {}
        await rejected(container, client.request(method, path, headers=auth, **kwargs), 404, "NOT_FOUND")
    # Well-formed but unknown ids name what was not found.
    await rejected(
        container,
        client.get("/api/v1/users/00000000-0000-0000-0000-000000000000", headers=auth),
        404,
        "USER_NOT_FOUND",
    )
    await rejected(
        container,
        client.delete("/api/v1/auths/api-keys/00000000-0000-0000-0000-000000000000", headers=auth),
        404,
        "API_KEY_NOT_FOUND",
    )


async def test_out_of_range_or_malformed_query_parameters_are_refused(client, container) -> None:
    _, auth = await signed_in_admin(client)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/api/v1/users", {"limit": 0}, 400, "VALIDATION_FAILED"),
        ("/api/v1/users", {"limit": 100_000}, 400, "VALIDATION_FAILED"),
        ("/api/v1/users", {"limit": -1}, 400, "VALIDATION_FAILED"),
        ("/api/v1/users", {"limit": "ten"}, 400, "VALIDATION_FAILED"),
        ("/api/v1/users", {"offset": -1}, 400, "VALIDATION_FAILED"),
        ("/api/v1/users", {"offset": 10**7}, 400, "VALIDATION_FAILED"),
        ("/api/v1/users", {"q": "q" * 101}, 400, "VALIDATION_FAILED"),
        ("/api/v1/users", {"q": "a\x00b"}, 400, "VALIDATION_FAILED"),
        ("/api/v1/users", {"role": "wizard"}, 422, "INVALID_ROLE"),
        ("/api/v1/audit", {"limit": 0}, 400, "VALIDATION_FAILED"),
        ("/api/v1/audit", {"limit": 100_000}, 400, "VALIDATION_FAILED"),
        ("/api/v1/audit", {"before": 0}, 400, "VALIDATION_FAILED"),
        ("/api/v1/audit", {"before": 10**20}, 400, "VALIDATION_FAILED"),
        ("/api/v1/audit", {"since": "yesterday"}, 400, "VALIDATION_FAILED"),
        (
            "/api/v1/audit",
            {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
            422,
            "INVALID_RANGE",
        ),
        ("/api/v1/audit", {"actor": "\x00"}, 400, "VALIDATION_FAILED"),
        ("/api/v1/audit", {"action": "Signed\x00In"}, 400, "VALIDATION_FAILED"),
        ("/api/v1/audit", {"target_type": "\x00"}, 400, "VALIDATION_FAILED"),
        ("/api/v1/audit", {"target_id": "\x00"}, 400, "VALIDATION_FAILED"),
        ("/api/v1/audit", {"target_id": "t" * 65}, 400, "VALIDATION_FAILED"),
        ("/api/v1/audit/replay", {}, 400, "VALIDATION_FAILED"),
        ("/api/v1/audit/replay", {"aggregate_id": "not-a-uuid"}, 400, "VALIDATION_FAILED"),
        (
            "/api/v1/audit/replay",
            {"aggregate_id": "00000000-0000-0000-0000-000000000000", "at": "noon"},
            400,
            "VALIDATION_FAILED",
        ),
        (
            "/api/v1/audit/replay",
            {"aggregate_id": "00000000-0000-0000-0000-000000000000"},
            404,
            "AGGREGATE_NOT_FOUND",
        ),
    ]
    for path, params, status, code in cases:
        r = await client.get(path, params=params, headers=auth)
        assert (r.status_code, error_code(r)) == (status, code), f"{path} {params}: {r.text}"
    # In range, the same parameters are fine.
    r = await client.get(
        "/api/v1/users", params={"limit": 200, "offset": 0, "q": "100%_sure", "role": "admin"}, headers=auth
    )
    assert r.status_code == 200, r.text
    r = await client.get(
        "/api/v1/audit", params={"limit": 500, "before": 2**63 - 1, "actor": "user:x"}, headers=auth
    )
    assert r.status_code == 200, r.text


async def test_unknown_routes_and_wrong_methods_get_404_and_405(client, container) -> None:
    _, auth = await signed_in_admin(client)
    await rejected(container, client.get("/api/v1/nothing-here"), 404, "NOT_FOUND")
    await rejected(container, client.get("/api/v2/users", headers=auth), 404, "NOT_FOUND")
    await rejected(container, client.post("/api/v1/auths/sign-up", json=NEWCOMER), 404, "NOT_FOUND")
    await rejected(container, client.delete("/api/v1/auths/login"), 405, "METHOD_NOT_ALLOWED")
    await rejected(container, client.put("/api/v1/users", json={}, headers=auth), 405, "METHOD_NOT_ALLOWED")
    await rejected(container, client.get("/api/v1/auths/register"), 405, "METHOD_NOT_ALLOWED")
