"""A real ``parley api`` process keeps its memory while a 400 MB multipart request goes through it: the
files are spooled to disk as they arrive and checked one at a time, so its resident set grows by what
checking one file takes (its bytes and their decoded text: two file sizes, 48 MiB here), never by the
request, and falls back once the request is answered. Both ways a request ends are measured: every file
taken (16 × 24 MiB, streamed into the Postgres blob store) and one refused at its limit (a 400 MB file,
answered after its first 25 MiB).

The bounds, above the baseline of the warmed-up process: ``GROWTH_WHILE`` (two files and 16 MiB) at any
time during a request, ``GROWTH_AFTER`` once it is answered. Before uploads were streamed, a 324 MB
request raised the API from 685 to 1,003 MB, and it stayed there."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from adapters.settings import Settings
from tests.e2e.test_chat_api import bearer, sign_up
from tests.e2e.test_knowledge_api import create_kb
from tests.integration.procs import Part
from tests.multipart_stream import TextFile, post_streaming

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MiB = 1 << 20
MAX_FILE_BYTES = 25 * MiB  # the default per-file limit
FILES = 16
FILE_BYTES = 24 * MiB  # 16 × 24 MiB: a 403 MB request
GROWTH_WHILE = 2 * FILE_BYTES + 16 * MiB
GROWTH_AFTER = 16 * MiB


def resident(pid: int) -> int:
    """VmRSS of ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Sampler(threading.Thread):
    """The highest resident set of a process, sampled every 10 ms while in use."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = resident(pid)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, resident(self.pid))

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._done.set()
        self.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serving(client: httpx.AsyncClient) -> None:
    for _ in range(300):
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        await asyncio.sleep(0.1)
    raise AssertionError("the API did not answer /health")


async def settled(pid: int) -> int:
    """The resident set once it has stopped moving (the allocator hands back what it freed)."""
    last = resident(pid)
    for _ in range(20):
        await asyncio.sleep(0.1)
        now = resident(pid)
        if abs(now - last) < MiB:
            return now
        last = now
    return last


async def test_a_400_mb_upload_passes_through_the_api_in_the_memory_of_one_file(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    settings = msgspec.structs.replace(settings, port=port, max_upload_bytes=MAX_FILE_BYTES)
    api = Part(settings, tmp_path / "logs", "api").start()
    base = f"http://127.0.0.1:{port}"
    try:
        await api.wait_for_log("api_listening")
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await serving(client)
            owner = await sign_up(client, "owner@example.com")
            kb = await create_kb(client, owner)
            path = f"/api/v1/knowledge/{kb}/documents"
            warm = await post_streaming(base, path, [TextFile("warm-up.txt", 200_000)], bearer(owner))
            assert warm.status == 202, warm.body
        baseline = await settled(api.pid)

        started = time.monotonic()
        files = [TextFile(f"part-{n:02}.txt", FILE_BYTES) for n in range(FILES)]
        with Sampler(api.pid) as taking:
            taken = await post_streaming(base, path, files, bearer(owner))
        took = time.monotonic() - started
        after_taking = await settled(api.pid)
        assert taken.status == 202 and len(taken.body) == FILES, taken.body
        assert {d["size"] for d in taken.body} == {FILE_BYTES}

        with Sampler(api.pid) as refusing:
            huge = TextFile("huge.txt", 400 * 1000 * 1000)
            refused = await post_streaming(base, path, [TextFile("small.txt", 5_000), huge], bearer(owner))
        after_refusing = await settled(api.pid)
        assert refused.status == 413 and refused.body["error"]["code"] == "FILE_TOO_LARGE", refused.body
        assert refused.sent_when_answered < MAX_FILE_BYTES + 16 * MiB, refused

        figures = (
            f"baseline {baseline / MiB:.0f} MiB; {taken.length / 1e6:.0f} MB taken in {took:.1f} s: "
            f"peak +{(taking.peak - baseline) / MiB:.0f} MiB, after +{(after_taking - baseline) / MiB:.0f} MiB; "
            f"{refused.length / 1e6:.0f} MB refused after {refused.sent_when_answered / 1e6:.0f} MB sent: "
            f"peak +{(refusing.peak - baseline) / MiB:.0f} MiB, after +{(after_refusing - baseline) / MiB:.0f} MiB"
        )
        print(figures)
        assert taking.peak - baseline < GROWTH_WHILE, figures
        assert refusing.peak - baseline < GROWTH_WHILE, figures
        assert max(after_taking, after_refusing) - baseline < GROWTH_AFTER, figures
    finally:
        api.stop()
