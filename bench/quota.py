"""Benchmark of quotas: what the reservation adds to SendMessage, the ledger's throughput, the usage reports.

Run ``python -m bench.quota`` (``--quick`` for a smoke run under a minute, ``--fast`` to turn fsync off).
It starts its own embedded Postgres, NATS and Redis in a temporary directory (durable commits by default)
and measures in one run, so the figures it compares share a machine and a moment:

1. Added latency of the quota reservation on SendMessage. ``container.chats.send_message`` (quotas on: the
   command reads the tenant's policy, then runs the reserve Lua script on Redis before it saves) against a
   ``Chats(store=..., models=..., quotas=None)`` on the same container, one send at a time, the two sides
   taking turns in short slices (the side that goes first alternates) so that other load on the machine
   hits both alike. Every slice posts into fresh chats created outside the timing (a few messages per chat),
   with the built-in local model ("smollm2"); no worker runs, so no generation ever does: the
   reservations stay open. A send sets no ``max_tokens``, so it reserves what the model's context window
   leaves (about 8,000 tokens): the role's default daily limit (500,000 for ``user``) would run out after
   about 60 sends, so an admin of the tenant first raises the bench user's daily tokens to 10^9
   (``Quotas.set_user_limit``), as an operator would; every limit is still checked. The first reservation of
   the day rebuilds the tenant-day's counters; the warm-up takes it, and it is reported apart.
2. Reservation throughput on the ledger itself: ``QuotaLedger.reserve`` then ``settle`` (actual usage below
   the reservation), pairs per second with 64 concurrent callers (asyncio tasks sharing the Redis pool, as
   API requests do) and with 1 caller for reference, on 1,000 users with a per-user, a per-model and a
   tenant limit set (none of them reached). Afterwards the tenant counter must equal the sum of the
   actual usage settled, and no reservation may be left open.
3. Usage report queries on 1,000 users x 365 days: one row per user and day (the model taken in turn from
   three) COPYed straight into ``rm_usage_daily`` (and the users into ``rm_users`` for the join of the
   by-user report), the monthly rollup ``rm_usage_monthly`` filled from it as the projector keeps it, then
   ANALYZE, then ``usage_report`` over the whole year grouped by user (first page of
   50 with the totals, as the API asks), by day, by model and by role, one user's year by day, and
   ``usage_of_day`` (what ``GET /usage/me`` reads: one user's models today and the tenant's total today).
   p50/p99 over repeated runs each, after one untimed run. The target is "well under 100 ms". For scale,
   "by user, 1 pass" runs the by-user aggregate over the daily rows once in plain SQL (what
   ``usage_report`` did before it read whole months from the rollup and took the totals in the same pass).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.embedded import EngineUrls
from adapters.quota_ledger import TENANT_SCOPE, QuotaLedger, user_model_scope, user_scope
from application.context import CommandContext
from application.conversations import Chats
from application.identity import Principal
from bench.spine import Report, cli, new_user, percentile, progress, settings_for, start_container, stopwatch
from domain.quotas import day_of
from projections.usage import METRICS, usage_of_day, usage_report
from schema.tables import usage_daily
from workers.bootstrap import Container

__all__ = ["FULL", "QUICK", "Scale", "main"]

LOCAL_MODEL = "smollm2"
USER_DAILY_TOKENS = 1_000_000_000
"""The bench user's daily tokens, set by an admin (the role's default would refuse the full run's sends)."""


@dataclass(frozen=True)
class Scale:
    sends: int
    """Timed SendMessages per side, split into ``rounds`` alternating slices."""
    rounds: int
    warmup_sends: int
    messages_per_chat: int
    ledger_s: float
    """Per concurrency."""
    ledger_callers: tuple[int, ...]
    users: int
    days: int
    query_runs: int


FULL = Scale(
    sends=300,
    rounds=10,
    warmup_sends=10,
    messages_per_chat=10,
    ledger_s=5.0,
    ledger_callers=(1, 64),
    users=1000,
    days=365,
    query_runs=20,
)
QUICK = Scale(
    sends=40,
    rounds=4,
    warmup_sends=4,
    messages_per_chat=10,
    ledger_s=1.0,
    ledger_callers=(1, 64),
    users=100,
    days=60,
    query_runs=5,
)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


# --- 1. SendMessage with and without the reservation -------------------------------------------------------
async def bench_user(container: Container, tenant_id: str) -> Principal:
    """A plain user of the tenant (the local model is open to every user), whose daily tokens an admin of
    the tenant has raised to ``USER_DAILY_TOKENS``."""
    admin, admin_index = new_user(tenant_id, f"admin-{uuid.uuid4().hex[:8]}@bench.example")
    admin.change_role("admin")
    user, index = new_user(tenant_id, f"{uuid.uuid4().hex[:8]}@bench.example")
    ctx = CommandContext(tenant_id=tenant_id, actor="system")
    await container.store.execute(ctx, lambda: container.store.save(admin, admin_index, user, index))
    operator = Principal(tenant_id=tenant_id, user_id=admin.id, role="admin", via="token")
    ctx = CommandContext(tenant_id=tenant_id, actor=operator.actor)
    await container.quotas.set_user_limit(ctx, operator, user.id, USER_DAILY_TOKENS)
    return Principal(tenant_id=tenant_id, user_id=user.id, role="user", via="token")


async def sends(chats: Chats, principal: Principal, count: int, per_chat: int) -> list[float]:
    """``count`` SendMessages, one at a time, into fresh chats (created before the clock starts)."""
    ctx = CommandContext(tenant_id=principal.tenant_id, actor=principal.actor)
    targets = [
        (await chats.create(ctx, principal, title="Bench")).id for _ in range((count + per_chat - 1) // per_chat)
    ]
    latencies = []
    for i in range(count):
        chat_id = targets[i // per_chat]
        ctx = CommandContext(tenant_id=principal.tenant_id, actor=principal.actor)
        start = time.perf_counter()
        await chats.send_message(ctx, principal, chat_id, content=f"Question {i}: what is 2 + 2?", model=LOCAL_MODEL)
        latencies.append(time.perf_counter() - start)
    return latencies


async def measure_send(container: Container, tenant_id: str, scale: Scale, report: Report) -> None:
    await container.models.ensure_local(tenant_id)
    principal = await bench_user(container, tenant_id)
    with_quota = container.chats
    assert with_quota.quotas is not None
    without = Chats(store=container.store, models=container.models, quotas=None)

    # The first reservation of the tenant-day finds no counters and rebuilds them.
    with stopwatch() as elapsed:
        await sends(with_quota, principal, 1, 1)
        first = elapsed()
    await sends(with_quota, principal, scale.warmup_sends, scale.messages_per_chat)
    await sends(without, principal, scale.warmup_sends, scale.messages_per_chat)

    per_slice = scale.sends // scale.rounds
    on: list[float] = []
    off: list[float] = []
    diffs = []
    for r in range(scale.rounds):
        order = [(with_quota, on), (without, off)]
        if r % 2:
            order.reverse()
        medians = {}
        for chats, into in order:
            got = await sends(chats, principal, per_slice, scale.messages_per_chat)
            into += got
            medians[chats is with_quota] = statistics.median(got)
        diffs.append(medians[True] - medians[False])
    added = statistics.median(on) - statistics.median(off)
    progress(
        f"send_message: quotas on p50 {ms(statistics.median(on))} ms, off p50 {ms(statistics.median(off))} ms, "
        f"added {ms(added)} ms (slices {ms(min(diffs))}..{ms(max(diffs))})"
    )
    note = f"{len(on)} sends a side, 1 at a time, {scale.rounds} alternating slices"
    report.add("send_message p50, quotas on (ms)", ms(statistics.median(on)), note)
    report.add("send_message p50, quotas off (ms)", ms(statistics.median(off)), "Chats(quotas=None), same container")
    report.add("send_message p99, quotas on (ms)", ms(percentile(on, 0.99)))
    report.add("send_message p99, quotas off (ms)", ms(percentile(off, 0.99)))
    report.add(
        "added by the reservation, p50 (ms)",
        ms(added),
        f"per-slice p50 differences {ms(min(diffs))}..{ms(max(diffs))} ms",
    )
    report.add("added by the reservation, p99 (ms)", ms(percentile(on, 0.99) - percentile(off, 0.99)))
    report.add("first send of the day, quotas on (ms)", ms(first), "includes the counters' rebuild (empty day)")


# --- 2. the ledger alone ----------------------------------------------------------------------------------
@dataclass
class LedgerRun:
    pairs: int
    seconds: float
    latencies: list[float]
    actual: int

    @property
    def per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0


async def ledger_rate(
    ledger: QuotaLedger, tenant_id: str, day: str, users: list[str], callers: int, seconds: float
) -> LedgerRun:
    """``callers`` tasks, each reserving then settling one generation at a time, for ``seconds``."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    settled = [0]

    async def caller(i: int) -> int:
        rng = random.Random(i)
        pairs = 0
        while time.perf_counter() < deadline:
            user = rng.choice(users)
            model = LOCAL_MODEL if rng.random() < 0.7 else "other-model"
            scopes = [
                (user_scope(user), 10**12),
                (user_model_scope(model, user), 10**12),
                (TENANT_SCOPE, 10**15),
            ]
            generation = uuid.uuid4().hex
            start = time.perf_counter()
            refused = await ledger.reserve(tenant_id, day, scopes, 300, generation)
            latencies.append(time.perf_counter() - start)
            assert refused is None, refused
            actual = rng.randint(10, 300)
            assert await ledger.settle(generation, actual)
            settled[0] += actual
            pairs += 1
        return pairs

    with stopwatch() as elapsed:
        done = await asyncio.gather(*(caller(i) for i in range(callers)))
        return LedgerRun(sum(done), elapsed(), latencies, settled[0])


async def measure_ledger(container: Container, scale: Scale, report: Report) -> None:
    ledger = container.quotas.ledger
    tenant_id = str(uuid.uuid4())  # a tenant of its own: counters start at zero
    day = day_of(datetime.now(UTC), "UTC").isoformat()
    await ledger.install(tenant_id, day, {}, [])
    users = [str(uuid.uuid4()) for _ in range(1000)]
    total_actual = 0
    open_key = ledger._open_key  # the namespace's open set: part 1's reservations stay in it (no worker)
    open_before = await container.redis.zcard(open_key)
    for callers in scale.ledger_callers:
        warm = await ledger_rate(ledger, tenant_id, day, users, callers, min(0.5, scale.ledger_s / 4))
        run = await ledger_rate(ledger, tenant_id, day, users, callers, scale.ledger_s)
        total_actual += warm.actual + run.actual
        p50, p99 = statistics.median(run.latencies), percentile(run.latencies, 0.99)
        progress(
            f"ledger, {callers:>2} caller(s): {run.per_s:,.0f} reserve+settle/s, "
            f"reserve p50 {ms(p50)} ms, p99 {ms(p99)} ms"
        )
        report.add(
            f"ledger reserve+settle/s, {callers} caller(s)",
            f"{run.per_s:,.0f}",
            f"{run.pairs:,} pairs in {run.seconds:.1f} s, 3 scopes, 1,000 users",
        )
        report.add(
            f"ledger reserve p50/p99, {callers} caller(s) (ms)",
            f"{ms(p50)}/{ms(p99)}",
            "one Lua call" if callers == 1 else "incl. queueing on this one event loop and the pool",
        )
    # The counters add up: every warm-up and timed pair was settled with its actual usage.
    tenant_counter = await ledger.used(tenant_id, day, TENANT_SCOPE)
    open_left = await container.redis.zcard(open_key) - open_before
    consistent = tenant_counter == total_actual and not open_left
    report.add(
        "ledger counters consistent",
        "yes" if consistent else "NO",
        f"tenant counter {tenant_counter:,} = settled {total_actual:,} tokens; {open_left} left open",
    )


# --- 3. usage reports ---------------------------------------------------------------------------------------
def load_usage(database_url: str, tenant_id: str, users: list[str], days: int, today: date) -> int:
    """One ``rm_usage_daily`` row per user and day, the model in turn from three, and the users' rows."""
    model_names = (LOCAL_MODEL, "gpt-4o-mini", "llama-3.1-8b")
    roles = ("user", "user", "user", "admin")
    now = datetime.now(UTC)
    rng = random.Random(7)
    rows = 0
    with psycopg.connect(database_url) as conn:
        with conn.cursor() as cur:
            with cur.copy(
                "COPY rm_users (user_id, tenant_id, email, name, role, active, token_version, created_at, "
                "updated_at) FROM STDIN"
            ) as copy:
                for n, user in enumerate(users):
                    copy.write_row(
                        (user, tenant_id, f"user{n}@bench.example", f"User {n}", roles[n % 4], True, 0, now, now)
                    )
            with cur.copy(
                "COPY rm_usage_daily (tenant_id, day, user_id, model, role, prompt_tokens, completion_tokens, "
                "total_tokens, requests, completed, failed, cancelled) FROM STDIN"
            ) as copy:
                for d in range(days):
                    day = today - timedelta(days=d)
                    for n, user in enumerate(users):
                        prompt, completion = rng.randint(0, 20_000), rng.randint(0, 10_000)
                        requests = rng.randint(1, 40)
                        copy.write_row(
                            (
                                tenant_id,
                                day,
                                user,
                                model_names[(n + d) % 3],
                                roles[n % 4],
                                prompt,
                                completion,
                                prompt + completion,
                                requests,
                                requests - 1,
                                1,
                                0,
                            )
                        )
                        rows += 1
            # The monthly rollup the projector keeps alongside (role: that of the month's latest day).
            cur.execute(
                "INSERT INTO rm_usage_monthly (tenant_id, month, user_id, model, role, prompt_tokens, "
                "completion_tokens, total_tokens, requests, completed, failed, cancelled) "
                "SELECT tenant_id, date_trunc('month', day)::date, user_id, model, "
                "(array_agg(role ORDER BY day DESC))[1], sum(prompt_tokens), sum(completion_tokens), "
                "sum(total_tokens), sum(requests), sum(completed), sum(failed), sum(cancelled) "
                "FROM rm_usage_daily WHERE tenant_id = %s GROUP BY 1, 2, 3, 4",
                (tenant_id,),
            )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE rm_usage_daily")
        conn.execute("VACUUM ANALYZE rm_usage_monthly")
        conn.execute("ANALYZE rm_users")
    return rows


async def timed(runs: int, query: Any) -> list[float]:
    await query()  # untimed: plans, caches, pool connections
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await query()
        times.append(time.perf_counter() - start)
    return times


async def one_pass(engine: AsyncEngine, tenant_id: str, start: date, end: date) -> None:
    """The aggregate ``usage_report`` groups by user, run once: the report runs it twice (totals, page)."""
    u = usage_daily.c
    sums = [func.sum(u[m]) for m in METRICS]
    stmt = select(u.user_id, *sums).where(u.tenant_id == tenant_id, u.day >= start, u.day <= end).group_by(u.user_id)
    async with engine.connect() as conn:
        (await conn.execute(stmt)).all()


async def measure_reports(container: Container, database_url: str, scale: Scale, report: Report) -> None:
    tenant_id = str(uuid.uuid4())
    users = [str(uuid.uuid4()) for _ in range(scale.users)]
    today = day_of(datetime.now(UTC), "UTC")
    with stopwatch() as elapsed:
        rows = await asyncio.to_thread(load_usage, database_url, tenant_id, users, scale.days, today)
        loaded = elapsed()
    progress(f"reports: {rows:,} rows into rm_usage_daily in {loaded:.1f} s ({rows / loaded:,.0f} rows/s)")
    report.add(
        "rm_usage_daily rows loaded", f"{rows:,}", f"{scale.users:,} users x {scale.days} days, COPY, {loaded:.1f} s"
    )
    engine = container.engine
    start = today - timedelta(days=scale.days - 1)
    me = users[len(users) // 2]
    queries: list[tuple[str, str, Any]] = [
        (
            "by user",
            "first 50 + totals",
            lambda: usage_report(engine, tenant_id, start=start, end=today, group_by="user"),
        ),
        (
            "by user, all",
            "every group (CSV export)",
            lambda: usage_report(engine, tenant_id, start=start, end=today, group_by="user", limit=None),
        ),
        (
            "by day",
            "first 50 + totals",
            lambda: usage_report(engine, tenant_id, start=start, end=today, group_by="day"),
        ),
        ("by model", "3 models", lambda: usage_report(engine, tenant_id, start=start, end=today, group_by="model")),
        ("by role", "2 roles", lambda: usage_report(engine, tenant_id, start=start, end=today, group_by="role")),
        (
            "one user by day",
            "user_id filter",
            lambda: usage_report(engine, tenant_id, start=start, end=today, group_by="day", user_id=me),
        ),
        ("/usage/me today", "usage_of_day", lambda: usage_of_day(engine, tenant_id, me, today)),
        ("by user, 1 pass", "the grouped subquery alone, once", lambda: one_pass(engine, tenant_id, start, today)),
    ]
    check = await usage_report(engine, tenant_id, start=start, end=today, group_by="user")
    assert check.total == len(users) and check.totals["requests"] > 0, check.total
    for name, note, query in queries:
        times = await timed(scale.query_runs, query)
        p50, p99 = statistics.median(times), percentile(times, 0.99)
        progress(f"report {name}: p50 {ms(p50)} ms, p99 {ms(p99)} ms")
        report.add(f"report {name} p50/p99 (ms)", f"{ms(p50)}/{ms(p99)}", f"{note}, {len(times)} runs")


# --- entry point ------------------------------------------------------------------------------------------
async def run(urls: EngineUrls, home: Path, scale: Scale) -> Report:
    report = Report()
    settings = settings_for(urls, home, "bench_quota")
    container, tenant_id = await start_container(settings)
    try:
        progress("send_message with and without the reservation")
        await measure_send(container, tenant_id, scale, report)
        progress("ledger throughput")
        await measure_ledger(container, scale, report)
        progress("usage reports")
        assert settings.database_url
        await measure_reports(container, settings.database_url, scale, report)
    finally:
        await container.close()
    return report


def main(argv: list[str] | None = None) -> None:
    cli("python -m bench.quota", __doc__ or "", run, QUICK, FULL, argv)


if __name__ == "__main__":
    main()
