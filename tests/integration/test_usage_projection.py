"""The usage read model on real Postgres: totals equal the usage the event store records, days are the
tenant's local days of the request, roles are those at the time, and reports group, total, page and
export it. Generations run through the real services; edge cases in time are fed as crafted events."""

from __future__ import annotations

import csv
import io
import random
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from application.context import CommandContext
from application.conversations import LOCAL_MODEL, Outcome, Sent
from application.identity import Principal
from domain.errors import Invalid
from domain.identity import tenant_id_for
from domain.quotas import QuotaPolicy, day_of, policy_id_for
from projections.identity import IdentityProjector
from projections.runtime import ProjectorRunner, rebuild
from projections.usage import METRICS, UsageProjector, report_csv, usage_of_day, usage_report
from schema.events import EventEnvelope
from schema.tables import usage_daily, usage_generations, usage_monthly
from workers.bootstrap import Container

pytestmark = pytest.mark.timeout(180)

PASSWORD = "correct horse 9"


# --- helpers -------------------------------------------------------------------------------------------
def as_user(p: Principal) -> CommandContext:
    return CommandContext(tenant_id=p.tenant_id, actor=p.actor)


async def sign_up(c: Container, slug: str, email: str) -> Principal:
    info = await c.identity.register(
        CommandContext(tenant_id=str(tenant_id_for(slug))), tenant=slug, email=email, password=PASSWORD, name="Someone"
    )
    return Principal(tenant_id=info.tenant_id, user_id=info.id, role=info.role, via="token")


async def add_echo_model(c: Container, admin: Principal, name: str = "echo-a") -> None:
    ctx = as_user(admin)
    if name == "echo-a":
        await c.models.register_provider(ctx, admin, name="echo", kind="echo")
    await c.models.register_model(ctx, admin, name=name, provider="echo", upstream_model="echo-1")


async def generate(
    c: Container, p: Principal, model: str, status: str = "completed", prompt: int = 10, completion: int = 5
) -> Sent:
    chat = await c.chats.create(as_user(p), p, title="Usage")
    sent = await c.chats.send_message(as_user(p), p, chat.id, content="Hello", model=model)
    if status != "open":
        worker = CommandContext(tenant_id=p.tenant_id, actor="system")
        await c.generations.start(worker, sent.generation_id, attempt=1, worker="test")
        outcome = Outcome(status=status, text="partial", prompt_tokens=prompt, completion_tokens=completion, attempt=1)
        assert await c.generations.finish(worker, sent.generation_id, outcome)
    return sent


async def project(c: Container) -> None:
    for projector in (IdentityProjector(), UsageProjector()):
        await ProjectorRunner(projector, engine=c.engine, store=c.store).catch_up()


async def set_policy(c: Container, tenant_id: str, timezone: str) -> None:
    def command() -> None:
        c.store.save(QuotaPolicy(tenant_id=tenant_id, timezone=timezone))

    await c.store.execute(CommandContext(tenant_id=tenant_id, actor="system"), command)


async def daily_rows(c: Container, tenant_id: str) -> list[dict[str, Any]]:
    async with c.engine.connect() as conn:
        rows = await conn.execute(
            select(usage_daily).where(usage_daily.c.tenant_id == tenant_id).order_by(*usage_daily.primary_key)
        )
        return [dict(r._mapping) for r in rows]


async def monthly_rows(c: Container, tenant_id: str) -> list[dict[str, Any]]:
    async with c.engine.connect() as conn:
        rows = await conn.execute(
            select(usage_monthly).where(usage_monthly.c.tenant_id == tenant_id).order_by(*usage_monthly.primary_key)
        )
        return [dict(r._mapping) for r in rows]


def rollup(daily: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The monthly rows the daily rows add up to: sums per month, the role of the month's latest day."""
    months: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in sorted(daily, key=lambda r: r["day"]):
        month = r["day"].replace(day=1)
        k = (r["tenant_id"], month, r["user_id"], r["model"])
        row = months.setdefault(k, {"tenant_id": k[0], "month": month, "user_id": k[2], "model": k[3]})
        row["role"] = r["role"]
        for m in METRICS:
            row[m] = row.get(m, 0) + r[m]
    return [months[k] for k in sorted(months)]


def envelope(n: int, type_: str, aggregate_id: uuid.UUID, at: datetime, tenant: str, **data: Any) -> EventEnvelope:
    return EventEnvelope(
        id=n,
        event_id=uuid.uuid4(),
        type=type_,
        aggregate_type="Test",
        aggregate_id=aggregate_id,
        aggregate_version=1,
        occurred_at=at,
        tenant_id=tenant,
        actor="system",
        correlation_id="test",
        data=data,
    )


UNCOUNTED = {
    "UserRegistered": {"email": "someone@feed.test", "name": "Someone", "created_by": "self"},
    "RoleChanged": {"previous_role": "user"},
    "GenerationRequested": {
        "chat_id": None, "model_id": str(uuid.UUID(int=1)), "user_message_id": "q", "answer_message_id": "a",
        "params": {},
    },
    "GenerationCompleted": {
        "text": "", "thinking": "", "finish_reason": "stop", "ttft_ms": 1.0, "tokens_per_s": 1.0, "duration_ms": 1.0,
        "attempt": 1,
    },
    "GenerationFailed": {"code": "ENGINE_ERROR", "message": "", "text": "", "attempt": 1},
    "GenerationCancelled": {"text": "", "attempt": 1},
}  # fmt: skip
"""The fields of a crafted event that usage does not count, so that every event fits the contract
(projectors decode each event with ``decode_data``)."""


class Feed:
    """Crafted events applied by the usage projector as the runtime would, for moments we cannot wait for."""

    def __init__(self, c: Container, tenant: str) -> None:
        self.c, self.tenant, self.n = c, tenant, 0

    async def send(self, type_: str, aggregate_id: uuid.UUID, at: datetime, **data: Any) -> None:
        self.n += 1
        data = UNCOUNTED.get(type_, {}) | data
        async with self.c.engine.begin() as conn:
            await UsageProjector().apply(conn, envelope(self.n, type_, aggregate_id, at, self.tenant, **data))

    async def user(self, role: str = "user") -> uuid.UUID:
        user = uuid.uuid4()
        await self.send("UserRegistered", user, datetime(2024, 1, 1, tzinfo=UTC), tenant_id=self.tenant, role=role)
        return user

    async def generation(
        self,
        user: uuid.UUID,
        model: str,
        at: datetime,
        *,
        status: str = "Completed",
        prompt: int = 10,
        completion: int = 5,
        finished_at: datetime | None = None,
    ) -> uuid.UUID:
        gid = uuid.uuid4()
        await self.send(
            "GenerationRequested", gid, at, tenant_id=self.tenant, user_id=str(user), model=model, reserved_tokens=600
        )
        if status:
            await self.send(
                f"Generation{status}",
                gid,
                finished_at or at + timedelta(seconds=3),
                prompt_tokens=prompt,
                completion_tokens=completion,
                attempt=1,
            )
        return gid


# --- totals against the event store -----------------------------------------------------------------------
async def test_usage_totals_equal_the_usage_recorded_in_the_event_store(container: Container) -> None:
    c = container
    slug = c.settings.default_tenant
    admin = await sign_up(c, slug, "boss@default.test")
    user = await sign_up(c, slug, "user@default.test")
    await add_echo_model(c, admin)
    plan = [
        (user, LOCAL_MODEL, "completed", 12, 30),
        (user, LOCAL_MODEL, "completed", 7, 1),
        (user, "echo-a", "failed", 40, 3),  # failed: billed for what it produced
        (user, "echo-a", "cancelled", 9, 2),  # cancelled mid-stream: billed too
        (admin, LOCAL_MODEL, "completed", 100, 200),
        (admin, "echo-a", "open", 0, 0),  # still running: a request, no tokens yet
    ]
    for p, model, status, prompt, completion in plan:
        await generate(c, p, model, status, prompt, completion)
    await project(c)

    events = await c.store.call(c.store.read, 1, 100_000)
    requested = {e.aggregate_id: e.data for e in events if e.type == "GenerationRequested"}
    expected: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(METRICS, 0))
    for e in events:
        if e.type == "GenerationRequested":
            expected[(str(e.data["user_id"]), e.data["model"])]["requests"] += 1
        elif e.type in ("GenerationCompleted", "GenerationFailed", "GenerationCancelled"):
            r = requested[e.aggregate_id]
            sums = expected[(str(r["user_id"]), r["model"])]
            sums["prompt_tokens"] += e.data["prompt_tokens"]
            sums["completion_tokens"] += e.data["completion_tokens"]
            sums["total_tokens"] += e.data["prompt_tokens"] + e.data["completion_tokens"]
            sums[e.type.removeprefix("Generation").lower()] += 1

    rows = await daily_rows(c, admin.tenant_id)
    assert {(r["user_id"], r["model"]): {m: r[m] for m in METRICS} for r in rows} == expected
    assert sum(r["total_tokens"] for r in rows) == 12 + 30 + 7 + 1 + 40 + 3 + 9 + 2 + 100 + 200
    assert {r["role"] for r in rows if r["user_id"] == str(user.user_id)} == {"user"}
    assert {r["role"] for r in rows if r["user_id"] == str(admin.user_id)} == {"admin"}
    async with c.engine.connect() as conn:  # only the running generation is still open
        assert (await conn.execute(select(usage_generations.c.model))).scalars().all() == ["echo-a"]

    monthly = await monthly_rows(c, admin.tenant_id)
    assert monthly and monthly == rollup(rows)

    # A rebuild from the event store alone gives the same read model, the monthly rollup included.
    await rebuild(UsageProjector(), engine=c.engine, store=c.store)
    assert await daily_rows(c, admin.tenant_id) == rows
    assert await monthly_rows(c, admin.tenant_id) == monthly

    today = day_of(datetime.now(UTC), "UTC")
    mine = await usage_of_day(c.engine, user.tenant_id, user.user_id, today)
    assert mine["models"][LOCAL_MODEL]["total_tokens"] == 50 and mine["models"]["echo-a"]["total_tokens"] == 54
    assert mine["tenant_total"] == 404


async def test_usage_is_counted_on_the_tenants_local_day(container: Container) -> None:
    c = container
    slug = c.settings.default_tenant
    now = datetime.now(UTC)
    # A zone whose date differs from UTC's right now (UTC+14 after 10:00 UTC, UTC-11 before 11:00 UTC).
    zone = "Pacific/Kiritimati" if day_of(now, "Pacific/Kiritimati") != now.date() else "Pacific/Pago_Pago"
    admin = await sign_up(c, slug, "boss@default.test")
    await set_policy(c, admin.tenant_id, zone)
    await generate(c, admin, LOCAL_MODEL, prompt=3, completion=4)
    await project(c)

    rows = await daily_rows(c, admin.tenant_id)
    events = await c.store.call(c.store.read, 1, 100_000)
    requested_at = next(e.occurred_at for e in events if e.type == "GenerationRequested")
    assert [r["day"] for r in rows] == [day_of(requested_at, zone)]
    assert rows[0]["day"] != requested_at.astimezone(UTC).date()
    assert rows[0]["total_tokens"] == 7


async def test_a_generation_that_runs_past_midnight_counts_on_the_day_it_was_requested(container: Container) -> None:
    c = container
    tenant = str(tenant_id_for("clocks"))
    feed = Feed(c, tenant)
    user = await feed.user("user")
    await feed.send(
        "QuotaPolicyCreated",
        policy_id_for(tenant),
        datetime(2024, 1, 1, tzinfo=UTC),
        tenant_id=tenant,
        timezone="Asia/Tokyo",
    )
    # 23:59 in Tokyo on 10 March, finished at 00:01 on 11 March.
    await feed.generation(
        user,
        "m",
        datetime(2024, 3, 10, 14, 59, tzinfo=UTC),
        prompt=5,
        completion=6,
        finished_at=datetime(2024, 3, 10, 15, 1, tzinfo=UTC),
    )
    # 00:30 in Tokyo on 11 March.
    await feed.generation(user, "m", datetime(2024, 3, 10, 15, 30, tzinfo=UTC), prompt=1, completion=1)
    # The tenant moves to UTC: later requests count on UTC days; what was counted stays.
    await feed.send("QuotaTimezoneSet", policy_id_for(tenant), datetime(2024, 3, 10, 16, tzinfo=UTC), timezone="UTC")
    await feed.generation(user, "m", datetime(2024, 3, 10, 16, 30, tzinfo=UTC), prompt=2, completion=2)
    # A duplicate outcome of a finished generation is not billed twice.
    gid = await feed.generation(user, "m", datetime(2024, 3, 12, 1, tzinfo=UTC), prompt=1, completion=0)
    await feed.send(
        "GenerationCompleted", gid, datetime(2024, 3, 12, 2, tzinfo=UTC), prompt_tokens=1, completion_tokens=0
    )

    rows = {r["day"]: r for r in await daily_rows(c, tenant)}
    assert {d: r["total_tokens"] for d, r in rows.items()} == {
        date(2024, 3, 10): 11 + 4,
        date(2024, 3, 11): 2,
        date(2024, 3, 12): 1,
    }
    assert rows[date(2024, 3, 10)]["requests"] == 2 and rows[date(2024, 3, 10)]["completed"] == 2


async def test_usage_keeps_the_role_the_user_had_when_requesting(container: Container) -> None:
    c = container
    tenant = str(tenant_id_for("roles"))
    feed = Feed(c, tenant)
    user = await feed.user("user")
    await feed.generation(user, "m", datetime(2024, 5, 1, 9, tzinfo=UTC), prompt=10, completion=0)
    await feed.send("RoleChanged", user, datetime(2024, 5, 1, 12, tzinfo=UTC), role="premium")
    await feed.generation(user, "m", datetime(2024, 5, 2, 9, tzinfo=UTC), prompt=20, completion=0)
    report = await usage_report(c.engine, tenant, start=date(2024, 5, 1), end=date(2024, 5, 2), group_by="role")
    assert [(i["role"], i["total_tokens"]) for i in report.items] == [("premium", 20), ("user", 10)]


# --- reports -------------------------------------------------------------------------------------------
async def seed_history(c: Container, tenant: str) -> tuple[list[uuid.UUID], Feed]:
    """Three users over five days on two models: user k spends 100*(k+1) + day tokens on model "a" each
    day, and 1 token on "b" on even days."""
    feed = Feed(c, tenant)
    people = [await feed.user(role) for role in ("user", "premium", "guest")]
    for day in range(5):
        at = datetime(2024, 6, 1 + day, 12, tzinfo=UTC)
        for k, person in enumerate(people):
            await feed.generation(person, "a", at, prompt=100 * (k + 1), completion=day)
            if day % 2 == 0:
                await feed.generation(person, "b", at, status="Failed", prompt=1, completion=0)
    return people, feed


async def test_reports_group_total_filter_and_page(container: Container) -> None:
    c = container
    tenant = str(tenant_id_for("reports"))
    people, _ = await seed_history(c, tenant)
    other = str(tenant_id_for("elsewhere"))
    stranger = await Feed(c, other).user()
    await Feed(c, other).generation(stranger, "a", datetime(2024, 6, 2, tzinfo=UTC), prompt=10**6)
    june = {"start": date(2024, 6, 1), "end": date(2024, 6, 5)}
    grand = sum(500 * (k + 1) + 10 for k in range(3)) + 3 * 3  # model a, plus b's 1-token failures

    by_user = await usage_report(c.engine, tenant, group_by="user", **june)
    assert [i["user_id"] for i in by_user.items] == [str(p) for p in reversed(people)]  # most tokens first
    assert by_user.totals["total_tokens"] == grand and by_user.total == 3
    assert by_user.items[0]["total_tokens"] == 1500 + 10 + 3 and by_user.items[0]["failed"] == 3
    assert by_user.items[0]["requests"] == 8

    by_model = await usage_report(c.engine, tenant, group_by="model", **june)
    assert [(i["model"], i["total_tokens"], i["requests"]) for i in by_model.items] == [
        ("a", grand - 9, 15),
        ("b", 9, 9),
    ]
    by_role = await usage_report(c.engine, tenant, group_by="role", **june)
    assert [i["role"] for i in by_role.items] == ["guest", "premium", "user"]
    by_day = await usage_report(c.engine, tenant, group_by="day", **june)
    assert [i["day"] for i in by_day.items] == [date(2024, 6, d) for d in range(1, 6)]
    assert sum(i["total_tokens"] for i in by_day.items) == grand
    assert by_day.items[1]["total_tokens"] == 600 + 3 * 1  # day 2: no "b", completion 1 each

    # Paging keeps the totals of everything; filters narrow both.
    page = await usage_report(c.engine, tenant, group_by="day", limit=2, offset=2, **june)
    assert [i["day"] for i in page.items] == [date(2024, 6, 3), date(2024, 6, 4)]
    assert page.total == 5 and page.totals == by_day.totals
    one = await usage_report(c.engine, tenant, group_by="day", user_id=people[0], model="a", **june)
    assert one.totals["total_tokens"] == 500 + 10 and one.totals["requests"] == 5
    narrow = await usage_report(c.engine, tenant, group_by="model", start=date(2024, 6, 2), end=date(2024, 6, 2))
    assert [(i["model"], i["total_tokens"]) for i in narrow.items] == [("a", 603)]
    nothing = await usage_report(c.engine, tenant, group_by="user", start=date(2023, 1, 1), end=date(2023, 1, 2))
    assert nothing.items == [] and nothing.totals["total_tokens"] == 0 and nothing.total == 0

    # Another tenant's usage never shows.
    assert all(i["total_tokens"] < 10**6 for i in by_user.items)


def expected_report(
    daily: list[dict[str, Any]], start: date, end: date, group_by: str, user: str | None, model: str | None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The report straight from the daily rows: filter, group, sum, order."""
    groups: dict[Any, dict[str, int]] = defaultdict(lambda: dict.fromkeys(METRICS, 0))
    for r in daily:
        if start <= r["day"] <= end and user in (None, r["user_id"]) and model in (None, r["model"]):
            key = r[{"user": "user_id"}.get(group_by, group_by)]
            for m in METRICS:
                groups[key][m] += r[m]
    keys = sorted(groups)
    if group_by in ("user", "model"):
        keys.sort(key=lambda k: -groups[k]["total_tokens"])  # stable: ties stay in key order
    label = "user_id" if group_by == "user" else group_by
    items = [{label: k, **groups[k]} for k in keys]
    totals = {m: sum(g[m] for g in groups.values()) for m in METRICS}
    return items, totals


async def test_reports_equal_a_plain_aggregation_of_the_daily_rows(container: Container) -> None:
    """Whole months come from the monthly rollup, edges from the daily rows: the same figures as the days
    alone, for every grouping, filter and range, roles changing mid-month and mid-day included."""
    c = container
    tenant = str(tenant_id_for("rollup"))
    feed = Feed(c, tenant)
    rng = random.Random(20240229)
    people = [await feed.user(role) for role in ("user", "premium", "guest")]
    first, span = datetime(2023, 11, 20, tzinfo=UTC), (date(2025, 2, 10) - date(2023, 11, 20)).days
    moments = sorted(first + timedelta(days=rng.randrange(span), hours=rng.randrange(24)) for _ in range(220))
    roles = ("user", "premium", "guest", "admin")
    for n, at in enumerate(moments):
        person = rng.choice(people)
        if n % 17 == 0:  # a role change between two requests, sometimes the same day
            await feed.send("RoleChanged", person, at - timedelta(minutes=1), role=rng.choice(roles))
        status = rng.choice(["Completed", "Completed", "Failed", "Cancelled", ""])
        await feed.generation(
            person, rng.choice("abc"), at, status=status, prompt=rng.randint(0, 50), completion=rng.randint(0, 50)
        )

    daily = await daily_rows(c, tenant)
    assert await monthly_rows(c, tenant) == rollup(daily)
    ranges = [
        (date(2024, 2, 1), date(2024, 2, 29)),  # one whole (leap) month
        (date(2024, 3, 5), date(2024, 3, 20)),  # inside one month
        (date(2024, 1, 31), date(2024, 2, 1)),  # across a month's edge
        (date(2024, 1, 1), date(2024, 12, 31)),  # a whole year
        (date(2023, 11, 15), date(2024, 11, 14)),  # partial months at both ends
        (date(2024, 4, 30), date(2024, 7, 1)),
        (date(2024, 6, 1), date(2024, 8, 15)),
        (date(2024, 9, 10), date(2024, 11, 30)),
    ]
    for _ in range(25):
        start = date(2023, 11, 1) + timedelta(days=rng.randrange(span + 40))
        ranges.append((start, start + timedelta(days=rng.choice([0, 1, rng.randrange(40), rng.randrange(366)]))))
    for start, end in ranges:
        for group_by in ("user", "model", "role", "day"):
            for user, model in [(None, None), (str(people[0]), None), (None, "b"), (str(people[1]), "c")]:
                items, totals = expected_report(daily, start, end, group_by, user, model)
                got = await usage_report(
                    c.engine, tenant, start=start, end=end, group_by=group_by, user_id=user, model=model, limit=None
                )
                plain = [{k: v for k, v in i.items() if k not in ("email", "name")} for i in got.items]
                where = (start, end, group_by, user, model)
                assert plain == items, where
                assert got.totals == totals and got.total == len(items), where
                page = await usage_report(
                    c.engine, tenant, start=start, end=end, group_by=group_by, user_id=user, model=model, limit=2
                )
                assert page.items == got.items[:2] and page.totals == totals and page.total == len(items), where
        # A page past the end still counts and totals every group.
        past = await usage_report(c.engine, tenant, start=start, end=end, group_by="user", offset=10)
        assert past.items == [] and past.total == len({r["user_id"] for r in daily if start <= r["day"] <= end})
        assert past.totals == expected_report(daily, start, end, "user", None, None)[1]


async def test_report_csv_is_well_formed(container: Container) -> None:
    c = container
    tenant = str(tenant_id_for("csv"))
    _, feed = await seed_history(c, tenant)
    odd = await feed.user()
    await feed.generation(odd, 'quote"d, model\nnew=line', datetime(2024, 6, 3, tzinfo=UTC), prompt=7)
    await feed.generation(odd, "=HYPERLINK(1)", datetime(2024, 6, 3, tzinfo=UTC), prompt=1)
    report = await usage_report(
        c.engine, tenant, group_by="model", start=date(2024, 6, 1), end=date(2024, 6, 5), limit=None
    )
    text = report_csv(report, "model")
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed[0] == ["model", *METRICS]
    assert len(parsed) == 1 + report.total == 5
    assert all(len(row) == 1 + len(METRICS) for row in parsed)
    models = [row[0] for row in parsed[1:]]
    assert 'quote"d, model\nnew=line' in models
    assert "'=HYPERLINK(1)" in models  # never run as a formula by a spreadsheet
    assert sum(int(row[3]) for row in parsed[1:]) == report.totals["total_tokens"]


@pytest.mark.parametrize(
    ("start", "end", "group_by", "code"),
    [
        (date(2024, 6, 5), date(2024, 6, 1), "user", "INVALID_RANGE"),
        (date(2023, 1, 1), date(2024, 1, 2), "user", "RANGE_TOO_LONG"),
        (date(2024, 6, 1), date(2024, 6, 5), "tenant", "INVALID_GROUP_BY"),
    ],
)
async def test_reports_refuse_bad_arguments(
    container: Container, start: date, end: date, group_by: str, code: str
) -> None:
    with pytest.raises(Invalid) as caught:
        await usage_report(container.engine, str(tenant_id_for("x")), start=start, end=end, group_by=group_by)
    assert caught.value.code == code


async def test_a_leap_year_fits_one_report(container: Container) -> None:
    report = await usage_report(
        container.engine, str(tenant_id_for("x")), start=date(2024, 1, 1), end=date(2024, 12, 31), group_by="day"
    )
    assert report.total == 0


# --- the command line ----------------------------------------------------------------------------------
def test_the_cli_prints_a_report_and_exports_csv(settings: Any, monkeypatch: Any, capsys: Any) -> None:
    import asyncio

    from tests.conftest import FAST_PASSWORDS
    from workers.bootstrap import bootstrap
    from workers.cli import main

    for name, value in settings.child_env().items():
        monkeypatch.setenv(name, value)

    async def seed() -> None:
        c = await bootstrap(settings, passwords=FAST_PASSWORDS)
        try:
            tenant = await c.identity.ensure_tenant(settings.default_tenant, "Default")
            feed = Feed(c, str(tenant.id))
            user = await feed.user()
            await feed.generation(user, "alpha", datetime(2024, 6, 1, 8, tzinfo=UTC), prompt=1000, completion=234)
            await feed.generation(user, "beta", datetime(2024, 6, 2, 8, tzinfo=UTC), prompt=5, completion=5)
        finally:
            await c.close()

    asyncio.run(seed())
    span = ["--tenant", settings.default_tenant, "--from", "2024-06-01", "--to", "2024-06-30"]
    main(["usage", "report", *span, "--group-by", "model"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["model", "prompt", "completion", "total", "requests"]
    assert lines[2].split() == ["alpha", "1,000", "234", "1,234", "1"]
    assert lines[-1].split() == ["TOTAL", "1,005", "239", "1,244", "2"]

    main(["usage", "report", *span, "--group-by", "day", "--csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out, newline="")))
    assert [(r["day"], r["total_tokens"]) for r in rows] == [("2024-06-01", "1234"), ("2024-06-02", "10")]

    with pytest.raises(SystemExit) as exited:
        main(["usage", "report", "--tenant", settings.default_tenant, "--from", "2024-06-30", "--to", "2024-06-01"])
    assert exited.value.code == 1
    assert "INVALID_RANGE" in capsys.readouterr().err
