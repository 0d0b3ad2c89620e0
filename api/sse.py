"""Reading one generation's token stream, for the SSE route and for the OpenAI-compatible routes.

The worker publishes chunks to ``PARLEY_TOKENS`` on ``subjects.tokens(generation_id)`` (``attempt``/
``seq``, then a ``done`` chunk with the status and usage). A reader replays the subject from the start of
the stream with an ephemeral ordered consumer and skips what its client already holds (``Last-Event-ID``
= ``attempt:seq``), so a reconnecting client loses and repeats nothing. A higher attempt means the worker
died and another started over: the reader says ``restart`` and the client drops the text it has.

A generation that finished before the token stream's retention ran out of it (or whose ``done`` chunk
never made it, the worker having died in between) replays from the event store: its final text as one
token, then ``done``. Closing the reader (a client that went away) never touches the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry.trace import Span

from adapters import tracing
from domain.chats import Generation
from schema.tokens import TokenChunk, ToolCallPiece, decode_chunk
from workers.bootstrap import Container

__all__ = ["FINAL_SEQ", "HEARTBEAT_S", "StreamEvent", "connect", "parse_event_id", "read_generation"]

HEARTBEAT_S = 10.0
"""Silence after which the reader says it is still there (an SSE comment), and looks at the generation."""

FINAL_SEQ = 999_999
"""``seq`` of the one token that replays a finished generation's text from the event store (below the
worker's ``done`` seq, above any real chunk)."""


@dataclass(frozen=True)
class StreamEvent:
    kind: str
    """token, restart, error, done or heartbeat."""
    attempt: int = 0
    seq: int = 0
    text: str = ""
    thinking: str = ""
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    status: str | None = None
    finish_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    published_at: float = 0.0
    """On a token from the token stream: when the worker published it (``TokenChunk.published_at``)."""
    tool_calls: tuple[ToolCallPiece, ...] = ()
    """On a token: pieces of the tool calls the answer makes."""

    @property
    def event_id(self) -> str:
        return f"{self.attempt}:{self.seq}"

    def usage(self) -> dict[str, int]:
        prompt, completion = self.prompt_tokens or 0, self.completion_tokens or 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def parse_event_id(value: str | None) -> tuple[int, int] | None:
    """``attempt:seq`` from a ``Last-Event-ID`` header; None when absent or not of that shape."""
    if not value:
        return None
    attempt, sep, seq = value.strip().partition(":")
    if not sep or not attempt.isdigit() or not seq.isdigit() or len(attempt) > 6 or len(seq) > 9:
        return None
    return int(attempt), int(seq)


async def connect(c: Container) -> Any:
    """The API process's JetStream context (connected on first use)."""
    if c.js is None:
        await c.connect_nats("parley-api")
    return c.js


async def _last_chunk(c: Container, js: Any, generation_id: str) -> TokenChunk | None:
    try:
        raw = await js.get_last_msg(c.subjects.tokens_stream, c.subjects.tokens(generation_id))
    except NotFoundError:
        return None
    try:
        return decode_chunk(raw.data or b"")
    except msgspec.DecodeError:
        return None


def _ending(g: Generation, *, client_attempt: int, client_seq: int) -> list[StreamEvent]:
    """A finished generation, told from the event store: its whole text as one token, then done. The
    client drops what it holds first, unless it holds exactly this already."""
    events: list[StreamEvent] = []
    if (client_attempt, client_seq) != (g.attempt, FINAL_SEQ):
        if client_attempt > 0:
            events.append(StreamEvent("restart", attempt=g.attempt))
        calls = tuple(
            ToolCallPiece(index=i, id=c["id"], name=c["name"], arguments=c.get("arguments", ""))
            for i, c in enumerate(g.tool_calls)
        )
        if g.text or g.thinking or calls:
            events.append(
                StreamEvent(
                    "token",
                    attempt=g.attempt,
                    seq=FINAL_SEQ,
                    text=g.text,
                    thinking=g.thinking,
                    completion_tokens=g.completion_tokens,
                    tool_calls=calls,
                )
            )
    return events + _final(
        g.attempt, g.status, g.finish_reason, g.error_code, g.error_message, g.prompt_tokens, g.completion_tokens
    )


def _finish_reason(status: str | None, reason: str | None) -> str | None:
    """The engine's reason for a completed generation (stop, length); the status itself otherwise."""
    if status == "completed":
        return reason or "stop"
    return {"cancelled": "cancelled", "failed": "error"}.get(status or "", reason)


def _done(chunk: TokenChunk) -> list[StreamEvent]:
    return _final(
        chunk.attempt,
        chunk.status,
        chunk.finish_reason,
        chunk.error_code,
        chunk.error_message,
        chunk.prompt_tokens,
        chunk.completion_tokens,
    )


def _final(
    attempt: int,
    status: str | None,
    finish_reason: str | None,
    error_code: str | None,
    error_message: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
) -> list[StreamEvent]:
    """How a stream ends, whether told by the worker's done chunk or by the event store: an error event
    for a failed generation, then done with the status and usage."""
    events = []
    if status == "failed":
        events.append(
            StreamEvent(
                "error",
                attempt=attempt,
                error_code=error_code or "GENERATION_FAILED",
                error_message=error_message or "the generation failed",
            )
        )
    events.append(
        StreamEvent(
            "done",
            attempt=attempt,
            status=status,
            finish_reason=_finish_reason(status, finish_reason),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
    )
    return events


async def _load(c: Container, generation_id: uuid.UUID) -> Generation:
    return await c.store.call(c.store.get, Generation, generation_id)


async def read_generation(
    c: Container,
    generation: Generation,
    *,
    after: tuple[int, int] | None = None,
    heartbeat_s: float | None = None,
) -> AsyncIterator[StreamEvent]:
    """Every event of the generation the client lacks, ending with ``done``. ``after`` is the
    ``attempt:seq`` the client holds. The caller has checked that the client may read it."""
    heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    js = await connect(c)
    generation_id = str(generation.id)
    # The attempt whose text the client holds (0: none yet), and the last seq of it that it has.
    attempt, seq = after or (0, 0)

    if generation.finished:
        last = await _last_chunk(c, js, generation_id)
        if last is None or not last.done:
            for event in _ending(generation, client_attempt=attempt, client_seq=seq):
                yield event
            return

    sub = await js.subscribe(
        c.subjects.tokens(generation_id),
        stream=c.subjects.tokens_stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    # The stream's span goes on with the generation's trace (its chunks' traceparent), linked to the request
    # that reads it: one message sent is one trace, its reading included.
    stream_span: Span | None = None
    tokens = 0
    failure: BaseException | None = None
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=heartbeat_s)
            except (NatsTimeout, TimeoutError):
                yield StreamEvent("heartbeat")
                current = await _load(c, generation.id)
                if current.finished:
                    last = await _last_chunk(c, js, generation_id)
                    if last is None or not last.done:
                        # The worker recorded the outcome but died before saying so on the stream.
                        for event in _ending(current, client_attempt=attempt, client_seq=seq):
                            yield event
                        return
                continue
            try:
                chunk = decode_chunk(msg.data)
            except msgspec.DecodeError:
                continue
            if stream_span is None and tracing.enabled():
                stream_span = tracing.start_span(
                    "stream generation", (msg.headers or {}).get("traceparent"), kind=tracing.SpanKind.CONSUMER,
                    attributes={"parley.generation_id": generation_id, "messaging.system": "nats"}, link_current=True,
                )  # fmt: skip
            if chunk.done:
                if chunk.attempt != attempt and (attempt > 0 or chunk.attempt > 0):
                    # The outcome belongs to another attempt than the text the client holds (an attempt
                    # that wrote nothing, or a slow earlier one that finished first): tell it whole.
                    finished = await _load(c, generation.id)
                    if finished.finished:
                        for event in _ending(finished, client_attempt=attempt, client_seq=seq):
                            yield event
                        return
                for event in _done(chunk):
                    yield event
                return
            if chunk.attempt < attempt or (chunk.attempt == attempt and chunk.seq <= seq):
                continue  # an abandoned attempt, or text the client has
            if chunk.attempt > attempt:
                if attempt > 0:
                    yield StreamEvent("restart", attempt=chunk.attempt)
                attempt, seq = chunk.attempt, 0
            seq = chunk.seq
            tokens += 1
            yield StreamEvent(
                "token",
                attempt=chunk.attempt,
                seq=chunk.seq,
                text=chunk.text,
                thinking=chunk.thinking,
                completion_tokens=chunk.completion_tokens,
                published_at=chunk.published_at,
                tool_calls=chunk.tool_calls,
            )
    except BaseException as exc:
        failure = None if isinstance(exc, GeneratorExit | asyncio.CancelledError) else exc  # the client left
        raise
    finally:
        if stream_span is not None:
            stream_span.set_attribute("parley.stream.chunks", tokens)
            tracing.end_span(stream_span, failure)
        # Runs also when the client went away and the response task is being cancelled: shield it, or
        # the subscription would outlive the stream.
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await sub.unsubscribe()
