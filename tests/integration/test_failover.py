"""Failover of each kind of parley process (issue 14): kill -9 under load, and the system makes progress
again within a bound, with nothing accepted lost and nothing applied twice. The scenarios are
``bench/failover.py``'s (which runs each several times and prints min/median/max): real ``parley``
processes, commands coming all along, and at the end every accepted command in the event store, every event
once in every read model and once on ``PARLEY_EVENTS``, each streamed answer equal to the stored one.

- relay: the standby takes the lock (twice: each way round);
- projector: the second ``parley project`` goes on alone; then the one left is killed and started again;
- worker: the job of a generation a client streams over SSE goes to the other worker, the client sees
  ``restart`` and then the whole answer, billed once;
- api: a client spreading requests over two API processes retries on the other one, and a token stream
  resumes there with ``Last-Event-ID``.

The bound asserted is generous (a shared CI machine); the figures measured are in bench/README.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.failover import Takeover, api_failover, projector_failover, relay_failover, worker_failover
from workers.bootstrap import Container

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PROGRESS_S = 15.0
"""kill -9 -> progress, asserted (the target is 5 s; what each takes is printed)."""


def judged(taken: list[Takeover]) -> None:
    for t in taken:
        print(f"{t.kind}: kill -9 -> progress {t.seconds:.2f} s; the client: {t.client}")
    assert taken
    slow = [t for t in taken if t.seconds >= PROGRESS_S]
    assert not slow, slow


async def test_the_standby_relay_takes_over_from_a_killed_active_one(container: Container, tmp_path: Path) -> None:
    judged(await relay_failover(container, tmp_path / "logs", runs=2))


async def test_a_killed_projector_s_work_goes_on_in_the_other_or_after_its_restart(
    container: Container, tmp_path: Path
) -> None:
    taken = await projector_failover(container, tmp_path / "logs", runs=1)
    assert [t.kind for t in taken] == ["projector", "projector, restarted alone"]
    judged(taken)


async def test_a_generation_whose_worker_is_killed_restarts_on_the_other_and_streams_whole(
    container: Container, tmp_path: Path
) -> None:
    judged(await worker_failover(container, tmp_path / "logs", runs=1))


async def test_clients_of_a_killed_api_process_go_on_with_the_other(container: Container, tmp_path: Path) -> None:
    judged(await api_failover(container, tmp_path / "logs", runs=1))
