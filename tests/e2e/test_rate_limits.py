"""Rate limits through HTTP: requests per minute per user and per API key, sign-ins per minute per client
IP, answered 429 ``RATE_LIMITED`` with ``Retry-After``; limits come from the tenant's quota policy; the
window lives in Redis, so every API process shares it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from adapters.rate_limit import SlidingWindowLimiter
from adapters.settings import Settings
from application.context import CommandContext
from domain.identity import tenant_id_for
from domain.quotas import QuotaPolicy
from tests.conftest import FAST_PASSWORDS
from workers.bootstrap import Container, bootstrap

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse 9"


# --- helpers -------------------------------------------------------------------------------------------
def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


async def set_rate_limits(c: Container, **limits: int) -> None:
    tenant_id = str(tenant_id_for(c.settings.default_tenant))

    def command() -> None:
        policy = c.store.find(QuotaPolicy, QuotaPolicy.create_id(tenant_id)) or QuotaPolicy(tenant_id=tenant_id)
        policy.set_rate_limits(**limits)
        c.store.save(policy)

    await c.store.execute(CommandContext(tenant_id=tenant_id, actor="system"), command)


async def sign_in(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    r = await client.post("/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": "Someone"})
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()


def assert_limited(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert error_code(r) == "RATE_LIMITED"
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert r.json()["error"]["detail"]["retry_after_s"] == retry_after
    return retry_after


def http_client(app: Any, ip: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 4242)), base_url="http://testserver")


@pytest.fixture
async def second_process(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Another API process: its own container and app, on the same Postgres and Redis."""
    from api.app import create_app

    c = await bootstrap(settings, passwords=FAST_PASSWORDS)
    async with http_client(create_app(c), "203.0.113.7") as http:
        yield http
    await c.close()


# --- the limiter ---------------------------------------------------------------------------------------
async def test_the_window_admits_exactly_the_limit_under_concurrency_and_slides(container) -> None:
    limiter = SlidingWindowLimiter(container.redis, container.settings.namespace, window_s=1.0)
    decisions = await asyncio.gather(*(limiter.hit("user:burst", 10) for _ in range(100)))
    assert sum(d.allowed for d in decisions) == 10
    refused = [d for d in decisions if not d.allowed]
    assert all(d.retry_after_s == 1 and d.remaining == 0 for d in refused)
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))
    assert (await limiter.hit("user:someone-else", 10)).allowed  # keys are separate
    await asyncio.sleep(1.1)
    assert (await limiter.hit("user:burst", 10)).allowed  # the old requests left the window


# --- per user and per API key ----------------------------------------------------------------------------
async def test_a_user_over_the_limit_gets_429_with_retry_after(client, container) -> None:
    await set_rate_limits(container, user_per_minute=5)  # before any request: API processes cache limits 5 s
    tokens = await sign_in(client, "busy@example.com")
    for _ in range(5):
        assert (await client.get("/api/v1/auths/me", headers=bearer(tokens))).status_code == 200
    assert_limited(await client.get("/api/v1/auths/me", headers=bearer(tokens)))
    assert_limited(await client.get("/api/v1/chats", headers=bearer(tokens)))  # every route shares the window
    # Someone else still gets in.
    other = await sign_in(client, "calm@example.com")
    assert (await client.get("/api/v1/auths/me", headers=bearer(other))).status_code == 200


async def test_an_api_key_has_its_own_limit(client, container) -> None:
    await set_rate_limits(container, api_key_per_minute=3)
    tokens = await sign_in(client, "keys@example.com")
    r = await client.post("/api/v1/auths/api-keys", json={"name": "ci", "scopes": ["read"]}, headers=bearer(tokens))
    assert r.status_code == 201, r.text
    key = {"X-API-Key": r.json()["key"]}
    for _ in range(3):
        assert (await client.get("/api/v1/auths/me", headers=key)).status_code == 200
    assert_limited(await client.get("/api/v1/auths/me", headers=key))
    # The same user's session is counted apart.
    assert (await client.get("/api/v1/auths/me", headers=bearer(tokens))).status_code == 200


async def test_the_window_is_shared_by_every_api_process(client, second_process, container) -> None:
    await set_rate_limits(container, user_per_minute=6)
    tokens = await sign_in(client, "everywhere@example.com")
    answers = []
    for i in range(10):
        http = client if i % 2 == 0 else second_process
        answers.append((await http.get("/api/v1/auths/me", headers=bearer(tokens))).status_code)
    assert answers.count(200) == 6 and answers.count(429) == 4
    assert answers[:6] == [200] * 6


# --- sign-in per IP ------------------------------------------------------------------------------------
async def test_sign_ins_are_limited_per_client_ip(client, container) -> None:
    from api.app import create_app

    await set_rate_limits(container, sign_in_per_ip_per_minute=4)
    await sign_in(client, "target@example.com")  # one sign-in counted already
    wrong = {"email": "target@example.com", "password": "not the password"}
    for _ in range(3):
        assert (await client.post("/api/v1/auths/login", json=wrong)).status_code == 401
    # Over the limit: refused before the password is even checked, the right one included.
    right = {"email": "target@example.com", "password": PASSWORD}
    assert_limited(await client.post("/api/v1/auths/login", json=right))
    async with http_client(create_app(container), "198.51.100.9") as elsewhere:
        assert (await elsewhere.post("/api/v1/auths/login", json=right)).status_code == 200


async def test_default_limits_leave_ordinary_use_alone(client, container) -> None:
    tokens = await sign_in(client, "normal@example.com")
    statuses = await asyncio.gather(*(client.get("/api/v1/auths/me", headers=bearer(tokens)) for _ in range(60)))
    assert {r.status_code for r in statuses} == {200}
