"""The OpenAPI document is the API's contract, and parley keeps it: schemathesis generates requests for every
operation from ``/schema/openapi.json`` and sends them to a live parley (uvicorn over real HTTP, the
workers running) as a signed-in admin — the OpenAI-compatible routes with an API key, as OpenAI clients
call them. No answer may be a 5xx, have a status the operation does not document, a media type or body
that does not match its documented schema, or a documented header of the wrong type; schema-breaking
input must be refused; a route that needs a caller must refuse a request without one.

Each operation gets schema-valid requests (ids generated, so mostly unknown), schema-valid requests with
the ids of real resources (a chat with an answer, a knowledge base with a document, a second user, a
gateway key...), and schema-breaking requests: ``EXAMPLES`` of each, from a fixed seed; then schemathesis's
coverage cases (every documented bound, at and past it, each type broken in turn, repeated parameters,
the methods a path does not take), which are the same on every run. Destructive operations run last (deletes, then logout), and before each operation the
harness puts back, as an operator would (through the services, not the API, whose limits may be what
needs putting back), the rate limits and the admins' unlimited tokens, and signs the admin in again if
an operation signed them out: one operation's random writes cannot starve the next. Every failure is
collected, and all are reported at the end with a curl command that reproduces each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

# Imported whole before any thread starts: hypothesis looks numpy up in sys.modules, where the embedder,
# importing it on another thread, may have left it half made.
import numpy  # noqa: F401
import pytest
import requests
import schemathesis

# On the main thread: the test runs schemathesis on a worker thread, where importing (and pytest rewriting)
# this module hit CPython 3.11's "AST constructor recursion depth mismatch" once in the two-process suite.
import schemathesis.specs.openapi.schemas  # noqa: F401
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi import checks as openapi_checks

from application.context import CommandContext
from application.identity import Principal
from tests.conftest import Pipeline
from workers.bootstrap import Container

SEED = 20261204
EXAMPLES = 12
"""Per operation, for each of: generated ids, real ids (where the path has any), schema-breaking input."""
PASSWORD = "correct horse battery 9"
LIFTED = {
    "user_per_minute": 100_000,
    "api_key_per_minute": 100_000,
    "sign_in_per_ip_per_minute": 100_000,
    "refresh_per_ip_per_minute": 100_000,
    "refresh_per_session_per_minute": 100_000,
}
POLICY_CACHE_S = 5.5
"""How long an API process may go on applying a tenant's former rate limits (api.deps caches them 5 s)."""
# Run last, in this order: what could leave the admin without the resources or the session the others use.
LAST = ("DELETE", "Logout")


def charset_named_once(ctx: Any, response: schemathesis.Response, case: Any) -> None:
    """A Content-Type names its charset at most once (text/csv and /metrics said it twice)."""
    for content_type in response.headers.get("content-type", []):
        assert content_type.count("charset=") <= 1, f"Content-Type {content_type!r} names its charset twice"


POSITIVE_CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.ignored_auth,
    charset_named_once,
]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, openapi_checks.negative_data_rejection]
COVERAGE_CHECKS = [*NEGATIVE_CHECKS, openapi_checks.unsupported_method, openapi_checks.allow_header_conformance]


async def put_back(c: Container, admin: Principal) -> bool:
    """The operator's settings, as the harness keeps them: rate limits lifted, no token limit on admins or on
    the tenant. True when the rate limits had to be lifted again."""
    ctx = CommandContext(tenant_id=admin.tenant_id, actor=admin.actor)
    policy = await c.quotas.get_policy(admin)
    lifted = all(policy.rate_limits.get(name) == value for name, value in LIFTED.items())
    if not lifted:
        await c.quotas.set_rate_limits(ctx, admin, **LIFTED)
    if policy.role_limits.get("admin") is not None:
        await c.quotas.set_role_limit(ctx, admin, "admin", None)
    if policy.tenant_cap is not None:
        await c.quotas.set_tenant_cap(ctx, admin, None)
    return not lifted


class Api:
    """The harness's own calls: the setup, and putting things back between operations."""

    def __init__(self, base_url: str, operator: Callable[[Principal], bool]) -> None:
        self.base_url = base_url
        self.operator = operator
        self.http = requests.Session()
        self.auth: dict[str, str] = {}
        self.admin: Principal | None = None

    def call(self, method: str, path: str, *, expect: int = 200, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", self.auth)
        r = self.http.request(method, self.base_url + path, timeout=30, **kwargs)
        assert r.status_code == expect, (method, path, r.status_code, r.text[:500])
        return r.json() if r.content else None

    def sign_in(self) -> None:
        tokens = self.call(
            "POST", "/api/v1/auths/login", json={"email": "admin@example.com", "password": PASSWORD}, headers={}
        )
        self.auth = {"Authorization": f"Bearer {tokens['access_token']}"}

    def restore(self) -> None:
        """The operator's settings put back, and the admin signed in."""
        assert self.admin is not None
        if self.operator(self.admin):
            time.sleep(POLICY_CACHE_S)
        if self.http.get(self.base_url + "/api/v1/auths/me", headers=self.auth, timeout=30).status_code != 200:
            self.sign_in()

    def set_up(self) -> tuple[dict[str, str], dict[str, Any]]:
        """The admin, and the resources real ids name: (the OpenAI routes' headers, path parameters)."""
        admin = self.call(
            "POST", "/api/v1/auths/register", expect=201,
            json={"email": "admin@example.com", "password": PASSWORD, "name": "Admin"},
        )  # fmt: skip
        self.admin = Principal(tenant_id=admin["tenant_id"], user_id=uuid.UUID(admin["id"]), role="admin", via="token")
        self.sign_in()
        self.restore()
        self.call("POST", "/api/v1/providers", expect=201, json={"name": "echoes", "kind": "echo"})
        self.call(
            "POST", "/api/v1/models", expect=201, json={"name": "echo", "provider": "echoes", "upstream_model": "echo"}
        )
        # Nothing generated may load the local model on two shared cores: only the echo model answers.
        self.call("PATCH", "/api/v1/models/smollm2", json={"active": False})
        user = self.call(
            "POST",
            "/api/v1/users",
            expect=201,
            json={"email": "user@example.com", "password": PASSWORD, "name": "User"},
        )
        key = self.call(
            "POST", "/api/v1/auths/api-keys", expect=201, json={"name": "openai", "scopes": ["read", "write"]}
        )
        gateway = self.call(
            "POST", "/api/v1/auths/api-keys", expect=201,
            json={"name": "gateway", "scopes": ["read", "write", "gateway"], "role_map": {"user": "user"}},
        )  # fmt: skip
        chat = self.call("POST", "/api/v1/chats", expect=201, json={"title": "contract"})
        sent = self.call(
            "POST", f"/api/v1/chats/{chat['id']}/messages", expect=202, json={"content": "hello", "model": "echo"}
        )
        kb = self.call("POST", "/api/v1/knowledge", expect=201, json={"name": "contract"})
        files = {"file": ("notes.md", b"# Notes\n\nParley keeps its contract.\n", "text/markdown")}
        [document] = self.call("POST", f"/api/v1/knowledge/{kb['id']}/documents", expect=202, files=files)
        ids = {
            "chat_id": chat["id"],
            "message_id": sent["message_id"],
            "generation_id": sent["generation_id"],
            "knowledge_id": kb["id"],
            "document_id": document["id"],
            "user_id": user["id"],
            "key_id": gateway["id"],
            "name": "echo",
            "model": "echo",
            "role": "user",
            "grantee": f"user:{user['id']}",
            "slug": "default",
        }
        return {"Authorization": f"Bearer {key['key']}"}, ids


def ordered(schema: Any) -> list[Any]:
    operations = [result.ok() for result in schema.get_all_operations()]

    def rank(op: Any) -> tuple[int, str]:
        name = op.definition.raw.get("operationId", "")
        for i, last in enumerate(LAST, start=1):
            if last in (name, op.method.upper()):
                return i, op.label
        return 0, op.label

    return sorted(operations, key=rank)


def exercise(
    operation: Any, strategy: Any, checks: list[Any], record: Callable[[Any, BaseException], None], **call: Any
) -> None:
    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        try:
            case.call_and_validate(checks=checks, timeout=30, **call)
        except (FailureGroup, requests.RequestException) as exc:
            record(case, exc)

    try:
        run()
    except Unsatisfiable:  # nothing to break: an operation without parameters or body
        return


def cover(operation: Any, record: Callable[[Any, BaseException], None], **call: Any) -> None:
    """Schemathesis's coverage cases: each documented constraint at its bounds and just past them, each
    type broken in turn, repeated parameters, and the methods the path does not take."""
    schema = operation.schema
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    config = schema.config.generation_for(operation=operation, phase="coverage")
    for case in schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=config):
        try:
            case.call_and_validate(checks=COVERAGE_CHECKS, timeout=30, **call)
        except (FailureGroup, requests.RequestException) as exc:
            record(case, exc)


def run_contract(base_url: str, operator: Callable[[Principal], bool]) -> tuple[list[str], int, float]:
    """Every operation exercised: (failures, operations, seconds)."""
    started = time.monotonic()
    api = Api(base_url, operator)
    openai_auth, ids = api.set_up()
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json")
    failures: list[str] = []
    seen: set[tuple[str, str]] = set()

    def record(case: Any, exc: BaseException) -> None:
        titles = sorted({f.title for f in exc.exceptions}) if isinstance(exc, FailureGroup) else [type(exc).__name__]
        for title in titles:
            if (case.operation.label, title) not in seen:  # the first example of each kind says enough
                seen.add((case.operation.label, title))
                failures.append(f"{case.operation.label}: {title}\n{exc}")

    operations = ordered(schema)
    for operation in operations:
        api.restore()
        auth = openai_auth if operation.path.startswith("/v1/") else api.auth
        call = {"base_url": base_url, "session": requests.Session(), "headers": auth}
        exercise(operation, operation.as_strategy(), POSITIVE_CHECKS, record, **call)
        known = {name: value for name, value in ids.items() if name in {p.name for p in operation.path_parameters}}
        if known:
            exercise(operation, operation.as_strategy(path_parameters=known), POSITIVE_CHECKS, record, **call)
        exercise(operation, operation.as_strategy(GenerationMode.NEGATIVE), NEGATIVE_CHECKS, record, **call)
        cover(operation, record, **call)
    return failures, len(operations), time.monotonic() - started


@pytest.mark.timeout(600)
async def test_every_operation_keeps_the_documented_contract(
    live: str, pipeline: Pipeline, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The event feed's stream stays open (five minutes a connection): the checks need only its start.
    monkeypatch.setattr("api.controllers.events.STREAM_LIFETIME_S", 0.5)
    loop = asyncio.get_running_loop()

    def operator(admin: Principal) -> bool:
        return asyncio.run_coroutine_threadsafe(put_back(container, admin), loop).result(timeout=30)

    failures, operations, seconds = await asyncio.to_thread(run_contract, live, operator)
    assert operations >= 65
    assert not failures, f"{len(failures)} contract failures in {seconds:.0f}s:\n\n" + "\n\n".join(failures)


# --- what schemathesis found, each pinned -----------------------------------------------------------------
async def admin_auth(client: httpx.AsyncClient) -> dict[str, str]:
    await client.post("/api/v1/auths/register", json={"email": "admin@example.com", "password": PASSWORD, "name": "A"})
    r = await client.post("/api/v1/auths/login", json={"email": "admin@example.com", "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_a_single_valued_query_parameter_given_twice_is_refused(client: httpx.AsyncClient) -> None:
    auth = await admin_auth(client)
    r = await client.get("/api/v1/audit?action=a&action=b", headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "REPEATED_PARAMETER", r.text
    assert r.json()["error"]["detail"] == {"field": "action"}
    r = await client.get("/api/v1/usage?from=2026-01-01&from=2026-01-02", headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "REPEATED_PARAMETER", r.text
    r = await client.get("/api/v1/audit?action=a&limit=5", headers=auth)  # several different ones are fine
    assert r.status_code == 200, r.text


async def test_a_date_time_given_as_a_number_is_refused(client: httpx.AsyncClient) -> None:
    auth = await admin_auth(client)
    for value in ("0", "1700000000", "4.486273256328678e-256", "-1.5"):
        r = await client.get("/api/v1/audit", params={"until": value}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_PARAMETER", (value, r.text)
    r = await client.get("/api/v1/audit", params={"until": "2026-01-31T12:00:00Z"}, headers=auth)
    assert r.status_code == 200, r.text


async def test_text_bodies_name_their_charset_once(client: httpx.AsyncClient) -> None:
    auth = await admin_auth(client)
    r = await client.get("/api/v1/usage", params={"format": "csv"}, headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8", r.headers
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


async def test_json_bodies_are_read_with_the_documented_types(client: httpx.AsyncClient) -> None:
    auth = await admin_auth(client)
    chat = (await client.post("/api/v1/chats", json={"title": "t"}, headers=auth)).json()["id"]
    for body in ({"archived": 0}, {"archived": "true"}, {"title": 5}):
        r = await client.patch(f"/api/v1/chats/{chat}", json=body, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_FAILED", (body, r.text)
    r = await client.put("/api/v1/quotas/roles/user", json={"limit": "5"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_FAILED", r.text
    r = await client.post(
        "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x", "dimensions": "384"}, headers=auth
    )
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    r = await client.patch(f"/api/v1/chats/{chat}", json={"archived": True}, headers=auth)
    assert r.status_code == 200 and r.json()["archived"] is True, r.text


async def test_options_names_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    r = await client.options("/api/v1/chats/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 204 and set(r.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE", "OPTIONS"}
    r = await client.options("/api/v1/chats")
    assert set(r.headers["allow"].split(", ")) == {"GET", "POST", "OPTIONS"}
