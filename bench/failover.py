"""Failover of each kind of parley process, measured: kill -9 under load, then the time until the system
makes progress again, and what a client saw meanwhile (issue 14: 5 s at most for each, nothing accepted lost).

Run ``python -m bench.failover`` (``--quick``: one kill of each kind; ``--runs N``; ``--fast``: fsync off).
It starts its own embedded Postgres, NATS and Redis, and every part as a real ``parley`` process (as
``parley serve`` runs them, with the deployment's defaults), killed with SIGKILL while this process keeps
commands coming (``tests.integration.procs.Traffic``: user sign-ups, renames, API keys... one after
another through the application service, as an API process does). Each kind gets a deployment of its own,
and each of its runs kills another process of it (the killed one is started again, and waits its turn):

- ``relay``: two ``parley relay`` (one holds the advisory lock, the other waits), ``parley project``.
  Progress: the relay's tracked position (everything up to it acked by JetStream) passes where it was at
  the kill. The client: commands accepted meanwhile (they never wait on the relay).
- ``projector``: two ``parley project`` (competing on each durable consumer; the position rows serialise
  them), ``parley relay``. Progress: every projector's position passes where it was at the kill.
  ``projector, restarted alone``: the same with one ``parley project``, started again at once (a
  supervisor's restart): the process's start-up is most of it.
- ``worker``: two ``parley worker`` (competing consumers on ``PARLEY_JOBS``), relay, projector and an API;
  a client streams a generation (the echo engine's ``echo-slow``, 20 tokens/s) over SSE and the worker
  running it is killed after its third token. Progress: the first token of the next attempt reaches the
  client (JetStream hands the job on after the consumer's ``ack_wait``, ``workers.generate.ACK_WAIT_S``).
  The client sees ``restart`` (drop the text so far), then the whole answer.
- ``api``: two ``parley api`` behind a client that spreads requests over both and, on a transport error,
  retries on the other (as a load balancer with retries does); user creations through HTTP as the load,
  and a generation streamed over SSE from the API that is killed, resumed on the other with
  ``Last-Event-ID``. Progress: both an answered request and the stream's next token after the kill.

After each kind: every command accepted is in the event store, every event took effect once in every read
model (``assert_projected_exactly_once``), the relay published each notification id once and in order, and
each generation's stream matched its stored answer; any failure exits 1. The figures are from kill to
progress, min / median / max over the runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import signal
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
from argon2 import PasswordHasher as Argon2Hasher

from adapters.embedded import EngineUrls
from adapters.security import Passwords
from adapters.settings import Settings
from application.context import CommandContext
from domain.chats import Generation
from domain.errors import Conflict
from domain.identity import EmailIndex, email_index_id
from projections.conversations import get_chat
from projections.runtime import read_position
from tests.integration.procs import (
    PASSWORD,
    Part,
    Traffic,
    assert_projected_exactly_once,
    relay_position,
    stream_message_ids,
    wait_relayed,
)
from workers.bootstrap import PROJECTOR_NAMES, Container, bootstrap

__all__ = [
    "KINDS",
    "Takeover",
    "api_failover",
    "projector_failover",
    "relay_failover",
    "worker_failover",
]

FAST_PASSWORDS = Passwords(Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1))
"""argon2id at a test's cost, for the load's sign-ups in this process (the API processes hash at theirs)."""
STOPPED = (0, -signal.SIGTERM)
"""How a part ends on SIGTERM: exit 0, or (uvicorn) the signal raised again once it has shut down."""
SLOW_WORDS = 60
"""The streamed answer: 60 tokens of ``echo-slow`` take 3 s."""


@dataclass
class Takeover:
    """One kill -9 and what followed."""

    kind: str
    seconds: float
    """kill -> progress"""
    client: str
    """what a client saw meanwhile"""


# --- load, clients, waiting ---------------------------------------------------------------------------------
async def until(
    condition: Callable[[], Awaitable[bool] | bool], within_s: float, what: str, every: float = 0.01
) -> float:
    """Poll ``condition`` (plain or async) until it holds; the monotonic time it was seen holding."""
    deadline = time.monotonic() + within_s
    while not (await held if inspect.isawaitable(held := condition()) else held):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {within_s:.0f} s")
        await asyncio.sleep(every)
    return time.monotonic()


class Load:
    """``Traffic``'s commands in the background, one every ``pace_s`` at most, each command's end time kept."""

    def __init__(self, traffic: Traffic, pace_s: float = 0.02) -> None:
        self.traffic = traffic
        self.pace_s = pace_s
        self.done: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():  # never cancelled mid-command: traffic must know what it did
            started = time.monotonic()
            await self.traffic.step()
            self.done.append(time.monotonic())
            await asyncio.sleep(max(0.0, started + self.pace_s - self.done[-1]))

    def between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.done)

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task  # a command that failed fails the run here


class Apis:
    """HTTP over several API processes, as a load balancer with retries spreads it: each request to the next
    API in turn, one that failed at the transport level skipped for a few seconds, and a request that met a
    transport error sent again to another at once. Counts what the client met."""

    SKIP_S = 5.0

    def __init__(self, bases: list[str]) -> None:
        self.clients = [httpx.AsyncClient(base_url=b, timeout=30) for b in bases]
        self.down_until = [0.0] * len(bases)
        self.turn = 0
        self.errors: list[str] = []
        self.retries = 0

    def order(self) -> list[int]:
        self.turn += 1
        ids = [(self.turn + i) % len(self.clients) for i in range(len(self.clients))]
        now = time.monotonic()
        return sorted(ids, key=lambda i: self.down_until[i] > now)  # those up first, in turn

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, bool]:
        """The answer, and whether an earlier try met a transport error (then a 409 may be its own
        first try, recorded)."""
        failed = False
        for attempt in range(8):
            for i in self.order():
                try:
                    return await self.clients[i].request(method, path, **kwargs), failed
                except httpx.TransportError as exc:
                    self.errors.append(type(exc).__name__)
                    self.down_until[i] = time.monotonic() + self.SKIP_S
                    self.retries += 1
                    failed = True
            await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError(f"no API answered {method} {path}")

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


@dataclass
class StreamRead:
    """One generation's SSE stream as a client reads it, across reconnections."""

    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    """(monotonic time, event, data) of each event."""
    reconnects: list[str] = field(default_factory=list)
    text: str = ""
    last_event_id: str | None = None

    def times(self, kind: str, after: float = 0.0, attempt: int | None = None) -> list[float]:
        return [
            t
            for t, e, d in self.events
            if e == kind and t >= after and (attempt is None or d.get("_attempt") == attempt)
        ]


async def read_stream(apis: list[httpx.AsyncClient], token: str, generation_id: str, into: StreamRead) -> None:
    """Read the stream to ``done`` from ``apis[0]``; when the connection breaks, go on from the next API
    with ``Last-Event-ID``. ``restart`` drops the text so far, as a client must."""
    path = f"/api/v1/generations/{generation_id}/stream"
    for turn in range(6):
        http = apis[turn % len(apis)]
        headers = {"Authorization": f"Bearer {token}"}
        if into.last_event_id:
            headers["Last-Event-ID"] = into.last_event_id
        try:
            async with http.stream("GET", path, headers=headers) as r:
                assert r.status_code == 200, (r.status_code, await r.aread())
                async for kind, event_id, data in sse(r):
                    now = time.monotonic()
                    if event_id:
                        into.last_event_id = event_id
                        data["_attempt"] = int(event_id.split(":")[0])
                    into.events.append((now, kind, data))
                    if kind == "restart":
                        into.text = ""
                    elif kind == "token":
                        into.text += data["text"]
                    elif kind == "done":
                        return
        except httpx.TransportError as exc:
            into.reconnects.append(type(exc).__name__)
            await asyncio.sleep(0.05 * turn)
    raise AssertionError(f"the stream of {generation_id} never ended: {into.reconnects}")


async def sse(response: httpx.Response) -> AsyncIterator[tuple[str, str | None, dict[str, Any]]]:
    """(event, id, data) of each event with data; comments skipped."""
    kind, event_id, data = "message", None, []
    async for line in response.aiter_lines():
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                kind = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)
            continue
        if data:
            yield kind, event_id, json.loads("\n".join(data))
        kind, event_id, data = "message", None, []


async def sign_in(http: httpx.AsyncClient) -> str:
    """The traffic's admin's access token, with the admin's rate limits and quota lifted for the load."""
    r = await http.post("/api/v1/auths/login", json={"email": "admin@example.test", "password": PASSWORD})
    assert r.status_code == 200, r.text
    token = str(r.json()["access_token"])
    headers = {"Authorization": f"Bearer {token}"}
    lifted = {"user_per_minute": 100_000, "api_key_per_minute": 100_000}
    r = await http.put("/api/v1/quotas/rate-limits", json=lifted, headers=headers)
    assert r.status_code == 200, r.text
    me = (await http.get("/api/v1/auths/me", headers=headers)).json()
    r = await http.put(f"/api/v1/quotas/users/{me['id']}", json={"limit": 10**9}, headers=headers)
    assert r.status_code == 200, r.text
    return token


async def add_slow_echo(c: Container, traffic: Traffic) -> None:
    assert traffic.admin is not None
    ctx = CommandContext(tenant_id=traffic.tenant_id, actor=traffic.admin.actor)
    await c.models.register_provider(ctx, traffic.admin, name="echoes", kind="echo")
    await c.models.register_model(ctx, traffic.admin, name="slow-echo", provider="echoes", upstream_model="echo-slow")


async def ask(http: httpx.AsyncClient, token: str, content: str) -> tuple[str, str]:
    """A new chat and a message in it, answered by ``slow-echo``: (chat id, generation id)."""
    headers = {"Authorization": f"Bearer {token}"}
    r = await http.post("/api/v1/chats", json={"title": "failover"}, headers=headers)
    assert r.status_code == 201, r.text
    chat_id = str(r.json()["id"])
    body = {"content": content, "model": "slow-echo", "params": {"max_tokens": SLOW_WORDS}}
    r = await http.post(f"/api/v1/chats/{chat_id}/messages", json=body, headers=headers)
    assert r.status_code == 202, r.text
    return chat_id, str(r.json()["generation_id"])


async def check_answer(
    c: Container, traffic: Traffic, chat_id: str, generation_id: str, read: StreamRead
) -> Generation:
    """The generation completed once; the client's text (after its restarts) is the stored answer, each
    token once; the chat holds one answer; the quota reservation was settled."""
    generation = await c.store.call(c.store.get, Generation, uuid.UUID(generation_id))
    assert generation.status == "completed" and generation.completion_tokens == SLOW_WORDS, generation.status
    assert read.text == generation.text, (read.text, generation.text)
    last = [e for _, e, _ in read.events if e != "heartbeat"][-1]
    assert last == "done", read.events[-3:]
    tokens = [d for _, e, d in read.events if e == "token" and d["_attempt"] == generation.attempt]
    assert "".join(d["text"] for d in tokens) == generation.text, "a token lost or repeated after a reconnection"
    assert traffic.admin is not None
    chat = await get_chat(c.engine, traffic.tenant_id, str(traffic.admin.user_id), chat_id)
    assert chat is not None
    answers = [m for m in chat["messages"] if m["role"] == "assistant"]
    assert len(answers) == 1 and answers[0]["content"] == generation.text, answers
    assert await c.quotas.ledger.reservation(generation_id) is None
    return generation


async def check_relayed_once(c: Container) -> None:
    relayed = await stream_message_ids(c)
    assert len(relayed) == len(set(relayed)), "a notification id twice in PARLEY_EVENTS"
    assert relayed == sorted(relayed), "the relay published out of order"
    events = await c.store.call(c.store.read, 1, 1_000_000)
    assert relayed == [e.id for e in events]


async def wait_projected(c: Container, within_s: float = 60) -> None:
    target = await c.store.call(c.store.max_id)

    async def projected() -> bool:
        return all([await read_position(c.engine, n) >= target for n in PROJECTOR_NAMES])

    await until(projected, within_s, f"projection of every event up to {target}", every=0.05)


async def finish(c: Container, traffic: Traffic) -> None:
    """Nothing accepted lost, nothing applied twice."""
    await wait_relayed(c, timeout=30)
    await wait_projected(c)
    await check_relayed_once(c)
    await assert_projected_exactly_once(c, traffic)


def stop_all(parts: list[Part], *, check: bool = False) -> None:
    """SIGTERM to every part still running at once, then wait for each (killed if it takes too long); with
    ``check``, each must have stopped cleanly."""
    running = [part for part in parts if part.alive()]
    for part in running:
        assert part.proc is not None
        part.proc.send_signal(signal.SIGTERM)
    for part in running:
        assert part.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            part.proc.wait(15)
        returncode = part.stop()
        assert not check or returncode in STOPPED, f"{part.name} exited {returncode}:\n{part.log()}"


# --- the scenarios ----------------------------------------------------------------------------------------
async def relay_failover(c: Container, logs: Path, runs: int) -> list[Takeover]:
    """Kill the active relay; the standby takes the lock and goes on from the tracked position."""
    relays = [Part(c.settings, logs, "relay").start() for _ in range(2)]
    projector = Part(c.settings, logs, "project").start()
    parts = [*relays, projector]
    taken: list[Takeover] = []
    try:
        await projector.wait_for_log("projector_started", count=len(PROJECTOR_NAMES))
        traffic = await Traffic(c).start()

        async def past(position: int) -> bool:
            return await relay_position(c) > position

        async with Load(traffic) as load:
            for n in range(runs):
                active, standby = await active_and_standby(*relays)
                before = await relay_position(c)
                await until(lambda before=before: past(before), 30, "relay progress")  # killed while it works
                active.kill9()
                killed = time.monotonic()
                at = await relay_position(c)  # read after the kill: the dead one saved its last
                progressed = await until(lambda at=at: past(at), 30, "relay progress after the kill")
                assert "relay_active" in standby.log(), "progress, but not from the standby"
                seconds = progressed - killed
                taken.append(
                    Takeover("relay", seconds, f"{load.between(killed, progressed)} commands accepted, none refused")
                )
                if n < runs - 1:  # back, as the standby
                    active.start()
                    await active.wait_for_log("relay_standby")
        await finish(c, traffic)
        stop_all(parts, check=True)
    finally:
        stop_all(parts)
    return taken


async def active_and_standby(a: Part, b: Part, within_s: float = 30) -> tuple[Part, Part]:
    """Which relay holds the lock, judged by what each incarnation logged."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for active, standby in ((a, b), (b, a)):
            if "relay_active" in active.log() and "relay_standby" in standby.log():
                assert "relay_active" not in standby.log(), "two relays active at once"
                return active, standby
        await asyncio.sleep(0.05)
    raise AssertionError(f"no active/standby pair after {within_s}s:\n{a.log()}\n---\n{b.log()}")


async def positions(c: Container) -> dict[str, int]:
    return {name: await read_position(c.engine, name) for name in PROJECTOR_NAMES}


async def projector_failover(c: Container, logs: Path, runs: int) -> list[Takeover]:
    """Kill one of two ``parley project``: the other goes on (what the dead one held is read from the event
    store). Then kill the one left and start it again at once, as a supervisor would."""
    relay = Part(c.settings, logs, "relay").start()
    projectors = [Part(c.settings, logs, "project").start() for _ in range(2)]
    parts = [relay, *projectors]
    taken: list[Takeover] = []

    async def kill_and_see_progress(victim: Part, restart: bool, kind: str, load: Load) -> None:
        before = await positions(c)

        async def all_moved() -> bool:
            now = await positions(c)
            return all(now[n] > before[n] for n in now)

        await until(all_moved, 30, "projector progress", every=0.02)  # killed while it works
        victim.kill9()
        killed = time.monotonic()
        at = await positions(c)  # read after the kill: the dead one committed its last
        if restart:
            victim.start()

        async def moved_past() -> bool:
            now = await positions(c)
            return all(now[n] > at[n] for n in now)

        progressed = await until(moved_past, 60, "projector progress after the kill", every=0.02)
        accepted = load.between(killed, progressed)
        taken.append(Takeover(kind, progressed - killed, f"{accepted} commands accepted, none refused"))

    try:
        await relay.wait_for_log("relay_active")
        for projector in projectors:
            await projector.wait_for_log("projector_started", count=len(PROJECTOR_NAMES))
        traffic = await Traffic(c).start()
        async with Load(traffic) as load:
            for n in range(runs):
                victim = projectors[n % 2]
                await kill_and_see_progress(victim, False, "projector", load)
                if n < runs - 1:
                    victim.start()
                    await victim.wait_for_log("projector_started", count=len(PROJECTOR_NAMES))
            for _ in range(runs):  # the one left, alone
                await kill_and_see_progress(projectors[runs % 2], True, "projector, restarted alone", load)
        await finish(c, traffic)
        stop_all(parts, check=True)
    finally:
        stop_all(parts)
    return taken


async def running_worker(c: Container, generation_id: str, workers: list[Part]) -> Part:
    """The worker process that started the generation's latest attempt (its name ends with its pid)."""
    events = await c.store.call(c.store.events_of, uuid.UUID(generation_id))
    started = [e for e in events if type(e).__name__ == "GenerationStarted"]
    assert started, "the generation has not started"
    pid = int(str(started[-1].worker).rsplit(":", 1)[1])
    return next(w for w in workers if w.alive() and w.pid == pid)


def api_part(settings: Settings, logs: Path) -> Part:
    from tests.integration.test_upload_memory import free_port

    return Part(msgspec.structs.replace(settings, port=free_port()), logs, "api")


async def serving(part: Part) -> httpx.AsyncClient:
    await part.wait_for_log("api_listening")
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{part.settings.port}", timeout=30)

    async def answers() -> bool:
        try:
            return (await client.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    await until(answers, 30, f"{part.name} answering /health", every=0.05)
    return client


async def worker_failover(c: Container, logs: Path, runs: int) -> list[Takeover]:
    """Kill the worker running a generation a client is streaming: JetStream hands the job to the other."""
    api = api_part(c.settings, logs).start()
    relay, projector = Part(c.settings, logs, "relay").start(), Part(c.settings, logs, "project").start()
    workers = [Part(c.settings, logs, "worker").start() for _ in range(2)]
    parts = [api, relay, projector, *workers]
    taken: list[Takeover] = []
    http: httpx.AsyncClient | None = None
    try:
        traffic = await Traffic(c).start()
        await add_slow_echo(c, traffic)
        http = await serving(api)
        token = await sign_in(http)
        for worker in workers:
            await worker.wait_for_log("worker_started", timeout=60)
        billed = 0
        async with Load(traffic):
            for n in range(runs):
                chat_id, generation_id = await ask(http, token, f"failover {n} " + "word " * 5)
                read = StreamRead()
                reader = asyncio.create_task(read_stream([http], token, generation_id, read))
                await until(lambda read=read: len(read.times("token", attempt=1)) >= 3, 30, "three tokens")
                victim = await running_worker(c, generation_id, workers)
                victim.kill9()
                killed = time.monotonic()
                await asyncio.wait_for(reader, 60)
                restarts = read.times("restart", after=killed)
                after = [t for t, e, d in read.events if e == "token" and t > killed and d["_attempt"] > 1]
                assert restarts and after, f"no restart and new attempt seen: {read.events}"
                generation = await check_answer_when_projected(c, traffic, chat_id, generation_id, read)
                seen = (
                    f"tokens of attempt 1, then restart after {restarts[0] - killed:.1f} s, "
                    f"the whole answer from attempt {generation.attempt}; no error"
                )
                taken.append(Takeover("worker", after[0] - killed, seen))
                billed += generation.prompt_tokens + generation.completion_tokens
                if n < runs - 1:
                    victim.start()
                    await victim.wait_for_log("worker_started", timeout=60)
        await finish(c, traffic)
        # Each generation billed once, with what its last attempt used: nothing of the killed attempts.
        day = datetime.now(UTC).date().isoformat()
        assert await c.quotas.ledger.used(traffic.tenant_id, day, "tenant") == billed
        stop_all(parts, check=True)
    finally:
        if http is not None:
            await http.aclose()
        stop_all(parts)
    return taken


async def check_answer_when_projected(
    c: Container, traffic: Traffic, chat_id: str, generation_id: str, read: StreamRead
) -> Generation:
    await wait_projected(c)
    return await check_answer(c, traffic, chat_id, generation_id, read)


async def api_failover(c: Container, logs: Path, runs: int) -> list[Takeover]:
    """Kill one of two API processes under HTTP load and with a token stream open on it."""
    apis = [api_part(c.settings, logs).start() for _ in range(2)]
    relay, projector = Part(c.settings, logs, "relay").start(), Part(c.settings, logs, "project").start()
    worker = Part(c.settings, logs, "worker").start()
    parts = [*apis, relay, projector, worker]
    taken: list[Takeover] = []
    clients: list[httpx.AsyncClient] = []
    balancer: Apis | None = None
    try:
        traffic = await Traffic(c).start()
        await add_slow_echo(c, traffic)
        clients = [await serving(api) for api in apis]
        token = await sign_in(clients[0])
        balancer = Apis([str(cl.base_url) for cl in clients])
        await worker.wait_for_log("worker_started", timeout=60)
        answered: list[float] = []
        stop = asyncio.Event()

        async def create_users() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                email = f"http{n:05d}-{uuid.uuid4().hex[:6]}@example.test"
                body = {"email": email, "password": PASSWORD, "name": f"HTTP {n}"}
                assert balancer is not None
                r, failed = await balancer.request(
                    "POST", "/api/v1/users", json=body, headers={"Authorization": f"Bearer {token}"}
                )
                if r.status_code == 201:
                    traffic.users.append(uuid.UUID(r.json()["id"]))
                elif r.status_code == 409 and failed:  # the try that met the error was recorded
                    index = await c.store.call(c.store.find, EmailIndex, email_index_id(traffic.tenant_id, email))
                    assert index is not None, f"{email}: 409 but no user"
                    traffic.users.append(index.user_id)
                else:
                    raise AssertionError(f"{r.status_code} {r.text}")
                answered.append(time.monotonic())

        load = asyncio.create_task(create_users())
        try:
            for n in range(runs):
                victim = n % 2
                chat_id, generation_id = await ask(clients[victim], token, f"api failover {n}")
                read = StreamRead()
                order = [clients[victim], clients[1 - victim]]
                reader = asyncio.create_task(read_stream(order, token, generation_id, read))
                await until(lambda read=read: len(read.times("token")) >= 3, 30, "three tokens")
                errors_before = len(balancer.errors)
                apis[victim].kill9()
                killed = time.monotonic()
                await asyncio.wait_for(reader, 60)
                await until(lambda killed=killed: any(t > killed for t in answered), 30, "an answer")
                request_back = min(t for t in answered if t > killed)
                token_back = read.times("token", after=killed)[0]
                await check_answer_when_projected(c, traffic, chat_id, generation_id, read)
                errors = balancer.errors[errors_before:]
                seen = (
                    f"{len(errors)} transport error(s) ({', '.join(sorted(set(errors))) or 'none'}), each retried on "
                    f"the other API, answered {request_back - killed:.2f} s after the kill; the stream reconnected "
                    f"({', '.join(read.reconnects)}) with Last-Event-ID, next token {token_back - killed:.2f} s "
                    "after, none lost or repeated"
                )
                taken.append(Takeover("api", max(request_back, token_back) - killed, seen))
                if n < runs - 1:
                    apis[victim].start()
                    clients[victim] = await serving(apis[victim])
        finally:
            stop.set()
            await load
        await finish(c, traffic)
        stop_all(parts, check=True)
    finally:
        if balancer is not None:
            await balancer.aclose()
        for client in clients:
            await client.aclose()
        stop_all(parts)
    return taken


KINDS: dict[str, Callable[[Container, Path, int], Awaitable[list[Takeover]]]] = {
    "relay": relay_failover,
    "projector": projector_failover,
    "worker": worker_failover,
    "api": api_failover,
}


# --- the benchmark ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    runs: int


QUICK = Scale(runs=1)
FULL = Scale(runs=5)


async def run(urls: EngineUrls, home: Path, scale: Scale, failures: list[str]) -> Any:
    from bench.spine import Report, progress, settings_for

    report = Report()
    for kind, scenario in KINDS.items():
        settings = msgspec.structs.replace(
            settings_for(urls, home / kind, f"bench_failover_{kind}"), enable_echo_engine=True
        )
        c = await bootstrap(settings, passwords=FAST_PASSWORDS)
        try:
            tenant = await c.identity.ensure_tenant(settings.default_tenant, "Bench")
            await c.models.ensure_local(str(tenant.id))
            progress(f"{kind}: {scale.runs} kill(s)")
            try:
                taken = await scenario(c, home / kind / "logs", scale.runs)
            except (AssertionError, Conflict, TimeoutError) as exc:
                failures.append(kind)
                report.add(f"FAILED: {kind}", "", str(exc)[:300])
                progress(f"FAILED: {kind}: {exc}")
                continue
        finally:
            with contextlib.suppress(Exception):
                await c.close()
        for name in dict.fromkeys(t.kind for t in taken):
            seconds = [t.seconds for t in taken if t.kind == name]
            figures = f"{min(seconds):.2f} / {statistics.median(seconds):.2f} / {max(seconds):.2f}"
            slowest = next(t.client for t in taken if t.kind == name and t.seconds == max(seconds))
            report.add(f"{name}: kill -9 -> progress (s)", figures, f"{len(seconds)} kill(s); the slowest: {slowest}")
            progress(f"{name}: {', '.join(f'{s:.2f}' for s in seconds)} s")
    report.add("lost or applied twice", "none" if not failures else f"FAILED: {', '.join(failures)}")
    return report


def main(argv: list[str] | None = None) -> None:
    import argparse

    from bench.spine import cli

    def runs_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--runs", type=int, help="kills of each kind (full form: 5, quick: 1)")

    def with_runs(scale: Scale, args: argparse.Namespace) -> Scale:
        if args.runs is not None and args.runs < 1:
            raise SystemExit(f"--runs must be at least 1, not {args.runs}")
        return scale if args.runs is None else Scale(runs=args.runs)

    failures: list[str] = []
    run_all = functools.partial(run, failures=failures)
    cli("python -m bench.failover", __doc__ or "", run_all, QUICK, FULL, argv, options=(runs_option, with_runs))
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
