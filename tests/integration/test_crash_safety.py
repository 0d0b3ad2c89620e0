"""Crash safety: ``parley relay`` and ``parley project`` run as real processes and are killed with
SIGKILL mid-stream, more than once and at different moments, while commands keep coming. Whatever the
timing, every event must take effect in every read model exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from adapters.settings import Settings
from projections.runtime import read_position
from tests.conftest import wait_projected
from tests.integration.procs import (
    Part,
    Traffic,
    assert_projected_exactly_once,
    relay_position,
    stream_message_ids,
    wait_relayed,
)
from workers.bootstrap import PROJECTOR_NAMES, Container, all_projectors

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

Spawn = Callable[..., Part]


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path) -> Iterator[Spawn]:
    parts: list[Part] = []

    def start(*args: str) -> Part:
        part = Part(settings, tmp_path / "logs", *args).start()
        parts.append(part)
        return part

    yield start
    for part in parts:
        part.stop()


async def slowest_projector(c: Container) -> int:
    return min([await read_position(c.engine, p.name) for p in all_projectors(c)])


async def kill_while_working(
    part: Part, position: Callable[[], Awaitable[int]], traffic: Traffic, timeout: float = 30
) -> None:
    """SIGKILL ``part`` the moment it is seen making progress, with commands still coming in."""
    killed = asyncio.Event()

    async def keep_commanding() -> None:
        while not killed.is_set():  # never cancelled mid-command: traffic must know what it did
            await traffic.step()

    commands = asyncio.create_task(keep_commanding())
    try:
        before = await position()
        deadline = asyncio.get_running_loop().time() + timeout
        while await position() == before:
            assert asyncio.get_running_loop().time() < deadline, (
                f"{part.name} made no progress:\n{part.log()}"
            )
            await asyncio.sleep(0.01)
        part.kill9()
    finally:
        killed.set()
        await commands


async def test_killing_relay_and_projector_mid_stream_loses_and_duplicates_nothing(
    container: Container, spawn: Spawn
) -> None:
    relay, projector = spawn("relay"), spawn("project")
    relayed_by, projected_by = partial(relay_position, container), partial(slowest_projector, container)
    await relay.wait_for_log("relay_active")
    await projector.wait_for_log("projector_started", count=len(PROJECTOR_NAMES))
    traffic = await Traffic(container).start()

    await traffic.steps(30)
    await traffic.burst(30)
    await kill_while_working(relay, relayed_by, traffic)  # mid-backlog, commands still coming

    await traffic.steps(40)  # no relay: the projectors fill the gap from the event store
    relay.start()
    await relay.wait_for_log("relay_active")
    await traffic.burst(30)
    await kill_while_working(projector, projected_by, traffic)  # while the restarted relay republishes

    await traffic.steps(40)  # no projector: the backlog grows
    projector.start()
    await projector.wait_for_log("projector_started", count=len(PROJECTOR_NAMES))
    await traffic.steps(20)
    await traffic.burst(30)
    relay.kill9()  # both at once, right after a burst
    projector.kill9()

    await traffic.steps(30)
    projector.start()
    relay.start()
    await traffic.steps(40)

    await wait_projected(container, timeout=60)
    await wait_relayed(container, timeout=30)
    assert traffic.commands >= 250
    await assert_projected_exactly_once(container, traffic)

    # JetStream's dedup absorbed the relay's republishing: each notification id once in the stream.
    relayed = await stream_message_ids(container)
    assert len(relayed) == len(set(relayed))
    events = await container.store.call(container.store.read, 1, 1_000_000)
    assert sorted(relayed) == [e.id for e in events]

    # And both still stop cleanly.
    assert relay.stop() == 0, relay.log()
    assert projector.stop() == 0, projector.log()
