"""Commands over HTTP on ``parley serve``, beside the raw library on the same Postgres, in one run.

``parley serve`` is started as a newcomer starts it (everything in one process tree on the embedded
engines; the local model is not preloaded, the echo engine answers). Then, in turns of ``--seconds``:

1. CreateChat (``POST /api/v1/chats``) from ``--clients`` concurrent HTTP clients (one ``httpx``
   connection each, keep-alive);
2. SendMessage (``POST /api/v1/chats/{id}/messages``, each client its own chat, the echo model,
   ``max_tokens`` 4) from the same clients, with the relay, the projectors and the worker running;
3. the raw ``eventsourcing`` library saving one new aggregate per transaction from 16 threads, with the
   library's own recorder and parley's persistence settings, in a database of its own on the same
   Postgres server, while parley idles.

Rates, latency percentiles (request to response), and every transport error and non-2xx answer are
counted and printed: any is a failure of the run (exit status 1). The tenant's rate limits are lifted and
the admin's daily tokens raised through the API, as an operator would.

    python -m bench.commands_http                # 3 turns of 10 s, 64 clients
    python -m bench.commands_http --quick        # 1 turn of 3 s, 16 clients
    python -m bench.commands_http --smoke        # 1 turn of 1 s, 4 clients: that it runs
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from eventsourcing.domain import Aggregate, event
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.spine import raw_application

__all__ = ["main"]

PASSWORD = "correct horse battery staple"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tally:
    """What one phase saw."""

    latencies: list[float] = field(default_factory=list)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def failures(self) -> dict[str, int]:
        return {k: v for k, v in self.outcomes.items() if not k.startswith("2")}

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def row(self, name: str) -> str:
        return (
            f"{name:<34} {self.ok / self.seconds:>9.0f} {self.percentile(0.5):>8.1f} {self.percentile(0.99):>8.1f}"
            f"   {self.failures or 'none'}"
        )


class Serve:
    """``parley serve`` in a temporary home, stopped with SIGTERM (its whole tree) at the end."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Serve:
        env = {
            **os.environ,
            "PARLEY_HOME": str(self.home),
            "PARLEY_PORT": str(self.port),
            "PARLEY_PRELOAD_LOCAL_MODEL": "false",
            "PARLEY_ENABLE_ECHO_ENGINE": "true",
            "PARLEY_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
            "HF_HUB_OFFLINE": "1",
        }
        log = (self.home / "serve.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self

    def __exit__(self, *_: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + 180
        async with httpx.AsyncClient(base_url=self.base, timeout=5) as http:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, (self.home / "serve.log").read_text()[-3000:]
                try:
                    if (await http.get("/health/ready")).status_code == 200:
                        return dict(json.loads((self.home / "engines.json").read_text()))
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
        raise TimeoutError("parley serve was not ready in 180 s")


async def setup(base: str, clients: int) -> tuple[dict[str, str], list[str]]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        r = await http.post("/api/v1/auths/register", json={"email": "admin@bench.example", "password": PASSWORD, "name": "Admin"})
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        r = await http.post("/api/v1/auths/login", json={"email": "admin@bench.example", "password": PASSWORD})
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        lifted = {"user_per_minute": 100_000, "api_key_per_minute": 100_000}
        for method, path, body in (
            ("PUT", "/api/v1/quotas/rate-limits", lifted),
            ("PUT", f"/api/v1/quotas/users/{user_id}", {"limit": 10**12}),
            ("POST", "/api/v1/providers", {"name": "echoes", "kind": "echo"}),
            ("POST", "/api/v1/models", {"name": "echo", "provider": "echoes", "upstream_model": "echo"}),
        ):
            r = await http.request(method, path, json=body, headers=headers)
            assert r.status_code in (200, 201), r.text
        chats = []
        for n in range(clients):
            r = await http.post("/api/v1/chats", json={"title": f"bench {n}"}, headers=headers)
            assert r.status_code == 201, r.text
            chats.append(r.json()["id"])
        return headers, chats


async def http_phase(base: str, clients: int, seconds: float, request: Any) -> Tally:
    """``clients`` tasks, each on its own connection, sending ``request(client, i, n)`` one after another."""
    tally = Tally()
    connections = [httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=1)) for _ in range(clients)]
    deadline = time.perf_counter() + seconds

    async def run(i: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                r = await request(connections[i], i, n)
            except httpx.TransportError as e:
                tally.outcomes[type(e).__name__] += 1
                continue
            finally:
                n += 1
            tally.outcomes[str(r.status_code)] += 1
            if r.is_success:
                tally.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(clients)))
    tally.seconds = time.perf_counter() - started
    for c in connections:
        await c.aclose()
    return tally


class Note(Aggregate):
    """The raw side's aggregate: created and saved, one per transaction."""

    @event("NoteWritten")
    def __init__(self, text: str) -> None:
        self.text = text


def raw_phase(database_url: str, threads: int, seconds: float) -> Tally:
    name = f"bench_raw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(database_url)
    params["dbname"] = name
    app = raw_application(make_conninfo(**params), pool_size=threads, max_overflow=0)
    tally = Tally()
    lock = threading.Lock()
    go = threading.Barrier(threads + 1)
    deadline = 0.0

    def run() -> None:
        go.wait()
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            app.save(Note(text="x"))
            with lock:
                tally.latencies.append(time.perf_counter() - started)
                tally.outcomes["2xx"] += 1

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    go.wait()
    for w in workers:
        w.join()
    tally.seconds = time.perf_counter() - started
    app.close()
    return tally


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def run(args: argparse.Namespace) -> int:
    home = Path(tempfile.mkdtemp(prefix="parley-bench-http-"))
    progress(f"starting parley serve under {home} (load {load()})")
    with Serve(home) as serve:
        engines = await serve.ready()
        headers, chats = await setup(serve.base, args.clients)
        progress("ready; measuring")

        async def create_chat(c: httpx.AsyncClient, i: int, n: int) -> httpx.Response:
            return await c.post("/api/v1/chats", json={"title": f"c{i}-{n}"}, headers=headers)

        async def send_message(c: httpx.AsyncClient, i: int, n: int) -> httpx.Response:
            body = {"content": f"message {n}", "model": "echo", "params": {"max_tokens": 4}}
            return await c.post(f"/api/v1/chats/{chats[i]}/messages", json=body, headers=headers)

        totals: dict[str, Tally] = {}
        for turn in range(args.turns):
            for name, fn in (("CreateChat", create_chat), ("SendMessage", send_message)):
                t = await http_phase(serve.base, args.clients, args.seconds, fn)
                progress(f"turn {turn + 1}: {name} {t.ok / t.seconds:.0f}/s")
                merge(totals, f"{name}, HTTP, {args.clients} clients", t)
            await asyncio.sleep(2)  # let the pipeline drain before the raw side runs
            t = await asyncio.to_thread(raw_phase, engines["database_url"], 16, args.seconds)
            progress(f"turn {turn + 1}: raw library {t.ok / t.seconds:.0f}/s")
            merge(totals, "raw eventsourcing, 16 threads", t)

    print(f"\nbench.commands_http: {args.turns} turn(s) of {args.seconds:.0f} s; load average at the end {load()}")
    print(f"{'':<34} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8}   transport errors / non-2xx")
    for name, t in totals.items():
        print(t.row(name))
    create = next(t for n, t in totals.items() if n.startswith("CreateChat"))
    raw = totals["raw eventsourcing, 16 threads"]
    print(f"CreateChat over HTTP / raw library: {(create.ok / create.seconds) / (raw.ok / raw.seconds):.2f}x")
    failed = sum(sum(t.failures.values()) for t in totals.values())
    if failed:
        print(f"FAILED: {failed} requests failed at the transport level or were not answered 2xx")
    return 1 if failed else 0


def merge(totals: dict[str, Tally], name: str, t: Tally) -> None:
    into = totals.setdefault(name, Tally())
    into.latencies += t.latencies
    into.outcomes += t.outcomes
    into.seconds += t.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 turn of 3 s with 16 clients")
    parser.add_argument("--smoke", action="store_true", help="1 turn of 1 s with 4 clients")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--turns", type=int, default=None)
    args = parser.parse_args()
    args.clients = args.clients or (4 if args.smoke else 16 if args.quick else 64)
    args.seconds = args.seconds or (1.0 if args.smoke else 3.0 if args.quick else 10.0)
    args.turns = args.turns or (1 if args.smoke or args.quick else 3)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
