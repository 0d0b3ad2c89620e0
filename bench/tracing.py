"""What tracing costs: commands over HTTP with tracing off and on, in the same run.

Three ``parley api`` processes on the same embedded engines: one with no ``OTEL_*`` variable (tracing off:
no SDK installed), one exporting every span over OTLP/HTTP to a receiver in this process (which decodes
each ``ExportTraceServiceRequest`` and counts its spans), and one sampling 10% of traces
(``parentbased_traceidratio``, 0.1) to the same receiver. In turns, the same
``--clients`` HTTP clients send CreateChat, then SendMessage (the echo model; no relay or worker runs, so
what is measured is the API's own work: the request's span, the command's, the append's), for
``--seconds`` against each process in turn. For each: commands/s, latency, and the API process's CPU time per
command (user + system, from /proc), and the spans exported per command when on.

    python -m bench.tracing              # 3 turns of 10 s, 32 clients
    python -m bench.tracing --quick      # 1 turn of 3 s, 16 clients
    python -m bench.tracing --smoke      # 1 turn of 1 s, 4 clients: that it runs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from adapters.embedded import EmbeddedEngines
from bench.commands_http import Tally, free_port, http_phase, load, merge, progress, setup

__all__ = ["main"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class SpanCounter:
    """An OTLP/HTTP trace receiver that decodes what it is sent and counts the spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        counter = self
        self.spans: dict[str, int] = {}
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with counter.lock:
                    for r in request.resource_spans:
                        service = next(a.value.string_value for a in r.resource.attributes if a.key == "service.name")
                        n = sum(len(s.spans) for s in r.scope_spans)
                        counter.spans[service] = counter.spans.get(service, 0) + n
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, service: str) -> int:
        with self.lock:
            return self.spans.get(service, 0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Api:
    """One ``parley api`` process on the given engines."""

    def __init__(self, home: Path, urls: Any, name: str, *, traced_to: str | None, ratio: float = 1.0) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OTEL_"))}
        env.update(
            PARLEY_HOME=str(home),
            PARLEY_PORT=str(self.port),
            PARLEY_DATABASE_URL=urls.database_url,
            PARLEY_NATS_URL=urls.nats_url,
            PARLEY_REDIS_URL=urls.redis_url,
            PARLEY_SECRET_KEY="bench-tracing-" + "k" * 32,
            PARLEY_ENABLE_ECHO_ENGINE="true",
            PARLEY_LOG_LEVEL="warning",
            HF_HUB_OFFLINE="1",
        )
        if traced_to is not None:
            env.update(
                OTEL_SERVICE_NAME=f"bench-{name}",  # the receiver counts each process's spans
                OTEL_EXPORTER_OTLP_ENDPOINT=traced_to,
                OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                OTEL_TRACES_SAMPLER_ARG=str(ratio),
            )
        self.log = home / f"api-{name}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "api"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient(base_url=self.base, timeout=5) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"parley api exited:\n{self.log.read_text()[-3000:]}")
                try:
                    if (await http.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError("parley api did not answer /health in 120 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def run(args: argparse.Namespace) -> int:
    home = Path(tempfile.mkdtemp(prefix="parley-bench-tracing-"))
    progress(f"starting the engines under {home} (load {load()})")
    receiver = SpanCounter()
    with EmbeddedEngines(home / "engines", fast=args.fast) as engines:
        urls = engines.start()
        apis = {
            "off": Api(home, urls, "off", traced_to=None),
            "on": Api(home, urls, "on", traced_to=receiver.endpoint),
            "on, 10% sampled": Api(home, urls, "sampled", traced_to=receiver.endpoint, ratio=0.1),
        }
        try:
            await asyncio.gather(*(api.ready() for api in apis.values()))
            headers, chats = await setup(apis["off"].base, args.clients)
            progress("ready; measuring")

            async def create_chat(c: httpx.AsyncClient, i: int, n: int) -> httpx.Response:
                return await c.post("/api/v1/chats", json={"title": f"c{i}-{n}"}, headers=headers)

            async def send_message(c: httpx.AsyncClient, i: int, n: int) -> httpx.Response:
                body = {"content": f"message {n}", "model": "echo", "params": {"max_tokens": 4}}
                return await c.post(f"/api/v1/chats/{chats[i]}/messages", json=body, headers=headers)

            totals: dict[str, Tally] = {}
            cpu: dict[str, float] = {}
            for turn in range(args.turns):
                for command, fn in (("CreateChat", create_chat), ("SendMessage", send_message)):
                    for tracing in apis:
                        api = apis[tracing]
                        used = cpu_seconds(api.proc.pid)
                        t = await http_phase(api.base, args.clients, args.seconds, fn)
                        name = f"{command}, tracing {tracing}"
                        cpu[name] = cpu.get(name, 0.0) + cpu_seconds(api.proc.pid) - used
                        merge(totals, name, t)
                        progress(f"turn {turn + 1}: {name} {t.ok / t.seconds:.0f}/s")
        finally:
            for api in apis.values():
                api.stop()  # the traced one sends what it still holds as it exits
    spans = {"on": receiver.count("bench-on"), "on, 10% sampled": receiver.count("bench-sampled")}
    receiver.close()

    print(f"\nbench.tracing: {args.turns} turn(s) of {args.seconds:.0f} s, {args.clients} clients, one API process each; load {load()}")
    print(f"{'':<34} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8}   transport errors / non-2xx    CPU ms per command")
    for name, t in totals.items():
        print(f"{t.row(name)}    {1000 * cpu[name] / max(1, t.ok):.2f}")
    for command in ("CreateChat", "SendMessage"):
        off = totals[f"{command}, tracing off"]
        per_off = cpu[f"{command}, tracing off"] / max(1, off.ok)
        for variant in ("on", "on, 10% sampled"):
            on = totals[f"{command}, tracing {variant}"]
            rate = (on.ok / max(1e-9, on.seconds)) / max(1e-9, off.ok / off.seconds)
            per_on = cpu[f"{command}, tracing {variant}"] / max(1, on.ok)
            print(f"{command}: tracing {variant} / off  {rate:.2f}x the rate, {per_on / max(1e-9, per_off):.2f}x the CPU per command")
    for variant, received in spans.items():
        commands = sum(t.ok for n, t in totals.items() if n.endswith(f"tracing {variant}"))
        print(f"spans exported per command, tracing {variant}  {received / max(1, commands):.2f}  ({received:,} spans)")
    failed = sum(sum(t.failures.values()) for t in totals.values())
    if failed:
        print(f"FAILED: {failed} requests failed at the transport level or were not answered 2xx")
    return 1 if failed or not spans["on"] else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 turn of 3 s with 16 clients")
    parser.add_argument("--smoke", action="store_true", help="1 turn of 1 s with 4 clients")
    parser.add_argument("--fast", action="store_true", help="Postgres without fsync")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--turns", type=int, default=None)
    args = parser.parse_args()
    args.clients = args.clients or (4 if args.smoke else 16 if args.quick else 32)
    args.seconds = args.seconds or (1.0 if args.smoke else 3.0 if args.quick else 10.0)
    args.turns = args.turns or (1 if args.smoke or args.quick else 3)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
