"""Benchmark of the generation pipeline end to end: SendMessage over HTTP -> event store -> relay -> job on
``PARLEY_JOBS`` -> generation worker (echo engine) -> token chunks on ``PARLEY_TOKENS`` -> SSE to the client.

Run ``python -m bench.pipeline`` (``--quick`` for 20 streams instead of 200, ``--smoke`` for 4 streams of 16
tokens, a check that it runs in about half a minute, ``--streams N`` for another count, ``--layout
inproc|procs|open`` for one layout or the open streams phase only; ``--open-streams N``, ``--pace``,
``--open-seconds`` and ``--clients`` size the open streams phase, which only the full form has by default). It starts its own embedded Postgres (fsync off: the pipeline is
measured here, not the disk), NATS and Redis in a temporary directory. The echo engine stands in for a
model, so what is measured is parley.

Each stream is one HTTP client doing what a browser does: ``POST /api/v1/chats/{id}/messages`` (a prompt of
N words unique to the stream, answered with exactly those N words: ``max_tokens`` N), then
``GET /api/v1/generations/{id}/stream``, reading server-sent events until ``done``. All streams of a round
start at once (a burst: every SendMessage of the round is in flight together); the baseline is one stream
at a time, repeated. Every round creates its chats first, outside the timing. The tenant's per-minute
rate limits (120 requests per user by default) would refuse that traffic with ``429 RATE_LIMITED``: the
admin raises them first through ``PUT /api/v1/quotas/rate-limits``, as an operator would; every request
is still counted by the limiter. Two models:

- ``full speed`` (``echo-repeat``, 64 tokens): the engine emits its tokens as fast as the worker takes
  them. Measures throughput and time to first token; alone, a generation may be over before its client
  has subscribed, and its chunks then reach the client as a replay, not live.
- ``paced`` (``echo-slow``, 160 tokens at 20 tokens/s, 8 s a generation): the streams really are open
  together, and every chunk (one per token, as 50 ms > the worker's 30 ms flush interval) is delivered
  live: this is the delivery lag under N concurrent streams.

Two layouts, both by default, one after the other on the same engines (own database and namespace each):

- ``inproc``: uvicorn serving ``create_app``, the relay, every projector and one ``GenerationWorker``
  (concurrency >= the streams) as tasks in the benchmark's own process, on the event loop that also runs
  the HTTP clients. One process, one GIL: the clients' work delays the server's and the reverse.
- ``procs``: ``parley api``, ``parley relay``, ``parley project`` and ``parley worker`` as four processes,
  as ``parley serve`` runs them; the benchmark's process runs only the clients.

Then, in the full form (or with ``--open-streams N``), the open streams phase: N SSE streams (1,000 by
default) held open together on ONE ``parley api`` process, for the API's fan-out alone. ``parley api``,
``relay`` and ``project`` run as processes, with no worker: N chats and N ``SendMessage`` (``echo-slow``)
over HTTP leave N generations requested; ``--clients`` client processes (2 by default: one asyncio loop
with httpx is itself a bottleneck at this count), each its own ``httpx.AsyncClient``, open
``GET /api/v1/generations/{id}/stream`` on their share; once every stream's headers have come, this
process publishes each generation's token chunks to ``PARLEY_TOKENS`` as the worker does (``TokenChunk``,
``published_at`` just before the publish, ``Nats-Msg-Id``), ``--pace`` a second per stream (2 by default)
for ``--open-seconds`` (30), the streams' starts spread evenly over one interval so the rate is steady
(N x pace chunks/s), then each one's ``done`` chunk. Figures: publish -> client p50/p95/p99/max over every
chunk and over those published while all N streams were open; the most streams open at once (headers
received, ``done`` not yet); the API process's CPU (% of one core) and every process's cores; the client
processes' loop lag (how late a 10 ms sleep wakes: a client-side delay that shows in the latencies) and
how late the publisher ran against its schedule; streams exact (every chunk once, in order, then
``done``); HTTP transport errors and non-2xx, as for the layouts.

Figures, per layout and scenario:

- publish -> client (live): per token chunk published after its client sent the GET, the client's
  ``time.time()`` once it has parsed the SSE ``token`` event minus ``published_at``, the worker's
  ``time.time()`` just before it published the chunk to NATS (same machine, same clock): NATS -> the API's
  reader -> SSE encoding -> HTTP -> client parsing. "after the last 202": only the live chunks published
  once the round's last SendMessage had been answered, i.e. streaming with no burst of commands under
  way. Chunks published before their client's GET are counted apart ("replayed"), with the time from
  the GET to their arrival.
- send -> first token: from just before the POST to the first ``token`` event at the client: SendMessage
  (command, 202), relay (NOTIFY -> NATS job), worker fetch, GenerationStarted, the worker's first flush
  (a chunk goes out after ~30 ms of tokens, or at the end), the GET, delivery. Split into send -> 202 and
  202 -> first token.
- tokens/s delivered: completion tokens that reached the clients, over the wall time from the round's
  first POST to its last ``done``, summed over rounds. At full speed this is as much generations/s
  (shown) as tokens: SendMessage, GenerationStarted and GenerationCompleted are three
  event-store commands per generation, and the event store appends one command at a time.
- exact: streams whose text is exactly the expected N words, with chunk ids ``1:1..1:k`` each once and
  in order, no ``restart``, ``done`` completed with N completion tokens, and the stored answer
  (``GET /api/v1/generations/{id}``) equal to the streamed text.
- CPU: the machine's busy share over the rounds (all cores, from /proc/stat: other tenants of the machine
  count too), and the cores each of our processes used (Postgres = postmaster and its backends).
- CreateChat/s: the chats of every round, created 16 at a time before it: one plain command over HTTP,
  for scale against the generations/s.
- HTTP transport errors and non-2xx answers: every request the benchmark's clients sent in the layout
  (setup, warm-up and rounds), counted at the client's transport, apart; any is a problem. A failed
  request fails its stream, not the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import msgspec

from adapters.embedded import EmbeddedEngines, EngineUrls
from adapters.logging import configure_logging
from adapters.settings import Settings
from bench.spine import Report, load, percentile, progress, settings_for, stopwatch
from projections.runtime import read_position
from workers.bootstrap import PROJECTOR_NAMES, Container, all_projectors, bootstrap

__all__ = ["FULL", "QUICK", "SMOKE", "HttpTally", "Scale", "counted_client", "main"]

PASSWORD = "bench password 9"
MODEL = "echo-repeat"
PACED_MODEL = "echo-slow"
LAYOUTS = ("inproc", "procs")


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    streams: int
    rounds: int
    tokens: int


@dataclass(frozen=True)
class Scale:
    streams: int
    tokens: int
    """Per generation at full speed."""
    paced_tokens: int
    """Per paced generation (20 tokens/s)."""
    baseline_rounds: int
    """Full speed, one stream at a time, this many times."""
    rounds: int
    """Full speed, rounds of ``streams`` concurrent streams."""
    paced_baseline_rounds: int
    paced_rounds: int
    open_streams: int = 0
    """Open streams phase (``parley api`` alone, chunks published at a steady pace): this many streams; 0
    skips it."""
    open_pace: float = 2.0
    """Open streams phase: chunks per second per stream."""
    open_seconds: float = 30.0
    """Open streams phase: how long each stream receives chunks."""
    clients: int = 2
    """Open streams phase: client processes the streams are split across."""

    def scenarios(self) -> list[Scenario]:
        return [
            Scenario("full speed, 1 stream", MODEL, 1, self.baseline_rounds, self.tokens),
            Scenario(f"full speed, {self.streams} streams", MODEL, self.streams, self.rounds, self.tokens),
            Scenario("paced, 1 stream", PACED_MODEL, 1, self.paced_baseline_rounds, self.paced_tokens),
            Scenario(f"paced, {self.streams} streams", PACED_MODEL, self.streams, self.paced_rounds, self.paced_tokens),
        ]


FULL = Scale(
    streams=200,
    tokens=64,
    paced_tokens=160,
    baseline_rounds=30,
    rounds=3,
    paced_baseline_rounds=2,
    paced_rounds=1,
    open_streams=1000,
)
QUICK = Scale(
    streams=20, tokens=64, paced_tokens=64, baseline_rounds=5, rounds=1, paced_baseline_rounds=1, paced_rounds=1
)
SMOKE = Scale(
    streams=4, tokens=16, paced_tokens=16, baseline_rounds=2, rounds=1, paced_baseline_rounds=1, paced_rounds=1
)
"""That every part still runs: 16 paced tokens are 0.8 s a generation."""


# --- HTTP errors -------------------------------------------------------------------------------------------
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|(?<=/)[0-9a-f]{32}(?=/|$)")


class HttpTally:
    """Transport errors (connect, read, write, timeouts, the peer closing: ``httpx.TransportError``) and
    answers outside 2xx, counted apart for every request a client sends, by kind and by route."""

    def __init__(self) -> None:
        self.requests = 0
        self.transport: Counter[str] = Counter()
        self.non_2xx: Counter[str] = Counter()

    @staticmethod
    def _route(request: httpx.Request) -> str:
        return f"{request.method} {_ID.sub('{id}', request.url.path)}"

    def transport_error(self, request: httpx.Request, exc: httpx.TransportError) -> None:
        self.transport[f"{type(exc).__name__} on {self._route(request)}"] += 1

    def answer(self, request: httpx.Request, status: int) -> None:
        if not 200 <= status < 300:
            self.non_2xx[f"{status} on {self._route(request)}"] += 1

    @staticmethod
    def _summary(counts: Counter[str]) -> str:
        return "; ".join(f"{what} (x{n})" for what, n in counts.most_common(5)) or "none"

    def report(self, report: Report, label: str) -> list[str]:
        """Two rows of the report; the problems, if any."""
        transport, non_2xx = sum(self.transport.values()), sum(self.non_2xx.values())
        of = f"of {self.requests:,} requests: "
        report.add(f"{label}: HTTP transport errors", f"{transport:,}", of + self._summary(self.transport))
        report.add(f"{label}: HTTP non-2xx answers", f"{non_2xx:,}", of + self._summary(self.non_2xx))
        return [f"{label}: {n} x transport error {what}" for what, n in self.transport.most_common()] + [
            f"{label}: {n} x answer {what}" for what, n in self.non_2xx.most_common()
        ]


class _CountedStream(httpx.AsyncByteStream):
    """A response body that counts a transport error met while it is read (a stream cut short)."""

    def __init__(self, inner: httpx.AsyncByteStream, tally: HttpTally, request: httpx.Request) -> None:
        self.inner, self.tally, self.request = inner, tally, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner:
                yield chunk
        except httpx.TransportError as exc:
            self.tally.transport_error(self.request, exc)
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CountingTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, tally: HttpTally) -> None:
        self.inner, self.tally = inner, tally

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.tally.requests += 1
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError as exc:
            self.tally.transport_error(request, exc)
            raise
        self.tally.answer(request, response.status_code)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CountedStream(response.stream, self.tally, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def counted_client(tally: HttpTally, *, limits: httpx.Limits | None = None, **options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every request is counted in ``tally``."""
    inner = httpx.AsyncHTTPTransport(limits=limits or httpx.Limits())
    return httpx.AsyncClient(transport=_CountingTransport(inner, tally), **options)


# --- one stream ------------------------------------------------------------------------------------------
@dataclass
class Stream:
    index: str
    expected: str
    generation_id: str = ""
    sent_at: float = 0.0
    accepted_at: float = 0.0
    accepted_wall: float = 0.0
    """``time.time()`` when the 202 came back."""
    first_token_at: float | None = None
    done_at: float = 0.0
    get_sent_wall: float = 0.0
    """``time.time()`` just before the GET of the stream: chunks published before it are a replay."""
    chunks: list[tuple[float, float]] = field(default_factory=list)
    """(published_at, received) per token event, both ``time.time()``; published_at 0 when not given."""
    ids: list[str] = field(default_factory=list)
    text: str = ""
    restarts: int = 0
    done: dict[str, Any] | None = None
    error: str | None = None
    stored_text: str | None = None

    @property
    def completion_tokens(self) -> int:
        return int(((self.done or {}).get("usage") or {}).get("completion_tokens") or 0)

    def problems(self, tokens: int) -> list[str]:
        if self.error:
            return [self.error]
        found = []
        if self.text != self.expected:
            found.append(f"text differs ({len(self.text.split())} words)")
        if self.ids != [f"1:{n}" for n in range(1, len(self.ids) + 1)]:
            found.append(f"ids {self.ids}")
        if self.restarts:
            found.append(f"{self.restarts} restart(s)")
        if any(published == 0 for published, _ in self.chunks):
            found.append("token event(s) without published_at (replayed from the event store)")
        if self.done is None or self.done.get("status") != "completed" or self.completion_tokens != tokens:
            found.append(f"done {self.done}")
        if self.stored_text != self.text:
            found.append(f"stored text differs: {(self.stored_text or '')[:60]!r}")
        return found


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str | None, str | None, str]]:
    """(event, id, data) per server-sent event; comments are skipped."""
    event: str | None = None
    event_id: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if event or data or event_id:
                yield event, event_id, "\n".join(data)
            event, event_id, data = None, None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


async def run_stream(
    http: httpx.AsyncClient, auth: dict[str, str], chat_id: str | None, model: str, tokens: int, s: Stream
) -> None:
    if chat_id is None:
        s.error = "its chat could not be created"
        return
    try:
        s.sent_at = time.perf_counter()
        r = await http.post(
            f"/api/v1/chats/{chat_id}/messages",
            json={"content": s.expected, "model": model, "params": {"max_tokens": tokens}},
            headers=auth,
        )
        s.accepted_at, s.accepted_wall = time.perf_counter(), time.time()
        if r.status_code != 202:
            s.error = f"SendMessage {r.status_code}: {r.text[:200]}"
            return
        s.generation_id = r.json()["generation_id"]
        s.get_sent_wall = time.time()
        async with http.stream("GET", f"/api/v1/generations/{s.generation_id}/stream", headers=auth) as resp:
            if resp.status_code != 200:
                s.error = f"stream {resp.status_code}"
                return
            async for event, event_id, data in sse_events(resp):
                wall, now = time.time(), time.perf_counter()
                if event == "token":
                    if s.first_token_at is None:
                        s.first_token_at = now
                    token = json.loads(data)
                    s.chunks.append((float(token.get("published_at") or 0.0), wall))
                    s.ids.append(event_id or "")
                    s.text += token["text"]
                elif event == "restart":
                    s.restarts += 1
                    s.text = ""
                elif event == "done":
                    s.done_at = now
                    s.done = json.loads(data)
                    return
                elif event == "error":
                    s.error = f"error event {data}"
        s.error = s.error or "stream ended without done"
    except Exception as exc:  # one stream failing is a result, not the end of the run
        s.error = f"{type(exc).__name__}: {exc!r}"


# --- CPU ---------------------------------------------------------------------------------------------------
def _proc(pid: int) -> tuple[int, float, str] | None:
    """(ppid, CPU seconds so far, command line) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return int(stat[1]), (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), cmdline


class Cpu:
    """CPU seconds per process of ours (by pid, so a process that starts during a round counts from zero),
    grouped by name; the engines are found by their command lines, which name the run's home."""

    def __init__(self, home: Path, named: dict[str, int]) -> None:
        self.home = str(home)
        self.named = named

    def sample(self) -> dict[int, tuple[str, float]]:
        procs = {int(p): info for p in os.listdir("/proc") if p.isdigit() and (info := _proc(int(p)))}
        owner: dict[int, str] = {pid: name for name, pid in self.named.items()}
        for pid, (_, _, cmdline) in procs.items():
            if self.home in cmdline:
                for engine in ("postgres", "nats-server", "redis-server"):
                    if engine in cmdline.split(" ", 1)[0]:
                        owner.setdefault(pid, engine.removesuffix("-server"))
        for pid, (ppid, _, _) in procs.items():  # Postgres backends: children of the postmaster
            if owner.get(ppid) == "postgres":
                owner.setdefault(pid, "postgres")
        return {pid: (name, procs[pid][1]) for pid, name in owner.items() if pid in procs}

    @staticmethod
    def used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (name, seconds) in after.items():
            out[name] = out.get(name, 0.0) + seconds - before.get(pid, (name, 0.0))[1]
        return out


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


# --- rounds ------------------------------------------------------------------------------------------------
@dataclass
class Round:
    streams: list[Stream]
    seconds: float
    cpu: dict[str, float]
    """CPU seconds per process group of ours over the round."""
    busy: tuple[int, int]
    """Busy and total jiffies of the machine over the round."""
    chats: int
    chat_seconds: float
    settle_s: float = 0.0
    """From the round's end (its last ``done`` seen) until every projector had applied the event store."""


async def create_chats(http: httpx.AsyncClient, auth: dict[str, str], count: int) -> list[str | None]:
    """The chats' ids; None for one that could not be created (the client's tally has counted why)."""
    gate = asyncio.Semaphore(16)

    async def one() -> str | None:
        async with gate:
            try:
                r = await http.post("/api/v1/chats", json={"title": "bench"}, headers=auth)
            except httpx.TransportError:
                return None
            return str(r.json()["id"]) if r.status_code == 201 else None

    return await asyncio.gather(*(one() for _ in range(count)))


async def run_round(
    http: httpx.AsyncClient, auth: dict[str, str], count: int, tokens: int, model: str, cpu: Cpu
) -> Round:
    with stopwatch() as elapsed:
        chats = await create_chats(http, auth, count)
        chat_seconds = elapsed()
    tag = uuid.uuid4().hex[:6]
    streams = [
        Stream(index=f"{tag}-{i}", expected=" ".join(f"{tag}s{i}w{j}" for j in range(1, tokens + 1)))
        for i in range(count)
    ]
    cpu_before, busy_before = cpu.sample(), machine_busy()
    start = time.perf_counter()
    await asyncio.gather(
        *(run_stream(http, auth, chat, model, tokens, s) for chat, s in zip(chats, streams, strict=True))
    )
    end = max([s.done_at for s in streams if s.done_at] or [time.perf_counter()])
    cpu_after, busy_after = cpu.sample(), machine_busy()
    busy = (busy_after[0] - busy_before[0], busy_after[1] - busy_before[1])
    return Round(streams, end - start, Cpu.used(cpu_before, cpu_after), busy, count, chat_seconds)


async def check_stored(http: httpx.AsyncClient, auth: dict[str, str], streams: list[Stream]) -> None:
    """The stored answer of each generation (the read model once projected), against what was streamed."""
    gate = asyncio.Semaphore(16)

    async def one(s: Stream) -> None:
        if not s.generation_id:
            return
        async with gate:
            deadline = time.monotonic() + 30
            while True:
                body: dict[str, Any] = {}
                with contextlib.suppress(httpx.TransportError, ValueError):  # counted by the client's tally
                    r = await http.get(f"/api/v1/generations/{s.generation_id}", headers=auth)
                    body = r.json() if r.status_code == 200 else {}
                if body.get("status") in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
                    s.stored_text = body.get("text")
                    return
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one(s) for s in streams))


# --- the deployment under test ----------------------------------------------------------------------------
async def sign_up(http: httpx.AsyncClient, email: str) -> dict[str, str]:
    r = await http.post("/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": "Bench"})
    assert r.status_code == 201, r.text
    r = await http.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


LIFTED_RATE_LIMITS = {"user_per_minute": 100_000, "api_key_per_minute": 100_000}
"""The most the policy allows (the defaults, 120 a minute per user and per API key, would refuse a
benchmark's burst with 429 RATE_LIMITED)."""


async def lift_rate_limits(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """As an operator would: the tenant's per-minute rate limits per user and per API key raised to the
    most the policy allows, through the admin API. They hold from the next request on (the change drops
    the policy the API process had cached, and tells the others over NATS); the limiter itself still
    counts every request."""
    r = await http.put("/api/v1/quotas/rate-limits", json=LIFTED_RATE_LIMITS, headers=admin)
    assert r.status_code == 200, r.text
    assert all(r.json()["rate_limits"][k] == v for k, v in LIFTED_RATE_LIMITS.items()), r.text


async def echo_user(http: httpx.AsyncClient) -> dict[str, str]:
    """The tenant's first user (its admin) lifts the tenant's rate limits, registers the echo provider
    and open ``echo-repeat`` and ``echo-slow`` models; a second user streams."""
    admin = await sign_up(http, "admin@bench.example")
    await lift_rate_limits(http, admin)
    r = await http.post("/api/v1/providers", json={"name": "echoes", "kind": "echo"}, headers=admin)
    assert r.status_code == 201, r.text
    for name in (MODEL, PACED_MODEL):
        model = {"name": name, "provider": "echoes", "upstream_model": name}
        r = await http.post("/api/v1/models", json=model, headers=admin)
        assert r.status_code == 201, r.text
    return await sign_up(http, "user@bench.example")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class InProcess:
    """uvicorn + relay + projectors + one worker as tasks on this event loop, with two containers (the
    API's, and the pipeline's) so the API and the worker have a NATS connection each, as when apart."""

    def __init__(self, settings: Settings, concurrency: int) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.containers: list[Any] = []
        self.server: Any = None

    async def __aenter__(self) -> str:
        import uvicorn

        from api.app import create_app
        from api.server import server_config
        from projections.runtime import ProjectorRunner
        from workers.generate import GenerationWorker
        from workers.relay import Relay

        api = await bootstrap(self.settings)
        self.containers.append(api)
        await api.identity.ensure_tenant(self.settings.default_tenant, "Bench")
        pipeline = await bootstrap(self.settings)
        self.containers.append(pipeline)
        js = await pipeline.connect_nats("bench-pipeline")
        relay = Relay(store=pipeline.store, engine=pipeline.engine, js=js, subjects=pipeline.subjects)
        self.tasks.append(asyncio.create_task(relay.run(self.stop)))
        for p in all_projectors(pipeline):
            runner = ProjectorRunner(p, engine=pipeline.engine, store=pipeline.store)
            self.tasks.append(asyncio.create_task(runner.run(js, pipeline.subjects, self.stop)))
        worker = GenerationWorker(pipeline, js=js, nc=pipeline.nc, name="bench-worker", concurrency=self.concurrency)
        self.tasks.append(asyncio.create_task(worker.run(self.stop)))

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        # Served as `parley api` serves it (the edge's timeouts included); the socket is already bound.
        config = server_config(
            create_app(api), self.settings, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.tasks.append(asyncio.create_task(self.server.serve(sockets=[sock])))
        while not self.server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def pids(self) -> dict[str, int]:
        return {"bench (clients + parley)": os.getpid()}

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.containers:
            with contextlib.suppress(Exception):
                await c.close()


class Processes:
    """``parley api``, ``relay``, ``project`` and ``worker`` as child processes, as ``parley serve`` runs
    them; their output goes to a log file each, shown if one of them exits early."""

    PARTS = ("api", "relay", "project", "worker")

    def __init__(self, settings: Settings, concurrency: int, home: Path, parts: tuple[str, ...] = PARTS) -> None:
        self.settings = replace_settings(settings, port=free_port(), worker_concurrency=concurrency)
        self.home = home
        self.parts = parts
        self.children: dict[str, asyncio.subprocess.Process] = {}

    def _log(self, name: str) -> Path:
        return self.home / f"{self.settings.namespace}-{name}.log"

    async def __aenter__(self) -> str:
        try:
            return await self._start()
        except BaseException:  # a part that failed to start: the others are stopped, not left behind
            await self.__aexit__()
            raise

    async def _start(self) -> str:
        env = {**os.environ, **self.settings.child_env()}
        for name in self.parts:
            with self._log(name).open("wb") as log:  # the child keeps its own descriptor
                self.children[name] = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "workers.cli", name, env=env, stdout=log, stderr=subprocess.STDOUT
                )
        base = f"http://127.0.0.1:{self.settings.port}"
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            while True:
                self._check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/health/ready")).status_code == 200:
                        return base
                if time.monotonic() > deadline:
                    raise TimeoutError("parley api did not become ready in 60 s")
                await asyncio.sleep(0.2)

    def _check_alive(self) -> None:
        for name, proc in self.children.items():
            if proc.returncode is not None:
                log = self._log(name).read_text(errors="replace")
                raise RuntimeError(f"parley {name} exited with {proc.returncode}:\n{log[-3000:]}")

    def errors(self) -> list[str]:
        """What the children logged at error level, counted by event and error type."""
        counts: Counter[str] = Counter()
        for name in self.parts:
            with contextlib.suppress(OSError):
                for line in self._log(name).read_text(errors="replace").splitlines():
                    if match := re.search(r"\[error\s*\]\s+(\S+)(?:.*error_type=(\S+))?", line):
                        counts[f"parley {name}: {match[1]} {match[2] or ''}".rstrip()] += 1
        return [f"{what} (x{n})" for what, n in counts.most_common()]

    def pids(self) -> dict[str, int]:
        return {f"parley {name}": p.pid for name, p in self.children.items()} | {"bench (clients)": os.getpid()}

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.children.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.children.values():
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def replace_settings(settings: Settings, **changes: Any) -> Settings:
    return msgspec.structs.replace(settings, **changes)


# --- measuring and reporting ------------------------------------------------------------------------------
def p50_p99(values: list[float]) -> str:
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}" if values else "-"


def summarize(report: Report, label: str, rounds: list[Round], tokens: int) -> list[str]:
    streams = [s for r in rounds for s in r.streams]
    per_round = len(rounds[0].streams)
    live = [
        (received - published) * 1000
        for s in streams
        for published, received in s.chunks
        if published >= s.get_sent_wall
    ]
    replayed = [
        (received - s.get_sent_wall) * 1000
        for s in streams
        for published, received in s.chunks
        if 0 < published < s.get_sent_wall
    ]
    # Live chunks published after the round's last 202: streaming alone, no SendMessage burst under way.
    last_accept = {id(s): max(x.accepted_wall for x in r.streams) for r in rounds for s in r.streams}
    steady = [
        (received - published) * 1000
        for s in streams
        for published, received in s.chunks
        if published >= s.get_sent_wall and published > last_accept[id(s)]
    ]
    ttft = [(s.first_token_at - s.sent_at) * 1000 for s in streams if s.first_token_at is not None]
    accept = [(s.accepted_at - s.sent_at) * 1000 for s in streams if s.accepted_at]
    after_accept = [(s.first_token_at - s.accepted_at) * 1000 for s in streams if s.first_token_at is not None]
    delivered = sum(s.completion_tokens for s in streams if s.done)
    finished = sum(1 for s in streams if s.done)
    seconds = sum(r.seconds for r in rounds)
    chunks = sum(len(s.chunks) for s in streams)
    bad = [(s, p) for s in streams if (p := s.problems(tokens))]
    what = f"{len(rounds)} round(s) of {per_round}" if per_round > 1 else f"{len(rounds)} streams one at a time"
    busy = sum(r.busy[0] for r in rounds) / max(1, sum(r.busy[1] for r in rounds)) * 100
    names = sorted({n for r in rounds for n in r.cpu}, key=lambda n: -sum(r.cpu.get(n, 0.0) for r in rounds))
    cores = ", ".join(f"{n} {sum(r.cpu.get(n, 0.0) for r in rounds) / seconds:.2f}" for n in names)

    report.add(
        f"{label}: publish -> client live p50 / p99 (ms)",
        p50_p99(live),
        f"{len(live):,} of {chunks:,} chunks live, {what}; max {max(live, default=0):.1f}",
    )
    if per_round > 1:
        report.add(
            f"{label}: ... published after the last 202 p50 / p99 (ms)",
            p50_p99(steady),
            f"{len(steady):,} chunks; max {max(steady, default=0):.1f}",
        )
    report.add(
        f"{label}: replayed chunks, GET -> chunk p50 / p99 (ms)",
        p50_p99(replayed),
        f"{len(replayed):,} chunks published before their client's GET",
    )
    report.add(
        f"{label}: send -> first token p50 / p99 (ms)",
        p50_p99(ttft),
        f"send -> 202 {p50_p99(accept)}, 202 -> first token {p50_p99(after_accept)}",
    )
    report.add(
        f"{label}: tokens/s delivered",
        f"{delivered / seconds:,.0f}" if seconds else "-",
        f"{delivered:,} tokens in {seconds:.2f} s; {finished / seconds:.1f} generations/s, "
        f"{chunks / max(1, finished):.1f} chunks/stream",
    )
    report.add(
        f"{label}: streams exact",
        f"{len(streams) - len(bad)}/{len(streams)}",
        f"read models caught up at most {max(r.settle_s for r in rounds):.2f} s after the last done",
    )
    report.add(f"{label}: machine CPU busy (%)", f"{busy:.0f}", f"cores: {cores}")
    progress(
        f"{label}: live publish->client {p50_p99(live)} ms, first token {p50_p99(ttft)} ms, "
        f"{delivered / seconds if seconds else 0:,.0f} tokens/s, exact {len(streams) - len(bad)}/{len(streams)}, "
        f"{load()}"
    )
    return [f"{label}, stream {s.index} ({s.generation_id or 'no generation'}): {'; '.join(p)}" for s, p in bad]


async def settle(c: Container, limit_s: float = 120) -> float:
    """Wait until every projector has applied everything in the event store; returns the seconds waited."""
    names = list(PROJECTOR_NAMES)
    with stopwatch() as elapsed:
        while True:
            target = await c.store.call(c.store.max_id)
            positions = [await read_position(c.engine, n) for n in names]
            if all(p >= target for p in positions):
                return elapsed()
            if elapsed() > limit_s:
                raise TimeoutError(f"projectors {names} at {positions}, event store at {target}")
            await asyncio.sleep(0.02)


async def measure_layout(layout: str, urls: EngineUrls, home: Path, scale: Scale, report: Report) -> list[str]:
    settings = replace_settings(
        settings_for(urls, home, f"bench_pipeline_{layout}"), enable_echo_engine=True, embedded_fast=True
    )
    concurrency = max(256, scale.streams)
    deployment: InProcess | Processes = (
        InProcess(settings, concurrency) if layout == "inproc" else Processes(settings, concurrency, home)
    )
    # Idle connections are dropped by the client before uvicorn's 5 s keep-alive timeout can close them
    # under a request being sent.
    limits = httpx.Limits(
        max_connections=scale.streams + 32, max_keepalive_connections=scale.streams + 32, keepalive_expiry=2.0
    )
    problems: list[str] = []
    chat_rounds: list[Round] = []
    tally = HttpTally()
    observer = await bootstrap(settings, pool_size=2)  # reads the projectors' positions
    async with deployment as base_url:
        progress(f"{layout}: parley up at {base_url}, worker concurrency {concurrency}")
        cpu = Cpu(home, deployment.pids())
        async with counted_client(tally, base_url=base_url, timeout=120, limits=limits) as http:
            auth = await echo_user(http)
            # Warm-up, not measured: the engines, the NATS consumers, the connection pools.
            await run_round(http, auth, 1, scale.tokens, MODEL, cpu)
            await run_round(http, auth, min(scale.streams, 20), scale.tokens, MODEL, cpu)
            await settle(observer)
            for scenario in scale.scenarios():
                if scenario.rounds < 1:
                    continue
                rounds = []
                for n in range(scenario.rounds):
                    rounds.append(await run_round(http, auth, scenario.streams, scenario.tokens, scenario.model, cpu))
                    # Every round starts with the read models caught up; how long that took after a burst.
                    rounds[-1].settle_s = await settle(observer)
                    if scenario.streams > 1:
                        progress(
                            f"{layout}, {scenario.name}: round {n + 1}/{scenario.rounds} in "
                            f"{rounds[-1].seconds:.2f} s, read models caught up {rounds[-1].settle_s:.2f} s later"
                        )
                await check_stored(http, auth, [s for r in rounds for s in r.streams])
                problems += summarize(report, f"{layout}, {scenario.name}", rounds, scenario.tokens)
                chat_rounds += [r for r in rounds if r.chats > 1]
        if isinstance(deployment, Processes):  # first: they explain the streams that failed
            problems[:0] = [f"{layout}: logged {e}" for e in deployment.errors()]
    await observer.close()
    chats = sum(r.chats for r in chat_rounds)
    chat_seconds = sum(r.chat_seconds for r in chat_rounds)
    if chats:
        report.add(f"{layout}: CreateChat/s over HTTP, 16 at once", f"{chats / chat_seconds:,.0f}", f"{chats} chats")
    problems[:0] = tally.report(report, layout)
    progress(
        f"{layout}: {sum(tally.transport.values())} HTTP transport errors, "
        f"{sum(tally.non_2xx.values())} non-2xx answers"
    )
    return problems


# --- open streams: many SSE streams held open on one API process -----------------------------------------
@dataclass
class OpenStream:
    """One stream of the open streams phase, as its client process saw it."""

    index: int
    generation_id: str
    opened_wall: float = 0.0
    """``time.time()`` when the response's headers arrived (0: never)."""
    closed_wall: float = 0.0
    """``time.time()`` when ``done`` arrived or the stream ended."""
    chunks: list[tuple[float, float]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    text: str = ""
    done: dict[str, Any] | None = None
    error: str | None = None

    def problems(self, chunks: int) -> list[str]:
        if self.error:
            return [self.error]
        found = []
        expected = " ".join(f"{self.index}w{k}" for k in range(1, chunks + 1))
        if self.text != expected:
            found.append(f"text differs ({len(self.text.split())} words)")
        if self.ids != [f"1:{k}" for k in range(1, chunks + 1)]:
            found.append(f"ids {self.ids[:5]}... ({len(self.ids)})")
        if (self.done or {}).get("status") != "completed":
            found.append(f"done {self.done}")
        return found


async def _follow(
    http: httpx.AsyncClient, auth: dict[str, str], s: OpenStream, gate: asyncio.Semaphore, opened: asyncio.Event
) -> None:
    """GET one generation's stream and read it to ``done``; ``opened`` is set once its headers came."""
    try:
        async with contextlib.AsyncExitStack() as stack:
            async with gate:  # the opening only: a bounded number of GETs waiting for their headers
                resp = await stack.enter_async_context(
                    http.stream("GET", f"/api/v1/generations/{s.generation_id}/stream", headers=auth)
                )
            s.opened_wall = time.time()
            opened.set()
            if resp.status_code != 200:
                s.error = f"stream {resp.status_code}"
                return
            async for event, event_id, data in sse_events(resp):
                if event == "token":
                    wall = time.time()
                    token = json.loads(data)
                    s.chunks.append((float(token.get("published_at") or 0.0), wall))
                    s.ids.append(event_id or "")
                    s.text += token["text"]
                elif event == "done":
                    s.done = json.loads(data)
                    return
                elif event in ("error", "restart"):
                    s.error = f"{event} event {data}"
            s.error = s.error or "stream ended without done"
    except Exception as exc:  # one stream failing is a result, not the end of the run
        s.error = f"{type(exc).__name__}: {exc!r}"
    finally:
        s.closed_wall = time.time()
        opened.set()


async def _open_clients(base_url: str, auth: dict[str, str], streams: list[OpenStream], conn: Any) -> None:
    tally = HttpTally()
    lags: list[tuple[float, float]] = []
    running = True

    async def watch_loop() -> None:
        """The loop's own lag: how late a 10 ms sleep wakes up, with its wall time."""
        while running:
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append((time.time(), (time.perf_counter() - start - 0.01) * 1000))

    limits = httpx.Limits(max_connections=len(streams) + 8, max_keepalive_connections=len(streams) + 8)
    watcher = asyncio.create_task(watch_loop())
    async with counted_client(tally, base_url=base_url, timeout=120, limits=limits) as http:
        gate = asyncio.Semaphore(64)
        events = [asyncio.Event() for _ in streams]
        tasks = [asyncio.create_task(_follow(http, auth, s, gate, e)) for s, e in zip(streams, events, strict=True)]
        await asyncio.gather(*(e.wait() for e in events))
        conn.send(("ready", sum(1 for s in streams if s.opened_wall and not s.error)))
        await asyncio.gather(*tasks)
    running = False
    await watcher
    conn.send(
        (
            "results",
            {"streams": streams, "lags": lags, "tally": (tally.requests, dict(tally.transport), dict(tally.non_2xx))},
        )
    )


def open_client_process(base_url: str, auth: dict[str, str], streams: list[OpenStream], conn: Any) -> None:
    """A client process of the open streams phase (its own event loop and ``httpx.AsyncClient``)."""
    asyncio.run(_open_clients(base_url, auth, streams, conn))


async def publish_paced(c: Container, streams: list[OpenStream], chunks: int, pace: float) -> tuple[float, list[float]]:
    """Every stream's chunks, ``pace`` a second, then its done chunk: as the worker publishes them
    (``TokenChunk`` with ``published_at`` taken just before the publish, on the generation's subject,
    ``Nats-Msg-Id``), with the streams' starts spread evenly over one interval so the total rate is
    steady. Returns the seconds it took and how late each publish was against its schedule (ms)."""
    from schema.tokens import TokenChunk, encode_chunk

    assert c.nc is not None
    interval, n = 1.0 / pace, len(streams)
    late: list[float] = []
    start = time.perf_counter()
    for k in range(1, chunks + 2):
        for i, s in enumerate(streams):
            due = start + (k - 1 + i / n) * interval
            if (delay := due - time.perf_counter()) > 0.001:
                await asyncio.sleep(delay)
            late.append(max(0.0, time.perf_counter() - due) * 1000)
            if k <= chunks:
                chunk = TokenChunk(
                    generation_id=s.generation_id,
                    attempt=1,
                    seq=k,
                    text=f"{s.index}w{k}" if k == 1 else f" {s.index}w{k}",
                    completion_tokens=k,
                    published_at=time.time(),
                )
            else:
                chunk = TokenChunk(
                    generation_id=s.generation_id,
                    attempt=1,
                    seq=1_000_000,
                    done=True,
                    status="completed",
                    finish_reason="length",
                    prompt_tokens=chunks,
                    completion_tokens=chunks,
                    published_at=time.time(),
                )
            await c.nc.publish(
                c.subjects.tokens(s.generation_id),
                encode_chunk(chunk),
                headers={"Nats-Msg-Id": f"{s.generation_id}:{chunk.attempt}:{chunk.seq}"},
            )
    await c.nc.flush()
    return time.perf_counter() - start, late


def open_at_once(streams: list[OpenStream]) -> int:
    """The most streams open together (headers received, ``done`` not yet)."""
    marks = sorted(
        [(s.opened_wall, 1) for s in streams if s.opened_wall] + [(s.closed_wall, -1) for s in streams if s.opened_wall]
    )
    most = now = 0
    for _, step in marks:
        now += step
        most = max(most, now)
    return most


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    return " / ".join(f"{percentile(values, q):.1f}" for q in (0.5, 0.95, 0.99)) + f" / {max(values):.1f}"


async def measure_open(urls: EngineUrls, home: Path, scale: Scale, report: Report) -> list[str]:
    """N generations requested (SendMessage over HTTP, no worker to run them), N SSE streams opened on them
    against one ``parley api`` process from ``scale.clients`` client processes; then this process publishes
    every stream's token chunks to ``PARLEY_TOKENS`` at a steady pace, as a worker would, and the clients
    time each chunk's arrival."""
    import multiprocessing

    n, chunks, pace = scale.open_streams, max(1, round(scale.open_seconds * scale.open_pace)), scale.open_pace
    label = f"open, {n} streams at {pace:g} chunks/s"
    settings = replace_settings(
        settings_for(urls, home, "bench_pipeline_open"), enable_echo_engine=True, embedded_fast=True
    )
    # No worker: the generations stay requested, and their chunks come from this process.
    deployment = Processes(settings, 1, home, parts=("api", "relay", "project"))
    tally = HttpTally()
    problems: list[str] = []
    publisher = await bootstrap(settings, pool_size=2)
    await publisher.connect_nats("bench-publisher")
    async with deployment as base_url:
        progress(
            f"open: parley api (pid {deployment.children['api'].pid}), relay, project up at {base_url} (no worker); "
            f"{n} generations to request"
        )
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0)
        async with counted_client(tally, base_url=base_url, timeout=120, limits=limits) as http:
            auth = await echo_user(http)
            chats = await create_chats(http, auth, n)
            gate = asyncio.Semaphore(16)

            async def request(chat_id: str | None, i: int) -> str:
                if chat_id is None:
                    return ""
                body = {"content": f"open {i}", "model": PACED_MODEL, "params": {"max_tokens": chunks}}
                async with gate:
                    with contextlib.suppress(httpx.TransportError):  # counted by the tally
                        r = await http.post(f"/api/v1/chats/{chat_id}/messages", json=body, headers=auth)
                        if r.status_code == 202:
                            return str(r.json()["generation_id"])
                return ""

            gids = await asyncio.gather(*(request(chat, i) for i, chat in enumerate(chats)))
        streams = [OpenStream(index=i, generation_id=g) for i, g in enumerate(gids) if g]
        problems += [f"{label}: {n - len(streams)} generation(s) could not be requested"] if len(streams) < n else []
        # The projectors catch up on the chats and messages first: their work is not the fan-out's.
        settle_s = await settle(publisher)
        progress(
            f"open: {len(streams)} generations requested, read models caught up {settle_s:.1f} s later; opening "
            f"their streams from {scale.clients} process(es)"
        )

        context = multiprocessing.get_context("spawn")
        children = []
        for part in range(scale.clients):
            mine, theirs = context.Pipe()
            share = streams[part :: scale.clients]
            proc = context.Process(target=open_client_process, args=(base_url, auth, share, theirs), daemon=True)
            proc.start()
            theirs.close()
            children.append((proc, mine))
        try:
            ready = [await asyncio.to_thread(conn.recv) for _, conn in children]
            opened = sum(count for _, count in ready)
            await asyncio.sleep(1.0)  # the API's readers subscribe after the headers have gone out
            named = {f"parley {name}": proc.pid for name, proc in deployment.children.items()}
            named["bench publisher"] = os.getpid()
            named |= {f"bench client {i + 1}": proc.pid for i, (proc, _) in enumerate(children)}
            cpu = Cpu(home, named)
            cpu_before, busy_before, cpu_from = cpu.sample(), machine_busy(), time.perf_counter()
            progress(f"open: {opened} streams open; publishing {chunks} chunks each at {pace:g}/s, {load()}")
            seconds, late = await publish_paced(publisher, streams, chunks, pace)
            results = [(await asyncio.to_thread(conn.recv))[1] for _, conn in children]
            cpu_after, busy_after = cpu.sample(), machine_busy()
            cpu_s = time.perf_counter() - cpu_from  # publishing, then the last deliveries and the results
            window_s = max(seconds, 1e-9)
        finally:
            for proc, conn in children:
                conn.close()
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
        problems[:0] = [f"open: logged {e}" for e in deployment.errors()]
    await publisher.close()

    streams = [s for r in results for s in r["streams"]]
    for r in results:
        requests, transport, non_2xx = r["tally"]
        tally.requests += requests
        tally.transport.update(transport)
        tally.non_2xx.update(non_2xx)
    used = Cpu.used(cpu_before, cpu_after)
    busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1]) * 100
    live = [(received - published) * 1000 for s in streams for published, received in s.chunks]
    # All open: chunks published once every stream had its first chunk and before any had its done.
    firsts = [s.chunks[0][1] for s in streams if s.chunks]
    all_open_from = max(firsts, default=0.0)
    all_open_to = min((s.closed_wall for s in streams if s.opened_wall), default=0.0)
    steady = [
        (received - published) * 1000
        for s in streams
        for published, received in s.chunks
        if all_open_from <= published <= all_open_to
    ]
    start_wall = min((p for s in streams for p, _ in s.chunks[:1]), default=0.0)
    lags = [lag for r in results for wall, lag in r["lags"] if start_wall <= wall <= start_wall + window_s]
    bad = [(s, p) for s in streams if (p := s.problems(chunks))]
    at_once = open_at_once(streams)
    if raw := os.environ.get("BENCH_OPEN_RAW"):  # every chunk, for a closer look: index, published, received
        Path(raw).write_text(json.dumps([[s.index, p, r] for s in streams for p, r in s.chunks]))  # noqa: ASYNC240
    delivered = sum(len(s.chunks) for s in streams)

    report.add(
        f"{label}: streams open at once",
        f"{at_once:,}",
        f"of {n:,}, one parley api process, {scale.clients} client process(es); all {len(streams):,} open "
        f"together for {max(0.0, all_open_to - all_open_from):.1f} s",
    )
    report.add(
        f"{label}: publish -> client p50 / p95 / p99 / max (ms)",
        percentiles(live),
        f"{len(live):,} chunks ({delivered / window_s:,.0f}/s over {window_s:.1f} s), all live",
    )
    report.add(
        f"{label}: ... all streams open p50 / p95 / p99 / max (ms)",
        percentiles(steady),
        f"{len(steady):,} chunks published while all {len(streams):,} were open",
    )
    report.add(
        f"{label}: parley api CPU (%)",
        f"{used.get('parley api', 0.0) / cpu_s * 100:.0f}",
        f"of one core, over {cpu_s:.1f} s (publishing, the last deliveries); "
        f"machine busy {busy:.0f}% of {os.cpu_count()} cores",
    )
    ours = sum(used.values()) / cpu_s
    others = ", ".join(f"{name} {sec / cpu_s:.2f}" for name, sec in sorted(used.items(), key=lambda x: -x[1]))
    outside = max(0.0, busy / 100 * (os.cpu_count() or 1) - ours)
    report.add(f"{label}: cores used", f"{ours:.2f}", f"{others}; not ours (other tenants) {outside:.2f}")
    # p99 per 5 s of publishing: a neighbour's burst on a shared machine shows as a window apart.
    windows: dict[int, list[float]] = {}
    for s in streams:
        for published, received in s.chunks:
            windows.setdefault(int((published - start_wall) // 5), []).append((received - published) * 1000)
    report.add(
        f"{label}: ... p99 per 5 s of publishing (ms)",
        f"{min((percentile(v, 0.99) for v in windows.values()), default=0):.1f} min",
        " ".join(f"{percentile(v, 0.99):.1f}" for _, v in sorted(windows.items())),
    )
    report.add(
        f"{label}: client loop lag p50 / p95 / p99 / max (ms)",
        percentiles(lags),
        f"how late a 10 ms sleep woke up in the client processes; publisher late p99 "
        f"{percentile(late, 0.99) if late else 0:.1f} ms, max {max(late, default=0):.1f}",
    )
    report.add(f"{label}: streams exact", f"{len(streams) - len(bad)}/{n}", f"{chunks} chunks + done each")
    problems[:0] = tally.report(report, "open")
    progress(
        f"open: {at_once} at once, publish->client p50/p95/p99/max {percentiles(live)} ms, api CPU "
        f"{used.get('parley api', 0.0) / cpu_s * 100:.0f}%, client lag {percentiles(lags)} ms, "
        f"{sum(tally.transport.values())} transport errors, {sum(tally.non_2xx.values())} non-2xx, {load()}"
    )
    return problems + [f"{label}, stream {s.index} ({s.generation_id}): {'; '.join(p)}" for s, p in bad]


async def run(urls: EngineUrls, home: Path, scale: Scale, layouts: tuple[str, ...]) -> tuple[Report, list[str]]:
    report = Report()
    problems: list[str] = []
    for layout in layouts:
        if layout == "open":
            problems += await measure_open(urls, home, scale, report)
        else:
            problems += await measure_layout(layout, urls, home, scale, report)
    return report, problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--quick", action="store_true", help="20 streams, fewer rounds")
    form.add_argument("--smoke", action="store_true", help="4 streams of 16 tokens: that it runs, in about 30 s")
    parser.add_argument("--streams", type=int, help="concurrent streams per round (default 200, quick 20, smoke 4)")
    parser.add_argument(
        "--layout",
        choices=(*LAYOUTS, "open"),
        help="only this layout, or only the open streams phase (default: both layouts, then the open streams "
        "phase where the form has one)",
    )
    parser.add_argument(
        "--open-streams",
        type=int,
        metavar="N",
        help="open streams phase: N SSE streams held open on one parley api process (default 1,000 in the "
        "full form, none in --quick and --smoke); 0 skips it",
    )
    parser.add_argument("--pace", type=float, help="open streams phase: chunks per second per stream (default 2)")
    parser.add_argument("--open-seconds", type=float, help="open streams phase: seconds of chunks per stream (30)")
    parser.add_argument("--clients", type=int, help="open streams phase: client processes (default 2)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the engines on SIGTERM as on Ctrl-C
    scale = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.streams:
        scale = replace(scale, streams=max(1, args.streams))
    if args.open_streams is not None:
        scale = replace(scale, open_streams=max(0, args.open_streams))
    if args.pace:
        scale = replace(scale, open_pace=args.pace)
    if args.open_seconds:
        scale = replace(scale, open_seconds=args.open_seconds)
    if args.clients:
        scale = replace(scale, clients=max(1, args.clients))
    if args.layout == "open" and not scale.open_streams:
        parser.error("--layout open needs --open-streams N (this form has no open streams phase)")
    layouts = (args.layout,) if args.layout else LAYOUTS + (("open",) if scale.open_streams else ())
    configure_logging("warning", json=False)
    command = " ".join(["python -m bench.pipeline", *(sys.argv[1:] if argv is None else argv)])
    machine = (
        f"{os.cpu_count()} CPUs, Postgres fsync off, {scale.tokens} tokens a stream at full speed, "
        f"{scale.paced_tokens} paced, tenant rate limits lifted to {LIFTED_RATE_LIMITS['user_per_minute']:,}/min "
        "per user and per API key through PUT /api/v1/quotas/rate-limits"
    )
    progress(f"{command}: {machine}, layouts {', '.join(layouts)}, {load()}")
    home = Path(tempfile.mkdtemp(prefix="parley-bench-", dir="/tmp"))
    try:
        with stopwatch() as elapsed, EmbeddedEngines(home, fast=True) as engines:
            urls = engines.start()
            progress("engines started")
            report, problems = asyncio.run(run(urls, home, scale, layouts))
            total = elapsed()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"\n{command}  ({machine}, {total:.0f} s; {load()} at the end)")
    print(report.render(), flush=True)
    if problems:
        print(f"\n{len(problems)} problem(s):", *problems[:30], sep="\n", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
