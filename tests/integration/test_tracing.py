"""One message sent is one trace across processes: real ``parley api``, ``relay``, ``project`` and ``worker``
processes export their spans over OTLP/HTTP (configured by the standard ``OTEL_*`` variables only) to a
receiver in the test, which decodes each ``ExportTraceServiceRequest`` with ``opentelemetry-proto``. The
message's trace holds every hop: the HTTP request, the command and its append, the relay's publish, each
projector's apply, the worker's job with its engine call (GenAI attributes), and the SSE stream that reads
the answer, each hop a child of the one before it."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from adapters.settings import Settings
from tests.e2e.test_chat_api import add_echo_model, bearer, new_chat, sign_up
from tests.integration.procs import Part
from tests.integration.test_upload_memory import free_port, serving
from tests.sse import sse_events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass(frozen=True, eq=False)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    links: tuple[str, ...]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest``."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            links=tuple(link.span_id.hex() for link in s.links),
                        )
                    )
        with self.lock:
            self.spans.extend(received)

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_response(404)
                self.end_headers()
                return
            received.add(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
"""The caller's own span: the API continues the trace it names."""


async def _whole_trace(receiver: Receiver, parts: list[Part], within_s: float = 60) -> list[ReceivedSpan]:
    """The trace once every hop has arrived (spans leave in batches every 100 ms)."""
    wanted = {"stream generation", "generation job", "project chats", "project usage", "project audit"}
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        spans = receiver.of_trace(TRACE_ID)
        names = {s.name for s in spans}
        finishes = [s for s in spans if s.name == "command Generations.finish"]
        if wanted <= names and finishes and len([s for s in spans if s.name == "project chats"]) >= 2:
            return spans
        for part in parts:
            assert part.alive(), f"{part.name} exited:\n{part.log()}"
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the trace lacks {sorted(wanted - names)}; it has {sorted(names)}")
        await asyncio.sleep(0.1)


async def test_one_message_is_one_trace_across_api_relay_projector_and_worker(
    settings: Settings, tmp_path: Path, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    received, endpoint = receiver
    for name, value in {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,  # no exporter named: an endpoint alone turns tracing on
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }.items():
        monkeypatch.setenv(name, value)  # the parts' environment
    port, worker_port = free_port(), free_port()
    api = Part(msgspec.structs.replace(settings, port=port), tmp_path / "logs", "api").start()
    parts = [api, *(Part(settings, tmp_path / "logs", name).start() for name in ("relay", "project"))]
    parts.append(Part(msgspec.structs.replace(settings, worker_metrics_port=worker_port), tmp_path / "logs", "worker"))
    parts[-1].start()
    try:
        await api.wait_for_log("api_listening", timeout=120)  # four processes start at once
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await serving(client)
            admin = await sign_up(client, "admin@example.com")
            await add_echo_model(client, admin)
            chat = await new_chat(client, admin)
            await parts[3].wait_for_log("worker_started", timeout=120)
            traced = {**bearer(admin), "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
            r = await client.post(
                f"/api/v1/chats/{chat}/messages", json={"content": "hello there", "model": "echo"}, headers=traced
            )
            assert r.status_code == 202, r.text
            generation = r.json()["generation_id"]
            r = await client.get(f"/api/v1/generations/{generation}/stream", headers=traced)
            assert r.status_code == 200 and sse_events(r.text)[-1][0] == "done", r.text
            spans = await _whole_trace(received, parts)
            # The metrics of the same generation: the worker's own, and the queue the API reads from JetStream.
            worker_metrics = (await client.get(f"http://127.0.0.1:{worker_port}/metrics")).text
            api_metrics = (await client.get("/metrics")).text
    finally:
        for part in parts:
            part.stop()

    by_id = {s.span_id: s for s in spans}
    # One trace: every span's parent is in it, but the caller's own span.
    orphans = [(s.service, s.name) for s in spans if s.parent_id not in by_id and s.parent_id != CLIENT_SPAN]
    assert not orphans, orphans

    def parent(s: ReceivedSpan) -> ReceivedSpan:
        return by_id[s.parent_id]

    def one(name: str, service: str) -> ReceivedSpan:
        found = [s for s in spans if s.name == name and s.service == service]
        assert found, f"no {name!r} span from {service}: {sorted({(s.service, s.name) for s in spans})}"
        return found[0]

    # The HTTP request (Litestar's plugin, named by route) -> the command -> its append.
    http = one("POST /api/v1/chats/{chat_id}/messages", "parley-api")
    assert http.parent_id == CLIENT_SPAN and http.attributes["http.route"].endswith("/messages")
    command = one("command Chats.send_message", "parley-api")
    assert parent(command) == http
    assert parent(one("event_store.append", "parley-api")) == command
    # The relay publishes the command's events (and the job) in its trace.
    publishes = [s for s in spans if s.service == "parley-relay" and s.name == "publish"]
    assert {"GenerationRequested", "MessagePosted"} <= {s.attributes["parley.event_type"] for s in publishes}
    assert {s.parent_id for s in publishes if s.attributes["parley.event_type"] == "MessagePosted"} == {command.span_id}
    # Each projector applies them in the command's trace (and the worker's outcome in the worker's).
    applied = {s.attributes["parley.projector"] for s in spans if s.service == "parley-projector"}
    assert {"chats", "usage", "audit"} <= applied, applied
    assert command.span_id in {s.parent_id for s in spans if s.name == "project chats"}
    # The worker takes the job the relay published, and calls the engine.
    job = one("generation job", "parley-worker")
    assert parent(job).service == "parley-relay" and parent(job).attributes["parley.event_type"] == "GenerationRequested"
    engine = one("chat echo", "parley-worker")
    assert parent(engine) == job
    assert engine.attributes["gen_ai.operation.name"] == "chat"
    assert engine.attributes["gen_ai.provider.name"] == "parley.echo"
    assert engine.attributes["gen_ai.request.model"] == "echo"
    assert engine.attributes["gen_ai.usage.input_tokens"] > 0 and engine.attributes["gen_ai.usage.output_tokens"] > 0
    assert engine.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert engine.attributes["gen_ai.response.time_to_first_chunk"] >= 0
    assert parent(one("command Generations.finish", "parley-worker")) == job
    # The answer's events reach the read models in the same trace, through the worker's command.
    assert {parent(s).service for s in spans if s.name == "project chats"} == {"parley-api", "parley-worker"}
    # The SSE stream reads the worker's chunks in the trace, linked to the reading request.
    stream = one("stream generation", "parley-api")
    assert parent(stream).service == "parley-worker"
    reading = one("GET /api/v1/generations/{generation_id}/stream", "parley-api")
    assert reading.span_id in stream.links and stream.attributes["parley.stream.chunks"] >= 1
    assert len({s.trace_id for s in spans}) == 1
    for line in (
        'parley_generation_queue_wait_seconds_count{model="echo"} 1.0',
        'parley_generation_ttft_seconds_count{model="echo"} 1.0',
        'parley_generation_tokens_per_second_count{model="echo"} 1.0',
        'parley_generations_total{model="echo",status="completed"} 1.0',
    ):
        assert line in worker_metrics, worker_metrics
    assert 'parley_generation_jobs{state="waiting"} 0.0' in api_metrics, api_metrics
    assert 'parley_consumer_lag_events{consumer="relay:relay"}' in api_metrics
