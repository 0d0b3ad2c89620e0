"""Usage through HTTP: the caller's own day with limits and what remains, the tenant admins' reports (JSON
and CSV), bad input, who may read what, and tenants kept apart."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from application.context import CommandContext
from application.conversations import LOCAL_MODEL, Outcome
from application.identity import Principal
from domain.quotas import QuotaPolicy, day_of
from projections.runtime import ProjectorRunner
from workers.bootstrap import Container, all_projectors

pytestmark = pytest.mark.timeout(180)

PASSWORD = "correct horse 9"


# --- helpers -------------------------------------------------------------------------------------------
def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


class Member:
    def __init__(self, user: dict[str, Any], tokens: dict[str, Any]) -> None:
        self.user, self.tokens = user, tokens
        self.principal = Principal(
            tenant_id=user["tenant_id"], user_id=uuid.UUID(user["id"]), role=user["role"], via="token"
        )

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.tokens)


async def join(client: httpx.AsyncClient, email: str, tenant: str | None = None) -> Member:
    headers = {"X-Tenant": tenant} if tenant else {}
    r = await client.post(
        "/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": "Someone"}, headers=headers
    )
    assert r.status_code == 201, r.text
    r2 = await client.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD}, headers=headers)
    assert r2.status_code == 200, r2.text
    return Member(r.json(), r2.json())


async def generate(c: Container, m: Member, prompt: int, completion: int, status: str = "completed") -> None:
    p = m.principal
    ctx = CommandContext(tenant_id=p.tenant_id, actor=p.actor)
    chat = await c.chats.create(ctx, p, title="Usage")
    sent = await c.chats.send_message(ctx, p, chat.id, content="Hello", model=LOCAL_MODEL)
    worker = CommandContext(tenant_id=p.tenant_id, actor="system")
    await c.generations.start(worker, sent.generation_id, attempt=1, worker="test")
    outcome = Outcome(status=status, text="x", prompt_tokens=prompt, completion_tokens=completion, attempt=1)
    assert await c.generations.finish(worker, sent.generation_id, outcome)


async def project(c: Container) -> None:
    for projector in all_projectors(c):
        await ProjectorRunner(projector, engine=c.engine, store=c.store).catch_up()


async def change_policy(c: Container, tenant_id: str, change: Any) -> None:
    def command() -> None:
        policy = c.store.find(QuotaPolicy, QuotaPolicy.create_id(tenant_id)) or QuotaPolicy(tenant_id=tenant_id)
        change(policy)
        c.store.save(policy)

    await c.store.execute(CommandContext(tenant_id=tenant_id, actor="system"), command)


async def team(client: httpx.AsyncClient, c: Container) -> tuple[Member, Member]:
    """An admin and a user of the default tenant, with some usage each."""
    admin = await join(client, "boss@example.com")
    user = await join(client, "user@example.com")
    assert admin.user["role"] == "admin" and user.user["role"] == "user"
    await generate(c, user, 100, 20)
    await generate(c, user, 30, 5, status="cancelled")
    await generate(c, admin, 1000, 1)
    await project(c)
    return admin, user


# --- the caller's own usage ----------------------------------------------------------------------------
async def test_my_usage_shows_today_with_limit_remaining_and_reset(client, container) -> None:
    admin, user = await team(client, container)
    r = await client.get("/api/v1/usage/me", headers=user.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    now = datetime.now(UTC)
    assert body["day"] == day_of(now, "UTC").isoformat() and body["timezone"] == "UTC"
    assert datetime.fromisoformat(body["reset_at"]) == datetime.combine(
        now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC
    )
    assert body["total_tokens"] == 155 and body["limit"] == 500_000 and body["remaining"] == 500_000 - 155
    local = next(m for m in body["models"] if m["model"] == LOCAL_MODEL)
    assert (local["prompt_tokens"], local["completion_tokens"], local["requests"]) == (130, 25, 2)
    assert (local["limit"], local["limit_kind"], local["remaining"]) == (500_000, "user", 500_000 - 155)

    # A per-model limit binds first; the tenant cap counts everyone's usage.
    await change_policy(container, user.principal.tenant_id, lambda p: p.set_model_limit(LOCAL_MODEL, 1000))
    local = next(
        m
        for m in (await client.get("/api/v1/usage/me", headers=user.headers)).json()["models"]
        if m["model"] == LOCAL_MODEL
    )
    assert (local["limit"], local["limit_kind"], local["remaining"]) == (1000, "user_model", 845)
    await change_policy(container, user.principal.tenant_id, lambda p: p.set_tenant_cap(1200))
    local = next(
        m
        for m in (await client.get("/api/v1/usage/me", headers=user.headers)).json()["models"]
        if m["model"] == LOCAL_MODEL
    )
    assert (local["limit"], local["limit_kind"], local["remaining"]) == (1200, "tenant", 1200 - 155 - 1001)

    # Admins are unlimited by default.
    mine = (await client.get("/api/v1/usage/me", headers=admin.headers)).json()
    assert mine["total_tokens"] == 1001 and mine["limit"] is None and mine["remaining"] is None


async def test_my_usage_follows_the_tenants_time_zone(client, container) -> None:
    user = await join(client, "solo@example.com")
    await change_policy(container, user.principal.tenant_id, lambda p: p.set_timezone("Asia/Kolkata"))
    body = (await client.get("/api/v1/usage/me", headers=user.headers)).json()
    assert body["timezone"] == "Asia/Kolkata"
    assert body["day"] == day_of(datetime.now(UTC), "Asia/Kolkata").isoformat()
    reset = datetime.fromisoformat(body["reset_at"])
    assert reset.utcoffset() == timedelta(hours=5, minutes=30) and (reset.hour, reset.minute) == (0, 0)


# --- admin reports -------------------------------------------------------------------------------------
async def test_admin_reports_by_user_model_role_and_day(client, container) -> None:
    admin, user = await team(client, container)
    today = day_of(datetime.now(UTC), "UTC")
    r = await client.get("/api/v1/usage", params={"group_by": "user"}, headers=admin.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["from"] == (today - timedelta(days=29)).isoformat() and body["to"] == today.isoformat()
    assert [(i["email"], i["total_tokens"]) for i in body["items"]] == [
        ("boss@example.com", 1001),
        ("user@example.com", 155),
    ]
    assert body["totals"]["total_tokens"] == 1156 and body["totals"]["cancelled"] == 1 and body["total"] == 2

    page = (await client.get("/api/v1/usage", params={"limit": 1, "offset": 1}, headers=admin.headers)).json()
    assert [i["user_id"] for i in page["items"]] == [user.user["id"]] and page["totals"] == body["totals"]

    by_model = (await client.get("/api/v1/usage", params={"group_by": "model"}, headers=admin.headers)).json()
    assert [(i["model"], i["requests"]) for i in by_model["items"]] == [(LOCAL_MODEL, 3)]
    by_role = (await client.get("/api/v1/usage", params={"group_by": "role"}, headers=admin.headers)).json()
    assert [(i["role"], i["total_tokens"]) for i in by_role["items"]] == [("admin", 1001), ("user", 155)]
    by_day = (
        await client.get(
            "/api/v1/usage",
            params={"group_by": "day", "from": today.isoformat(), "to": today.isoformat()},
            headers=admin.headers,
        )
    ).json()
    assert [(i["day"], i["total_tokens"]) for i in by_day["items"]] == [(today.isoformat(), 1156)]
    only = (
        await client.get("/api/v1/usage", params={"group_by": "day", "user_id": user.user["id"]}, headers=admin.headers)
    ).json()
    assert only["totals"]["total_tokens"] == 155
    past = (
        await client.get("/api/v1/usage", params={"from": "2020-01-01", "to": "2020-01-31"}, headers=admin.headers)
    ).json()
    assert past["items"] == [] and past["totals"]["total_tokens"] == 0


async def test_admin_exports_a_well_formed_csv(client, container) -> None:
    admin, _ = await team(client, container)
    r = await client.get("/api/v1/usage", params={"group_by": "user", "format": "csv"}, headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text, newline="")))
    assert [row["email"] for row in rows] == ["boss@example.com", "user@example.com"]
    assert sum(int(row["total_tokens"]) for row in rows) == 1156
    assert set(rows[0]) == {
        "user_id",
        "email",
        "name",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "requests",
        "completed",
        "failed",
        "cancelled",
    }


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"from": "2024-06-05", "to": "2024-06-01"}, 422, "INVALID_RANGE"),
        ({"from": "2023-01-01", "to": "2024-01-02"}, 422, "RANGE_TOO_LONG"),
        ({"group_by": "tenant"}, 422, "INVALID_GROUP_BY"),
        ({"from": "yesterday"}, 400, None),
        ({"limit": 0}, 400, None),
        ({"format": "xml"}, 400, None),
        ({"user_id": "not-a-uuid"}, 400, None),
        ({"user_id": str(uuid.uuid4())}, 404, "USER_NOT_FOUND"),
        ({"model": "no-such-model"}, 404, "MODEL_NOT_FOUND"),
    ],
)
async def test_reports_refuse_bad_input(
    client, container, params: dict[str, Any], status: int, code: str | None
) -> None:
    admin = await join(client, "boss@example.com")
    r = await client.get("/api/v1/usage", params=params, headers=admin.headers)
    assert r.status_code == status, r.text
    if code:
        assert error_code(r) == code


async def test_only_tenant_admins_read_reports(client, container) -> None:
    _, user = await team(client, container)
    r = await client.get("/api/v1/usage", headers=user.headers)
    assert r.status_code == 403 and error_code(r) == "ADMIN_REQUIRED"
    r = await client.get("/api/v1/usage", params={"format": "csv"}, headers=user.headers)
    assert r.status_code == 403
    assert (await client.get("/api/v1/usage")).status_code == 401
    assert (await client.get("/api/v1/usage/me")).status_code == 401


async def test_reports_never_cross_tenants(client, container) -> None:
    c = container
    admin, user = await team(client, c)
    await c.identity.create_tenant(CommandContext(tenant_id="", actor="system:cli"), None, slug="acme", name="Acme")
    invitation = await c.identity.invite(
        CommandContext(tenant_id="", actor="system:cli"), None, tenant="acme", email="boss@acme.test", role="admin"
    )
    r = await client.post(
        "/api/v1/auths/invitations/accept", json={"token": invitation.token, "name": "Boss", "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/auths/login", json={"email": "boss@acme.test", "password": PASSWORD}, headers={"X-Tenant": "acme"})
    acme_admin = Member(
        (await client.get("/api/v1/auths/me", headers=bearer(r.json()))).json(), r.json()
    )
    await c.models.ensure_local(acme_admin.principal.tenant_id)
    await generate(c, acme_admin, 7, 7)
    await project(c)

    acme = (await client.get("/api/v1/usage", headers=acme_admin.headers)).json()
    assert [(i["email"], i["total_tokens"]) for i in acme["items"]] == [("boss@acme.test", 14)]
    assert acme["totals"]["total_tokens"] == 14
    home = (await client.get("/api/v1/usage", params={"group_by": "model"}, headers=admin.headers)).json()
    assert home["totals"]["total_tokens"] == 1156
    # A user of another tenant is unknown here, and another tenant's header is refused.
    r = await client.get("/api/v1/usage", params={"user_id": user.user["id"]}, headers=acme_admin.headers)
    assert r.status_code == 404 and error_code(r) == "USER_NOT_FOUND"
    r = await client.get("/api/v1/usage", headers={**admin.headers, "X-Tenant": "acme"})
    assert r.status_code == 403
    mine = (await client.get("/api/v1/usage/me", headers=acme_admin.headers)).json()
    assert mine["total_tokens"] == 14


async def test_report_dates_default_to_the_last_30_local_days(client, container) -> None:
    admin = await join(client, "boss@example.com")
    await change_policy(container, admin.principal.tenant_id, lambda p: p.set_timezone("Pacific/Kiritimati"))
    body = (await client.get("/api/v1/usage", headers=admin.headers)).json()
    today = day_of(datetime.now(UTC), "Pacific/Kiritimati")
    assert body["to"] == today.isoformat() and date.fromisoformat(body["from"]) == today - timedelta(days=29)
    assert body["timezone"] == "Pacific/Kiritimati"
