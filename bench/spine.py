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
   At a steady rate of events (full form: 1,000 events/s; ``--lag-rate N``, 0 to leave it out; the quick
   form leaves it out unless given), the same command, 2 events each, from this process (the writer, as
   the API is) while ``parley relay`` and ``parley project`` run as child processes, as ``parley serve``
   runs them: the projector group of seven, the vectors projector on its own consumer, the audit
   checkpointer and the retention sweeper. The commands are sent on schedule whether those before them
   have finished or not. The children note when the relay publishes a batch and when the group applies
   one, on ``CLOCK_MONOTONIC``, which gives the lag and its stages; ``/proc`` gives each part's CPU. A
   writer that commits under 95% of the rate is tried again at 90% of what it reached, twice at most.
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
from dataclasses import dataclass, field, replace
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
from projections.runtime import Projector, ProjectorRunner, read_position, rebuild
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
    steady_events_s: float = 0.0
    """Lag at a steady rate of events with the parts as processes (``--lag-rate``); 0 leaves it out."""
    steady_s: float = 15.0
    """How long the steady rate is measured, after ``STEADY_WARMUP_S`` of warm-up."""


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
    steady_events_s=1000,
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
    steady_s=3.0,
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


# --- lag at a steady rate, with the parts as processes -----------------------------------------------------
def _child(part: str) -> None:
    """Entry of a child process of the steady lag measurement: ``parley relay`` or ``parley project``,
    exactly as ``parley serve`` starts them (``workers.cli``), with timestamps noted where the relay
    publishes a batch and where the projector group applies one. They are written, as JSON, to the file
    ``BENCH_TIMES`` names when the part stops (SIGTERM). ``time.monotonic`` is ``CLOCK_MONOTONIC``, one clock
    for every process of the machine, so they compare with the writer's."""
    import json

    from projections.group import ProjectorGroup
    from workers import cli as parley_cli

    marks: list[tuple[Any, ...]] = []
    if part == "relay":
        publish = Relay.publish

        async def timed_publish(self: Relay, batch: list[Any]) -> int:
            started = time.monotonic()
            acked = await publish(self, batch)
            marks.append((batch[0].id, batch[-1].id, started, time.monotonic()))
            return acked

        Relay.publish = timed_publish  # type: ignore[method-assign]
    elif part == "project":
        apply, catch_up = ProjectorGroup.apply, ProjectorGroup.catch_up

        def timed(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
            async def wrapper(self: ProjectorGroup, *args: Any) -> None:
                started = time.monotonic()
                await method(self, *args)
                events = args[0] if args else []
                first, last = (events[0].id, events[-1].id) if events else (0, 0)
                marks.append((first, last, self.positions.get("identity", 0), started, time.monotonic()))

            return wrapper

        ProjectorGroup.apply = timed(apply)  # type: ignore[method-assign]
        ProjectorGroup.catch_up = timed(catch_up)  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown part {part!r}")
    out = Path(os.environ["BENCH_TIMES"])
    try:
        parley_cli.main([part])
    finally:
        out.with_suffix(".tmp").write_text(json.dumps(marks))
        out.with_suffix(".tmp").rename(out)


class Part:
    """A child process running ``_child(part)``, its output in a log file under ``home``."""

    def __init__(self, part: str, settings: Settings, home: Path) -> None:
        import subprocess

        self.part = part
        self.log = home / f"steady-{part}.log"
        self.times = home / f"steady-{part}.json"
        env = {**os.environ, **settings.child_env(), "BENCH_TIMES": str(self.times)}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", f"from bench.spine import _child; _child({part!r})"],
                cwd=Path(__file__).resolve().parents[1],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"parley {self.part} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> list[list[Any]]:
        """SIGTERM (the part stops as it does under ``parley serve``), then its timestamps."""
        import json
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return json.loads(self.times.read_text()) if self.times.exists() else []


@dataclass
class Window:
    """One steady rate: the commands measured (warm-up left out), and the CPU the parts used meanwhile."""

    rate: float
    """Events/s offered."""
    per_command: int
    commits: list[tuple[int, float]]
    """(notification id of the command's first event, when ``save`` returned), measured commands only."""
    measured_from: float
    seconds: float
    """From ``measured_from`` to the last measured commit."""
    cpu: dict[str, float]
    """CPU seconds per part from ``measured_from`` until the projector had caught up."""
    cpu_seconds: float
    busy: float
    """Share of all CPUs busy (every process of the machine) over the same span."""

    @property
    def achieved(self) -> float:
        """Events/s committed."""
        return len(self.commits) * self.per_command / self.seconds if self.seconds else 0.0


STEADY_WARMUP_S = 2.0
STEADY_PARTS = ("writer", "relay", "project", "postgres", "nats", "redis")


async def steady_window(
    container: Container, tenant_id: str, rate: float, per_command: int, seconds: float, cpu: Any
) -> Window:
    """Commands at ``rate / per_command`` a second for ``STEADY_WARMUP_S + seconds``, each sent on time
    whether the ones before it have finished or not (an open arrival process, as requests reach the API);
    then wait for the identity projector to pass the last of them."""
    from bench.pipeline import machine_busy

    store = container.store
    commits: list[tuple[int, float, int]] = []
    emails = unique_emails(uuid.uuid4().hex[:8], 0)

    def command(n: int, email: str) -> None:
        ids = register_on_parley(store, tenant_id, email)
        commits.append((ids[0], time.monotonic(), n))

    per_s = rate / per_command
    warm = int(per_s * STEADY_WARMUP_S)
    count = warm + int(per_s * seconds)
    in_flight: list[asyncio.Future[None]] = []
    start = time.monotonic()
    before: dict[int, tuple[str, float]] = {}
    busy_before = (0, 0)
    sent = 0
    while sent < count:
        now = time.monotonic()
        due = min(count, int((now - start) * per_s) + 1)
        while sent < due:
            if sent == warm:
                before, busy_before = cpu.sample(), machine_busy()
            ctx = CommandContext(tenant_id=tenant_id, actor="system")
            in_flight.append(asyncio.ensure_future(store.execute(ctx, partial(command, sent, next(emails)))))
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / per_s - time.monotonic()))
    await asyncio.gather(*in_flight)
    measured_from = start + warm / per_s
    measured = sorted((i, t) for i, t, n in commits if n >= warm)
    last = max(i for i, _ in measured)

    async def applied() -> bool:
        return await read_position(container.engine, "identity") >= last

    await wait_for(applied, 120, "parley project did not catch up")
    after, busy_after = cpu.sample(), machine_busy()
    ended = time.monotonic()
    busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
    return Window(
        rate=rate,
        per_command=per_command,
        commits=measured,
        measured_from=measured_from,
        seconds=max(t for _, t in measured) - measured_from,
        cpu=cpu.used(before, after),
        cpu_seconds=ended - measured_from,
        busy=busy,
    )


def _stages(
    window: Window, relay: list[list[Any]], advances: list[list[Any]]
) -> tuple[list[float], dict[str, list[float]], list[int]]:
    """Each measured command's lag (ms), its stages (ms) and the group batches that applied them (events).

    Stages, which add up to the lag: ``commit -> relay read`` (the relay wakes on NOTIFY and reads the
    batch: until it starts publishing), ``publish -> group has it`` (JetStream stores the messages, delivers
    them to the group's pull consumer, the fetch returns and decodes them), ``group apply+commit`` (one
    transaction for the group's seven projectors, through its commit). ``relay publish`` (to the last
    JetStream ack of the relay's batch) overlaps the second stage and is shown apart, and so is the part of
    the second stage when the group was still applying its batch before (``group busy before``)."""
    relay_last = [r[1] for r in relay]
    positions = [a[2] for a in advances]
    lags: list[float] = []
    stages: dict[str, list[float]] = {
        "commit -> relay read": [],
        "publish -> group has it": [],
        "group apply+commit": [],
        "relay publish (to acks)": [],
        "group busy before": [],
    }
    batches: list[int] = []
    for notification_id, committed in window.commits:
        r = relay[bisect.bisect_left(relay_last, notification_id)]
        k = bisect.bisect_left(positions, notification_id)
        a = advances[k]
        before = advances[k - 1][4] if k else 0.0
        stages["group busy before"].append(max(0.0, (before - r[2]) * 1000))
        lags.append((a[4] - committed) * 1000)
        stages["commit -> relay read"].append((r[2] - committed) * 1000)
        stages["publish -> group has it"].append((a[3] - r[2]) * 1000)
        stages["group apply+commit"].append((a[4] - a[3]) * 1000)
        stages["relay publish (to acks)"].append((r[3] - r[2]) * 1000)
        batches.append(a[1] - a[0] + 1 if a[1] else 0)
    return lags, stages, batches


async def measure_steady_lag(urls: EngineUrls, home: Path, scale: Scale, report: Report) -> None:
    """Commit -> ``rm_users`` lag at a steady rate of events, with ``parley relay`` and ``parley project``
    (the projector group of seven, the vectors projector on its own consumer, the audit checkpointer and the
    retention sweeper) as child processes, as ``parley serve`` runs them; this process is the writer, as
    the API is. When the writer falls short of the rate (under 95% of it committed on time), the rate is
    lowered to 90% of what was reached, at most twice."""
    from bench.pipeline import Cpu

    settings = settings_for(urls, home, "bench_steady")
    container, tenant_id = await start_container(settings)
    parts = [Part("relay", settings, home), Part("project", settings, home)]
    cpu = Cpu(home, {"writer": os.getpid(), "relay": parts[0].proc.pid, "project": parts[1].proc.pid})
    windows: list[Window] = []
    times: list[list[list[Any]]] = []
    try:
        store = container.store

        async def caught_up() -> bool:
            for part in parts:
                part.check()
            return await read_position(container.engine, "identity") >= await store.call(store.max_id) > 0

        ctx = CommandContext(tenant_id=tenant_id, actor="system")
        probe = f"{uuid.uuid4().hex}@bench.example"
        ids = await store.execute(ctx, partial(register_on_parley, store, tenant_id, probe))
        per_command = len(ids)
        await wait_for(caught_up, 60, "parley relay and parley project did not catch up")
        rate = scale.steady_events_s
        for _ in range(3):
            progress(
                f"steady lag: {rate:,.0f} events/s ({rate / per_command:,.0f} registrations/s, {per_command} events "
                f"each) for {STEADY_WARMUP_S + scale.steady_s:.0f} s, parley relay + parley project as processes"
            )
            window = await steady_window(container, tenant_id, rate, per_command, scale.steady_s, cpu)
            windows.append(window)
            progress(f"steady lag: {window.achieved:,.0f} events/s committed")
            if window.achieved >= 0.95 * rate:
                break
            rate = math.floor(0.9 * window.achieved / 10) * 10
    finally:
        times = [part.stop() for part in parts]
        await container.close()
    relay, advances = times
    for window in windows:
        lags, stages, batches = _stages(window, relay, advances)
        steady = "steady" if window.achieved >= 0.95 * window.rate else "NOT steady: the writer fell behind"
        head = f"lag at {window.rate:,.0f} events/s"
        summary = (
            f"p50 {statistics.median(lags):.1f}, p95 {percentile(lags, 0.95):.1f}, p99 {percentile(lags, 0.99):.1f}, "
            f"max {max(lags):.1f} ms"
        )
        progress(f"{head}: {summary}")
        report.add(
            f"{head} p50 (ms)",
            f"{statistics.median(lags):.1f}",
            f"{len(lags):,} registrations ({window.per_command} events each) over {window.seconds:.1f} s: "
            f"{window.achieved:,.0f} events/s committed ({steady})",
        )
        report.add(f"{head} p95 (ms)", f"{percentile(lags, 0.95):.1f}")
        report.add(f"{head} p99 (ms)", f"{percentile(lags, 0.99):.1f}", "issue 11 target: 25")
        report.add(f"{head} max (ms)", f"{max(lags):.1f}")
        report.add(
            f"{head} stages p50/p99 (ms)",
            "",
            ", ".join(f"{k} {statistics.median(v):.1f}/{percentile(v, 0.99):.1f}" for k, v in stages.items()),
        )
        report.add(
            f"{head} group batch (events)",
            f"{statistics.mean(batches):.1f}",
            f"median {statistics.median(batches):.0f}, p99 {percentile(batches, 0.99):.0f} "
            "(the group's batch that applied each registration)",
        )
        share = ", ".join(f"{p} {100 * window.cpu.get(p, 0.0) / window.cpu_seconds:.0f}" for p in STEADY_PARTS)
        report.add(
            f"{head} CPU (% of a core)",
            f"{100 * sum(window.cpu.values()) / window.cpu_seconds:.0f}",
            f"{share}; all CPUs {100 * window.busy:.0f}% busy (any process)",
        )


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
    if scale.steady_events_s:
        await measure_steady_lag(urls, home, scale, report)
    await measure_rebuild(urls, home, scale, report)
    return report


def cli(
    prog: str,
    doc: str,
    run_all: Callable[[EngineUrls, Path, Any], Awaitable[Report]],
    quick: Any,
    full: Any,
    argv: list[str] | None = None,
    options: tuple[Callable[[argparse.ArgumentParser], None], Callable[[Any, argparse.Namespace], Any]] | None = None,
) -> None:
    """The command line every benchmark shares: ``--quick`` / ``--fast``, its own embedded engines in a
    temporary folder (stopped on Ctrl-C or SIGTERM), progress lines, then the table and the load. A benchmark
    with options of its own passes ``options``: (adds them to the parser, returns the scale they make)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="scaled down: finishes in under a minute")
    parser.add_argument("--fast", action="store_true", help="embedded Postgres with fsync off")
    if options is not None:
        options[0](parser)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the engines on SIGTERM as on Ctrl-C
    scale = quick if args.quick else full
    if options is not None:
        scale = options[1](scale, args)
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


def _lag_rate_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lag-rate",
        type=float,
        metavar="EVENTS_PER_S",
        help="also measure commit -> rm_users lag at this steady rate of events, with parley relay and parley "
        "project as processes (full form: 1000; quick form: not measured); 0 leaves it out",
    )


def _with_lag_rate(scale: Scale, args: argparse.Namespace) -> Scale:
    return scale if args.lag_rate is None else replace(scale, steady_events_s=max(0.0, args.lag_rate))


def main(argv: list[str] | None = None) -> None:
    cli("python -m bench.spine", __doc__ or "", run, QUICK, FULL, argv, options=(_lag_rate_option, _with_lag_rate))


if __name__ == "__main__":
    main()
