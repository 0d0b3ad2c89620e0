"""What every worker on the ``PARLEY_JOBS`` work queue does the same way: pull jobs while there is room
for them, run each as a task, and hand the running ones back when stopping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["run_jobs"]


async def run_jobs(sub: Any, handle: Callable[[Any], Awaitable[None]], *, concurrency: int, stop: asyncio.Event) -> None:
    """Fetch from the pull subscription ``sub`` until ``stop`` is set, with at most ``concurrency`` jobs
    running at once. On the way out the running jobs are cancelled: each handler naks its message, so
    another worker takes the job at once."""
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
            for msg in msgs:
                task = asyncio.create_task(handle(msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
