"""Benchmark of the event spine: commands into the event store, events out to a read model, replay.

Run ``python -m bench.spine`` (``--quick`` for a smoke run under a minute, ``--fast`` to turn fsync off).
It starts its own embedded Postgres, NATS and Redis in a temporary directory, with durable commits by
default, and measures in one run, so the figures it compares share a machine and a moment:

1. Command throughput, and what parley's wrapping costs over the bare library. The command registers a
   user the way ``Identity._add_user`` does, minus the argon2 hash (a fixed string stands in; hashing
   happens outside the command): look up the ``EmailIndex`` for the e-mail, create a ``User`` and its
   ``EmailIndex``, save both in one append (two events). Parley runs it through ``EventStore.execute``
   (asyncio task -> worker thread, command context, metadata stamped on every event, conflict retry);
   the baseline runs the same function on a plain ``eventsourcing`` ``Application`` configured as
   ``ParleyApplication`` is, from plain threads, in a database of its own. Both at 1 and 16 concurrent
   callers, taking turns in short slices so that other load on the machine hits both alike. The
   absolute rate is bounded by the library's table lock (gapless notification ids) and a WAL flush per
   command: concurrency buys little.
2. Lag from commit to read model. The relay and the identity projector's runner follow NATS in-process,
   with their production defaults, while commands arrive at a steady rate. A command's commit is when
   ``save`` returned; its arrival is when the runner's position passed the notification id of its
   ``UserRegistered``, which the runtime records right after the transaction that wrote the ``rm_users``
   row and the position committed.
3. Rebuild rate, for every projector ``workers.bootstrap.all_projectors`` knows. At least 100,000 events
   are appended in batches, half of them sign-ups (per user ``UserRegistered``, ``UserRenamed``,
   ``EmailClaimed``), half conversations (per chat ``ChatCreated``, then per turn ``MessagePosted``,
   ``GenerationRequested``, ``GenerationStarted``, ``GenerationCompleted``, ``AnswerRecorded``); then
   ``projections.runtime.rebuild`` replays the whole log from the event store into each read model. The
   rate counts every event read (a projector skips those it does not handle); the note says how many it
   handled, and the CPU time this process spent (other load on the machine inflates the wall time
   more than that). A rebuild that outlasts its cap is stopped and rated on what it had committed, so the run
   stays short.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from psycopg.conninfo import conninfo_to_dict

from adapters.embedded import EmbeddedEngines, EngineUrls
from adapters.eventstore import EventStore, ParleyApplication
from adapters.logging import configure_logging
from adapters.settings import Settings
from application.context import CommandContext
from domain.chats import Chat, Generation
from domain.identity import EmailIndex, User, email_index_id
from projections.identity import IdentityProjector
from projections.runtime import Projector, ProjectorRunner, rebuild
from workers.bootstrap import Container, all_projectors, bootstrap
from workers.relay import Relay

__all__ = ["FULL", "QUICK", "Scale", "main"]

PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$bench$not-a-real-hash"
"""Stands in for the argon2 hash: hashing is work done outside the command, not what is measured."""


@dataclass(frozen=True)
class Scale:
    measure_s: float
    """Per side and concurrency, split into ``rounds`` alternating slices."""
    rounds: int
    warmup_s: float
    concurrency: tuple[int, ...]
    lag_rate: float
    lag_s: float
    rebuild_events: int
    rebuild_cap_s: float
    """A rebuild still running after this long is stopped and rated on what it committed."""
    users_per_save: int
    """Three events per user. Kept at 100: appends of ~1,500 events in one ``save`` were seen to hang
    for good in psycopg's pipeline mode (server in ClientRead, client waiting on ``pipeline.sync``)."""


FULL = Scale(
    measure_s=4.0,
    rounds=4,
    warmup_s=1.0,
    concurrency=(1, 16),
    lag_rate=100,
    lag_s=10,
    rebuild_events=100_000,
    rebuild_cap_s=240,
    users_per_save=100,
)
QUICK = Scale(
    measure_s=1.0,
    rounds=2,
    warmup_s=0.3,
    concurrency=(1, 16),
    lag_rate=100,
    lag_s=2,
    rebuild_events=10_000,
    rebuild_cap_s=10,
    users_per_save=100,
)


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, figure: str, value: str, note: str = "") -> None:
        self.rows.append((figure, value, note))

    def render(self) -> str:
        width = max(len(r[0]) for r in self.rows)
        value_width = max(len(r[1]) for r in self.rows)
        lines = [f"{'figure':<{width}}  {'value':>{value_width}}  note", "-" * (width + value_width + 30)]
        lines += [f"{f:<{width}}  {v:>{value_width}}  {n}".rstrip() for f, v, n in self.rows]
        return "\n".join(lines)


def load() -> str:
    """Other work on the machine moves every figure: say how busy it was."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    yield lambda: time.perf_counter() - start


# --- engines and databases ---------------------------------------------------------------------------------
def create_database(urls: EngineUrls, name: str) -> str:
    with psycopg.connect(urls.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = urls.database_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def settings_for(urls: EngineUrls, home: Path, database: str) -> Settings:
    return Settings(
        home=home,
        database_url=create_database(urls, database),
        nats_url=urls.nats_url,
        redis_url=urls.redis_url,
        namespace=f"bench{uuid.uuid4().hex[:8]}",
        secret_key="bench-secret-" + "x" * 40,
        log_level="warning",
        log_json=False,
    )


async def start_container(settings: Settings) -> tuple[Container, str]:
    """The composition root, as the workers build it, with the default tenant; returns its id."""
    container = await bootstrap(settings)
    tenant = await container.identity.ensure_tenant(settings.default_tenant, "Bench")
    return container, str(tenant.id)


# --- the command, on parley and on the bare library --------------------------------------------------------
def new_user(tenant_id: str, email: str) -> tuple[User, EmailIndex]:
    user = User(
        tenant_id=tenant_id,
        email=email,
        name="Bench User",
        role="user",
        password_hash=PASSWORD_HASH,
        created_by="system",
    )
    return user, EmailIndex(tenant_id=tenant_id, email=email, user_id=user.id)


def register_on_parley(store: EventStore, tenant_id: str, email: str) -> list[int]:
    """``Identity._add_user`` when the tenant already has its first admin (check the e-mail, save the user
    and its index), minus the argon2 hash and the tenant lookup."""
    if store.find(EmailIndex, email_index_id(tenant_id, email)) is not None:
        raise AssertionError(f"{email} is taken")
    return store.save(*new_user(tenant_id, email))


class RawApplication(Application[uuid.UUID]):
    """The bare library, configured as ``ParleyApplication`` is (same persistence module, table lock),
    but with the library's own recorder: one transaction per save, no group commit."""

    name = "parley"
    env: ClassVar[dict[str, str]] = {
        k: v for k, v in ParleyApplication.env.items() if k != "APPLICATION_RECORDER_TOPIC"
    }


def raw_application(database_url: str, *, pool_size: int = 10, max_overflow: int = 10) -> RawApplication:
    """Connection settings derived from the URL exactly as ``EventStore.__init__`` derives them."""
    params = conninfo_to_dict(database_url)
    return RawApplication(
        env={
            "POSTGRES_DBNAME": str(params.get("dbname") or "postgres"),
            "POSTGRES_HOST": str(params.get("host") or "localhost"),
            "POSTGRES_PORT": str(params.get("port") or "5432"),
            "POSTGRES_USER": str(params.get("user") or "postgres"),
            "POSTGRES_PASSWORD": str(params.get("password") or ""),
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": str(max_overflow),
        }
    )


def register_on_raw(app: RawApplication, tenant_id: str, email: str) -> None:
    try:
        app.repository.get(email_index_id(tenant_id, email))
    except AggregateNotFoundError:
        app.save(*new_user(tenant_id, email))
        return
    raise AssertionError(f"{email} is taken")


def unique_emails(run: str, caller: int) -> Iterator[str]:
    n = 0
    while True:
        n += 1
        yield f"{run}-{caller}-{n}@bench.example"


@dataclass(frozen=True)
class Rate:
    commands: int
    seconds: float

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.commands + other.commands, self.seconds + other.seconds)

    @property
    def per_s(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0


async def parley_rate(store: EventStore, tenant_id: str, callers: int, seconds: float) -> Rate:
    """Commands completed by ``callers`` asyncio tasks, each awaiting one command at a time."""
    run = uuid.uuid4().hex[:8]
    deadline = time.perf_counter() + seconds
    done = [0] * callers

    async def caller(i: int) -> None:
        emails = unique_emails(run, i)
        while time.perf_counter() < deadline:
            email = next(emails)
            ctx = CommandContext(tenant_id=tenant_id, actor="system")
            await store.execute(ctx, partial(register_on_parley, store, tenant_id, email))
            done[i] += 1

    with stopwatch() as elapsed:
        await asyncio.gather(*(caller(i) for i in range(callers)))
        return Rate(sum(done), elapsed())


def raw_rate(app: RawApplication, tenant_id: str, callers: int, seconds: float) -> Rate:
    """Commands completed by ``callers`` threads calling the library directly."""
    run = uuid.uuid4().hex[:8]
    done = [0] * callers
    go = threading.Barrier(callers + 1)
    deadline = 0.0

    def caller(i: int) -> None:
        emails = unique_emails(run, i)
        go.wait()
        while time.perf_counter() < deadline:
            register_on_raw(app, tenant_id, next(emails))
            done[i] += 1

    threads = [threading.Thread(target=caller, args=(i,), name=f"raw-{i}") for i in range(callers)]
    for t in threads:
        t.start()
    with stopwatch() as elapsed:
        deadline = time.perf_counter() + seconds
        go.wait()
        for t in threads:
            t.join()
        return Rate(sum(done), elapsed())


async def measure_commands(urls: EngineUrls, home: Path, scale: Scale, report: Report) -> None:
    """Parley and the bare library take turns in short slices, so a noisy neighbour on the machine
    slows both alike; the figure per side is all its commands over all its time."""
    container, tenant_id = await start_container(settings_for(urls, home, "bench_commands"))
    store = container.store
    app = await asyncio.to_thread(raw_application, create_database(urls, "bench_raw"))
    slice_s = scale.measure_s / scale.rounds
    try:
        for callers in scale.concurrency:
            await parley_rate(store, tenant_id, callers, scale.warmup_s)
            await asyncio.to_thread(raw_rate, app, tenant_id, callers, scale.warmup_s)
            parley, raw, ratios = Rate(0, 0), Rate(0, 0), []
            for _ in range(scale.rounds):
                p = await parley_rate(store, tenant_id, callers, slice_s)
                r = await asyncio.to_thread(raw_rate, app, tenant_id, callers, slice_s)
                parley, raw = parley + p, raw + r
                ratios.append(p.per_s / r.per_s)
            spread = f"rounds {min(ratios):.2f}..{max(ratios):.2f}"
            progress(
                f"commands, {callers:>2} caller(s): parley {parley.per_s:7.1f}/s, raw {raw.per_s:7.1f}/s, "
                f"parley/raw {parley.per_s / raw.per_s:.2f} ({spread})"
            )
            report.add(f"commands/s parley, {callers} caller(s)", f"{parley.per_s:.1f}", "EventStore.execute")
            report.add(
                f"commands/s raw,    {callers} caller(s)", f"{raw.per_s:.1f}", "eventsourcing Application"
            )
            report.add(f"ratio parley/raw,  {callers} caller(s)", f"{parley.per_s / raw.per_s:.2f}", spread)
    finally:
        await asyncio.to_thread(app.close)
        await container.close()


# --- lag from commit to read model ------------------------------------------------------------------------
class TimedRunner(ProjectorRunner):
    """A runner that notes when its position advances: the runtime assigns the position right after the
    transaction that applied the events (and wrote the position row) committed."""

    def __init__(self, projector: Projector, **kwargs: Any) -> None:
        self.advances: list[tuple[int, float]] = []
        self._position = 0
        super().__init__(projector, **kwargs)

    @property
    def position(self) -> int:
        return self._position

    @position.setter
    def position(self, value: int) -> None:
        if value > self._position:
            self.advances.append((value, time.perf_counter()))
        self._position = value

    def applied_at(self, notification_id: int) -> float | None:
        i = bisect.bisect_left(self.advances, notification_id, key=lambda advance: advance[0])
        return self.advances[i][1] if i < len(self.advances) else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def wait_for(condition: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    deadline = time.perf_counter() + within_s
    while not await condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what} after {within_s:.0f}s")
        await asyncio.sleep(0.01)


async def measure_lag(urls: EngineUrls, home: Path, scale: Scale, report: Report) -> None:
    container, tenant_id = await start_container(settings_for(urls, home, "bench_lag"))
    store = container.store
    stop = asyncio.Event()
    js = await container.connect_nats("bench-lag")
    relay = Relay(store=store, engine=container.engine, js=js, subjects=container.subjects)
    runner = TimedRunner(IdentityProjector(), engine=container.engine, store=store)
    tasks = [
        asyncio.create_task(relay.run(stop)),
        asyncio.create_task(runner.run(js, container.subjects, stop)),
    ]

    async def caught_up() -> bool:
        return relay.active.is_set() and runner.position >= await store.call(store.max_id)

    try:
        await wait_for(caught_up, 30, "relay and projector did not start")
        commits: list[tuple[int, float]] = []
        emails = unique_emails(uuid.uuid4().hex[:8], 0)

        def command(email: str) -> None:
            ids = register_on_parley(store, tenant_id, email)
            commits.append((ids[0], time.perf_counter()))  # the UserRegistered event, committed

        count = int(scale.lag_rate * scale.lag_s)
        progress(
            f"lag: {count} commands at {scale.lag_rate:.0f}/s, relay + identity projector following NATS"
        )
        loop = asyncio.get_running_loop()
        in_flight: list[asyncio.Future[None]] = []
        start = loop.time()
        for i in range(count):
            delay = start + i / scale.lag_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            email = next(emails)
            ctx = CommandContext(tenant_id=tenant_id, actor="system")
            in_flight.append(asyncio.ensure_future(store.execute(ctx, partial(command, email))))
        await asyncio.gather(*in_flight)
        offered = count / (loop.time() - start)
        last = max(n for n, _ in commits)

        async def applied() -> bool:
            return runner.position >= last

        await wait_for(applied, 60, "the projector did not catch up")
        lags = []
        for notification_id, committed in commits:
            seen = runner.applied_at(notification_id)
            assert seen is not None
            lags.append((seen - committed) * 1000)
        progress(
            f"lag: p50 {statistics.median(lags):.1f} ms, p99 {percentile(lags, 0.99):.1f} ms, "
            f"max {max(lags):.1f} ms"
        )
        note = f"{len(lags)} commands at {offered:.0f}/s"
        report.add("lag commit -> rm_users p50 (ms)", f"{statistics.median(lags):.1f}", note)
        report.add("lag commit -> rm_users p99 (ms)", f"{percentile(lags, 0.99):.1f}")
        report.add("lag commit -> rm_users max (ms)", f"{max(lags):.1f}")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await container.close()


# --- rebuild ---------------------------------------------------------------------------------------------
def append_users(store: EventStore, tenant_id: str, events: int, users_per_save: int) -> int:
    """Append at least ``events`` events, ``users_per_save`` users (three events each) per append."""
    ctx = CommandContext(tenant_id=tenant_id, actor="system")
    run = uuid.uuid4().hex[:8]
    appended = 0
    saves = 0
    total_saves = math.ceil(events / (3 * users_per_save))

    def batch() -> int:
        aggregates: list[User | EmailIndex] = []
        for n in range(users_per_save):
            user, index = new_user(tenant_id, f"{run}-{saves}-{n}@bench.example")
            user.rename(f"Bench User {n}")
            aggregates += (user, index)
        return len(store.save(*aggregates))

    while appended < events:
        appended += store.run_command(ctx, batch)
        saves += 1
        if saves % max(1, total_saves // 5) == 0 or appended >= events:
            progress(f"rebuild: appended {appended:,} events")
    return appended


class RebuildProgress:
    """The rebuild's progress callback: remembers the last committed position and when it was reached,
    and prints at every fifth of the way."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.position = 0
        self.at = self.started
        self.cpu_at = self.cpu_started
        self._shown = 0

    def __call__(self, position: int, target: int) -> None:
        self.position, self.at, self.cpu_at = position, time.perf_counter(), time.process_time()
        fifth = position * 5 // max(target, 1)
        if fifth > self._shown:
            self._shown = fifth
            progress(f"{self.what}: {position:,}/{target:,}")

    @property
    def rate(self) -> float:
        return self.position / (self.at - self.started) if self.at > self.started else 0.0


async def timed_rebuild(
    projector: Projector, container: Container, cap_s: float
) -> tuple[RebuildProgress, bool]:
    """Rebuild ``projector``; past ``cap_s`` stop it and rate what was committed by then (the database is
    thrown away). Returns the progress and whether the cap cut the rebuild short."""
    tracker = RebuildProgress(f"rebuild {projector.name}")
    task = asyncio.create_task(
        rebuild(projector, engine=container.engine, store=container.store, progress=tracker)
    )
    done, _ = await asyncio.wait({task}, timeout=cap_s)
    if task in done:
        task.result()
        return tracker, False
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return tracker, True


def append_chats(store: EventStore, tenant_id: str, events: int, chats_per_save: int, turns: int = 4) -> int:
    """Append at least ``events`` events of conversations: ``chats_per_save`` chats of ``turns`` answered
    questions each per append (a generation requested, started and completed for each answer)."""
    ctx = CommandContext(tenant_id=tenant_id, actor="system")
    owner, model_id = uuid.uuid4(), uuid.uuid4()
    appended = 0

    def batch() -> int:
        aggregates: list[Chat | Generation] = []
        for _ in range(chats_per_save):
            chat = Chat(tenant_id=tenant_id, owner_id=owner, title="Bench chat", source="api")
            parent: str | None = None
            for turn in range(turns):
                question, answer = f"m-{uuid.uuid4().hex}", f"m-{uuid.uuid4().hex}"
                chat.post(question, "user", f"Question {turn}?", parent)
                generation = Generation(
                    tenant_id=tenant_id,
                    chat_id=chat.id,
                    user_id=owner,
                    model_id=model_id,
                    model="bench-model",
                    user_message_id=question,
                    answer_message_id=answer,
                    params={"temperature": 0.7},
                    reserved_tokens=256,
                )
                generation.start(attempt=1, worker="bench")
                generation.complete(
                    text="An answer.",
                    thinking="",
                    prompt_tokens=12,
                    completion_tokens=20,
                    finish_reason="stop",
                    ttft_ms=5.0,
                    tokens_per_s=100.0,
                    duration_ms=200.0,
                    attempt=1,
                )
                chat.record_answer(
                    answer, question, generation.id, "bench-model", "An answer.", "", "completed", 12, 20,
                    {"ttft_ms": 5.0, "tokens_per_s": 100.0, "duration_ms": 200.0},  # as the service records them
                )  # fmt: skip
                aggregates.append(generation)
                parent = answer
            aggregates.append(chat)
        return len(store.save(*aggregates))

    while appended < events:
        appended += store.run_command(ctx, batch)
    progress(f"rebuild: appended {appended:,} events of conversations")
    return appended


async def measure_rebuild(urls: EngineUrls, home: Path, scale: Scale, report: Report) -> None:
    container, tenant_id = await start_container(settings_for(urls, home, "bench_rebuild"))
    try:
        with stopwatch() as elapsed:
            appended = await asyncio.to_thread(
                append_users, container.store, tenant_id, scale.rebuild_events // 2, scale.users_per_save
            )
            appended += await asyncio.to_thread(
                append_chats, container.store, tenant_id, scale.rebuild_events - appended, scale.users_per_save // 5
            )
            append_rate = appended / elapsed()
        report.add("append events/s (batched)", f"{append_rate:,.0f}", f"{appended:,} events, ~300-420 per save")
        log = await container.store.call(container.store.read, 1, appended + 10)
        for projector in all_projectors(container):
            handled = sum(1 for e in log if projector.handles(e.type))
            tracker, capped = await timed_rebuild(projector, container, scale.rebuild_cap_s)
            seconds = tracker.at - tracker.started
            cpu = tracker.cpu_at - tracker.cpu_started  # this process only (Postgres works besides)
            note = f"{tracker.position:,} events in {seconds:.1f} s ({cpu:.1f} s CPU here), {handled:,} handled" + (
                f" (stopped at the {scale.rebuild_cap_s:.0f} s cap)" if capped else ""
            )
            progress(f"rebuild {projector.name}: {note}, {tracker.rate:,.0f} events/s")
            report.add(f"rebuild {projector.name} events/s", f"{tracker.rate:,.0f}", note)
    finally:
        await container.close()


# --- entry point ------------------------------------------------------------------------------------------
async def run(urls: EngineUrls, home: Path, scale: Scale) -> Report:
    report = Report()
    await measure_commands(urls, home, scale, report)
    await measure_lag(urls, home, scale, report)
    await measure_rebuild(urls, home, scale, report)
    return report


def cli(
    prog: str,
    doc: str,
    run_all: Callable[[EngineUrls, Path, Any], Awaitable[Report]],
    quick: Any,
    full: Any,
    argv: list[str] | None = None,
) -> None:
    """The command line every benchmark shares: ``--quick`` / ``--fast``, its own embedded engines in a
    temporary folder (stopped on Ctrl-C or SIGTERM), progress lines, then the table and the load."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="scaled down: finishes in under a minute")
    parser.add_argument("--fast", action="store_true", help="embedded Postgres with fsync off")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the engines on SIGTERM as on Ctrl-C
    scale = quick if args.quick else full
    configure_logging("warning", json=False)
    command = " ".join([prog, *(sys.argv[1:] if argv is None else argv)])
    machine = f"{os.cpu_count()} CPUs, Postgres fsync {'off' if args.fast else 'on'}"
    progress(f"{command}: {machine}, {'quick' if args.quick else 'full'} scale, {load()}")
    home = Path(tempfile.mkdtemp(prefix="parley-bench-", dir="/tmp"))
    try:
        with stopwatch() as elapsed, EmbeddedEngines(home, fast=args.fast) as engines:
            urls = engines.start()
            progress("engines started")
            report = asyncio.run(run_all(urls, home, scale))
            total = elapsed()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"\n{command}  ({machine}, {total:.0f} s; {load()} at the end)")
    print(report.render(), flush=True)


def main(argv: list[str] | None = None) -> None:
    cli("python -m bench.spine", __doc__ or "", run, QUICK, FULL, argv)


if __name__ == "__main__":
    main()
