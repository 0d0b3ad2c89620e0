"""The generation worker: pulls jobs from the ``PARLEY_JOBS`` work queue, runs the engine, streams token
chunks to ``PARLEY_TOKENS`` and records the outcome in the event store.

Jobs are acked only once the outcome is recorded. While a generation runs the worker sends
``in_progress`` heartbeats, so a long generation keeps its job; a worker that dies stops heartbeating
and JetStream redelivers the job to another worker after ``ack_wait``, which starts the generation over
as a new attempt (readers of the token stream see the attempt number change). An engine error fails the
generation at once; an unexpected crash is retried until ``max_deliver``, and a job JetStream gives up
on (its advisory) is recorded as failed, so no generation stays "running" forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import msgspec
import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode

from adapters import tracing
from adapters.metrics import WorkerMetrics
from adapters.nats import publish_acked
from adapters.readiness import EngineStatus, WorkerBeacon, WorkerRecords
from application.context import CommandContext
from application.conversations import EngineTarget, Outcome, Retrieval
from application.engines import Engine, EngineError, EngineRequest
from application.knowledge import citations_of, with_sources
from domain.chats import Generation, tool_call_id_for
from schema.jobs import Job, decode_job
from schema.tokens import TokenChunk, ToolCallPiece, encode_chunk
from workers.bootstrap import Container
from workers.jobs import run_jobs

__all__ = ["GenerationWorker", "EngineRegistry"]

log = structlog.get_logger("parley.worker")

CHUNK_INTERVAL_S = 0.03  # one token message per ~30 ms of tokens
ACK_WAIT_S = 4.0
"""How long JetStream waits for a job's ack or heartbeat before it hands the job to another worker: how soon
a generation whose worker died starts over (kill -9 of a worker mid-generation: the next attempt's first
token ~4 s later; it was 10 s)."""
HEARTBEAT_S = 1.0
"""``in_progress`` every second: a worker's event loop may stall three of them before its job is handed on."""
CANCEL_CHECK_S = 2.0
"""How often a running generation looks in the event store for a cancel whose signal it missed."""
GIVE_UP_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0)
"""How long a worker keeps trying to record a generation JetStream gave up on (~1 minute in all)."""


GEN_AI_PROVIDERS = {"openai": "openai", "ollama": "ollama", "local": "parley.local", "echo": "parley.echo"}
"""``gen_ai.provider.name`` of each engine kind (OpenAI's name for any OpenAI-compatible server)."""


def gen_ai_request(target: EngineTarget, request: EngineRequest) -> dict[str, Any]:
    """The engine call's attributes by the OpenTelemetry GenAI semantic conventions (inference span).
    Never the messages: they are personal content."""
    provider = GEN_AI_PROVIDERS.get(target.kind, target.kind)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the name before gen_ai.provider.name, which older backends still read
        "gen_ai.request.model": target.upstream_model,
        "gen_ai.request.stream": True,
        "gen_ai.request.temperature": request.temperature,
        "gen_ai.request.top_p": request.top_p,
    }
    if request.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.max_tokens
    if target.base_url:
        url = urlsplit(target.base_url)
        attributes["server.address"] = url.hostname or ""
        if url.port:
            attributes["server.port"] = url.port
    return attributes


def gen_ai_response(outcome: Outcome) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.usage.input_tokens": outcome.prompt_tokens,
        "gen_ai.usage.output_tokens": outcome.completion_tokens,
        "gen_ai.response.finish_reasons": [outcome.finish_reason if outcome.status == "completed" else outcome.status],
        "parley.generation.status": outcome.status,
        "parley.generation.tokens_per_s": round(outcome.tokens_per_s, 2),
    }
    if outcome.completion_tokens:
        attributes["gen_ai.response.time_to_first_chunk"] = round(outcome.ttft_ms / 1000, 6)
    if outcome.error_code:
        attributes["error.type"] = outcome.error_code
    return attributes


class ToolCalls:
    """The tool calls of one attempt as their pieces stream in: each call gets parley's id for it (the
    upstream's ids are its own business), and the whole calls are kept for the outcome."""

    def __init__(self, generation_id: uuid.UUID) -> None:
        self.generation_id = generation_id
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, deltas: Any) -> list[ToolCallPiece]:
        pieces = []
        for delta in deltas:
            call = self._calls.get(delta.index)
            if call is None:
                call = self._calls[delta.index] = {
                    "id": tool_call_id_for(self.generation_id, len(self._calls)),
                    "name": delta.name or "",
                    "arguments": "",
                }
                first = True
            else:
                first = False
                if delta.name and not call["name"]:
                    call["name"] = delta.name
            call["arguments"] += delta.arguments
            pieces.append(
                ToolCallPiece(
                    index=list(self._calls).index(delta.index),
                    id=call["id"] if first else None,
                    name=call["name"] if first else None,
                    arguments=delta.arguments,
                )
            )
        return pieces

    def finished(self) -> list[dict[str, str]]:
        return [dict(call) for call in self._calls.values()]


class EngineRegistry:
    """One engine per (kind, base URL, key) per process: the local model loads once. An engine preloaded
    at start is the one that then serves requests; its state (loading, ready, failed) is in ``statuses()``
    and ``changed`` is set whenever that state changes."""

    def __init__(self, c: Container) -> None:
        self.c = c
        self._engines: dict[tuple[str, str | None, str | None], Engine] = {}
        self._lock = asyncio.Lock()
        self._preloads: dict[str, EngineStatus] = {}
        self._loading: dict[tuple[str, str | None, str | None], asyncio.Task[None]] = {}
        self.changed = asyncio.Event()

    @property
    def kinds(self) -> list[str]:
        from adapters.engines import ENGINE_KINDS

        return [k for k in ENGINE_KINDS if k != "echo" or self.c.settings.enable_echo_engine]

    def statuses(self) -> list[EngineStatus]:
        return list(self._preloads.values())

    def preload(self, target: EngineTarget) -> asyncio.Task[None]:
        """Load ``target``'s model now, in the background: it is ``loading`` from this call on. A request
        for it that arrives meanwhile gets the same engine and waits for the load."""
        self._set(EngineStatus(kind=target.kind, model=target.upstream_model, state="loading"))
        key = self._key(target)
        task = self._loading[key] = asyncio.create_task(self._preload(target))
        task.add_done_callback(lambda _: self._loading.pop(key, None))
        return task

    async def _preload(self, target: EngineTarget) -> None:
        started = time.perf_counter()
        status = EngineStatus(kind=target.kind, model=target.upstream_model, state="ready")
        try:
            engine = await self._engine(target)
            warmup = getattr(engine, "warmup", None)  # engines with nothing to load have none
            if warmup is not None:
                await warmup(target.upstream_model)
        except Exception as exc:  # reported, not raised: the worker goes on with its other engines
            error = (getattr(exc, "message", None) or str(exc) or type(exc).__name__)[:300]
            status = msgspec.structs.replace(status, state="failed", error=error)
        status = msgspec.structs.replace(status, load_seconds=round(time.perf_counter() - started, 3))
        if status.error is None:
            log.info("engine_preloaded", kind=status.kind, model=status.model, seconds=status.load_seconds)
        else:
            log.warning("engine_preload_failed", kind=status.kind, model=status.model, error=status.error)
        self._set(status)

    def _set(self, status: EngineStatus) -> None:
        self._preloads[f"{status.kind}:{status.model}"] = status
        self.changed.set()

    @staticmethod
    def _key(target: EngineTarget) -> tuple[str, str | None, str | None]:
        return (target.kind, target.base_url, target.api_key)

    async def get(self, target: EngineTarget) -> Engine:
        """The engine for ``target``, once it is loaded if it is being preloaded (waiting here holds no
        thread, as waiting inside the engine for its load would)."""
        engine = await self._engine(target)
        loading = self._loading.get(self._key(target))
        if loading is not None:
            await asyncio.shield(loading)  # a cancelled request leaves the load to go on
        return engine

    async def _engine(self, target: EngineTarget) -> Engine:
        from adapters.engines import build_engine

        key = self._key(target)
        async with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                if target.kind == "echo" and not self.c.settings.enable_echo_engine:
                    raise EngineError("MODEL_UNAVAILABLE", "the echo engine is disabled in this deployment")
                device = None if self.c.settings.local_device == "auto" else self.c.settings.local_device
                engine = build_engine(
                    target.kind,
                    base_url=target.base_url,
                    api_key=target.api_key,
                    home=self.c.settings.home,
                    device=device,
                )
                self._engines[key] = engine
            return engine

    async def close(self) -> None:
        for engine in self._engines.values():
            with contextlib.suppress(Exception):
                await engine.close()


class GenerationWorker:
    def __init__(
        self,
        c: Container,
        *,
        js: Any,
        nc: Any,
        name: str | None = None,
        concurrency: int | None = None,
        ack_wait_s: float = ACK_WAIT_S,
        heartbeat_s: float = HEARTBEAT_S,
        max_deliver: int = 3,
        sweep_every_s: float = 30.0,
        sweep_after_s: float | None = None,
        preload_local: bool = False,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.c = c
        self.metrics = metrics or WorkerMetrics()
        self.js = js
        self.nc = nc
        self.subjects = c.subjects
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.concurrency = concurrency or c.settings.worker_concurrency
        self.ack_wait_s = ack_wait_s
        self.heartbeat_s = heartbeat_s
        self.max_deliver = max_deliver
        self.sweep_every_s = sweep_every_s
        self.sweep_after_s = sweep_after_s
        self.engines = EngineRegistry(c)
        # Load the local model at start (`parley worker` reads PARLEY_PRELOAD_LOCAL_MODEL); off by default
        # so that in-process workers (tests, benchmarks) load a model only when a request asks for one.
        self.preload_local = preload_local
        self._cancels: dict[str, asyncio.Event] = {}
        self._deliveries: dict[str, Any] = {}
        """The latest delivery of each job running here: a job redelivered while it runs (this worker's heartbeats
        came late: its event loop stalled past the ack wait) goes on in the attempt already running, whose
        heartbeats and ack then answer that delivery, rather than starting over beside itself."""

    async def run(self, stop: asyncio.Event) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        from adapters.engines import DEFAULT_LOCAL_MODEL

        durable = self.subjects.workers_durable
        # Created, or brought up to this config: pull_subscribe alone would leave an existing consumer's
        # ack_wait as it was, and with it how soon a dead worker's jobs are handed on.
        await self.js.add_consumer(
            self.subjects.jobs_stream,
            config=ConsumerConfig(
                name=durable,
                durable_name=durable,
                filter_subject=self.subjects.jobs_all,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_s,
                max_deliver=self.max_deliver,
                max_ack_pending=10_000,
            ),
        )
        sub = await self.js.pull_subscribe_bind(durable=durable, stream=self.subjects.jobs_stream)
        if self.c.js is not None:  # chats and generations this worker cached: forgotten when shredded
            await self.c.follow_shredding("parley-worker")
        cancels = await self.nc.subscribe(self.subjects.cancel_all, cb=self._on_cancel)
        advisories = await self.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.subjects.jobs_stream}.{self.subjects.workers_durable}",
            cb=self._on_given_up,
        )
        log.info("worker_started", worker=self.name, concurrency=self.concurrency, preload_local=self.preload_local)
        background = [asyncio.create_task(self._sweep_reservations(stop))]
        if self.preload_local:  # beside job pulling: jobs for other engines go on meanwhile
            background.append(self.engines.preload(EngineTarget("local", None, None, DEFAULT_LOCAL_MODEL)))
        beacon = WorkerBeacon(
            WorkerRecords(self.c.redis, self.c.settings.namespace),
            name=self.name,
            concurrency=self.concurrency,
            kinds=self.engines.kinds,
            engines=self.engines.statuses,
        )
        background.append(asyncio.create_task(beacon.run(stop, wake=self.engines.changed)))
        try:
            # Stopping hands running generations back to the queue for another worker, now.
            await run_jobs(sub, self._handle, concurrency=self.concurrency, stop=stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await cancels.unsubscribe()
            await advisories.unsubscribe()
            await sub.unsubscribe()
            await self.engines.close()

    async def _sweep_reservations(self, stop: asyncio.Event) -> None:
        """Quota reservations of generations that never finished are released after a timeout (those that
        did finish, but whose worker died before settling, are settled), so nothing stays blocked."""
        from application.quotas import SWEEP_AFTER_S

        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.sweep_every_s)
            if stop.is_set():
                return
            try:
                await self.c.quotas.sweep(self.sweep_after_s or SWEEP_AFTER_S)
            except Exception as exc:
                log.warning("quota_sweep_failed", error=str(exc))

    async def _settle(self, generation_id: str, outcome: Outcome | None) -> None:
        """Settle the generation's quota reservation with its actual usage (idempotent). ``outcome`` is the
        one just recorded; ``None`` when another attempt recorded it (the event store has the usage)."""
        try:
            if outcome is not None:
                await self.c.quotas.settle(generation_id, outcome.prompt_tokens + outcome.completion_tokens)
            else:
                await self.c.quotas.settle_finished(generation_id)
        except Exception as exc:  # the sweeper settles it later
            log.warning("quota_settle_failed", generation_id=generation_id, error=str(exc))

    async def _on_cancel(self, msg: Any) -> None:
        generation_id = msg.subject.rsplit(".", 1)[-1]
        event = self._cancels.get(generation_id)
        if event is not None:
            event.set()

    async def _on_given_up(self, msg: Any) -> None:
        """JetStream stopped redelivering a job: record the generation as failed (retried while the event
        store is unavailable), settle its reservation, and only then drop the job. What cannot be recorded
        is said in the log and the job kept in the stream, never dropped in silence."""
        try:
            advisory = msgspec.json.decode(msg.data)
            seq = int(advisory["stream_seq"])
            stored = await self.js.get_msg(self.subjects.jobs_stream, seq)
            job = decode_job(stored.data)
        except Exception as exc:  # the job is gone already (recorded and deleted by another worker)
            log.warning("max_deliveries_advisory_unreadable", error=str(exc))
            return
        ctx = CommandContext.caused_by(
            job.tenant_id, f"worker:{self.name}", event_id=job.event_id, correlation_id=job.correlation_id
        )
        outcome = Outcome(
            status="failed",
            text="",
            prompt_tokens=0,
            completion_tokens=0,
            attempt=self.max_deliver,
            error_code="MAX_ATTEMPTS",
            error_message=f"gave up after {self.max_deliver} attempts",
        )
        recorded: bool | None = None
        for delay_s in (*GIVE_UP_RETRY_DELAYS_S, None):
            try:
                recorded = await self.c.generations.finish(ctx, uuid.UUID(job.generation_id), outcome)
                break
            except Exception as exc:
                log.warning(
                    "give_up_not_recorded_yet", generation_id=job.generation_id, error_type=type(exc).__name__,
                    error=str(exc)[:200], retry_in_s=delay_s,
                )  # fmt: skip
                if delay_s is None:
                    log.error("give_up_unrecorded", generation_id=job.generation_id, job_seq=seq)
                    return  # the job stays in the stream, for an operator (or a later advisory) to act on
                await asyncio.sleep(delay_s)
        await self._settle(job.generation_id, outcome if recorded else None)
        if recorded:
            try:
                await self._publish_done(job.generation_id, outcome)
            except Exception as exc:  # readers fall back to the event store
                log.warning("give_up_done_unpublished", generation_id=job.generation_id, error=str(exc)[:200])
        log.info("generation_given_up", generation_id=job.generation_id, recorded=recorded)
        try:
            await self.js.delete_msg(self.subjects.jobs_stream, seq)
        except Exception as exc:
            log.warning("given_up_job_not_deleted", generation_id=job.generation_id, error=str(exc)[:200])

    async def _heartbeat(self, msg: Any, generation_id: str) -> None:
        checked = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat_s)
            with contextlib.suppress(Exception):
                await self._deliveries.get(generation_id, msg).in_progress()
            if time.monotonic() - checked < CANCEL_CHECK_S:
                continue
            checked = time.monotonic()
            # Fallback for a cancel signal that was missed (sent before this worker subscribed).
            g = await self.c.store.call(self.c.store.find, Generation, uuid.UUID(generation_id))
            if g is not None and g.cancel_requested and generation_id in self._cancels:
                self._cancels[generation_id].set()

    async def _handle(self, msg: Any) -> None:
        """One job, in the trace of the request that asked for it (the job message's traceparent)."""
        job = decode_job(msg.data)
        attempt = int(msg.metadata.num_delivered)
        if job.generation_id in self._deliveries:  # still running here: late heartbeats, not a lost worker
            self._deliveries[job.generation_id] = msg
            with contextlib.suppress(Exception):
                await msg.in_progress()
            log.warning("job_redelivered_while_running", generation_id=job.generation_id, attempt=attempt)
            return
        self.metrics.taken(job.model, msg.metadata.timestamp, attempt)
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "parley.generation_id": job.generation_id,
            "parley.model": job.model,
            "parley.attempt": attempt,
            "parley.correlation_id": job.correlation_id or "",
        }
        self.metrics.running.inc()
        try:
            with tracing.span(
                "generation job", parent=(msg.headers or {}).get("traceparent"), kind=SpanKind.CONSUMER,
                attributes=attributes,
            ):  # fmt: skip
                await self._run(msg, job, attempt)
        finally:
            self.metrics.running.dec()

    async def _run(self, msg: Any, job: Job, attempt: int) -> None:
        ctx = CommandContext.caused_by(
            job.tenant_id, f"worker:{self.name}", event_id=job.event_id, correlation_id=job.correlation_id
        )
        structlog.contextvars.bind_contextvars(generation_id=job.generation_id)
        cancel = self._cancels.setdefault(job.generation_id, asyncio.Event())
        self._deliveries[job.generation_id] = msg
        heartbeat = asyncio.create_task(self._heartbeat(msg, job.generation_id))
        try:
            started = await self.c.generations.start(
                ctx, uuid.UUID(job.generation_id), attempt=attempt, worker=self.name
            )
            if started is None:  # finished already (a duplicate delivery, or a crash before the ack)
                await self._settle(job.generation_id, None)
                await self._deliveries.get(job.generation_id, msg).ack()
                return
            generation, target, request = started.generation, started.target, started.request
            if generation.cancel_requested:
                cancel.set()
            citations: list[dict[str, Any]] = []
            request = await self.c.generations.complete_request(generation, request)
            if started.retrieval is not None:
                request, citations = await self._retrieve(started.retrieval, request)
            with tracing.span(
                f"chat {target.upstream_model}", kind=SpanKind.CLIENT, attributes=gen_ai_request(target, request)
            ) as engine_span:
                outcome = await self._generate(job.generation_id, attempt, target, request, cancel)
                if engine_span is not None:
                    engine_span.set_attributes(gen_ai_response(outcome))
                    if outcome.status == "failed":
                        engine_span.set_status(Status(StatusCode.ERROR, outcome.error_code))
            self.metrics.finished(
                job.model, outcome.status, outcome.ttft_ms, outcome.tokens_per_s, outcome.completion_tokens
            )
            outcome.citations.extend(citations)
            recorded = await self.c.generations.finish(ctx, uuid.UUID(job.generation_id), outcome)
            await self._settle(job.generation_id, outcome if recorded else None)
            if recorded:
                await self._publish_done(job.generation_id, outcome)
            await self._deliveries.get(job.generation_id, msg).ack()
            log.info(
                "generation_finished",
                status=outcome.status,
                attempt=attempt,
                completion_tokens=outcome.completion_tokens,
                tokens_per_s=round(outcome.tokens_per_s, 1),
            )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._deliveries.get(job.generation_id, msg).nak()  # this worker is stopping: another takes the job now
            raise
        except Exception as exc:
            log.exception("generation_crashed", attempt=attempt, error_type=type(exc).__name__)
            with contextlib.suppress(Exception):
                await self._deliveries.get(job.generation_id, msg).nak(delay=1)
        finally:
            heartbeat.cancel()
            self._cancels.pop(job.generation_id, None)
            self._deliveries.pop(job.generation_id, None)
            structlog.contextvars.unbind_contextvars("generation_id")

    async def _retrieve(self, retrieval: Retrieval, request: EngineRequest) -> tuple[EngineRequest, list[dict[str, Any]]]:
        """Put the chunks that best answer the question into the prompt; what to cite. Knowledge that
        cannot be searched now (an embedding provider down) is logged, and the answer goes on without it."""
        try:
            hits = await self.c.knowledge.retrieve(
                retrieval.reader,
                knowledge_ids=retrieval.knowledge_ids,
                chat_id=retrieval.chat_id,
                query=retrieval.query,
                limit=self.c.settings.rag_top_k,
                min_similarity=self.c.settings.rag_min_similarity,
            )
        except Exception as exc:
            log.warning("retrieval_failed", error_type=type(exc).__name__, error=str(exc)[:200])
            return request, []
        log.info("retrieved", chunks=len(hits))
        return with_sources(request, hits), citations_of(hits)

    async def _generate(
        self, generation_id: str, attempt: int, target: EngineTarget, request: Any, cancel: asyncio.Event
    ) -> Outcome:
        started = time.perf_counter()
        first_token_at: float | None = None
        text: list[str] = []
        thinking: list[str] = []
        pending_text: list[str] = []
        pending_thinking: list[str] = []
        seq = 0
        completion_tokens = 0
        prompt_tokens = 0
        finish_reason = "stop"
        last_flush = time.perf_counter()
        calls = ToolCalls(uuid.UUID(generation_id))
        pending_calls: list[ToolCallPiece] = []

        async def flush() -> None:
            nonlocal seq, last_flush
            if not pending_text and not pending_thinking and not pending_calls:
                return
            seq += 1
            chunk = TokenChunk(
                generation_id=generation_id,
                attempt=attempt,
                seq=seq,
                text="".join(pending_text),
                thinking="".join(pending_thinking),
                completion_tokens=completion_tokens,
                tool_calls=tuple(pending_calls),
            )
            pending_text.clear()
            pending_thinking.clear()
            pending_calls.clear()
            await self._publish(chunk)
            last_flush = time.perf_counter()

        def outcome(status: str, **extra: Any) -> Outcome:
            elapsed = time.perf_counter() - started
            decode_s = elapsed - ((first_token_at or started) - started)
            return Outcome(
                status=status,
                text="".join(text),
                thinking="".join(thinking),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                attempt=attempt,
                finish_reason=finish_reason,
                ttft_ms=((first_token_at or started) - started) * 1000,
                tokens_per_s=completion_tokens / decode_s if decode_s > 0 and completion_tokens else 0.0,
                duration_ms=elapsed * 1000,
                tool_calls=calls.finished(),
                **extra,
            )

        if cancel.is_set():
            return outcome("cancelled")
        engine = await self.engines.get(target)
        stream = engine.stream(request)
        cancel_wait = asyncio.create_task(cancel.wait())
        try:
            while True:
                next_chunk = asyncio.ensure_future(stream.__anext__())
                done, _ = await asyncio.wait({next_chunk, cancel_wait}, return_when=asyncio.FIRST_COMPLETED)
                if next_chunk not in done:
                    next_chunk.cancel()
                    with contextlib.suppress(BaseException):
                        await next_chunk
                    await flush()
                    return outcome("cancelled")
                try:
                    chunk = next_chunk.result()
                except StopAsyncIteration:
                    break
                if chunk.text or chunk.thinking or chunk.tool_calls:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    text.append(chunk.text)
                    thinking.append(chunk.thinking)
                    pending_text.append(chunk.text)
                    pending_thinking.append(chunk.thinking)
                    pending_calls.extend(calls.add(chunk.tool_calls))
                if chunk.completion_tokens is not None:
                    completion_tokens = chunk.completion_tokens
                if chunk.prompt_tokens is not None:
                    prompt_tokens = chunk.prompt_tokens
                if chunk.finish_reason:
                    finish_reason = chunk.finish_reason
                if time.perf_counter() - last_flush >= CHUNK_INTERVAL_S:
                    await flush()
            await flush()
            return outcome("completed")
        except EngineError as exc:
            await flush()
            return outcome("failed", error_code=exc.code, error_message=exc.message)
        finally:
            cancel_wait.cancel()
            with contextlib.suppress(BaseException):
                await stream.aclose()  # type: ignore[attr-defined]

    async def _publish(self, chunk: TokenChunk) -> None:
        """Tried again while JetStream elects a new leader for the tokens stream (a NATS node lost): the
        generation waits rather than failing an attempt."""
        chunk = msgspec.structs.replace(chunk, published_at=time.time())
        await publish_acked(
            self.js,
            self.subjects.tokens(chunk.generation_id),
            encode_chunk(chunk),
            msg_id=f"{chunk.generation_id}:{chunk.attempt}:{chunk.seq}",
            traceparent=tracing.current_traceparent(),  # the SSE reader goes on with this trace
        )

    async def _publish_done(self, generation_id: str, outcome: Outcome) -> None:
        await self._publish(
            TokenChunk(
                generation_id=generation_id,
                attempt=outcome.attempt,
                seq=1_000_000,  # after every chunk of the attempt
                done=True,
                status=outcome.status,
                finish_reason=outcome.finish_reason,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                error_code=outcome.error_code or None,
                error_message=outcome.error_message or None,
            )
        )
