"""The clustered event bus, measured: SendMessage with R1 and with R3 streams in the same run, and the time
until the system makes progress again after a NATS node of three is killed with SIGKILL (issue 14).

It starts its own embedded Postgres and Redis and a 3-node NATS JetStream cluster (the same
``nats-server`` binary, three processes routed on loopback: ``EmbeddedEngines(nats_cluster=3)``). Each
replica count gets a deployment of its own on that cluster (its own database and stream namespace), with
the relay, every projector and a generation worker (the echo engine) running in this process, as the tests'
pipeline runs them:

1. ``--callers`` concurrent callers send messages (``Chats.send_message``: the user's message and a
   ``GenerationRequested``, each caller in its own chat, ``max_tokens`` 8) for ``--seconds``; then the
   pipeline finishes them (relay -> ``PARLEY_JOBS`` -> worker -> ``PARLEY_TOKENS`` -> event store).
   ``SendMessage/s accepted`` is the commands' rate (the command path touches Postgres only: the replicas
   should not move it); ``generations/s completed`` is the whole pipeline's, from the first send to the last
   generation finished; ``send -> completed`` p50/p99 per generation (polled every 20 ms).
2. On the R3 deployment, ``--kills`` times each: the node leading ``PARLEY_EVENTS`` (its streams' and
   consumers' leaders must be elected again: Raft's election timeout is 4 to 9 s) and a node leading no
   events stream (clients on it move to another server), killed with SIGKILL while a message is sent every
   50 ms. Progress: a message sent just after the kill has its generation completed, and the relay's
   position passes where the event store was at the kill. The node is started again (same ports and store)
   and caught up before the next run. Figures: min / median / max over the runs.

After all: every generation completed, the job queue is empty, each notification id is in the events stream
once; any failure exits 1.

    python -m bench.nats_cluster                 # 10 s turns, 16 callers, 3 kills of each kind
    python -m bench.nats_cluster --quick         # 2 s turns, 4 callers, 1 kill of each kind
    python -m bench.nats_cluster --fast          # Postgres with fsync off
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from argon2 import PasswordHasher as Argon2Hasher

from adapters.embedded import EmbeddedEngines, EngineUrls, NatsNode
from adapters.logging import configure_logging
from adapters.security import Passwords
from application.context import CommandContext
from application.identity import Principal
from bench.spine import Report, load, percentile, progress, settings_for
from domain.chats import Generation
from domain.errors import Conflict
from projections.group import ProjectorGroup, split_for_groups
from projections.runtime import ProjectorRunner
from tests.integration.procs import relay_position, stream_message_ids
from workers.bootstrap import Container, all_projectors, bootstrap
from workers.generate import GenerationWorker
from workers.relay import Relay

__all__ = ["main"]

PASSWORDS = Passwords(Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1))
GIVE_UP_S = 60.0


@dataclass
class Deployment:
    """One parley on the cluster: the container, its admin and the pipeline's tasks."""

    c: Container
    admin: Principal
    ctx: CommandContext
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    sent: dict[uuid.UUID, float] = field(default_factory=dict)
    """Each generation asked for, and when."""

    async def chat(self) -> uuid.UUID:
        return (await self.c.chats.create(self.ctx, self.admin, title="bench")).id

    async def send(self, chat_id: uuid.UUID) -> uuid.UUID:
        """One message; a version conflict (the worker recording the previous answer in the same chat at
        that instant) is tried again, as a client answered 409 would."""
        started = time.perf_counter()
        for attempt in range(5):
            try:
                sent = await self.c.chats.send_message(
                    self.ctx, self.admin, chat_id, content="one two three", model="echo", params={"max_tokens": 8}
                )
                break
            except Conflict:
                if attempt == 4:
                    raise
        self.sent[sent.generation_id] = started
        return sent.generation_id

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.c.close()


async def deploy(urls: EngineUrls, home: Path, replicas: int) -> Deployment:
    settings = msgspec.structs.replace(
        settings_for(urls, home / f"r{replicas}", f"bench_r{replicas}_{uuid.uuid4().hex[:6]}"),
        nats_replicas=replicas,
        enable_echo_engine=True,
    )
    c = await bootstrap(settings, passwords=PASSWORDS)
    tenant = await c.identity.ensure_tenant(settings.default_tenant, "Bench")
    tenant_id = str(tenant.id)
    user = await c.identity.register(
        CommandContext(tenant_id=tenant_id, actor="anonymous"),
        tenant=tenant_id, email="bench@example.test", password="correct horse 9", name="Bench",
    )  # fmt: skip
    admin = Principal(tenant_id=tenant_id, user_id=user.id, role="admin", via="token")
    ctx = CommandContext(tenant_id=tenant_id, actor=admin.actor)
    await c.quotas.set_user_limit(ctx, admin, user.id, 1_000_000_000)
    await c.models.register_provider(ctx, admin, name="echoes", kind="echo")
    await c.models.register_model(ctx, admin, name="echo", provider="echoes", upstream_model="echo")
    d = Deployment(c=c, admin=admin, ctx=ctx)
    js = await c.connect_nats(f"bench-r{replicas}")
    d.tasks.append(asyncio.create_task(Relay(store=c.store, engine=c.engine, js=js, subjects=c.subjects).run(d.stop)))
    shared, alone = split_for_groups(all_projectors(c))
    runners: list[ProjectorGroup | ProjectorRunner] = [
        ProjectorRunner(p, engine=c.engine, store=c.store, idle_check_s=0.2) for p in alone
    ]
    runners.append(ProjectorGroup(shared, engine=c.engine, store=c.store, idle_check_s=0.2))
    d.tasks += [asyncio.create_task(r.run(js, c.subjects, d.stop)) for r in runners]
    worker = GenerationWorker(c, js=js, nc=c.nc, name=f"bench-worker-r{replicas}", concurrency=32)
    d.tasks.append(asyncio.create_task(worker.run(d.stop)))
    return d


async def finished_at(d: Deployment, ids: list[uuid.UUID], within_s: float = GIVE_UP_S) -> dict[uuid.UUID, float]:
    """When each generation was first seen finished (polled every 20 ms); raises if one is not in time."""
    seen: dict[uuid.UUID, float] = {}
    deadline = time.perf_counter() + within_s
    while len(seen) < len(ids):
        for g in [g for g in ids if g not in seen]:
            found = await d.c.store.call(d.c.store.find, Generation, g)
            if found is not None and found.finished:
                if found.status != "completed":
                    raise AssertionError(f"generation {g} {found.status}: {found.error_code} {found.error_message}")
                seen[g] = time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(ids) - len(seen)} generations unfinished after {within_s:.0f} s")
        await asyncio.sleep(0.02)
    return seen


async def throughput(d: Deployment, replicas: int, callers: int, seconds: float, report: Report) -> None:
    chats = [await d.chat() for _ in range(callers)]
    ids: list[uuid.UUID] = []
    started = time.perf_counter()

    async def caller(chat_id: uuid.UUID) -> None:
        while time.perf_counter() - started < seconds:
            ids.append(await d.send(chat_id))

    await asyncio.gather(*(caller(chat) for chat in chats))
    sending_s = time.perf_counter() - started
    done = await finished_at(d, ids)
    whole_s = max(done.values()) - started
    latencies = [(done[g] - d.sent[g]) * 1000 for g in ids]
    label = f"R{replicas}"
    report.add(f"SendMessage/s accepted, {label}", f"{len(ids) / sending_s:.0f}", f"{len(ids)} from {callers} callers in {sending_s:.1f} s")
    report.add(f"generations/s completed, {label}", f"{len(ids) / whole_s:.0f}", f"the last finished {whole_s:.1f} s after the first send")
    report.add(f"send -> completed p50/p99 (ms), {label}", f"{percentile(latencies, 0.5):.0f}/{percentile(latencies, 0.99):.0f}")


async def one_kill(d: Deployment, engines: EmbeddedEngines, leader: bool) -> tuple[float, float, str]:
    """Kill a node (the events stream's leader, or one leading no events stream) while messages keep
    coming; returns (s to a generation completed, s to the relay publishing again, which node)."""
    c = d.c
    stream_leader = (await c.js.stream_info(c.subjects.events_stream)).cluster.leader
    node: NatsNode = next(n for n in engines.nats_nodes if (n.name == stream_leader) == leader)
    chat = await d.chat()
    before = await c.store.call(c.store.max_id)
    killed = time.perf_counter()
    node.kill()
    probe = await d.send(chat)
    keep_sending = asyncio.Event()

    async def load_meanwhile() -> None:
        while not keep_sending.is_set():
            await d.send(chat)
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(load_meanwhile())
    try:
        generation_s = (await finished_at(d, [probe]))[probe] - killed
        while await relay_position(c) <= before:
            if time.perf_counter() - killed > GIVE_UP_S:
                raise TimeoutError(f"the relay made no progress {GIVE_UP_S:.0f} s after {node.name} was killed")
            await asyncio.sleep(0.02)
        relay_s = time.perf_counter() - killed
    finally:
        keep_sending.set()
        await sender
    await asyncio.to_thread(node.restart)
    return generation_s, relay_s, node.name


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}/{statistics.median(values):.1f}/{max(values):.1f}"


async def run(args: argparse.Namespace) -> int:
    home = Path(tempfile.mkdtemp(prefix="parley-bench-nats-cluster-", dir="/tmp"))
    report = Report()
    progress(f"starting Postgres, Redis and a 3-node NATS cluster under {home}; {load()}")
    engines = EmbeddedEngines(home, fast=args.fast, nats_cluster=3)
    try:
        urls = await asyncio.to_thread(engines.start)
        deployments: dict[int, Deployment] = {}
        try:
            for replicas in (1, 3):
                deployments[replicas] = await deploy(urls, home, replicas)
            for replicas in (1, 3):  # one after the other: they share the machine
                progress(f"SendMessage for {args.seconds:.0f} s from {args.callers} callers, R{replicas} streams")
                await throughput(deployments[replicas], replicas, args.callers, args.seconds, report)
            await deployments.pop(1).close()
            r3 = deployments[3]
            kills: dict[str, list[tuple[float, float]]] = {"events stream leader": [], "another node": []}
            for run_number in range(args.kills):
                for kind, leader in (("events stream leader", True), ("another node", False)):
                    generation_s, relay_s, name = await one_kill(r3, engines, leader)
                    progress(
                        f"kill {run_number + 1}, {kind} ({name}): a generation completed after {generation_s:.1f} s, "
                        f"the relay publishing after {relay_s:.1f} s"
                    )
                    kills[kind].append((generation_s, relay_s))
            for kind, runs in kills.items():
                note = f"min/median/max over {len(runs)} kill(s)"
                report.add(f"node killed ({kind}): to a generation completed (s)", spread([g for g, _ in runs]), note)
                report.add(f"node killed ({kind}): to the relay publishing (s)", spread([r for _, r in runs]), note)
            progress("checking: every generation completed, the job queue empty, each event once in the stream")
            await finished_at(r3, list(r3.sent))
            jobs = await r3.c.js.stream_info(r3.c.subjects.jobs_stream)
            relayed = await stream_message_ids(r3.c)
            events = await r3.c.store.call(r3.c.store.read, 1, 10_000_000)
            errors = int(jobs.state.messages != 0) + int(relayed != [e.id for e in events])
            report.add("errors", str(errors), "lost or duplicated events, jobs left in the queue, failed generations")
        finally:
            for d in deployments.values():
                with contextlib.suppress(Exception):
                    await d.close()
    finally:
        await asyncio.to_thread(engines.stop)
        shutil.rmtree(home, ignore_errors=True)
    print(report.render())
    print(load())
    return 0 if errors == 0 else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.nats_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s turns, 4 callers, 1 kill of each kind")
    parser.add_argument("--fast", action="store_true", help="Postgres with fsync off")
    parser.add_argument("--seconds", type=float, help="each throughput turn (default 10)")
    parser.add_argument("--callers", type=int, help="concurrent callers (default 16)")
    parser.add_argument("--kills", type=int, help="kills of each kind (default 3)")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    args.callers = args.callers or (4 if args.quick else 16)
    args.kills = args.kills or (1 if args.quick else 3)
    configure_logging("error", json=False)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
