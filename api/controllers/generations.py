"""One generation: its state, its live token stream (SSE, resumable with ``Last-Event-ID``), and
cancelling it. Only the user who asked for it sees or cancels it; anyone else gets 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, get, post
from litestar.params import FromPath, HeaderParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_202_ACCEPTED

from api import dto_chat as dto
from api.deps import App, Caller, command_context
from api.sse import StreamEvent, connect, parse_event_id, read_generation
from domain.chats import Generation
from projections.conversations import get_generation

__all__ = ["GenerationController", "sse_messages"]

log = structlog.get_logger("parley.api")


def _view_from_row(row: dict[str, Any]) -> dto.GenerationView:
    prompt, completion = int(row["prompt_tokens"] or 0), int(row["completion_tokens"] or 0)
    error = (
        dto.GenerationError(code=row["error_code"], message=row["error_message"] or "")
        if row["status"] == "failed" and row["error_code"]
        else None
    )
    return dto.GenerationView(
        id=str(row["id"]),
        chat_id=str(row["chat_id"]) if row["chat_id"] else None,
        model=row["model"],
        status=row["status"],
        attempt=int(row["attempt"] or 0),
        cancel_requested=bool(row["cancel_requested"]),
        text=row["text"] or "",
        usage=dto.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
        timings=dto.Timings(
            ttft_ms=row["ttft_ms"], tokens_per_s=row["tokens_per_s"], duration_ms=row["duration_ms"]
        ),
        user_message_id=row["user_message_id"],
        answer_message_id=row["answer_message_id"],
        finish_reason=row["finish_reason"],
        error=error,
        requested_at=row["requested_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        purpose=row.get("purpose") or "chat",
        tool_calls=row.get("tool_calls"),
    )


def _view_from_aggregate(g: Generation) -> dto.GenerationView:
    return dto.GenerationView(
        id=str(g.id),
        chat_id=str(g.chat_id) if g.chat_id else None,
        model=g.model,
        status=g.status,
        attempt=g.attempt,
        cancel_requested=g.cancel_requested,
        text=g.text,
        usage=dto.Usage(
            prompt_tokens=g.prompt_tokens,
            completion_tokens=g.completion_tokens,
            total_tokens=g.prompt_tokens + g.completion_tokens,
        ),
        timings=dto.Timings(),
        user_message_id=g.user_message_id,
        answer_message_id=g.answer_message_id,
        finish_reason=g.finish_reason,
        error=dto.GenerationError(code=g.error_code, message=g.error_message or "") if g.error_code else None,
        requested_at=g.created_on,
        purpose=g.purpose,
        tool_calls=list(g.tool_calls) or None,
    )


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def sse_messages(events: AsyncIterator[StreamEvent]) -> AsyncIterator[ServerSentEventMessage]:
    """The reader's events as SSE: ``token`` (id ``attempt:seq``), ``restart``, ``error``, ``done``, and a
    comment while nothing happens."""
    async for e in events:
        match e.kind:
            case "token":
                data = {
                    "text": e.text,
                    "thinking": e.thinking,
                    "completion_tokens": e.completion_tokens,
                    "published_at": e.published_at,
                }
                if e.tool_calls:
                    data["tool_calls"] = e.tool_calls
                yield ServerSentEventMessage(event="token", id=e.event_id, data=_json(data))
            case "restart":
                yield ServerSentEventMessage(
                    event="restart", id=f"{e.attempt}:0", data=_json({"attempt": e.attempt})
                )
            case "error":
                yield ServerSentEventMessage(
                    event="error", data=_json({"code": e.error_code, "message": e.error_message})
                )
            case "done":
                data = {"status": e.status, "finish_reason": e.finish_reason, "usage": e.usage()}
                yield ServerSentEventMessage(event="done", data=_json(data))
            case _:
                yield ServerSentEventMessage(comment="keep-alive", data=None)


class GenerationController(Controller):
    path = "/api/v1/generations"
    tags = ["generations"]

    @get("/{generation_id:uuid}", operation_id="GetGeneration")
    async def show(self, generation_id: FromPath[UUID], c: App, caller: Caller) -> dto.GenerationView:
        row = await get_generation(c.engine, caller.tenant_id, generation_id, user_id=caller.user_id)
        if row is not None:
            return _view_from_row(row)
        # Not projected yet (just requested), or not the caller's: the event store answers either way.
        return _view_from_aggregate(await c.generations.get(caller, generation_id))

    @get("/{generation_id:uuid}/stream", operation_id="StreamGeneration")
    async def stream(
        self,
        generation_id: FromPath[UUID],
        c: App,
        caller: Caller,
        last_event_id: Annotated[
            str | None,
            HeaderParameter(
                name="Last-Event-ID", max_length=40, description="resume after this `attempt:seq`"
            ),
        ] = None,
    ) -> ServerSentEvent:
        """Server-sent events: ``token`` {text, thinking, completion_tokens, tool_calls (pieces: index, id,
        name, arguments), published_at (the worker's
        clock, epoch seconds; 0 when replayed)} with id ``attempt:seq``;
        ``restart`` {attempt} (drop the text so far); ``error`` {code, message}; ``done`` {status,
        finish_reason, usage}. Leaving does not stop the generation."""
        generation = await c.generations.get(caller, generation_id)
        events = read_generation(c, generation, after=parse_event_id(last_event_id))
        return ServerSentEvent(sse_messages(events))

    @post("/{generation_id:uuid}/cancel", operation_id="CancelGeneration", status_code=HTTP_202_ACCEPTED)
    async def cancel(
        self, request: Request[Any, Any, Any], generation_id: FromPath[UUID], c: App, caller: Caller
    ) -> dto.CancelAccepted:
        """Records the request, then tells the worker running it to stop now; the generation ends
        ``cancelled`` with the text and usage so far."""
        generation = await c.generations.request_cancel(
            command_context(request, caller), caller, generation_id
        )
        try:
            await connect(c)
            await c.nc.publish(c.subjects.cancel(str(generation_id)), b"")
        except Exception as exc:  # the worker also polls for recorded cancels; it just takes longer
            log.warning("cancel_signal_failed", generation_id=str(generation_id), error=str(exc))
        return dto.CancelAccepted(generation_id=str(generation.id), status=generation.status)
