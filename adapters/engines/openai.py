"""Any OpenAI-compatible chat server (OpenAI, vLLM, TGI, llama.cpp, LiteLLM, Ollama's /v1): POST
``{base_url}/chat/completions`` with ``stream: true`` and read the server-sent events.

Everything the request carries goes upstream in OpenAI's own shapes: tools and tool choice, assistant turns
with their tool calls and tool results, images as ``image_url`` content parts (data URLs), every sampling
parameter set, ``response_format`` and ``reasoning_effort``. Parameters that are OpenAI extensions of
vLLM, llama.cpp and TGI (``top_k``, ``min_p``, ``repetition_penalty``) go as top-level fields, as those
servers read them; a model's capabilities say whether its server honours them. Streamed tool calls come
back as ``ToolCallDelta``s, finished by ``finish_reason: "tool_calls"``.

Usage comes from the final chunk that ``stream_options.include_usage`` asks for. When it never arrives
(the stream was cut or cancelled, or the server ignores the option), ``completion_tokens`` is the number of
content chunks seen so far: servers send one chunk per generated token in practice, so it is a close
lower-bound estimate, not a tokenizer count. ``prompt_tokens`` is then unknown (None).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from adapters.engines._http import HttpUpstream, error_message, http_failure, upstream_errors
from application.engines import ChatTurn, EngineChunk, EngineError, EngineRequest, ToolCallDelta

__all__ = ["OpenAIEngine", "openai_messages"]

_OPTIONAL = (
    "seed", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias",
    "response_format", "reasoning_effort", "tool_choice", "parallel_tool_calls",
)  # fmt: skip


def _finish(reason: Any) -> str:
    # EngineChunk speaks three reasons; content_filter and others end the turn as "stop" does.
    return reason if reason in ("length", "tool_calls") else "stop"


def _message(turn: ChatTurn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": turn.content}] if turn.content else []
        parts += [{"type": "image_url", "image_url": {"url": image.data_url}} for image in turn.images]
        message["content"] = parts
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.tool_calls
        ]
        message["content"] = turn.content or None
    if turn.role == "tool":
        message["tool_call_id"] = turn.tool_call_id or ""
        if turn.name:
            message["name"] = turn.name
    return message


def openai_messages(turns: list[ChatTurn]) -> list[dict[str, Any]]:
    """The turns as OpenAI's Chat Completions ``messages``."""
    return [_message(t) for t in turns]


def _tool_deltas(delta: dict[str, Any]) -> tuple[ToolCallDelta, ...]:
    calls = delta.get("tool_calls")
    if not isinstance(calls, list):
        return ()
    out = []
    for position, call in enumerate(calls):
        if not isinstance(call, dict):
            raise EngineError("UPSTREAM_PROTOCOL_ERROR", "a tool call delta that is not an object")
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        index = call.get("index", position)
        arguments = function.get("arguments")
        out.append(
            ToolCallDelta(
                index=index if isinstance(index, int) else position,
                id=call.get("id") if isinstance(call.get("id"), str) else None,
                name=function.get("name") if isinstance(function.get("name"), str) else None,
                arguments=arguments if isinstance(arguments, str) else ("" if arguments is None else json.dumps(arguments)),
            )
        )
    return tuple(out)


class OpenAIEngine:
    """``base_url`` is the API root that ``/chat/completions`` hangs off, e.g. ``https://api.openai.com/v1``
    or ``http://vllm:8000/v1``; ``api_key`` is sent as a Bearer token when given."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = HttpUpstream(
            base_url,
            api_key=api_key,
            headers={"Accept": "text/event-stream"},
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            transport=transport,
        )
        self.url = f"{self._http.base_url}/chat/completions"

    def _body(self, request: EngineRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": openai_messages(request.messages),
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = request.tools
        for name in _OPTIONAL:
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        return body

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        with upstream_errors(self.url):
            async with self._http.client.stream("POST", self.url, json=self._body(request)) as response:
                if response.is_error:
                    raise http_failure(response.status_code, await response.aread(), self.url)
                if response.headers.get("content-type", "").startswith("application/json"):
                    # A server that ignores stream=true answers with one chat.completion object.
                    yield _whole_completion(_decode(await response.aread()))
                    return
                async for chunk in self._events(response):
                    yield chunk

    async def _events(self, response: httpx.Response) -> AsyncIterator[EngineChunk]:
        content_chunks = 0
        finish: str | None = None
        usage: dict[str, Any] | None = None
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, ": keep-alive" comments, "event:"/"id:" fields
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            event = _decode(data)
            if "error" in event:
                error = event["error"]
                status = error.get("code") if isinstance(error, dict) else None
                if isinstance(status, int) and 400 <= status < 600:
                    raise http_failure(status, data.encode(), self.url)
                raise EngineError("UPSTREAM_HTTP_ERROR", error_message(data.encode(), "error event in the stream"), status=502)
            if isinstance(event.get("usage"), dict):
                usage = event["usage"]
            choices = event.get("choices") or []
            if not choices:
                continue
            choice = choices[0]
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
            calls = _tool_deltas(delta)
            if text or thinking or calls:
                content_chunks += 1
                yield EngineChunk(text=text, thinking=thinking, tool_calls=calls, completion_tokens=content_chunks)
            if choice.get("finish_reason"):
                finish = _finish(choice["finish_reason"])
        if not done and finish is None:
            raise EngineError("UPSTREAM_DISCONNECTED", f"{self.url} ended the stream before it finished the completion")
        prompt_tokens = completion_tokens = None
        if usage is not None:
            prompt_tokens = usage.get("prompt_tokens")
            completion_tokens = usage.get("completion_tokens")
        yield EngineChunk(
            completion_tokens=completion_tokens if completion_tokens is not None else content_chunks,
            prompt_tokens=prompt_tokens,
            finish_reason=finish or "stop",
        )

    async def close(self) -> None:
        await self._http.close()


def _decode(data: str | bytes) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise EngineError("UPSTREAM_PROTOCOL_ERROR", f"the upstream sent invalid JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise EngineError("UPSTREAM_PROTOCOL_ERROR", "the upstream sent JSON that is not an object")
    return event


def _whole_completion(body: dict[str, Any]) -> EngineChunk:
    try:
        choice = body["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError) as exc:
        raise EngineError("UPSTREAM_PROTOCOL_ERROR", "a chat.completion without choices") from exc
    usage = body.get("usage") or {}
    calls = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []
    return EngineChunk(
        tool_calls=_tool_deltas({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls) if isinstance(c, dict)]}),
        text=message.get("content") or "",
        thinking=message.get("reasoning_content") or message.get("reasoning") or "",
        completion_tokens=usage.get("completion_tokens"),
        prompt_tokens=usage.get("prompt_tokens"),
        finish_reason=_finish(choice.get("finish_reason")),
    )
