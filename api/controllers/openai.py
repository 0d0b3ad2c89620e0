"""OpenAI-compatible routes, so any OpenAI client (and Open WebUI itself) can use parley as its backend:
``POST /v1/chat/completions`` (streamed or not) and ``GET /v1/models``. Callers authenticate with a parley
API key (``Authorization: Bearer pk_...``) or an access token. Errors on these routes take OpenAI's shape,
``{"error": {"message", "type", "code", "param"}}``.

Each completion is recorded like any other conversation: a chat (source ``openai``) with the messages
handed in and a generation that answers the last one, billed and audited the same way.
"""

from __future__ import annotations

import base64
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import JSONBody, PathParameter
from litestar.response import Stream

from api import dto_chat as dto
from api.deps import App, Caller, command_context
from api.dto_knowledge import EmbeddingsRequest
from api.errors import STATUS_OF
from api.sse import StreamEvent, read_generation
from application.embeddings import LOCAL_EMBEDDING_MODEL
from application.engines import ChatTurn
from domain.errors import BadRequest, Invalid, NotFound, ParleyError
from projections.conversations import list_models

__all__ = ["OpenAIController", "openai_error"]

log = structlog.get_logger("parley.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def openai_error(
    status: int, message: str, *, code: str | None = None, param: str | None = None, kind: str | None = None
) -> Response[Any]:
    body = {
        "error": {
            "message": message,
            "type": kind or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(content=body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _parley_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, ParleyError)
    status = next((s for cls, s in STATUS_OF.items() if isinstance(exc, cls)), 400)
    if isinstance(exc, Invalid):
        status = 400  # OpenAI answers every invalid request 400
    field = exc.detail.get("field")
    kind = "insufficient_quota" if exc.code == "QUOTA_EXCEEDED" else None
    return openai_error(
        status, exc.message, code=exc.code.lower(), param=str(field) if field else None, kind=kind
    )


def _http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ValidationException):
        return openai_error(400, str(exc.detail or "the request is not valid"), code="invalid_request")
    if exc.status_code >= 500:
        log.error("http_error", status=exc.status_code, path=request.url.path, detail=str(exc.detail))
        return openai_error(exc.status_code, "internal error", code="internal_error")
    return openai_error(exc.status_code, str(exc.detail or "request failed"))


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
    return openai_error(500, "internal error", code="internal_error")


def _text_of(message: dto.OpenAIMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    parts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise BadRequest("UNSUPPORTED_CONTENT", "only text content parts are supported", field="messages")
        parts.append(part["text"])
    return "".join(parts)


def _turns(data: dto.ChatCompletionRequest) -> list[ChatTurn]:
    turns = []
    for message in data.messages:
        role = _ROLES.get(message.role)
        if role is None:
            raise BadRequest("INVALID_ROLE", f"unknown message role '{message.role}'", field="messages")
        turns.append(ChatTurn(role=role, content=_text_of(message)))
    return turns


def _params(data: dto.ChatCompletionRequest) -> dict[str, Any]:
    if data.n is not None and data.n != 1:
        raise BadRequest("UNSUPPORTED_N", "only n=1 is supported", field="n")
    max_tokens = data.max_completion_tokens if data.max_completion_tokens is not None else data.max_tokens
    given = {
        "temperature": data.temperature,
        "top_p": data.top_p,
        "max_tokens": max_tokens,
        "stop": data.stop,
        "seed": data.seed,
    }
    return {k: v for k, v in given.items() if v is not None}


class _Answer:
    """The text a client has been sent, kept right across a restarted attempt: the new attempt's text is
    passed on only past what was already sent, as long as it agrees with it (greedy or seeded decoding
    repeats itself; otherwise the stream ends with an error)."""

    def __init__(self) -> None:
        self.sent = ""
        self.attempt_text = ""
        self.restarted = False

    def restart(self) -> None:
        self.restarted = True
        self.attempt_text = ""

    def add(self, text: str) -> str | None:
        """The part of ``text`` to send; None when the restarted attempt disagrees with what was sent."""
        if not self.restarted:
            self.sent += text
            return text
        self.attempt_text += text
        if len(self.attempt_text) <= len(self.sent):
            return "" if self.sent.startswith(self.attempt_text) else None
        if not self.attempt_text.startswith(self.sent):
            return None
        new = self.attempt_text[len(self.sent) :]
        self.sent = self.attempt_text
        return new


def _finish_reason(e: StreamEvent) -> str:
    return e.finish_reason if e.status == "completed" and e.finish_reason in ("stop", "length") else "stop"


def _sse(value: Any) -> bytes:
    return b"data: " + msgspec.json.encode(value) + b"\n\n"


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]
    exception_handlers = {ParleyError: _parley_error, HTTPException: _http_error, Exception: _unexpected}

    @post("/chat/completions", operation_id="CreateChatCompletion", status_code=200)
    async def chat_completions(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[dto.ChatCompletionRequest],
        c: App,
        caller: Caller,
    ) -> Response[Any]:
        """Answers the conversation with a ``chat.completion``, or streams ``chat.completion.chunk`` events
        ending with ``data: [DONE]`` (the usage chunk before it when ``stream_options.include_usage``)."""
        turns, params = _turns(data), _params(data)
        sent = await c.chats.start_conversation(
            command_context(request, caller),
            caller,
            turns=turns,
            model=data.model,
            params=params,
            source="openai",
        )
        generation = await c.generations.get(caller, sent.generation_id)
        completion_id = f"chatcmpl-{sent.generation_id.hex}"
        created = int(time.time())
        headers = {"X-Parley-Generation-Id": str(sent.generation_id), "X-Parley-Chat-Id": str(sent.chat_id)}
        events = read_generation(c, generation)
        if data.stream:
            include_usage = bool(data.stream_options and data.stream_options.include_usage)
            body = _stream(
                events, completion_id=completion_id, created=created, model=data.model, usage=include_usage
            )
            return Stream(
                body,
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _complete(
            events, completion_id=completion_id, created=created, model=data.model, headers=headers
        )

    @get("/models", operation_id="ListOpenAIModels")
    async def list_models(self, c: App, caller: Caller) -> dict[str, Any]:
        rows = await list_models(c.engine, caller.tenant_id, caller.user_id, caller.role)
        return {"object": "list", "data": [_model(r) for r in rows]}

    @get("/models/{model:path}", operation_id="RetrieveOpenAIModel")
    async def retrieve_model(
        self, model: Annotated[str, PathParameter(max_length=101)], c: App, caller: Caller
    ) -> dict[str, Any]:
        name = model.lstrip("/")
        rows = await list_models(c.engine, caller.tenant_id, caller.user_id, caller.role)
        for row in rows:
            if row["name"] == name:
                return _model(row)
        raise NotFound("MODEL_NOT_FOUND", f"no model named '{name}'", field="model")


    @post("/embeddings", operation_id="CreateEmbeddings", status_code=200)
    async def embeddings(self, data: JSONBody[EmbeddingsRequest], c: App, caller: Caller) -> dict[str, Any]:
        """OpenAI's embeddings: the local model (``all-minilm-l6-v2``) or any model of an OpenAI-compatible
        or Ollama provider the caller may use."""
        caller.require_scope("read")
        texts = _embedding_inputs(data)
        if data.encoding_format not in ("float", "base64"):
            raise Invalid("INVALID_ENCODING_FORMAT", "encoding_format is 'float' or 'base64'", field="encoding_format")
        if data.model in (LOCAL_EMBEDDING_MODEL, "sentence-transformers/all-MiniLM-L6-v2"):
            embedding: dict[str, Any] = {"provider_id": None, "model": LOCAL_EMBEDDING_MODEL}
        else:
            model = await c.store.call(c.models.usable, caller, data.model)
            if model.provider_kind not in ("openai", "ollama"):
                raise Invalid("MODEL_CANNOT_EMBED", f"'{data.model}' is not an embedding model", field="model")
            embedding = {"provider_id": str(model.provider_id), "model": model.upstream_model}
        result = await c.knowledge.embed(caller.tenant_id, embedding, texts)
        if data.dimensions is not None and data.dimensions != result.dims:
            raise Invalid("UNSUPPORTED_DIMENSIONS", f"this model gives {result.dims} dimensions", field="dimensions")

        def encoded(vector: list[float]) -> list[float] | str:
            if data.encoding_format == "base64":
                return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            return vector

        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(result.vectors)],
            "model": data.model,
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        }


MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_INPUT_CHARS = 100_000


def _embedding_inputs(data: EmbeddingsRequest) -> list[str]:
    texts = [data.input] if isinstance(data.input, str) else data.input
    if not texts:
        raise Invalid("EMPTY_INPUT", "input holds no text", field="input")
    if not all(isinstance(t, str) for t in texts):
        raise Invalid("UNSUPPORTED_INPUT", "input is a string or a list of strings (token arrays are not taken)", field="input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise Invalid("TOO_MANY_INPUTS", f"at most {MAX_EMBEDDING_INPUTS} inputs per request", field="input")
    for text in texts:
        assert isinstance(text, str)
        if not text.strip():
            raise Invalid("EMPTY_INPUT", "an input is empty", field="input")
        if len(text) > MAX_EMBEDDING_INPUT_CHARS:
            raise Invalid("INPUT_TOO_LARGE", f"an input holds at most {MAX_EMBEDDING_INPUT_CHARS} characters", field="input")
    return [str(t) for t in texts]


def _model(row: dict[str, Any]) -> dict[str, Any]:
    created = row.get("created_at")
    return {
        "id": row["name"],
        "object": "model",
        "created": int(created.timestamp()) if created else 0,
        "owned_by": row.get("provider_kind") or "parley",
    }


async def _complete(
    events: AsyncIterator[StreamEvent],
    *,
    completion_id: str,
    created: int,
    model: str,
    headers: dict[str, str],
) -> Response[Any]:
    answer = _Answer()
    text: list[str] = []
    error: StreamEvent | None = None
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for e in events:
            if e.kind == "restart":
                answer.restart()
            elif e.kind == "error":
                error = e
            elif e.kind == "token":
                part = answer.add(e.text)
                if part is None:
                    return openai_error(502, RESTARTED, code="generation_restarted", kind="server_error")
                text.append(part)
            elif e.kind == "done":
                if error is not None or e.status == "failed":
                    return _failed(error)
                message = {"role": "assistant", "content": "".join(text), "refusal": None}
                body = {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(e)}
                    ],
                    "usage": e.usage(),
                    "system_fingerprint": None,
                }
                return Response(content=body, status_code=200, media_type=MediaType.JSON, headers=headers)
    return openai_error(
        502, "the generation ended without an outcome", code="generation_incomplete", kind="server_error"
    )


RESTARTED = "the generation restarted after a worker failure and changed its answer; retry the request"


def _failed(error: StreamEvent | None) -> Response[Any]:
    code = (error.error_code if error else None) or "GENERATION_FAILED"
    message = (error.error_message if error else None) or "the generation failed"
    return openai_error(502, message, code=code.lower(), kind="server_error")


async def _stream(
    events: AsyncIterator[StreamEvent], *, completion_id: str, created: int, model: str, usage: bool
) -> AsyncIterator[bytes]:
    def chunk(choices: list[dict[str, Any]], final_usage: dict[str, int] | None = None) -> bytes:
        value: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if usage:
            value["usage"] = final_usage
        return _sse(value)

    def delta(content: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return chunk([{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}])

    def failure(message: str, code: str) -> bytes:
        return _sse({"error": {"message": message, "type": "server_error", "param": None, "code": code}})

    answer = _Answer()
    error: StreamEvent | None = None
    yield delta({"role": "assistant", "content": ""})
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for e in events:
            if e.kind == "restart":
                answer.restart()
            elif e.kind == "error":
                error = e
            elif e.kind == "token":
                part = answer.add(e.text)
                if part is None:
                    yield failure(RESTARTED, "generation_restarted")
                    break
                if part:
                    yield delta({"content": part})
            elif e.kind == "done":
                if error is not None or e.status == "failed":
                    code = (error.error_code if error else None) or "GENERATION_FAILED"
                    yield failure(
                        (error.error_message if error else None) or "the generation failed", code.lower()
                    )
                    break
                yield delta({}, _finish_reason(e))
                if usage:
                    yield chunk([], e.usage())
                break
            else:
                yield b": keep-alive\n\n"
    yield b"data: [DONE]\n\n"
