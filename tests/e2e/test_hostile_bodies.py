"""No byte sequence yields a 500: every JSON route, signed in or not, answers undecodable bodies (invalid
UTF-8, nesting past the decoder's depth, not JSON at all, huge numbers, duplicate keys, arbitrary bytes)
with a 4xx in the error format — parley's own or, on ``/v1``, OpenAI's."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Pipeline

PASSWORD = "correct horse 9"


async def admin_headers(client: httpx.AsyncClient) -> dict[str, str]:
    await client.post("/api/v1/auths/register", json={"email": "admin@example.com", "password": PASSWORD, "name": "A"})
    r = await client.post("/api/v1/auths/login", json={"email": "admin@example.com", "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def json_routes(client: httpx.AsyncClient, auth: dict[str, str]) -> list[str]:
    chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
    kb = (await client.post("/api/v1/knowledge", json={"name": "k"}, headers=auth)).json()["id"]
    return [
        "/api/v1/auths/login",
        "/api/v1/auths/register",
        "/api/v1/auths/refresh",
        "/api/v1/chats",
        f"/api/v1/chats/{chat}/messages",
        f"/api/v1/knowledge/{kb}/documents",
        "/api/v1/models",
        "/v1/chat/completions",
        "/v1/embeddings",
    ]


def check_refused(r: httpx.Response, path: str) -> None:
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])
    error = r.json()["error"]
    if path.startswith("/v1/"):
        assert set(error) == {"message", "type", "param", "code"}, (path, error)
    else:
        assert set(error) == {"code", "message", "detail"}, (path, error)


NAMED = {
    "invalid utf-8": b'{"email":"\xff\xfe","password":"x"}',
    "lone surrogate escape": b'{"email":"\\ud800","password":"x"}',
    "nested 1000 deep": b"[" * 1000 + b"]" * 1000,
    "nested 100000 deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "not json": b"{oops",
    "empty": b"",
    "huge number": b'{"content": 1' + b"0" * 5000 + b"}",
    "huge exponent": b'{"temperature": 1e999999}',
    "duplicate keys": b'{"email":"a@example.com","email":"b@example.com","password":"x","password":{}}',
    "nul": b'{"content":"a\\u0000b","model":"x"}',
}


ACCEPTABLE = {"empty", "duplicate keys"}


@pytest.mark.parametrize("name", list(NAMED))
async def test_named_hostile_bodies_get_a_4xx_on_every_json_route(
    client: httpx.AsyncClient, pipeline: Pipeline, name: str
) -> None:
    auth = await admin_headers(client)
    for path in await json_routes(client, auth):
        r = await client.post(path, content=NAMED[name], headers={**auth, "content-type": "application/json"})
        if name in ACCEPTABLE and r.status_code < 300:
            continue  # well-formed JSON that a route with an optional body may take
        check_refused(r, path)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
            max_leaves=30,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    index=st.integers(min_value=0, max_value=8),
)
async def test_arbitrary_bytes_never_yield_a_5xx(client: httpx.AsyncClient, body: bytes, index: int) -> None:
    paths = ["/api/v1/auths/login", "/api/v1/auths/register", "/api/v1/auths/refresh", "/v1/chat/completions",
             "/v1/embeddings", "/api/v1/chats", "/api/v1/models", "/api/v1/tenants", "/api/v1/auths/api-keys"]  # fmt: skip
    path = paths[index]
    r = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, (path, body[:100], r.text[:300])
    if r.status_code >= 400:
        check_refused(r, path)


async def test_usage_reports_refuse_days_at_the_calendars_ends(client: httpx.AsyncClient) -> None:
    auth = await admin_headers(client)
    for params in (
        {"from": "9999-12-31", "to": "9999-12-31"},
        {"from": "0001-01-01", "to": "0001-01-01"},
        {"to": "0001-01-05"},
        {"from": "2025-01-01", "to": "9999-12-31"},
    ):
        for path in ("/api/v1/usage", "/api/v1/usage/tools"):
            r = await client.get(path, params=params, headers=auth)
            assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_DATE", (path, params, r.text)
    r = await client.get("/api/v1/usage", params={"from": "1970-01-01", "to": "1970-12-31"}, headers=auth)
    assert r.status_code == 200, r.text
