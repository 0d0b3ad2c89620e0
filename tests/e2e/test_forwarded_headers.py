"""Whose address a request comes from, through a real uvicorn served as ``parley api`` serves it.

Forwarded headers are believed only from ``PARLEY_TRUSTED_PROXIES`` (none by default): anyone else sending
``X-Forwarded-For`` changes neither the address the audit trail records nor the sign-in limit it counts
against. From a trusted proxy, the client is the right-most forwarded address that is not itself a trusted
proxy. Token refresh is limited per client address and per session."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import msgspec
import pytest

from api.app import create_app
from application.context import CommandContext
from domain.identity import tenant_id_for
from domain.quotas import QuotaPolicy
from tests.conftest import Pipeline, served
from workers.bootstrap import Container

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse 9"


# --- helpers -------------------------------------------------------------------------------------------
async def set_rate_limits(c: Container, **limits: int) -> None:
    """Before any request: API processes cache a tenant's limits for a few seconds."""
    tenant_id = str(tenant_id_for(c.settings.default_tenant))

    def command() -> None:
        policy = c.store.find(QuotaPolicy, QuotaPolicy.create_id(tenant_id)) or QuotaPolicy(tenant_id=tenant_id)
        policy.set_rate_limits(**limits)
        c.store.save(policy)

    await c.store.execute(CommandContext(tenant_id=tenant_id, actor="system"), command)


async def register(http: httpx.AsyncClient, email: str, **headers: str) -> None:
    body = {"email": email, "password": PASSWORD, "name": "Someone"}
    r = await http.post("/api/v1/auths/register", json=body, headers=headers)
    assert r.status_code == 201, r.text


async def login(http: httpx.AsyncClient, email: str, password: str = PASSWORD, **headers: str) -> httpx.Response:
    return await http.post("/api/v1/auths/login", json={"email": email, "password": password}, headers=headers)


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def assert_limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(r.headers["retry-after"]) <= 60


async def audit_ips(http: httpx.AsyncClient, admin: dict[str, Any], pipeline: Pipeline) -> dict[str, set[str | None]]:
    """The addresses the audit trail recorded, by correlation id (``X-Request-ID`` of the request)."""
    await pipeline.settle()
    r = await http.get("/api/v1/audit", params={"limit": 500}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    found: dict[str, set[str | None]] = {}
    for row in r.json()["items"]:
        found.setdefault(row["correlation_id"], set()).add(row["ip"])
    return found


def request_id() -> str:
    return uuid.uuid4().hex


# --- no trusted proxy (the default) ----------------------------------------------------------------------
async def test_without_a_trusted_proxy_forwarded_headers_change_neither_the_address_nor_the_limit(
    container, pipeline
) -> None:
    assert container.settings.trusted_proxies == ()
    await set_rate_limits(container, sign_in_per_ip_per_minute=4)
    async with served(create_app(container), container.settings) as url, httpx.AsyncClient(base_url=url) as http:
        await register(http, "admin@example.com")
        r = await login(http, "admin@example.com")
        assert r.status_code == 200, r.text
        admin = r.json()
        spoofed: list[str] = []
        for i in range(3):  # a client on loopback rotating the headers a proxy would set
            spoofed.append(request_id())
            r = await login(
                http,
                "admin@example.com",
                "not the password",
                **{"X-Forwarded-For": f"198.51.100.{i}", "X-Forwarded-Proto": "https", "X-Request-ID": spoofed[-1]},
            )
            assert r.status_code == 401, r.text
        # The fifth sign-in from this address is refused, whatever it says it comes from.
        assert_limited(await login(http, "admin@example.com", **{"X-Forwarded-For": "203.0.113.99"}))
        assert_limited(await login(http, "admin@example.com", Forwarded="for=203.0.113.98"))
        ips = await audit_ips(http, admin, pipeline)
    assert all(ips[rid] == {"127.0.0.1"} for rid in spoofed), ips  # each failed sign-in is audited
    assert {ip for found in ips.values() for ip in found} - {None} == {"127.0.0.1"}  # None: system commands


# --- a trusted proxy -------------------------------------------------------------------------------------
async def test_from_a_trusted_proxy_the_right_most_untrusted_forwarded_address_is_the_client(
    container, pipeline
) -> None:
    settings = msgspec.structs.replace(container.settings, trusted_proxies=("127.0.0.1", "10.0.0.0/8"))
    await set_rate_limits(container, sign_in_per_ip_per_minute=2)
    async with served(create_app(container), settings) as url, httpx.AsyncClient(base_url=url) as http:
        await register(http, "admin@example.com", **{"X-Forwarded-For": "203.0.113.1"})
        r = await login(http, "admin@example.com", **{"X-Forwarded-For": "203.0.113.1"})
        assert r.status_code == 200, r.text
        admin = r.json()
        seen: dict[str, str] = {}
        # What the client wrote is on the left; each proxy appends the peer it saw; trusted proxies
        # (127.0.0.1, 10.0.0.0/8) are skipped from the right.
        for forwarded, client in (
            ("198.51.100.7, 203.0.113.9", "203.0.113.9"),
            ("198.51.100.7, 203.0.113.9, 10.1.2.3", "203.0.113.9"),
        ):
            rid = request_id()
            r = await login(
                http, "admin@example.com", "not the password", **{"X-Forwarded-For": forwarded, "X-Request-ID": rid}
            )
            assert r.status_code == 401, r.text
            seen[rid] = client
        # Each client has its own sign-in window: 203.0.113.9 has spent its two, 203.0.113.1 has one left.
        assert_limited(await login(http, "admin@example.com", **{"X-Forwarded-For": "10.9.9.9, 203.0.113.9"}))
        assert (await login(http, "admin@example.com", **{"X-Forwarded-For": "203.0.113.1"})).status_code == 200
        ips = await audit_ips(http, admin, pipeline)
    for rid, client in seen.items():
        assert ips[rid] == {client}, ips


# --- refresh --------------------------------------------------------------------------------------------
async def test_refreshing_one_session_is_limited(client, container) -> None:
    await set_rate_limits(container, refresh_per_session_per_minute=3)
    await register(client, "ann@example.com")
    tokens = (await login(client, "ann@example.com")).json()
    for _ in range(3):  # each refresh rotates the token; the session is the same
        r = await client.post("/api/v1/auths/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 200, r.text
        tokens = r.json()
    assert_limited(await client.post("/api/v1/auths/refresh", json={"refresh_token": tokens["refresh_token"]}))
    # Another session of the same user, from the same address, is counted apart.
    other = (await login(client, "ann@example.com")).json()
    assert (await client.post("/api/v1/auths/refresh", json={"refresh_token": other["refresh_token"]})).status_code == 200


async def test_refreshing_is_limited_per_client_address_valid_token_or_not(client, container) -> None:
    await set_rate_limits(container, refresh_per_ip_per_minute=4)
    await register(client, "bob@example.com")
    tokens = (await login(client, "bob@example.com")).json()
    guesses = [f"{uuid.uuid4().hex}.{'x' * 43}" for _ in range(3)]
    for guess in guesses:  # someone trying tokens: each try counts
        r = await client.post("/api/v1/auths/refresh", json={"refresh_token": guess})
        assert r.status_code == 401, r.text
    r = await client.post("/api/v1/auths/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text
    assert_limited(await client.post("/api/v1/auths/refresh", json={"refresh_token": r.json()["refresh_token"]}))
    # Another address is not held back by this one.
    transport = httpx.ASGITransport(app=create_app(container), client=("198.51.100.9", 4242))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as elsewhere:
        r2 = await elsewhere.post("/api/v1/auths/refresh", json={"refresh_token": r.json()["refresh_token"]})
        assert r2.status_code == 200, r2.text


async def test_the_quota_api_sets_the_refresh_limits(client, container) -> None:
    await register(client, "admin@example.com")
    admin = (await login(client, "admin@example.com")).json()
    r = await client.put(
        "/api/v1/quotas/rate-limits",
        json={"refresh_per_ip_per_minute": 30, "refresh_per_session_per_minute": 5},
        headers=bearer(admin),
    )
    assert r.status_code == 200, r.text
    limits = r.json()["rate_limits"]
    assert limits["refresh_per_ip_per_minute"] == 30 and limits["refresh_per_session_per_minute"] == 5
