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

from adapters.images import image_from_url
from api import dto_chat as dto
from api.deps import App, Caller, client_chat_id, command_context
from api.dto_knowledge import EmbeddingsRequest
from api.errors import STATUS_OF
from api.openapi import alternative, refusals
from api.sse import StreamEvent, read_generation
from application.conversations import Conversation
from application.embeddings import LOCAL_EMBEDDING_MODEL
from application.engines import ChatTurn, Image, ToolCall
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


MAX_IMAGES = 50
MAX_CHAT_REQUEST_BYTES = 64 * 1024 * 1024
"""A completion request may carry images (up to 20 MB each, base64 in the JSON body)."""
# What a failed generation's code says about whose fault it was: the request's (400), a limit (429), or
# the deployment's (502, the default).
_FAILURE_STATUS = {"CONTEXT_LENGTH_EXCEEDED": 400, "UPSTREAM_REJECTED": 400, "UPSTREAM_RATE_LIMITED": 429}


async def _turn(message: dto.OpenAIMessage, c: App, images_left: list[int]) -> ChatTurn:
    role = _ROLES.get(message.role)
    if role is None:
        raise BadRequest("INVALID_ROLE", f"unknown message role '{message.role}'", field="messages")
    texts: list[str] = []
    images: list[Image] = []
    if isinstance(message.content, str):
        texts.append(message.content)
    for part in message.content if isinstance(message.content, list) else ():
        kind = part.get("type")
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            texts.append(part[kind])
        elif kind == "image_url" and role == "user":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str):
                raise BadRequest("UNSUPPORTED_CONTENT", "an image_url part needs a url", field="messages")
            images_left[0] -= 1
            if images_left[0] < 0:
                raise BadRequest("TOO_MANY_IMAGES", f"at most {MAX_IMAGES} images per request", field="messages")
            images.append(
                await image_from_url(url, allow_fetch=c.settings.allow_url_fetch, allow_private=c.settings.url_fetch_private)
            )
        else:
            raise BadRequest(
                "UNSUPPORTED_CONTENT", f"content parts of type '{kind}' are not supported here", field="messages"
            )
    if role == "tool" and not message.tool_call_id:
        raise BadRequest("TOOL_CALL_ID_REQUIRED", "a tool message names the call it answers (tool_call_id)", field="messages")
    calls = tuple(
        ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
        for call in (message.tool_calls or ())
        if role == "assistant"
    )
    return ChatTurn(
        role=role,
        content="".join(texts),
        tool_calls=calls,
        tool_call_id=message.tool_call_id if role == "tool" else None,
        name=message.name if role == "tool" else None,
        images=tuple(images),
    )


def _params(data: dto.ChatCompletionRequest) -> dict[str, Any]:
    if data.n is not None and data.n != 1:
        raise BadRequest("UNSUPPORTED_N", "only n=1 is supported", field="n")
    if data.logprobs or data.top_logprobs:
        raise BadRequest("UNSUPPORTED_PARAMETER", "logprobs are not supported", field="logprobs")
    if data.modalities and set(data.modalities) - {"text"}:
        raise BadRequest("UNSUPPORTED_PARAMETER", "only text output is supported", field="modalities")
    max_tokens = data.max_completion_tokens if data.max_completion_tokens is not None else data.max_tokens
    given = {
        "temperature": data.temperature,
        "top_p": data.top_p,
        "max_tokens": max_tokens,
        "stop": data.stop,
        "seed": data.seed,
        "frequency_penalty": data.frequency_penalty,
        "presence_penalty": data.presence_penalty,
        "logit_bias": data.logit_bias,
        "response_format": data.response_format,
        "reasoning_effort": data.reasoning_effort,
        "top_k": data.top_k,
        "min_p": data.min_p,
        "repetition_penalty": data.repetition_penalty,
    }
    return {k: v for k, v in given.items() if v is not None}


async def _conversation(request: Request[Any, Any, Any], data: dto.ChatCompletionRequest, c: App) -> Conversation:
    images_left = [MAX_IMAGES]
    turns = [await _turn(m, c, images_left) for m in data.messages]
    return Conversation(
        turns=turns,
        model=data.model,
        params=_params(data),
        tools=data.tools or (),
        tool_choice=data.tool_choice,
        parallel_tool_calls=data.parallel_tool_calls,
        client_chat_id=client_chat_id(request),
        source="openai",
        streamed=data.stream,
    )


class _Channel:
    """What a client has been sent on one channel (the text, or one tool call's arguments), kept right
    across a restarted attempt: the new attempt's output is passed on only past what was already sent, as
    long as it agrees with it (greedy or seeded decoding repeats itself; otherwise the stream ends with an
    error)."""

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


class _Answer:
    """The answer as sent so far: its text and its tool calls (a header each, id and name, then the
    arguments), each a channel that survives a restarted attempt."""

    def __init__(self) -> None:
        self.text = _Channel()
        self.calls: dict[int, tuple[str, str]] = {}
        self.arguments: dict[int, _Channel] = {}

    def restart(self) -> None:
        self.text.restart()
        for channel in self.arguments.values():
            channel.restart()

    def add(self, e: StreamEvent) -> tuple[str, list[dict[str, Any]]] | None:
        """The text and the tool-call deltas of ``e`` that the client lacks (None: a restarted attempt
        that disagrees with what was sent)."""
        text = self.text.add(e.text)
        if text is None:
            return None
        deltas = []
        for piece in e.tool_calls:
            delta: dict[str, Any] = {"index": piece.index}
            if piece.id is not None:
                head = (piece.id, piece.name or "")
                known = self.calls.get(piece.index)
                if known is not None and known != head:
                    return None
                if known is None:
                    self.calls[piece.index] = head
                    self.arguments[piece.index] = _Channel()
                    delta.update(id=piece.id, type="function", function={"name": piece.name or "", "arguments": ""})
            channel = self.arguments.get(piece.index)
            if channel is None:
                return None
            arguments = channel.add(piece.arguments)
            if arguments is None:
                return None
            if arguments:
                delta.setdefault("function", {})["arguments"] = arguments
            if len(delta) > 1:
                deltas.append(delta)
        return text, deltas

    def tool_calls(self) -> list[dict[str, Any]]:
        return [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": self.arguments[i].sent}}
            for i, (call_id, name) in sorted(self.calls.items())
        ]


def _finish_reason(e: StreamEvent) -> str:
    if e.status == "completed" and e.finish_reason in ("stop", "length", "tool_calls"):
        return e.finish_reason
    return "stop"


def _sse(value: Any) -> bytes:
    return b"data: " + msgspec.json.encode(value) + b"\n\n"


def _failure(error: StreamEvent | None) -> tuple[int, str, str]:
    """(status, code, message) of a failed generation, its status by whose fault it was."""
    code = (error.error_code if error else None) or "GENERATION_FAILED"
    message = (error.error_message if error else None) or "the generation failed"
    return _FAILURE_STATUS.get(code, 502), code.lower(), message


async def _opening(events: AsyncIterator[StreamEvent]) -> tuple[list[StreamEvent], bool]:
    """The stream's first events up to the first that says how it begins: output, or a failure before
    any (a prompt past the context window, a request the upstream refused). True when it failed so."""
    held: list[StreamEvent] = []
    async for e in events:
        if e.kind == "heartbeat":
            continue
        held.append(e)
        if e.kind == "done":
            return held, e.status == "failed" and not any(h.kind == "token" for h in held)
        if e.kind == "token":
            return held, False
    return held, False


async def _chain(held: list[StreamEvent], rest: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for e in held:
        yield e
    async for e in rest:
        yield e


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]
    exception_handlers = {ParleyError: _parley_error, HTTPException: _http_error, Exception: _unexpected}

    @post(
        "/chat/completions",
        operation_id="CreateChatCompletion",
        status_code=200,
        request_max_body_size=MAX_CHAT_REQUEST_BYTES,
        responses={
            200: alternative("text/event-stream", "with `stream`: chat.completion.chunk events"),
            **refusals(404, 502, 503),
        },
    )
    async def chat_completions(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[dto.ChatCompletionRequest],
        c: App,
        caller: Caller,
    ) -> Response[Any]:
        """Answers the conversation with a ``chat.completion``, or streams ``chat.completion.chunk`` events
        ending with ``data: [DONE]`` (the usage chunk before it when ``stream_options.include_usage``).
        Nothing is sent before the answer begins, so a request that cannot be answered (a prompt past the
        model's context window: 400 ``context_length_exceeded``) is an HTTP error, streamed or not.

        ``X-OpenWebUI-Chat-Id`` / ``X-Parley-Chat-Id`` keep a client's chat in one parley chat; a gateway
        key names the end user with ``X-OpenWebUI-User-*`` / ``X-Parley-User-*``."""
        sent = await c.chats.converse(command_context(request, caller), caller, await _conversation(request, data, c))
        generation = await c.generations.get(caller, sent.generation_id)
        completion_id = f"chatcmpl-{sent.generation_id.hex}"
        created = int(time.time())
        headers = {"X-Parley-Generation-Id": str(sent.generation_id)}
        if sent.chat_id is not None and sent.purpose == "chat":
            headers["X-Parley-Chat-Id"] = str(sent.chat_id)
        if sent.purpose != "chat":
            headers["X-Parley-Purpose"] = sent.purpose
        if sent.tools_ignored:
            headers["X-Parley-Tools-Ignored"] = str(len(sent.tools_ignored))
        events = read_generation(c, generation)
        held, failed = await _opening(events)
        if failed:
            await events.aclose()  # type: ignore[attr-defined]
            status, code, message = _failure(next((e for e in held if e.kind == "error"), None))
            param = "messages" if code == "context_length_exceeded" else None
            return openai_error(status, message, code=code, param=param, kind=None if status < 500 else "server_error")
        events = _chain(held, events)
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
            if name.lower() in (row["name"].lower(), str(row["id"])):
                return _model(row)
        raise NotFound("MODEL_NOT_FOUND", f"no model named '{name}'", field="model")

    @post("/embeddings", operation_id="CreateEmbeddings", status_code=200, responses=refusals(404, 503))
    async def embeddings(self, data: JSONBody[EmbeddingsRequest], c: App, caller: Caller) -> dict[str, Any]:
        """OpenAI's embeddings: the local model (``all-minilm-l6-v2``) or any model of an OpenAI-compatible
        or Ollama provider the caller may use."""
        caller.require_scope("read")
        texts = _embedding_inputs(data)
        if data.encoding_format not in ("float", "base64"):
            raise Invalid("INVALID_ENCODING_FORMAT", "encoding_format is 'float' or 'base64'", field="encoding_format")
        if data.model.lower() in (LOCAL_EMBEDDING_MODEL, "sentence-transformers/all-minilm-l6-v2"):
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
        "name": row.get("display_name") or row["name"],
        "parley_id": str(row["id"]),
        "capabilities": row.get("capabilities"),
        **({"parley_base_model": row["base_model"]} if row.get("base_model") else {}),
    }


def _message(text: str, answer: _Answer) -> dict[str, Any]:
    calls = answer.tool_calls()
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return message


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
                added = answer.add(e)
                if added is None:
                    return openai_error(502, RESTARTED, code="generation_restarted", kind="server_error")
                text.append(added[0])
            elif e.kind == "done":
                if error is not None or e.status == "failed":
                    status, code, message = _failure(error)
                    return openai_error(status, message, code=code, kind=None if status < 500 else "server_error")
                body = {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": _message("".join(text), answer),
                            "logprobs": None,
                            "finish_reason": _finish_reason(e),
                        }
                    ],
                    "usage": e.usage(),
                    "system_fingerprint": None,
                }
                return Response(content=body, status_code=200, media_type=MediaType.JSON, headers=headers)
    return openai_error(
        502, "the generation ended without an outcome", code="generation_incomplete", kind="server_error"
    )


RESTARTED = "the generation restarted after a worker failure and changed its answer; retry the request"


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
                added = answer.add(e)
                if added is None:
                    yield failure(RESTARTED, "generation_restarted")
                    break
                text, calls = added
                if text:
                    yield delta({"content": text})
                if calls:
                    yield delta({"tool_calls": calls})
            elif e.kind == "done":
                if error is not None or e.status == "failed":
                    _, code, message = _failure(error)
                    yield failure(message, code)
                    break
                yield delta({}, _finish_reason(e))
                if usage:
                    yield chunk([], e.usage())
                break
            else:
                yield b": keep-alive\n\n"
    yield b"data: [DONE]\n\n"
