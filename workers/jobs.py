"""What workers do the same way: pull jobs from the ``PARLEY_JOBS`` work queue while there is room for
them, run each as a task, and hand the running ones back when stopping; and run background work every
few seconds until stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

__all__ = ["run_jobs", "run_every"]

log = structlog.get_logger("parley.worker")


async def run_jobs(sub: Any, handle: Callable[[Any], Awaitable[None]], *, concurrency: int, stop: asyncio.Event) -> None:
    """Fetch from the pull subscription ``sub`` until ``stop`` is set, with at most ``concurrency`` jobs
    running at once. On the way out the running jobs are cancelled: each handler naks its message, so
    another worker takes the job at once. While the consumer cannot be reached (a NATS node lost, its leader
    being elected) fetching is tried again every half second."""
    from nats.errors import Error as NatsError
    from nats.errors import TimeoutError as NatsTimeout

    tasks: set[asyncio.Task[None]] = set()
    try:
        while not stop.is_set():
            free = concurrency - len(tasks)
            if free <= 0:
                await asyncio.wait(tasks, timeout=1, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await sub.fetch(free, timeout=1)
            except (TimeoutError, NatsTimeout):
                continue
            except NatsError as exc:
                log.warning("job_fetch_failed", error_type=type(exc).__name__, error=str(exc)[:200])
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                task = asyncio.create_task(handle(msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_every(interval_s: float, stop: asyncio.Event, work: Callable[[], Awaitable[None]], *, name: str) -> None:
    """``work()`` now and then every ``interval_s`` until ``stop`` is set. A failure is logged and the
    next round tries again (Postgres or a provider may be back by then)."""
    while not stop.is_set():
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(f"{name}_failed", error_type=type(exc).__name__, error=str(exc)[:300])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
