"""Slow, idle and vanishing clients, on raw sockets against a real uvicorn served as ``parley api`` serves it
(api/server.py), with timeouts of a second or two so the suite stays quick.

A request's line and headers must arrive within ``header_timeout_s`` of its first byte; its body may not
pause longer than ``body_timeout_s`` (408); an idle kept-alive connection is closed after
``keep_alive_timeout_s``. A client that leaves before the response begins is logged and counted as 499."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from adapters.metrics import Metrics
from api.app import create_app, request_log_middleware
from tests.conftest import served
from workers.bootstrap import Container

pytestmark = pytest.mark.timeout(60)

HEAD = b"GET /health HTTP/1.1\r\nHost: parley.test\r\nUser-Agent: slow-client\r\n\r\n"


@asynccontextmanager
async def edge(app: Any, c: Container, **timeouts: float) -> AsyncIterator[str]:
    async with served(app, msgspec.structs.replace(c.settings, **timeouts)) as url:
        yield url


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def closed_after(reader: asyncio.StreamReader, started: float, limit_s: float) -> tuple[float, bytes]:
    """Read until the server closes the connection; how long after ``started`` it did, and what it sent."""
    received = b""
    async with asyncio.timeout(limit_s):
        while chunk := await reader.read(65536):
            received += chunk
    return time.monotonic() - started, received


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float, chunk: int = 1) -> None:
    """Send ``data`` ``chunk`` bytes at a time, ``every_s`` apart, until it is sent or the server hangs up."""
    try:
        for i in range(0, len(data), chunk):
            writer.write(data[i : i + chunk])
            await writer.drain()
            await asyncio.sleep(every_s)
    except ConnectionError:
        pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    return status, await reader.readexactly(length)


def requests_counted(metrics_text: str, route: str, status: int) -> float:
    prefix = f'parley_http_requests_total{{method="POST",route="{route}",status="{status}"}} '
    return sum(float(line[len(prefix) :]) for line in metrics_text.splitlines() if line.startswith(prefix))


# --- headers ---------------------------------------------------------------------------------------------
async def test_headers_sent_a_byte_a_second_are_cut_off_within_the_bound(container) -> None:
    bound = 2.0
    async with edge(create_app(container), container, header_timeout_s=bound) as url:
        reader, writer = await connect(url)
        started = time.monotonic()
        sender = asyncio.create_task(trickle(writer, HEAD, every_s=1.0))
        elapsed, received = await closed_after(reader, started, bound + 2)
        sender.cancel()
        writer.close()
    assert bound - 0.1 <= elapsed <= bound + 2, elapsed
    assert received == b""  # never a response to half a request


async def test_a_connection_that_sends_nothing_is_closed_within_the_header_bound(container) -> None:
    bound = 1.0
    async with edge(create_app(container), container, header_timeout_s=bound) as url:
        reader, writer = await connect(url)
        elapsed, _ = await closed_after(reader, time.monotonic(), bound + 2)
        writer.close()
    assert bound - 0.1 <= elapsed <= bound + 2, elapsed


async def test_each_request_on_a_kept_alive_connection_gets_its_own_header_bound(container) -> None:
    # The second request's headers end 2.7 s after the connection opened, past the 2 s bound, but arrive
    # over 1.2 s from their first byte: both requests are answered.
    async with edge(create_app(container), container, header_timeout_s=2.0, keep_alive_timeout_s=5) as url:
        reader, writer = await connect(url)
        writer.write(HEAD)
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(1.5)
        await trickle(writer, HEAD, every_s=1.2 / (len(HEAD) / 8), chunk=8)
        assert (await read_response(reader))[0] == 200
        writer.close()


# --- idle keep-alive -------------------------------------------------------------------------------------
async def test_an_idle_kept_alive_connection_is_closed_after_its_timeout(container) -> None:
    keep_alive = 1
    async with edge(create_app(container), container, keep_alive_timeout_s=keep_alive) as url:
        reader, writer = await connect(url)
        writer.write(HEAD)
        status, _ = await read_response(reader)
        answered = time.monotonic()
        elapsed, received = await closed_after(reader, answered, keep_alive + 2)
        writer.close()
    assert status == 200
    assert keep_alive - 0.1 <= elapsed <= keep_alive + 2, elapsed
    assert received == b""


# --- bodies ----------------------------------------------------------------------------------------------
def login_request(body: bytes, declared: int | None = None) -> bytes:
    return (
        b"POST /api/v1/auths/login HTTP/1.1\r\nHost: parley.test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body) if declared is None else declared}\r\n\r\n".encode()
    )


async def test_a_stalled_body_is_answered_408_and_counted(container) -> None:
    bound = 1.0
    body = json.dumps({"email": "someone@example.com", "password": "whatever it is"}).encode()
    async with edge(create_app(container), container, body_timeout_s=bound) as url:
        reader, writer = await connect(url)
        writer.write(login_request(body) + body[:10])  # and then nothing
        started = time.monotonic()
        elapsed, received = await closed_after(reader, started, bound + 2)
        writer.close()
        async with httpx.AsyncClient(base_url=url) as http:
            metrics = (await http.get("/metrics")).text
    assert bound - 0.1 <= elapsed <= bound + 2, elapsed
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert json.loads(received.partition(b"\r\n\r\n")[2])["error"]["code"] == "REQUEST_TIMEOUT"
    assert requests_counted(metrics, "/api/v1/auths/login", 408) == 1
    assert requests_counted(metrics, "/api/v1/auths/login", 500) == 0


async def test_a_slow_but_steady_body_is_read_to_the_end(container) -> None:
    # Every pause (0.4 s) is shorter than the bound (1 s); the whole body takes longer than the bound.
    body = json.dumps({"email": "someone@example.com", "password": "whatever it is"}).encode()
    async with edge(create_app(container), container, body_timeout_s=1.0) as url:
        reader, writer = await connect(url)
        writer.write(login_request(body))
        await trickle(writer, body, every_s=0.4, chunk=16)
        status, answer = await read_response(reader)
        writer.close()
    assert status == 401, answer  # the app got the whole body and answered it


# --- clients that leave ----------------------------------------------------------------------------------
async def test_a_client_gone_mid_body_is_counted_499_not_500(container) -> None:
    body = json.dumps({"email": "someone@example.com", "password": "whatever it is"}).encode()
    async with edge(create_app(container), container) as url:
        reader, writer = await connect(url)
        writer.write(login_request(body) + body[:10])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=url) as http:
            metrics = (await http.get("/metrics")).text
    assert requests_counted(metrics, "/api/v1/auths/login", 499) == 1, metrics
    assert requests_counted(metrics, "/api/v1/auths/login", 500) == 0


async def test_a_client_gone_before_a_slow_answer_is_counted_499(container) -> None:
    """The app never reads again after the request arrived, and answers after the client left: the
    server tells the request log, which counts 499 whatever the app sent."""
    metrics = Metrics()
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_answer(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    logged = request_log_middleware(slow_answer)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["app"] = SimpleNamespace(state=SimpleNamespace(container=SimpleNamespace(metrics=metrics)))
        await logged(scope, receive, send)

    def counted(status: int) -> float:
        labels = {"method": "GET", "route": "unmatched", "status": str(status)}
        return metrics.registry.get_sample_value("parley_http_requests_total", labels) or 0.0

    async with edge(app, container) as url:
        # One who waits gets the answer: 200.
        reader, writer = await connect(url)
        writer.write(HEAD)
        await started.wait()
        release.set()
        assert (await read_response(reader))[0] == 200
        writer.close()
        started.clear()
        release.clear()
        # One who leaves first: 499.
        reader, writer = await connect(url)
        writer.write(HEAD)
        await started.wait()
        writer.close()
        await asyncio.sleep(0.3)
        release.set()
        for _ in range(50):
            if counted(499):
                break
            await asyncio.sleep(0.02)
    assert counted(200) == 1 and counted(499) == 1 and counted(500) == 0
