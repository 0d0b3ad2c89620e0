"""Benchmark of what parley adds on ``POST /v1/chat/completions``, beside LiteLLM's proxy, in front of an
upstream that answers at once.

Run ``python -m bench.openai_overhead`` (``--quick`` for a short run, ``--smoke`` for a check that it runs,
``--fast`` for Postgres without fsync). Everything listens on 127.0.0.1 and runs as its own process:

- the upstream: ``bench.instant_upstream``, a raw asyncio OpenAI-protocol server that answers 16 words
  (16 tokens) with usage the moment it has read a request, streamed or not;
- ``direct``: the clients call the upstream itself. The baseline, and the check that the upstream and the
  clients are not what limits the other two;
- ``litellm``: LiteLLM's proxy (``litellm --config``, its own venv ``.venv-litellm``, created with
  ``pip install 'litellm[proxy]'`` on the first run) with one ``openai/`` model whose ``api_base`` is the
  upstream. A master key (LiteLLM refuses to start without one), no database: so no virtual keys, spend
  tracking or budgets, and nothing sent out (telemetry off, the cost map read from the package);
- ``parley``: ``parley api``, ``relay``, ``project`` and ``worker`` as four processes, as ``parley serve``
  runs them, on the embedded Postgres, NATS and Redis, with an ``openai`` provider pointing at the
  upstream. The client is a tenant user (role ``user``) with a parley API key. Governance stays on: the
  per-request rate limiter, the token quota (reserved in Redis before the command, settled after), the
  event store, the audit log and every projector. The tenant's rate limits (120 requests a minute per API
  key) are raised to 100,000 a minute through ``PUT /api/v1/quotas/rate-limits``, and the user's daily
  token limit to 10^9 through ``PUT /api/v1/quotas/users/{id}``, as an operator would; the worker runs
  up to 64 generations at once (``PARLEY_WORKER_CONCURRENCY``; 4 by default, sized for a local GPU).

The clients are ``httpx.AsyncClient`` in the benchmark's process, the same code for the three targets:
``N`` tasks each send one request after the other (keep-alive), ``max_tokens`` 16, a prompt of a few words
that differs per request; streamed requests ask for ``stream_options.include_usage``. Every answer is
checked (the 16 words, usage with 16 completion tokens, ``[DONE]``). Scenarios: not streamed and streamed,
at 1 and 32 clients. Per scenario the targets take turns (in rounds, the order reversed each round), each
turn opened by a few unmeasured requests.

Figures, per scenario and target:

- latency p50 / p99: not streamed, from just before the request to the parsed response; streamed, to the
  first chunk with content ("first chunk") and to ``data: [DONE]`` ("end"). ``+`` is the same percentile
  minus the direct one (what the proxy adds).
- req/s: requests over the wall time of the turns (the direct figure at 32 clients is the ceiling of the
  clients and the upstream together on this machine).
- CPU ms/request, from ``/proc/<pid>/stat`` (user + system) before and after each turn: the proxy's
  processes (LiteLLM: its process and its children; parley: the four parley processes plus the Postgres
  postmaster and backends, NATS and Redis; after a parley turn the CPU is read once every projector has
  applied the event store, so their work is counted), the upstream, and the clients. The split of
  parley's share by process is printed after the table.
- parley's stages (1 client): each request's time cut at its generation's event times, read back with
  ``GET /api/v1/generations/{id}`` (``X-Parley-Generation-Id``): from the request to ``GenerationRequested``
  (authentication, rate limit, quota reservation, the command), to ``GenerationStarted`` (commit, relay,
  job on JetStream, the worker's command), to the outcome event (the upstream call, the token chunks on
  JetStream), and from there to the end of the response at the client (commit, the API reading the done
  chunk, the response). p50 of each, which need not add up to the p50 of the whole.
- errors, per target: HTTP transport errors (``httpx.TransportError``: connect, read, timeouts, a stream
  cut short) and answers outside 2xx, counted apart at the client's transport over every request sent to
  the target (warm-up and stage reads included), and answers that came back 2xx but wrong. A failed
  request is counted and the run goes on; any of them is a problem (exit status 1).

The machine is shared by everything above: with 2 cores, the client, the upstream and a proxy compete for
them, so at 32 clients the figures say as much about CPU per request as about the proxies' design.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from adapters.embedded import EmbeddedEngines, EngineUrls
from adapters.logging import configure_logging
from bench.pipeline import (
    LIFTED_RATE_LIMITS,
    HttpTally,
    Processes,
    _proc,
    counted_client,
    free_port,
    lift_rate_limits,
    machine_busy,
    replace_settings,
    settle,
    sign_up,
)
from bench.spine import load, percentile, progress, settings_for
from workers.bootstrap import Container, bootstrap

__all__ = ["FULL", "QUICK", "SMOKE", "Scale", "main"]

REPO_ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = REPO_ROOT / ".venv-litellm"
MODEL = "instant"
ANSWER_TOKENS = 16
EXPECTED = "".join(f" w{i}" for i in range(1, ANSWER_TOKENS + 1))
"""What the upstream answers to ``max_tokens`` 16 (``bench.instant_upstream``)."""
WORKER_CONCURRENCY = 64
USER_DAILY_TOKENS = 1_000_000_000
TARGETS = ("direct", "litellm", "parley")


@dataclass(frozen=True)
class Scale:
    requests_1: int
    """Measured requests per target at 1 client (not streamed, and again streamed)."""
    requests_n: int
    """Measured requests per target at ``clients`` clients."""
    clients: int
    rounds: int
    """Each scenario's requests are split into this many turns per target, the order reversed each round."""
    warmup: int
    """Unmeasured requests per target and mode before the first scenario."""


FULL = Scale(requests_1=300, requests_n=3200, clients=32, rounds=2, warmup=40)
QUICK = Scale(requests_1=50, requests_n=320, clients=32, rounds=1, warmup=20)
SMOKE = Scale(requests_1=8, requests_n=16, clients=4, rounds=1, warmup=4)
"""That every part still runs, not figures to compare."""


# --- stopping ----------------------------------------------------------------------------------------------
class Shutdown:
    """Ctrl-C or SIGTERM. Outside the event loop: KeyboardInterrupt, and the ``finally`` blocks stop what was
    started. In it: the clients stop sending and the run is cancelled, which stops parley's processes, then
    the others and the engines are stopped. A second signal stops every process at once and exits."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signals = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.cleanups: list[Callable[[], None]] = []
        """Synchronous, in the order to run them: the second signal's way out."""

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        self.stop.set()
        if self.signals == 1:
            if self.loop is not None and self.task is not None and not self.task.done():
                print("\nstopping (again to stop at once)", file=sys.stderr, flush=True)
                self.loop.call_soon_threadsafe(self.task.cancel)
                return
            raise KeyboardInterrupt
        print("\nstopping every process now", file=sys.stderr, flush=True)
        for cleanup in self.cleanups:
            with contextlib.suppress(Exception):
                cleanup()
        os._exit(130)


SHUTDOWN = Shutdown()


def terminate(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM to child processes, SIGKILL to those still there after ``grace_s``; reaped."""

    def alive(pid: int) -> bool:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    pids = [pid for pid in pids if alive(pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (pids := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- the processes ---------------------------------------------------------------------------------------
class Child:
    """A child process in its own process group (its children go with it), output to a log file."""

    def __init__(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ):
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        else:  # the leader is gone; its group may not be
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


async def start_upstream(home: Path, children: list[Child]) -> str:
    child = Child(
        "upstream",
        [
            sys.executable,
            "-m",
            "bench.instant_upstream",
            "--port",
            str(free_port()),
            "--model",
            MODEL,
            "--tokens",
            str(ANSWER_TOKENS),
        ],
        home / "upstream.log",
        cwd=REPO_ROOT,
    )
    children.append(child)
    deadline = time.monotonic() + 30
    while True:
        child.check_alive()
        text = child.tail()
        if "listening on " in text:
            return text.split("listening on ", 1)[1].split()[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"the upstream did not start in 30 s:\n{text}")
        await asyncio.sleep(0.05)


def ensure_litellm() -> str:
    """The LiteLLM venv, created on the first run; returns LiteLLM's version."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    python = LITELLM_VENV / "bin" / "python"
    if not litellm.exists():
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
        progress(f"creating {LITELLM_VENV} (once): {base} -m venv, then pip install 'litellm[proxy]'")
        subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = subprocess.Popen(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "litellm[proxy]"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert pip.stdout is not None
        collected = 0
        try:
            for line in pip.stdout:
                if line.startswith("Collecting"):
                    collected += 1
                    if collected % 25 == 0:
                        progress(f"  pip: {collected} packages collected")
                elif line.startswith(("Successfully", "ERROR")):
                    progress(f"  pip: {line.rstrip()[:200]}")
        except BaseException:
            pip.terminate()
            pip.wait(30)
            raise
        if pip.wait() != 0 or not litellm.exists():
            raise RuntimeError(f"pip install 'litellm[proxy]' into {LITELLM_VENV} failed ({pip.returncode})")
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


LITELLM_KEY = "sk-bench-" + "5f1c0a9e7b3d4e21a8c6f0b2d9e47a13"
"""LiteLLM's master key (it refuses to start without a strong one); the only key it checks, no database."""


async def start_litellm(home: Path, upstream: str, children: list[Child]) -> str:
    port = free_port()
    config = home / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-upstream-dummy\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
        "general_settings:\n"
        "  disable_spend_logs: true\n"
    )
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_TELEMETRY": "False",
        "LITELLM_TELEMETRY_DISABLED": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the model cost map from the internet
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
        "LITELLM_LOG": "ERROR",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name in ("DATABASE_URL", "REDIS_HOST", "REDIS_URL", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(name, None)
    env["PATH"] = f"{LITELLM_VENV / 'bin'}:{env.get('PATH', '')}"
    child = Child(
        "litellm",
        [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        home / "litellm.log",
        env=env,
        cwd=home,
    )
    children.append(child)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        while True:
            child.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/health/liveliness")).status_code == 200:
                    return base
            if time.monotonic() > deadline:
                raise TimeoutError(f"LiteLLM did not start in 180 s:\n{child.tail()}")
            await asyncio.sleep(0.25)


async def parley_api_key(http: httpx.AsyncClient, upstream: str) -> str:
    """The tenant's admin registers the upstream as an ``openai`` provider and the model, lifts the rate
    limits and the user's daily tokens; the user makes an API key. Returns it."""
    admin = await sign_up(http, "admin@bench.example")
    await lift_rate_limits(http, admin)
    provider = {"name": "instant", "kind": "openai", "base_url": f"{upstream}/v1", "api_key": "sk-upstream-dummy"}
    r = await http.post("/api/v1/providers", json=provider, headers=admin)
    assert r.status_code == 201, r.text
    r = await http.post(
        "/api/v1/models", json={"name": MODEL, "provider": "instant", "upstream_model": MODEL}, headers=admin
    )
    assert r.status_code == 201, r.text
    user = await sign_up(http, "user@bench.example")
    r = await http.get("/api/v1/auths/me", headers=user)
    assert r.status_code == 200 and r.json()["role"] == "user", r.text
    r = await http.put(f"/api/v1/quotas/users/{r.json()['id']}", json={"limit": USER_DAILY_TOKENS}, headers=admin)
    assert r.status_code == 200, r.text
    r = await http.post("/api/v1/auths/api-keys", json={"name": "bench"}, headers=user)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


# --- CPU -------------------------------------------------------------------------------------------------
class Cpu:
    """CPU seconds of our processes, by group: named pids and their descendants, and the embedded
    engines (found by their command lines, which name the run's home) with their children."""

    ENGINES = ("postgres", "nats-server", "redis-server")

    def __init__(self, home: Path) -> None:
        self.home = str(home)
        self.named: dict[int, str] = {}

    def sample(self) -> dict[int, tuple[str, float]]:
        procs = {int(p): info for p in os.listdir("/proc") if p.isdigit() and (info := _proc(int(p)))}
        owner = dict(self.named)
        for pid, (_, _, cmdline) in procs.items():
            if self.home in cmdline:
                exe = cmdline.split(" ", 1)[0]
                for engine in self.ENGINES:
                    if engine in exe:
                        owner.setdefault(pid, engine.removesuffix("-server"))
        changed = True
        while changed:  # descendants: Postgres backends, LiteLLM's workers
            changed = False
            for pid, (ppid, _, _) in procs.items():
                if pid not in owner and owner.get(ppid, "clients") != "clients":
                    owner[pid] = owner[ppid]
                    changed = True
        return {pid: (name, procs[pid][1]) for pid, name in owner.items() if pid in procs}

    @staticmethod
    def used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (name, seconds) in after.items():
            out[name] = out.get(name, 0.0) + seconds - before.get(pid, (name, 0.0))[1]
        return out


PARLEY_GROUPS = ("parley api", "parley worker", "parley project", "parley relay", "postgres", "nats", "redis")
PROXY_GROUPS = {"direct": (), "litellm": ("litellm",), "parley": PARLEY_GROUPS}


# --- the clients -----------------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    base_url: str
    api_key: str
    http: httpx.AsyncClient | None = None
    tally: HttpTally = field(default_factory=HttpTally)
    """Every request sent to the target: transport errors and non-2xx answers."""
    wrong: int = 0
    """2xx answers that were not the expected one."""


class Non2xx(RuntimeError):
    """An answer outside 2xx (counted by the target's tally)."""


class WrongAnswer(RuntimeError):
    """A 2xx answer that is not the upstream's 16 words with their usage."""


@dataclass
class Sample:
    first: float
    end: float
    sent_wall: float = 0.0
    """``time.time()`` just before the request and once it ended, to set against parley's event times."""
    end_wall: float = 0.0
    generation_id: str | None = None
    """parley's ``X-Parley-Generation-Id``."""


@dataclass
class Turn:
    samples: list[Sample]
    errors: list[str]
    seconds: float
    cpu: dict[str, float]
    busy: float
    stages: list[dict[str, float]] = field(default_factory=list)
    """parley, 1 client: per request, the seconds of each stage (see ``STAGES``)."""


@dataclass
class Result:
    turns: list[Turn] = field(default_factory=list)

    @property
    def samples(self) -> list[Sample]:
        return [s for t in self.turns for s in t.samples]

    @property
    def errors(self) -> list[str]:
        return [e for t in self.turns for e in t.errors]

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.turns)

    def cpu(self, name: str) -> float:
        return sum(t.cpu.get(name, 0.0) for t in self.turns)

    @property
    def busy(self) -> float:
        return sum(t.busy * t.seconds for t in self.turns) / max(1e-9, self.seconds)


def body(n: int, stream: bool) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request {n}: answer in sixteen words, please."}],
        "max_tokens": ANSWER_TOKENS,
        "stream": stream,
    }
    if stream:
        b["stream_options"] = {"include_usage": True}
    return b


async def request(http: httpx.AsyncClient, n: int, stream: bool) -> Sample:
    sent_wall, start = time.time(), time.perf_counter()
    if not stream:
        r = await http.post("/chat/completions", json=body(n, stream))
        end, end_wall = time.perf_counter(), time.time()
        if r.status_code != 200:
            raise Non2xx(f"HTTP {r.status_code}: {r.text[:200]}")
        try:
            answer = r.json()
            text = answer["choices"][0]["message"]["content"]
            usage = answer.get("usage") or {}
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            raise WrongAnswer(f"not a chat completion: {r.text[:200]!r}") from exc
        if text != EXPECTED or usage.get("completion_tokens") != ANSWER_TOKENS:
            raise WrongAnswer(f"unexpected answer {text!r}, usage {usage}")
        return Sample(end - start, end - start, sent_wall, end_wall, r.headers.get("x-parley-generation-id"))
    first: float | None = None
    parts: list[str] = []
    usage = {}
    done = False
    async with http.stream("POST", "/chat/completions", json=body(n, stream)) as r:
        generation_id = r.headers.get("x-parley-generation-id")
        if r.status_code != 200:
            raise Non2xx(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except ValueError as exc:
                raise WrongAnswer(f"not JSON: {data[:200]!r}") from exc
            if "error" in chunk:
                raise WrongAnswer(f"error event {data[:200]}")
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if first is None:
                        first = time.perf_counter()
                    parts.append(content)
            if chunk.get("usage"):
                usage = chunk["usage"]
    end, end_wall = time.perf_counter(), time.time()
    if not done or first is None or "".join(parts) != EXPECTED or usage.get("completion_tokens") != ANSWER_TOKENS:
        raise WrongAnswer(f"unexpected stream: done {done}, text {''.join(parts)!r}, usage {usage}")
    return Sample(first - start, end - start, sent_wall, end_wall, generation_id)


async def load_target(
    target: Target, count: int, clients: int, stream: bool, counter: list[int]
) -> tuple[list[Sample], list[str]]:
    assert target.http is not None
    http = target.http
    samples: list[Sample] = []
    errors: list[str] = []
    remaining = [count]

    async def client() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            counter[0] += 1
            try:
                samples.append(await request(http, counter[0], stream))
            except Exception as exc:  # a failed request is a result, not the end of the run
                # transport errors and non-2xx answers are counted by the target's tally
                target.wrong += not isinstance(exc, httpx.TransportError | Non2xx)
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
            if SHUTDOWN.stop.is_set() or (task := asyncio.current_task()) is not None and task.cancelling():
                # Ctrl-C: stop even where a library turned the cancellation into an error
                raise asyncio.CancelledError

    await asyncio.gather(*(client() for _ in range(min(clients, count))))
    return samples, errors


@dataclass
class Run:
    cpu: Cpu
    observer: Container
    counter: list[int] = field(default_factory=lambda: [0])

    async def turn(self, target: Target, count: int, clients: int, stream: bool) -> Turn:
        assert target.http is not None
        await load_target(target, min(count, clients * 2), clients, stream, self.counter)  # warm, unmeasured
        await self.quiesce(target)
        before, busy_before = self.cpu.sample(), machine_busy()
        start = time.perf_counter()
        samples, errors = await load_target(target, count, clients, stream, self.counter)
        seconds = time.perf_counter() - start
        await self.quiesce(target)
        after, busy_after = self.cpu.sample(), machine_busy()
        busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
        stages = await self.stages(target, samples) if target.name == "parley" and clients == 1 else []
        return Turn(samples, errors, seconds, Cpu.used(before, after), busy, stages)

    async def stages(self, target: Target, samples: list[Sample]) -> list[dict[str, float]]:
        """Each request's time split at its generation's event times (``requested_at``, ``started_at``,
        ``finished_at``: when the command, the worker and the outcome stamped their events; one clock)."""
        assert target.http is not None
        out = []
        for s in samples:
            if not s.generation_id:
                continue
            root = target.base_url.removesuffix("/v1")
            try:
                r = await target.http.get(f"{root}/api/v1/generations/{s.generation_id}")
                view = r.json() if r.status_code == 200 else {}
            except (httpx.TransportError, ValueError):  # counted by the target's tally, or not JSON: no stages
                continue
            if not all(view.get(k) for k in ("requested_at", "started_at", "finished_at")):
                continue
            requested, started, finished = (
                datetime.fromisoformat(view[k]).timestamp() for k in ("requested_at", "started_at", "finished_at")
            )
            out.append(
                {
                    "request -> GenerationRequested": requested - s.sent_wall,
                    "-> GenerationStarted (relay, job, worker)": started - requested,
                    "-> outcome event (upstream call, chunks)": finished - started,
                    "-> response at the client": s.end_wall - finished,
                }
            )
        return out

    async def quiesce(self, target: Target) -> None:
        """Until the work a turn left behind is done: parley's projectors have applied the event store."""
        if target.name == "parley":
            await settle(self.observer)


# --- report ----------------------------------------------------------------------------------------------
def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def render(results: dict[tuple[bool, int], dict[str, Result]], targets: list[str]) -> tuple[str, list[str]]:
    header = (
        "scenario",
        "target",
        "p50 ms",
        "p99 ms",
        "+p50",
        "+p99",
        "req/s",
        "proxy CPU",
        "upstream",
        "client",
        "busy",
    )
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for (stream, clients), by_target in results.items():
        mode = "streamed" if stream else "not streamed"
        metrics = [("first chunk", "first"), ("end", "end")] if stream else [("", "end")]
        for label, attr in metrics:
            base = by_target.get("direct")
            base_values = [getattr(s, attr) for s in base.samples] if base else []
            for name in targets:
                result = by_target[name]
                values = [getattr(s, attr) for s in result.samples]
                if not values:
                    rows.append(
                        (
                            f"{mode}, {clients} client{'s' * (clients > 1)}{', ' + label if label else ''}",
                            name,
                            "-",
                            "-",
                            "-",
                            "-",
                            "-",
                            "-",
                            "-",
                            "-",
                            "-",
                        )
                    )
                    continue
                p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
                added = ("", "")
                if base_values and name != "direct":
                    added = (
                        f"{(p50 - percentile(base_values, 0.5)) * 1000:+.1f}",
                        f"{(p99 - percentile(base_values, 0.99)) * 1000:+.1f}",
                    )
                n = len(result.samples)
                last = attr == "end"
                proxy = sum(result.cpu(g) for g in PROXY_GROUPS[name])
                rows.append(
                    (
                        f"{mode}, {clients} client{'s' * (clients > 1)}{', ' + label if label else ''}",
                        name,
                        ms(p50),
                        ms(p99),
                        *added,
                        f"{n / result.seconds:,.0f}" if last else "",
                        (f"{proxy / n * 1000:.2f}" if PROXY_GROUPS[name] else "") if last else "",
                        f"{result.cpu('upstream') / n * 1000:.2f}" if last else "",
                        f"{result.cpu('clients') / n * 1000:.2f}" if last else "",
                        f"{result.busy * 100:.0f}%" if last else "",
                    )
                )
        if "parley" in by_target and by_target["parley"].samples:
            result = by_target["parley"]
            n = len(result.samples)
            split = ", ".join(f"{g.removeprefix('parley ')} {result.cpu(g) / n * 1000:.2f}" for g in PARLEY_GROUPS)
            notes.append(f"parley CPU ms/request, {mode}, {clients} client{'s' * (clients > 1)}: {split}")
            stages = [st for t in result.turns for st in t.stages]
            if stages:
                parts = ", ".join(
                    f"{name} {percentile([st[name] for st in stages], 0.5) * 1000:.1f}" for name in stages[0]
                )
                notes.append(f"parley stages p50 ms, {mode}, {clients} client ({len(stages)} requests): {parts}")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))
    ]
    lines.append("-" * len(lines[0]))
    previous = ""
    for row in rows:
        scenario = row[0] if row[0] != previous else ""
        previous = row[0]
        cells = (scenario, *row[1:])
        lines.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )
    return "\n".join(lines), notes


def first_traceback(parley: Processes) -> list[str]:
    """The first traceback the parley processes logged, if any: it explains the errors counted."""
    for name in parley.PARTS:
        with contextlib.suppress(OSError):
            lines = parley._log(name).read_text(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if line.startswith("Traceback"):
                    end = next((j for j in range(i + 1, len(lines)) if lines[j] and not lines[j][0].isspace()), i)
                    return [f"parley {name}: " + "\n".join(lines[max(0, i - 1) : end + 1])]
    return []


# --- the run ---------------------------------------------------------------------------------------------
async def run(
    urls: EngineUrls,
    home: Path,
    scale: Scale,
    targets: list[str],
    children: list[Child],
    parleys: list[Processes],
    fast: bool,
) -> tuple[str, list[str], list[str]]:
    SHUTDOWN.loop, SHUTDOWN.task = asyncio.get_running_loop(), asyncio.current_task()
    if SHUTDOWN.stop.is_set():
        raise asyncio.CancelledError
    upstream = await start_upstream(home, children)
    progress(f"upstream at {upstream}")
    cpu = Cpu(home)
    cpu.named[os.getpid()] = "clients"
    cpu.named[children[-1].pid] = "upstream"
    endpoints: dict[str, Target] = {"direct": Target("direct", f"{upstream}/v1", "sk-upstream-dummy")}
    if "litellm" in targets:
        base = await start_litellm(home, upstream, children)
        cpu.named[children[-1].pid] = "litellm"
        endpoints["litellm"] = Target("litellm", f"{base}/v1", LITELLM_KEY)
        progress(f"litellm at {base}")
    settings = replace_settings(settings_for(urls, home, "bench_openai"), embedded_fast=fast)
    async with contextlib.AsyncExitStack() as stack:
        observer = await bootstrap(settings, pool_size=2)  # reads the projectors' positions
        stack.push_async_callback(observer.close)
        if "parley" in targets:
            parley = Processes(settings, WORKER_CONCURRENCY, home)
            parleys.append(parley)  # its children, for stopping them however the run ends
            base = await stack.enter_async_context(parley)
            for name, pid in parley.pids().items():
                if name.startswith("parley "):
                    cpu.named[pid] = name
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                key = await parley_api_key(http, upstream)
            endpoints["parley"] = Target("parley", f"{base}/v1", key)
            progress(f"parley at {base} (api, relay, project, worker; worker concurrency {WORKER_CONCURRENCY})")
        for t in endpoints.values():
            # Idle connections are dropped before the servers' 5 s keep-alive timeout can close them under a
            # request being sent.
            limits = httpx.Limits(
                max_connections=scale.clients + 8, max_keepalive_connections=scale.clients + 8, keepalive_expiry=2.0
            )
            t.http = await stack.enter_async_context(
                counted_client(
                    t.tally,
                    base_url=t.base_url,
                    timeout=120,
                    limits=limits,
                    headers={"Authorization": f"Bearer {t.api_key}"},
                )
            )
        order = [endpoints[name] for name in TARGETS if name in endpoints]
        runner = Run(cpu, observer)
        problems: list[str] = []
        for stream in (False, True):
            for t in order:
                samples, errors = await load_target(t, scale.warmup, 4, stream, runner.counter)
                problems += [f"{t.name} warm-up: {e}" for e in errors[:5]]
        progress(f"warmed up ({scale.warmup} requests per target, streamed and not); {load()}")
        results: dict[tuple[bool, int], dict[str, Result]] = {}
        for clients, total in ((1, scale.requests_1), (scale.clients, scale.requests_n)):
            for stream in (False, True):
                by_target = {t.name: Result() for t in order}
                results[(stream, clients)] = by_target
                for r in range(scale.rounds):
                    count = total // scale.rounds
                    for t in order if r % 2 == 0 else order[::-1]:
                        turn = await runner.turn(t, count, clients, stream)
                        by_target[t.name].turns.append(turn)
                        problems += [f"{t.name}, {clients} clients, stream={stream}: {e}" for e in turn.errors[:5]]
                        p50 = percentile([s.end for s in turn.samples], 0.5) * 1000 if turn.samples else 0
                        progress(
                            f"{'streamed' if stream else 'not streamed'}, {clients} client(s), round {r + 1}/"
                            f"{scale.rounds}, {t.name}: {len(turn.samples)} in {turn.seconds:.2f} s "
                            f"({len(turn.samples) / turn.seconds:,.0f}/s), p50 {p50:.1f} ms"
                            + (f", {len(turn.errors)} errors" if turn.errors else "")
                        )
        table, notes = render(results, [t.name for t in order])
        progress("measured; stopping parley, the upstream and the engines")
        for t in order:
            transport, non_2xx = sum(t.tally.transport.values()), sum(t.tally.non_2xx.values())
            notes.append(
                f"errors, {t.name}: {transport} transport errors, {non_2xx} non-2xx answers, {t.wrong} wrong "
                f"answers, of {t.tally.requests:,} requests"
            )
            problems[:0] = [
                f"{t.name}: {n} x transport error {what}" for what, n in t.tally.transport.most_common()
            ] + [f"{t.name}: {n} x answer {what}" for what, n in t.tally.non_2xx.most_common()]
        if "parley" in endpoints:
            problems[:0] = [f"parley logged {e}" for e in parley.errors()] + first_traceback(parley)
        return table, notes, problems


def parley_revision() -> str:
    """The commit the run measured, ``+changes`` when the work tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return head + (" +changes" if changed else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.openai_overhead", description=__doc__.split("\n")[0])
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--quick", action="store_true", help="50 requests at 1 client, 320 at 32, per target")
    form.add_argument("--smoke", action="store_true", help="8 requests at 1 client, 16 at 4: that it runs")
    parser.add_argument("--fast", action="store_true", help="embedded Postgres without fsync")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, of direct,litellm,parley")
    parser.add_argument("--clients", type=int, help="concurrent clients of the second pair of scenarios (32)")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    if "direct" not in targets:
        targets.insert(0, "direct")  # the baseline the others are measured against
    scale = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.clients:
        scale = Scale(scale.requests_1, scale.requests_n, max(1, args.clients), scale.rounds, scale.warmup)
    SHUTDOWN.install()
    configure_logging("warning", json=False)
    command = " ".join(["python -m bench.openai_overhead", *(sys.argv[1:] if argv is None else argv)])
    litellm_version = ensure_litellm() if "litellm" in targets else None
    versions = f"LiteLLM {litellm_version}, " if litellm_version else ""
    versions += f"parley {parley_revision()}, litestar {metadata.version('litestar')}, "
    versions += f"httpx {httpx.__version__}, Python {sys.version.split()[0]}"
    machine = (
        f"{os.cpu_count()} CPUs, Postgres fsync {'off' if args.fast else 'on'}, max_tokens {ANSWER_TOKENS}, "
        f"{scale.requests_1} requests per target at 1 client, {scale.requests_n} at {scale.clients}"
    )
    progress(f"{command}: {machine}; {versions}; {load()}")
    home = Path(tempfile.mkdtemp(prefix="parley-bench-", dir="/tmp"))
    children: list[Child] = []
    parleys: list[Processes] = []

    def stop_parley() -> None:
        terminate([p.pid for parley in parleys for p in parley.children.values()])

    def stop_children() -> None:
        for child in reversed(children):
            child.stop()

    started = time.perf_counter()
    try:
        with EmbeddedEngines(home, fast=args.fast) as engines:
            SHUTDOWN.cleanups += [stop_parley, stop_children, engines.stop, lambda: shutil.rmtree(home, True)]
            urls = engines.start()
            progress("engines started")
            try:
                table, notes, problems = asyncio.run(run(urls, home, scale, targets, children, parleys, args.fast))
            finally:
                SHUTDOWN.loop = SHUTDOWN.task = None
                stop_parley()  # stopped already, unless the run was cut short
                stop_children()
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: every process it started is stopped", file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    total = time.perf_counter() - started
    print(f"\n{command}  ({machine}; {total:.0f} s; {load()} at the end)")
    print(f"{versions}")
    print(
        "parley: api, relay, project, worker processes; quotas, audit, rate limiter on; tenant rate limits lifted "
        f"to {LIFTED_RATE_LIMITS['api_key_per_minute']:,}/min per API key and per user (PUT "
        f"/api/v1/quotas/rate-limits), the user's daily tokens to {USER_DAILY_TOKENS:,} (PUT "
        f"/api/v1/quotas/users/{{id}}), worker concurrency {WORKER_CONCURRENCY}"
    )
    if "litellm" in targets:
        print("litellm: master key, no database (no virtual keys, spend logs or budgets), telemetry off")
    print("latency ms; + = minus direct at the same percentile; CPU = CPU ms per request (user + system, /proc);")
    print("proxy CPU: LiteLLM's process, or parley's four processes + Postgres + NATS + Redis; busy = machine CPU\n")
    print(table)
    print()
    print(*notes, sep="\n", flush=True)
    if problems:
        print(f"\n{len(problems)} problem(s):", *problems[:30], sep="\n", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
