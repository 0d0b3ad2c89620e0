"""Benchmark of webhook delivery: commit -> delivery latency, deliveries per second, and a healthy endpoint
beside a dead and a slow one.

Run ``python -m bench.webhooks`` (``--quick`` for a smoke run under a minute, ``--fast`` to turn fsync off).
It starts its own embedded Postgres, NATS and Redis in a temporary directory (durable commits by default),
and as child processes ``parley relay``, ``parley project`` and ``parley webhooks`` (the dispatcher, with
the webhooks projector inside it), as ``parley serve`` runs them, with the deployment's defaults except
``webhooks_allow_private`` (the receivers listen on loopback). This process is the writer, as the API is:
it commits ``ChatCreated`` events through ``Chats.create`` as the tenant's users (no HTTP, so no per-user
rate limit), each sent on schedule whether those before it have finished or not. The receiver is a lean
HTTP/1.1 server of this module in a process of its own: for every delivery it checks the Standard Webhooks
signature (HMAC-SHA256 of ``id.timestamp.body`` with the endpoint's secret, computed here, not with the
dispatcher's code) and the timestamp, and that the body's ``event_id`` is the ``webhook-id``; then it notes
the arrival on ``CLOCK_MONOTONIC``, the clock of every process of the machine, and answers 200.

Each phase has a tenant of its own, with its own endpoints (all subscribed to ``ChatCreated``):

1. Backlog (measured first, so that the dispatcher starts on it): 10 users, one endpoint per user filtered to
   that user (``user_ids``). N events (full 20,000, 2,000 per user) are committed and relayed while no
   dispatcher runs; then ``parley webhooks`` starts, and the time from its first delivery to its last gives
   deliveries/s at saturation (the webhooks projector writing the messages is part of that work). CPU from
   ``/proc``: the dispatcher process's seconds per 1,000 deliveries, and every part's share.
2. Per-user: the same shape (10 users, each with one endpoint filtered to them, so each event goes to one
   endpoint) at a steady rate (full 500 events/s = 500 deliveries/s; ``--rate``) for a warm-up and then the
   measured seconds. Latency = the receiver's arrival - the moment ``Chats.create`` returned to the writer
   (the command committed a little before that, so the figure errs short by the hop back to the event loop).
   Its stages, from the delivery log: commit -> the webhooks projector's transaction that wrote the message
   began (``webhook_messages.created_at``), -> the dispatcher began the first attempt
   (``webhook_attempts.at``: before it looks up the endpoint and the event), -> the receiver had it. When the
   last delivery comes more than 2 s after the last command (the dispatcher fell behind), the phase runs
   again at half the deliveries/s it reached (three windows at most).
3. Fan-out: 10 endpoints with no user filter, so every endpoint takes every event (full 500 events/s =
   5,000 deliveries/s offered, for 4 s). On 2 cores this saturates: deliveries/s is what is reached, from
   the first send to the last delivery, and the latency includes the queue that builds up.
4. A healthy endpoint alone (full 100 events/s), then, in another tenant, a healthy endpoint beside a dead
   one (``http://127.0.0.1:9/``, connection refused) and a slow one (answers after 10 s), all three taking
   every event, at the same rate: the healthy one's latency in both, side by side.

``connections opened`` counts the TCP connections the receiver accepted during a phase: the dispatcher
keeps a pool of connections alive, and a connection not kept is a new one (with TLS, a handshake) for a
later delivery.

Every expected (endpoint, event) must arrive, and every delivery must verify: a lost delivery, a signature
or body that does not check, a failed command or a part that exits counts as a failure, is printed as a
``FAILED:`` row and makes the exit status 1. Duplicates (at least once) are allowed and counted. The slow
and dead endpoints are not expected to receive everything; what they got is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import httpx
import msgspec
from sqlalchemy import func, select

from adapters.embedded import EngineUrls
from adapters.eventstore import event_id
from adapters.settings import Settings
from application.context import CommandContext
from application.identity import Principal
from bench.privacy import Errors
from bench.spine import Report, cli, new_user, percentile, progress, settings_for, start_container
from domain.chats import Chat
from projections.runtime import read_position
from schema.tables import webhook_attempts, webhook_messages
from workers.bootstrap import Container

__all__ = ["FULL", "QUICK", "Scale", "main"]

EVENT_TYPE = "ChatCreated"
DEAD_URL = "http://127.0.0.1:9/dead"
"""Nothing listens on the discard port: every connection is refused at once."""
TIMESTAMP_TOLERANCE_S = 300
"""As the specification's reference verifiers allow."""


@dataclass(frozen=True)
class Scale:
    backlog_events: int
    steady_rate: float
    """Events/s, per-user phase (one delivery per event)."""
    steady_s: float
    fanout_rate: float
    """Events/s, fan-out phase (``endpoints`` deliveries per event)."""
    fanout_s: float
    fanout_warmup_s: float
    beside_rate: float
    """Events/s, healthy endpoint alone and beside a dead and a slow one."""
    beside_s: float
    warmup_s: float
    """Sent before each measured window of a steady phase, left out of its figures."""
    drain_cap_s: float
    """How long a phase waits for its last deliveries before counting the rest as lost."""
    endpoints: int = 10
    slow_s: float = 10.0


FULL = Scale(
    backlog_events=20_000,
    steady_rate=500,
    steady_s=20,
    fanout_rate=500,
    fanout_s=3,
    fanout_warmup_s=1,
    beside_rate=100,
    beside_s=15,
    warmup_s=2,
    drain_cap_s=300,
)
QUICK = Scale(
    backlog_events=1_000,
    steady_rate=100,
    steady_s=2,
    fanout_rate=50,
    fanout_s=1.5,
    fanout_warmup_s=0.5,
    beside_rate=50,
    beside_s=2,
    warmup_s=0.5,
    drain_cap_s=60,
)


# --- the receiver (a process of its own) --------------------------------------------------------------------
def signature_holds(key: bytes, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks: ``webhook-signature`` holds ``v1,<base64 HMAC-SHA256(key, id.timestamp.body)>``
    (one per valid secret, space-separated), and the timestamp is recent."""
    webhook_id, stamp, signatures = (
        headers.get(h, "") for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
    )
    if not (webhook_id and stamp.isdigit() and signatures):
        return False
    if abs(time.time() - int(stamp)) > TIMESTAMP_TOLERANCE_S:
        return False
    expected = base64.b64encode(hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    return any(hmac.compare_digest(expected, s.encode()[3:]) for s in signatures.split() if s.startswith("v1,"))


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


@dataclass
class Hook:
    """What one endpoint's receiver knows and has seen."""

    key: bytes
    delay_s: float = 0.0
    arrivals: list[tuple[str, float]] = field(default_factory=list)
    """(webhook-id, CLOCK_MONOTONIC) of every accepted delivery, in order of arrival."""
    seen: set[str] = field(default_factory=set)
    bad: int = 0


class ReceiverState:
    """``POST /hook/NAME`` is a delivery to endpoint NAME; ``/control/...`` is the benchmark's: register an
    endpoint's secret (and delay), read the counts and the arrivals, answer the slow requests now."""

    def __init__(self) -> None:
        self.hooks: dict[str, Hook] = {}
        self.released = False
        self.waiting: list[tuple[Answering, asyncio.TimerHandle]] = []
        self.connections = 0
        """Accepted so far: more than the dispatcher's keep-alive pool holds means connections were not reused."""

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[float, int, bytes]:
        """(delay before answering, status, body)."""
        at = time.monotonic()
        if method == "POST" and target.startswith("/hook/"):
            hook = self.hooks.get(target[6:])
            if hook is None:
                return 0.0, 404, b"no such hook"
            webhook_id = headers.get("webhook-id", "")
            if not signature_holds(hook.key, headers, body) or f'"event_id":"{webhook_id}"'.encode() not in body:
                hook.bad += 1
                return 0.0, 401, b"signature or body does not check"
            hook.arrivals.append((webhook_id, at))
            hook.seen.add(webhook_id)
            return (0.0 if self.released else hook.delay_s), 200, b"ok"
        if method == "PUT" and target.startswith("/control/hooks/"):
            spec = json.loads(body)
            self.hooks[target[15:]] = Hook(key=secret_key(spec["secret"]), delay_s=float(spec.get("delay_s", 0.0)))
            return 0.0, 200, b"{}"
        if method == "GET" and target == "/control/counts":
            counts = {n: [len(h.seen), len(h.arrivals), h.bad] for n, h in self.hooks.items()}
            return 0.0, 200, json.dumps(counts).encode()
        if method == "GET" and target == "/control/connections":
            return 0.0, 200, str(self.connections).encode()
        if method == "GET" and target.startswith("/control/arrivals/"):
            hook = self.hooks.get(target[18:])
            return 0.0, 200, json.dumps([] if hook is None else hook.arrivals).encode()
        if method == "POST" and target == "/control/release":
            self.released = True
            waiting, self.waiting = self.waiting, []
            for protocol, timer in waiting:
                timer.cancel()
                protocol.answer(200, b"ok")
            return 0.0, 200, b"{}"
        return 0.0, 404, b"not found"


class Answering(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, one request at a time per connection (as the dispatcher's client sends),
    bodies by ``content-length``."""

    def __init__(self, state: ReceiverState) -> None:
        self.state = state
        self.buffer = bytearray()
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.state.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.serve()

    def serve(self) -> None:
        while not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "transfer-encoding" in headers:
                self.respond(501, b"content-length only", close=True)
                return
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            delay, status, reply = self.state.handle(method, target, headers, body)
            if delay:
                self.busy = True
                timer = asyncio.get_running_loop().call_later(delay, self.answer, status, reply)
                self.state.waiting.append((self, timer))
            else:
                self.respond(status, reply)

    def answer(self, status: int, reply: bytes) -> None:
        """A delayed answer, then the requests that came meanwhile."""
        self.busy = False
        self.respond(status, reply)
        self.serve()

    def respond(self, status: int, reply: bytes, close: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(reply)}\r\n" + ("connection: close\r\n" if close else "")
        self.transport.write(head.encode() + b"\r\n" + reply)
        if close:
            self.transport.close()


def _receiver(port: int) -> None:
    """Entry of the receiver process: serve on 127.0.0.1:``port`` until SIGTERM."""

    async def serve() -> None:
        state = ReceiverState()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Answering(state), "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(serve())


# --- child processes ---------------------------------------------------------------------------------------
class Child:
    """A child process with its output in a log file under ``home``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], home: Path) -> None:
        self.name = name
        self.log = home / f"webhooks-bench-{name}.log"
        self.started = time.monotonic()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=Path(__file__).resolve().parents[1],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @classmethod
    def parley(cls, part: str, settings: Settings, home: Path) -> Child:
        env = {**os.environ, **settings.child_env()}
        return cls(part, [sys.executable, "-m", "workers.cli", part], env, home)

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Receiver:
    """The benchmark's handle on the receiver process."""

    def __init__(self, home: Path) -> None:
        from bench.pipeline import free_port

        self.port = free_port()
        self.child = Child(
            "receiver", [sys.executable, "-c", f"from bench.webhooks import _receiver; _receiver({self.port})"],
            dict(os.environ), home,
        )  # fmt: skip
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            self.child.check()
            try:
                await self.http.get("/control/counts")
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{name}"

    async def register(self, name: str, secret: str, delay_s: float = 0.0) -> None:
        r = await self.http.put(f"/control/hooks/{name}", json={"secret": secret, "delay_s": delay_s})
        r.raise_for_status()

    async def counts(self) -> dict[str, tuple[int, int, int]]:
        """name -> (distinct webhook ids accepted, deliveries accepted, deliveries refused)."""
        self.child.check()
        r = await self.http.get("/control/counts")
        return {name: (v[0], v[1], v[2]) for name, v in r.json().items()}

    async def connections(self) -> int:
        """Connections accepted so far (the benchmark's own control connection is one)."""
        return int((await self.http.get("/control/connections")).text)

    async def arrivals(self, name: str) -> list[tuple[str, float]]:
        r = await self.http.get(f"/control/arrivals/{name}")
        return [(i, t) for i, t in r.json()]

    async def close(self) -> None:
        try:
            await self.http.post("/control/release")  # the slow answers now, so the dispatcher stops at once
        except httpx.HTTPError:
            pass
        await self.http.aclose()


# --- tenants, users, endpoints -----------------------------------------------------------------------------
@dataclass
class Tenant:
    """One phase's tenant: its users, and its endpoints' ids by name (the receiver's path; the dead one has none)."""

    tenant_id: str
    admin: Principal
    users: list[Principal]
    endpoints: dict[str, uuid.UUID] = field(default_factory=dict)


async def make_tenant(c: Container, slug: str, users: int) -> Tenant:
    tenant = await c.identity.ensure_tenant(slug, slug)
    tenant_id = str(tenant.id)
    made = [new_user(tenant_id, f"{slug}-{n}-{uuid.uuid4().hex[:6]}@bench.example") for n in range(users)]
    ctx = CommandContext(tenant_id=tenant_id, actor="system")
    await c.store.execute(ctx, lambda: c.store.save(*(a for pair in made for a in pair)))
    admin = Principal(tenant_id=tenant_id, user_id=uuid.uuid4(), role="admin", via="token")
    return Tenant(
        tenant_id, admin, [Principal(tenant_id=tenant_id, user_id=u.id, role="user", via="token") for u, _ in made]
    )


async def add_endpoint(
    c: Container,
    receiver: Receiver,
    tenant: Tenant,
    name: str,
    *,
    user: Principal | None = None,
    url: str | None = None,
    delay_s: float = 0.0,
) -> None:
    ctx = CommandContext(tenant_id=tenant.tenant_id, actor=tenant.admin.actor)
    webhook, secret = await c.webhooks.create(
        ctx, tenant.admin, url=url or receiver.url(name), event_types=[EVENT_TYPE],
        user_ids=[user.user_id] if user else [],
    )  # fmt: skip
    tenant.endpoints[name] = webhook.id
    if url is None:
        await receiver.register(name, secret, delay_s)


# --- sending and waiting -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sent:
    event_id: str
    names: tuple[str, ...]
    """The receivers that must get it."""
    committed: float
    """CLOCK_MONOTONIC when ``Chats.create`` returned."""
    measured: bool


@dataclass
class Window:
    sent: list[Sent]
    rate: float
    measured_from: float
    measured_to: float
    """When the last measured command returned."""
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    busy: float = 0.0
    drained_at: float = 0.0

    @property
    def achieved(self) -> float:
        measured = sum(1 for s in self.sent if s.measured)
        span = self.measured_to - self.measured_from
        return measured / span if span > 0 else 0.0


async def steady(
    c: Container,
    tenant: Tenant,
    names_for: Callable[[int], tuple[str, ...]],
    rate: float,
    seconds: float,
    warmup_s: float,
    errors: Errors,
) -> Window:
    """``ChatCreated`` at ``rate`` a second for ``warmup_s + seconds``, the n-th by user ``n % users``, each
    sent on time (an open arrival process, as requests reach the API): the schedule does not drift when a
    command is late. ``names_for(n)``: the receivers that must get the n-th event."""
    sent: list[Sent] = []
    warm = int(rate * warmup_s)
    count = warm + int(rate * seconds)

    async def one(n: int) -> None:
        principal = tenant.users[n % len(tenant.users)]
        ctx = CommandContext(tenant_id=tenant.tenant_id, actor=principal.actor)
        try:
            chat = await c.chats.create(ctx, principal, title=f"bench {n}")
        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
            errors.count("command failed", f"{type(exc).__name__}: {exc}")
            return
        sent.append(Sent(str(event_id(chat.id, 1)), names_for(n), time.monotonic(), n >= warm))

    in_flight: list[asyncio.Future[None]] = []
    start = time.monotonic()
    issued = 0
    while issued < count:
        due = min(count, int((time.monotonic() - start) * rate) + 1)
        while issued < due:
            in_flight.append(asyncio.ensure_future(one(issued)))
            issued += 1
        await asyncio.sleep(max(0.0, start + issued / rate - time.monotonic()))
    await asyncio.gather(*in_flight)
    measured = [s.committed for s in sent if s.measured]
    return Window(sent=sent, rate=rate, measured_from=start + warm / rate, measured_to=max(measured, default=start))


async def drained(
    receiver: Receiver, expected: dict[str, int], before: dict[str, tuple[int, int, int]], cap_s: float, what: str
) -> float:
    """Wait until each receiver has accepted its expected number of new distinct events since ``before`` (or
    ``cap_s`` passed); returns when."""
    deadline = time.monotonic() + cap_s
    shown = time.monotonic()
    while True:
        counts = await receiver.counts()
        got = sum(min(counts.get(n, (0, 0, 0))[0] - before.get(n, (0, 0, 0))[0], k) for n, k in expected.items())
        if got >= sum(expected.values()):
            return time.monotonic()
        if time.monotonic() > deadline:
            progress(f"{what}: {got:,} of {sum(expected.values()):,} delivered after {cap_s:.0f} s; giving up")
            return time.monotonic()
        if time.monotonic() - shown > 5:
            progress(f"{what}: {got:,} of {sum(expected.values()):,} delivered")
            shown = time.monotonic()
        await asyncio.sleep(0.05)


def expected_counts(sent: Sequence[Sent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in sent:
        for name in s.names:
            counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass
class Checked:
    latencies: list[float]
    """ms, measured events only, each (endpoint, event) once: its first arrival."""
    deliveries: int
    duplicates: int
    lost: int
    first_arrival: float
    last_arrival: float


async def check(receiver: Receiver, sent: Sequence[Sent], errors: Errors, what: str) -> Checked:
    """Every expected (receiver, event) arrived (else counted lost); latencies of the measured ones."""
    names = sorted({n for s in sent for n in s.names})
    arrivals = {name: await receiver.arrivals(name) for name in names}
    first: dict[tuple[str, str], float] = {}
    total = 0
    for name, seen in arrivals.items():
        total += len(seen)
        for webhook_id, at in seen:
            first.setdefault((name, webhook_id), at)
    latencies: list[float] = []
    lost = 0
    for s in sent:
        for name in s.names:
            at = first.get((name, s.event_id))
            if at is None:
                lost += 1
            elif s.measured:
                latencies.append((at - s.committed) * 1000)
    if lost:
        errors.count(f"{what}: deliveries lost", f"{lost:,} of {sum(len(s.names) for s in sent):,} never arrived")
    times = list(first.values())
    return Checked(latencies, total, total - len(first), lost, min(times, default=0.0), max(times, default=0.0))


WALL_MINUS_MONOTONIC = time.time() - time.monotonic()
"""To put the receiver's and the writer's CLOCK_MONOTONIC beside the times Postgres writes (same system clock)."""


async def stages(c: Container, tenant: Tenant, sent: Sequence[Sent], receiver: Receiver) -> dict[str, list[float]]:
    """Per measured delivery (first attempt), in ms: commit -> the webhooks projector's transaction that wrote
    its message began (``created_at`` is ``now()``: the transaction's start), -> the dispatcher began its
    first attempt (``webhook_attempts.at``), -> the receiver had it."""
    names = {str(endpoint_id): name for name, endpoint_id in tenant.endpoints.items()}
    query = (
        select(
            webhook_messages.c.endpoint_id,
            webhook_messages.c.event_id,
            webhook_messages.c.created_at,
            webhook_attempts.c.at,
        )
        .join(webhook_attempts, webhook_attempts.c.message_id == webhook_messages.c.message_id)
        .where(webhook_messages.c.tenant_id == tenant.tenant_id, webhook_attempts.c.attempt == 1)
    )
    async with c.engine.connect() as conn:
        rows = {
            (names.get(str(r[0]), ""), str(r[1])): (r[2].timestamp(), r[3].timestamp())
            for r in await conn.execute(query)
        }
    arrived: dict[tuple[str, str], float] = {}
    for name in {n for s in sent for n in s.names}:
        for webhook_id, at in await receiver.arrivals(name):
            arrived.setdefault((name, webhook_id), at + WALL_MINUS_MONOTONIC)
    out: dict[str, list[float]] = {"commit -> projector wrote it": [], "-> first attempt began": [], "-> received": []}
    for s in sent:
        for name in s.names:
            key = (name, s.event_id)
            if not s.measured or key not in rows or key not in arrived:
                continue
            written, attempted = rows[key]
            out["commit -> projector wrote it"].append((written - s.committed - WALL_MINUS_MONOTONIC) * 1000)
            out["-> first attempt began"].append((attempted - written) * 1000)
            out["-> received"].append((arrived[key] - attempted) * 1000)
    return out


def stages_note(found: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {statistics.median(v):.1f}/{percentile(v, 0.99):.1f}" for k, v in found.items() if v)


# --- CPU ---------------------------------------------------------------------------------------------------
PARTS = ("bench", "relay", "project", "webhooks", "receiver", "postgres", "nats")


class Usage:
    """CPU of every part over a span (``/proc``, via bench.pipeline's ``Cpu``), and how busy the machine was."""

    def __init__(self, home: Path, children: dict[str, Child]) -> None:
        from bench.pipeline import Cpu

        self.cpu = Cpu(home, {"bench": os.getpid(), **{n: ch.proc.pid for n, ch in children.items()}})

    def start(self) -> tuple[dict[int, tuple[str, float]], tuple[int, int], float]:
        from bench.pipeline import machine_busy

        return self.cpu.sample(), machine_busy(), time.monotonic()

    def since(
        self, begun: tuple[dict[int, tuple[str, float]], tuple[int, int], float]
    ) -> tuple[dict[str, float], float, float]:
        """(CPU seconds per part, seconds elapsed, share of all CPUs busy)."""
        from bench.pipeline import machine_busy

        before, busy_before, at = begun
        busy_after = machine_busy()
        busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
        return self.cpu.used(before, self.cpu.sample()), time.monotonic() - at, busy


def cpu_note(cpu: dict[str, float], seconds: float, busy: float) -> tuple[str, str]:
    """(total % of a core, the parts' shares and the machine's busy share)."""
    share = ", ".join(f"{p} {100 * cpu.get(p, 0.0) / seconds:.0f}" for p in PARTS)
    return f"{100 * sum(cpu.values()) / seconds:.0f}", f"{share}; all CPUs {100 * busy:.0f}% busy (any process)"


def add_latency(report: Report, head: str, latencies: list[float], note: str) -> str:
    summary = (
        f"p50 {statistics.median(latencies):.1f}, p95 {percentile(latencies, 0.95):.1f}, "
        f"p99 {percentile(latencies, 0.99):.1f}, max {max(latencies):.1f} ms"
    )
    report.add(f"{head} latency p50 (ms)", f"{statistics.median(latencies):.1f}", note)
    report.add(f"{head} latency p95 (ms)", f"{percentile(latencies, 0.95):.1f}")
    report.add(f"{head} latency p99 (ms)", f"{percentile(latencies, 0.99):.1f}")
    report.add(f"{head} latency max (ms)", f"{max(latencies):.1f}")
    return summary


# --- the phases --------------------------------------------------------------------------------------------
@dataclass
class Run:
    c: Container
    settings: Settings
    home: Path
    scale: Scale
    receiver: Receiver
    children: dict[str, Child]
    report: Report
    errors: Errors
    duplicates: int = 0
    lost: int = 0

    def usage(self) -> Usage:
        return Usage(self.home, {**self.children, "receiver": self.receiver.child})

    def alive(self) -> None:
        for child in self.children.values():
            child.check()

    async def relayed(self, within_s: float = 120) -> None:
        """Until ``parley project`` has applied everything in the event store (so the relay published it)."""
        deadline = time.monotonic() + within_s
        target = await self.c.store.call(self.c.store.max_id)
        while await read_position(self.c.engine, "identity") < target:
            self.alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"parley relay / project did not reach {target} in {within_s:.0f} s")
            await asyncio.sleep(0.05)

    def tally(self, checked: Checked) -> None:
        self.duplicates += checked.duplicates
        self.lost += checked.lost


def per_user(tenant: Tenant, prefix: str) -> Callable[[int], tuple[str, ...]]:
    return lambda n: (f"{prefix}-{n % len(tenant.users)}",)


async def backlog(run: Run, tenant: Tenant) -> None:
    """Events committed and relayed with no dispatcher running; then ``parley webhooks`` starts."""
    c, scale = run.c, run.scale
    users = len(tenant.users)
    per_save = 100
    sent: list[Sent] = []
    progress(f"backlog: committing {scale.backlog_events:,} {EVENT_TYPE} ({users} users, {per_save} per save)")

    def commit(principal: Principal, count: int) -> list[str]:
        chats = [
            Chat(tenant_id=tenant.tenant_id, owner_id=principal.user_id, title="bench", source="api")
            for _ in range(count)
        ]
        c.store.save(*chats)
        return [str(event_id(chat.id, 1)) for chat in chats]

    for n in range(0, scale.backlog_events, per_save):
        k = (n // per_save) % users
        principal = tenant.users[k]
        ctx = CommandContext(tenant_id=tenant.tenant_id, actor=principal.actor)
        ids = await c.store.execute(ctx, partial(commit, principal, min(per_save, scale.backlog_events - n)))
        sent += [Sent(i, (f"backlog-{k}",), 0.0, False) for i in ids]
    await run.relayed()
    progress("backlog: relayed and projected; starting parley webhooks")
    connections = await run.receiver.connections()
    run.children["webhooks"] = Child.parley("webhooks", run.settings, run.home)
    usage = run.usage()
    started = time.monotonic()
    begun, at_first = None, 0
    deadline = started + scale.drain_cap_s
    total = len(sent)
    shown = started
    while True:
        run.alive()
        got = sum(v[0] for n, v in (await run.receiver.counts()).items() if n.startswith("backlog-"))
        if begun is None and got:
            begun, at_first = usage.start(), got
        if got >= total or time.monotonic() > deadline:
            break
        if time.monotonic() - shown > 5:
            progress(f"backlog: {got:,} of {total:,} delivered")
            shown = time.monotonic()
        await asyncio.sleep(0.05)
    cpu, _, busy = usage.since(begun) if begun else ({}, 0.0, 0.0)
    connections = await run.receiver.connections() - connections
    checked = await check(run.receiver, sent, run.errors, "backlog")
    run.tally(checked)
    span = checked.last_arrival - checked.first_arrival
    rate = checked.deliveries / span if span > 0 else 0.0
    progress(f"backlog: {checked.deliveries:,} deliveries in {span:.1f} s, {rate:,.0f}/s")
    run.report.add(
        "backlog deliveries/s", f"{rate:,.0f}",
        f"{total:,} events queued before the dispatcher started, each to 1 of {users} endpoints: first to last "
        f"delivery {span:.1f} s; process start to first {checked.first_arrival - started:.1f} s; "
        f"{connections:,} connections opened",
    )  # fmt: skip
    delivered = total - at_first
    if delivered > 0 and cpu:
        per_1000 = 1000 * cpu.get("webhooks", 0.0) / delivered
        run.report.add(
            "backlog webhooks CPU s per 1,000 deliveries", f"{per_1000:.2f}",
            f"parley webhooks from its first delivery to its last ({delivered:,} deliveries); postgres "
            f"{1000 * cpu.get('postgres', 0.0) / delivered:.2f}, receiver {1000 * cpu.get('receiver', 0.0) / delivered:.2f}",
        )  # fmt: skip
        total_pct, note = cpu_note(cpu, span, busy)
        run.report.add("backlog CPU (% of a core)", total_pct, note)


async def measured_phase(
    run: Run,
    head: str,
    tenant: Tenant,
    names_for: Callable[[int], tuple[str, ...]],
    rate: float,
    seconds: float,
    warmup_s: float,
    fanout: int,
) -> tuple[bool, float]:
    """One steady phase: send, wait for every delivery, check, report latency, its stages, deliveries/s and
    CPU. Returns whether the deliveries kept up (the last came within ``KEPT_UP_S`` of the last command)
    and the deliveries/s reached."""
    scale = run.scale
    progress(
        f"{head}: {rate * fanout:,.0f} deliveries/s offered for {warmup_s + seconds:.0f} s, {warmup_s:.0f} s of "
        "it warm-up"
    )
    usage = run.usage()
    begun = usage.start()
    before, connections = await run.receiver.counts(), await run.receiver.connections()
    window = await steady(run.c, tenant, names_for, rate, seconds, warmup_s, run.errors)
    sent_done = time.monotonic()
    window.drained_at = await drained(run.receiver, expected_counts(window.sent), before, scale.drain_cap_s, head)
    window.cpu, window.cpu_seconds, window.busy = usage.since(begun)
    connections = await run.receiver.connections() - connections
    checked = await check(run.receiver, window.sent, run.errors, head)
    run.tally(checked)
    steady_note = "steady" if window.achieved >= 0.95 * rate else "NOT steady: the writer fell behind"
    if checked.latencies:
        summary = add_latency(
            run.report, head, checked.latencies,
            f"{sum(1 for s in window.sent if s.measured):,} events over {window.measured_to - window.measured_from:.1f} s: "
            f"{window.achieved:,.0f} events/s committed ({steady_note}), {fanout} deliveries each",
        )  # fmt: skip
        progress(f"{head}: {summary}")
        note = stages_note(await stages(run.c, tenant, window.sent, run.receiver))
        run.report.add(f"{head} stages p50/p99 (ms)", "", note)
    span = checked.last_arrival - (window.measured_from - warmup_s)
    deliveries = sum(len(s.names) for s in window.sent)
    reached = deliveries / span if span > 0 else 0.0
    behind = max(0.0, checked.last_arrival - sent_done)
    run.report.add(
        f"{head} deliveries/s", f"{reached:,.0f}",
        f"{deliveries:,} deliveries, first send to last delivery {span:.1f} s; the last came {behind:.1f} s after "
        f"the last command returned; {connections:,} connections opened",
    )  # fmt: skip
    total_pct, note = cpu_note(window.cpu, window.cpu_seconds, window.busy)
    run.report.add(f"{head} CPU (% of a core)", total_pct, note)
    webhooks_ms = 1000 * window.cpu.get("webhooks", 0.0) / max(1, deliveries)
    run.report.add(f"{head} webhooks CPU per delivery (ms)", f"{webhooks_ms:.2f}", "warm-up, sending and drain")
    return behind <= KEPT_UP_S, reached


KEPT_UP_S = 2.0


PER_USER_WINDOWS = 3


async def per_user_phase(run: Run, tenant: Tenant) -> None:
    """At the scale's rate; while the deliveries fall behind, again at half the deliveries/s reached (at most
    ``PER_USER_WINDOWS`` windows in all), so that the table also shows a rate this machine keeps up with."""
    scale = run.scale
    rate = scale.steady_rate
    for window in range(1, PER_USER_WINDOWS + 1):
        head = f"per-user, {rate:,.0f} events/s"
        kept_up, reached = await measured_phase(
            run, head, tenant, per_user(tenant, "steady"), rate, scale.steady_s, scale.warmup_s, 1
        )
        if kept_up or window == PER_USER_WINDOWS:
            return
        rate = max(10.0, math.floor(0.5 * reached / 10) * 10)
        progress(f"{head}: the deliveries fell behind ({reached:,.0f}/s); again at {rate:,.0f} events/s")


async def beside(run: Run, alone: Tenant, crowded: Tenant) -> None:
    """The healthy endpoint alone, then beside a dead and a slow one; its latencies side by side."""
    scale = run.scale
    results: dict[str, list[float]] = {}
    cpu: dict[str, str] = {}
    stage_notes: dict[str, str] = {}
    for label, tenant in (("alone", alone), ("beside dead + slow", crowded)):
        head = f"healthy endpoint, {label}"
        progress(f"{head}: {scale.beside_rate:,.0f} events/s for {scale.warmup_s + scale.beside_s:.0f} s")
        healthy = next(n for n in tenant.endpoints if n.endswith("healthy"))
        usage = run.usage()
        begun = usage.start()
        before = await run.receiver.counts()
        window = await steady(
            run.c, tenant, lambda _n, h=healthy: (h,), scale.beside_rate, scale.beside_s, scale.warmup_s, run.errors
        )
        await drained(run.receiver, expected_counts(window.sent), before, scale.drain_cap_s, head)
        used, seconds, busy = usage.since(begun)
        cpu[label] = f"{100 * used.get('webhooks', 0.0) / seconds:.0f}"
        checked = await check(run.receiver, window.sent, run.errors, head)
        run.tally(checked)
        results[label] = checked.latencies
        stage_notes[label] = stages_note(await stages(run.c, tenant, window.sent, run.receiver))
        if checked.latencies:
            progress(
                f"{head}: p50 {statistics.median(checked.latencies):.1f}, p99 {percentile(checked.latencies, 0.99):.1f} ms"
            )
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"), (1.0, "max")):
        for label, latencies in results.items():
            value = f"{percentile(latencies, q):.1f}" if latencies else "-"
            note = ""
            if q == 0.5:
                note = f"{len(latencies):,} events at {scale.beside_rate:,.0f}/s"
                if label != "alone":
                    note += f"; the dead and the slow ({scale.slow_s:.0f} s) endpoint take every event too"
            run.report.add(f"healthy endpoint {name} (ms), {label}", value, note)
    for label, note in stage_notes.items():
        run.report.add(f"healthy endpoint stages p50/p99 (ms), {label}", "", note)
    for label, share in cpu.items():
        run.report.add(f"healthy endpoint webhooks CPU (% of a core), {label}", share, "parley webhooks")
    counts = await run.receiver.counts()
    slow = next(n for n in crowded.endpoints if n.endswith("slow"))
    async with run.c.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(webhook_attempts.c.endpoint_id, func.count(), func.count(webhook_attempts.c.status_code))
                .where(webhook_attempts.c.tenant_id == crowded.tenant_id)
                .group_by(webhook_attempts.c.endpoint_id)
            )
        ).all()
    attempts = {str(r[0]): (int(r[1]), int(r[2])) for r in rows}
    dead = attempts.get(str(crowded.endpoints["beside-dead"]), (0, 0))
    run.report.add(
        "beside: dead and slow endpoints", "",
        f"dead: {dead[0]:,} attempts logged (first tries and retries), {dead[1]} answered; slow: "
        f"{counts.get(slow, (0, 0, 0))[1]:,} requests received so far ({scale.slow_s:.0f} s each)",
    )  # fmt: skip


# --- entry point -------------------------------------------------------------------------------------------
async def run_all(urls: EngineUrls, home: Path, scale: Scale, errors: Errors) -> Report:
    report = Report()
    settings = msgspec.structs.replace(settings_for(urls, home, "bench_webhooks"), webhooks_allow_private=True)
    c, _ = await start_container(settings)
    receiver = Receiver(home)
    children: dict[str, Child] = {}
    run = Run(c, settings, home, scale, receiver, children, report, errors)
    try:
        await receiver.ready()
        for part in ("relay", "project"):
            children[part] = Child.parley(part, settings, home)
        n = scale.endpoints
        tenants = {
            "backlog": await make_tenant(c, "wh-backlog", n),
            "steady": await make_tenant(c, "wh-steady", n),
            "fanout": await make_tenant(c, "wh-fanout", n),
            "alone": await make_tenant(c, "wh-alone", 1),
            "beside": await make_tenant(c, "wh-beside", 1),
        }
        for prefix in ("backlog", "steady"):
            tenant = tenants[prefix]
            for k, user in enumerate(tenant.users):
                await add_endpoint(c, receiver, tenant, f"{prefix}-{k}", user=user)
        for k in range(n):
            await add_endpoint(c, receiver, tenants["fanout"], f"fanout-{k}")
        await add_endpoint(c, receiver, tenants["alone"], "alone-healthy")
        await add_endpoint(c, receiver, tenants["beside"], "beside-healthy")
        await add_endpoint(c, receiver, tenants["beside"], "beside-dead", url=DEAD_URL)
        await add_endpoint(c, receiver, tenants["beside"], "beside-slow", delay_s=scale.slow_s)
        progress(
            f"5 tenants, {sum(len(t.endpoints) for t in tenants.values())} endpoints; receiver on port {receiver.port}"
        )
        await backlog(run, tenants["backlog"])
        await per_user_phase(run, tenants["steady"])
        fan = tuple(f"fanout-{k}" for k in range(n))
        await measured_phase(
            run, f"fan-out x{n}, {scale.fanout_rate:,.0f} events/s", tenants["fanout"], lambda _n: fan,
            scale.fanout_rate, scale.fanout_s, scale.fanout_warmup_s, n,
        )  # fmt: skip
        await beside(run, tenants["alone"], tenants["beside"])
        counts = await receiver.counts()
        refused = sum(v[2] for v in counts.values())
        if refused:
            errors.count("signature or body failed", f"{refused:,} deliveries refused by the receiver")
        report.add("deliveries lost", f"{run.lost:,}", "expected (endpoint, event) pairs that never arrived")
        report.add("deliveries refused by the receiver", f"{refused:,}", "signature, timestamp or body did not check")
        report.add("duplicate deliveries", f"{run.duplicates:,}", "the same webhook-id again (at least once: allowed)")
    finally:
        await receiver.close()
        for child in reversed(list(children.values())):
            child.stop()
        receiver.child.stop()
        await c.close()
    for what, count in errors.counts.items():
        report.add(f"FAILED: {what}", str(count), errors.first[what][:120])
    report.add("errors", str(errors.total), "lost deliveries, failed signatures, failed commands")
    return report


def _rate_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate",
        type=float,
        metavar="EVENTS_PER_S",
        help="events/s of the per-user phase, one delivery each (full form: 500; quick form: 100)",
    )


def _with_rate(scale: Scale, args: argparse.Namespace) -> Scale:
    return scale if args.rate is None else replace(scale, steady_rate=max(1.0, args.rate))


def main(argv: list[str] | None = None) -> None:
    errors = Errors()
    cli(
        "python -m bench.webhooks", __doc__ or "", partial(run_all, errors=errors), QUICK, FULL, argv,
        options=(_rate_option, _with_rate),
    )  # fmt: skip
    if errors.total:
        sys.exit(1)


if __name__ == "__main__":
    main()
