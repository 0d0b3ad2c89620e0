"""A real HTTP webhook receiver for tests and benchmarks: served by uvicorn on a local port, it verifies
every delivery with the ``standardwebhooks`` package (the specification's reference implementation) and
answers as the test scripts it (fail the first attempts, 429 with Retry-After, be slow, redirect)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError

__all__ = ["Answer", "Delivery", "Receiver"]


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body: bytes = b"ok"


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    attempt: int
    """How many times this receiver saw this ``webhook-id``, this one included."""
    at: float
    """``time.time()`` when it arrived."""
    verified: bool
    payload: dict[str, Any] | None
    status: int
    """What the receiver answered."""
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """``answer(webhook_id, attempt)`` decides each response (default: 200 at once). Secrets: any of them
    verifying counts (rotation); a delivery that verifies with none is answered 401."""

    def __init__(self, *secrets: str, answer: Callable[[str, int], Answer] | None = None) -> None:
        self.verifiers = [Webhook(s) for s in secrets]
        self.answer = answer or (lambda _id, _n: Answer())
        self.deliveries: list[Delivery] = []
        self.seen: dict[str, int] = defaultdict(int)
        self.accepted: dict[str, Delivery] = {}
        self.arrived = asyncio.Event()

    def verify(self, body: bytes, headers: dict[str, str]) -> dict[str, Any] | None:
        for verifier in self.verifiers:
            try:
                return dict(verifier.verify(body, headers))
            except WebhookVerificationError:
                continue
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # the sender died mid-request (kill -9): nothing arrived
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        webhook_id = headers.get("webhook-id", "")
        self.seen[webhook_id] += 1
        attempt = self.seen[webhook_id]
        payload = self.verify(body, headers)
        answer = self.answer(webhook_id, attempt) if payload is not None else Answer(status=401)
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        delivery = Delivery(
            webhook_id, attempt, time.time(), payload is not None, payload, answer.status, body, headers
        )
        self.deliveries.append(delivery)
        if 200 <= answer.status < 300:
            self.accepted.setdefault(webhook_id, delivery)
        self.arrived.set()
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(k.encode(), v.encode()) for k, v in answer.headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})

    async def wait_for(self, count: int, timeout: float) -> None:  # noqa: ASYNC109 - a deadline over many waits
        """Until ``count`` distinct webhook ids were accepted (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(self.accepted)} of {count} accepted after {timeout} s")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout=left)
            except TimeoutError:
                continue

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1") -> AsyncIterator[str]:
        """Serve on a free port of ``host``: the base URL."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind((host, 0))
        config = uvicorn.Config(
            self, lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=1
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        try:
            yield f"http://{host}:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            await task


def payload_types(receiver: Receiver) -> dict[str, str]:
    """webhook id -> event type, of what was accepted."""
    return {i: json.loads(json.dumps(d.payload))["type"] for i, d in receiver.accepted.items() if d.payload}
