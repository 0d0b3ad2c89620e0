"""Relay failover: two ``parley relay`` processes, one active (it holds the advisory lock), one standby.
Killing the active one with SIGKILL mid-stream hands the log to the standby, which carries on from the
tracked position; JetStream ends up with each notification id exactly once and the read models with
every event once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapters.settings import Settings
from tests.conftest import wait_projected
from tests.integration.procs import (
    Part,
    Traffic,
    assert_projected_exactly_once,
    stream_message_ids,
    wait_relayed,
)
from workers.bootstrap import PROJECTOR_NAMES, Container

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

Spawn = Callable[..., Part]
TAKEOVER_S = 15


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


async def active_and_standby(a: Part, b: Part, timeout: float = 30) -> tuple[Part, Part]:
    """Which relay holds the lock, judged by what each logged."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for active, standby in ((a, b), (b, a)):
            if "relay_active" in active.log() and "relay_standby" in standby.log():
                assert "relay_active" not in standby.log(), "two relays active at once"
                return active, standby
        await asyncio.sleep(0.05)
    raise AssertionError(f"no active/standby pair after {timeout}s:\n{a.log()}\n---\n{b.log()}")


async def test_standby_relay_takes_over_when_the_active_one_is_killed(
    container: Container, spawn: Spawn
) -> None:
    first, second = spawn("relay"), spawn("relay")
    projector = spawn("project")
    await projector.wait_for_log("projector_started", count=len(PROJECTOR_NAMES))
    active, standby = await active_and_standby(first, second)
    traffic = await Traffic(container).start()

    await traffic.steps(40)
    await traffic.burst(30)
    active.kill9()  # a backlog in flight: some published, some acked, the position maybe not saved
    await standby.wait_for_log("relay_active", timeout=TAKEOVER_S)
    active, standby = standby, active

    await traffic.steps(40)
    standby.start()  # the killed one comes back, and must wait its turn
    await standby.wait_for_log("relay_standby")
    await traffic.burst(30)
    await traffic.steps(20)
    active.kill9()  # and the other way round
    await standby.wait_for_log("relay_active", timeout=TAKEOVER_S)

    await traffic.steps(40)
    await wait_relayed(container, timeout=30)
    await wait_projected(container, timeout=60)

    # Each notification id exactly once in the stream, and every id of the event store there.
    relayed = await stream_message_ids(container)
    duplicates = sorted({i for i in relayed if relayed.count(i) > 1})
    assert duplicates == []
    events = await container.store.call(container.store.read, 1, 1_000_000)
    assert sorted(relayed) == [e.id for e in events]
    assert relayed == sorted(relayed), "the relay published out of order"

    await assert_projected_exactly_once(container, traffic)
    assert standby.stop() == 0, standby.log()
