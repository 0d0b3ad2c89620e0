"""A NATS node lost under load: the pipeline (relay, projectors, generation worker) on a 3-node JetStream
cluster with R3 streams, hundreds of commands and tens of generations sent while the node leading the
events stream is killed with SIGKILL and later started again. Every event reaches every read model exactly
once (and a rebuild from the event store gives the same read models), each notification id is in the
events stream once, every generation completes, and the job queue ends empty with nothing pending."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from adapters import nats as nats_adapter
from adapters.embedded import EmbeddedEngines, NatsNode
from adapters.settings import Settings
from application.context import CommandContext
from domain.chats import Generation
from projections.runtime import rebuild
from schema.subjects import Subjects
from tests.conftest import Pipeline
from tests.integration.procs import (
    Traffic,
    assert_projected_exactly_once,
    relay_position,
    run_cli,
    stream_message_ids,
    wait_relayed,
)
from tests.integration.test_rebuild_equality import snapshot
from workers.bootstrap import Container, all_projectors

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PROGRESS_BOUND_S = 15  # the leader election alone takes 4 to 9 s (Raft's election timeout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedEngines]:
    """Three ``nats-server`` processes routed on loopback, for this module; Postgres and Redis are the
    session's."""
    home = Path(tempfile.mkdtemp(prefix="parley-nats-cluster-", dir="/tmp"))
    engines = EmbeddedEngines(home, fast=True, nats_cluster=3)
    try:
        engines.start_nats()
        yield engines
    finally:
        engines.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def settings(settings: Settings, cluster: EmbeddedEngines) -> Settings:
    url = ",".join(node.url for node in cluster.nats_nodes)
    return msgspec.structs.replace(settings, nats_url=url, nats_replicas=3)


async def test_streams_take_the_replica_count_asked_for(settings: Settings) -> None:
    assert settings.nats_url is not None
    nc, js = await nats_adapter.connect(settings.nats_url, "test-replicas")
    subjects = Subjects(settings.namespace)
    try:
        await nats_adapter.ensure_streams(js, subjects, replicas=1)
        assert (await js.stream_info(subjects.events_stream)).config.num_replicas == 1

        await nats_adapter.ensure_streams(js, subjects, replicas=3)  # an existing stream is scaled up

        for stream in (subjects.events_stream, subjects.jobs_stream, subjects.tokens_stream):
            assert (await js.stream_info(stream)).config.num_replicas == 3, stream
        with pytest.raises(nats_adapter.StreamsError, match="PARLEY_NATS_REPLICAS=4 needs a JetStream cluster"):
            await nats_adapter.ensure_streams(js, Subjects(f"{settings.namespace}x"), replicas=4)
    finally:
        await nc.close()


def test_parley_serve_refuses_a_cluster_it_cannot_make(settings: Settings) -> None:
    two = run_cli(settings, "serve", "--nats-cluster", "2", timeout=30)
    assert two.returncode == 2 and "a NATS cluster has 3 to 7 nodes" in two.stderr, two.stderr
    beside = run_cli(settings, "serve", "--nats-cluster", "3", timeout=30)  # PARLEY_NATS_URL is set
    assert beside.returncode == 2 and "unset PARLEY_NATS_URL" in beside.stderr, beside.stderr


async def _echo_chat(c: Container, traffic: Traffic) -> tuple[CommandContext, uuid.UUID]:
    assert traffic.admin is not None
    ctx = CommandContext(tenant_id=traffic.tenant_id, actor=traffic.admin.actor)
    await c.models.register_provider(ctx, traffic.admin, name="echoes", kind="echo")
    await c.models.register_model(ctx, traffic.admin, name="echo", provider="echoes", upstream_model="echo")
    chat = await c.chats.create(ctx, traffic.admin, title="through a node's loss")
    return ctx, chat.id


async def _generations_finished(c: Container, ids: list[uuid.UUID], within_s: float) -> list[Generation]:
    deadline = time.monotonic() + within_s
    while True:
        found = [await c.store.call(c.store.find, Generation, g) for g in ids]
        if all(g is not None and g.finished for g in found) or time.monotonic() > deadline:
            return [g for g in found if g is not None]
        await asyncio.sleep(0.05)


async def test_a_nats_node_killed_under_load_loses_and_duplicates_nothing(
    container: Container, pipeline: Pipeline, cluster: EmbeddedEngines
) -> None:
    c = container
    traffic = await Traffic(c).start()
    ctx, chat_id = await _echo_chat(c, traffic)
    generations: list[uuid.UUID] = []

    async def generate(n: int) -> None:
        assert traffic.admin is not None
        for i in range(n):
            sent = await c.chats.send_message(
                ctx, traffic.admin, chat_id, content=f"question {len(generations)} {i}", model="echo",
                params={"max_tokens": 8},
            )  # fmt: skip
            generations.append(sent.generation_id)

    await traffic.steps(60)
    await generate(5)
    await wait_relayed(c, timeout=30)

    js = c.js
    leader = (await js.stream_info(c.subjects.events_stream)).cluster.leader
    node: NatsNode = next(n for n in cluster.nats_nodes if n.name == leader)
    connected = c.nc.connected_url.port == node.port
    position_at_kill = await c.store.call(c.store.max_id)
    killed_at = time.monotonic()
    node.kill()

    # Progress: a generation asked for just after the loss completes (relay -> job -> worker -> tokens ->
    # event store), and the relay publishes past what was committed before the loss.
    await generate(1)
    probe = generations[-1]
    during = asyncio.gather(traffic.steps(200), traffic.burst(40), generate(15))
    finished = await _generations_finished(c, [probe], within_s=PROGRESS_BOUND_S + 15)
    generation_resumed_s = time.monotonic() - killed_at
    while True:
        if await relay_position(c) > position_at_kill or time.monotonic() - killed_at > PROGRESS_BOUND_S + 15:
            break
        await asyncio.sleep(0.05)
    relay_resumed_s = time.monotonic() - killed_at
    print(
        f"\nNATS node {node.name} (events stream leader{', the clients connected to it' if connected else ''}) "
        f"killed: relay publishing again after {relay_resumed_s:.1f} s, a generation asked for after the loss "
        f"completed after {generation_resumed_s:.1f} s"
    )
    assert finished and finished[0].status == "completed", finished
    assert generation_resumed_s < PROGRESS_BOUND_S and relay_resumed_s < PROGRESS_BOUND_S
    await during

    node.restart()  # the node comes back with its store and catches up
    await asyncio.gather(traffic.steps(60), generate(5))

    await wait_relayed(c, timeout=60)
    await pipeline.settle(timeout=60)
    done = await _generations_finished(c, generations, within_s=60)
    assert len(done) == len(generations) >= 25
    assert [g.status for g in done] == ["completed"] * len(done), [(g.id, g.status) for g in done]

    # Each notification id exactly once in the events stream, every event of the store there, in order.
    relayed = await stream_message_ids(c)
    events = await c.store.call(c.store.read, 1, 1_000_000)
    assert relayed == [e.id for e in events]

    # The job queue lost nothing and holds nothing: every job was acked once its generation was recorded.
    jobs = await js.stream_info(c.subjects.jobs_stream)
    assert jobs.state.messages == 0, jobs.state
    consumer = await js.consumer_info(c.subjects.jobs_stream, c.subjects.workers_durable)
    assert (consumer.num_pending, consumer.num_ack_pending) == (0, 0), consumer

    # Every event took effect once in every read model, and a rebuild from the event store agrees.
    await assert_projected_exactly_once(c, traffic)
    for projector in all_projectors(c):
        if not projector.tables:
            continue
        incremental = await snapshot(c, projector.tables)
        await rebuild(projector, engine=c.engine, store=c.store)
        assert await snapshot(c, projector.tables) == incremental, projector.name
