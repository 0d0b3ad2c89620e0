"""An Ollama server: POST ``{base_url}/api/chat`` with ``stream: true`` and read newline-delimited JSON,
``{"message": {"role", "content"}, "done": false}`` per token and a final ``{"done": true, "done_reason",
"prompt_eval_count", "eval_count"}`` that carries the usage Ollama counted with the model's tokenizer.

When the stream is cut before that final line, ``completion_tokens`` is the number of content lines seen
(Ollama sends one per token), as in the OpenAI adapter.

Sampling parameters map onto Ollama's ``options`` (``repetition_penalty`` is its ``repeat_penalty``),
``response_format`` onto ``format`` (``"json"`` or the JSON schema itself), tools go as they are (Ollama
speaks OpenAI's tool format), images as base64 in the message's ``images``. Ollama returns each tool call
whole, with its arguments as an object: they become one ``ToolCallDelta`` each, arguments as JSON text."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from adapters.engines._http import HttpUpstream, error_message, http_failure, upstream_errors
from application.engines import ChatTurn, EngineChunk, EngineError, EngineRequest, ToolCallDelta

__all__ = ["OllamaEngine"]


_OPTIONS = (
    ("seed", "seed"),
    ("top_k", "top_k"),
    ("min_p", "min_p"),
    ("frequency_penalty", "frequency_penalty"),
    ("presence_penalty", "presence_penalty"),
    ("repetition_penalty", "repeat_penalty"),
)


def _message(turn: ChatTurn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.images:
        message["images"] = [base64.b64encode(image.data or b"").decode() for image in turn.images]
    if turn.tool_calls:
        message["tool_calls"] = [{"function": {"name": c.name, "arguments": _arguments(c.arguments)}} for c in turn.tool_calls]
    if turn.role == "tool" and turn.name:
        message["tool_name"] = turn.name
    return message


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


def _tool_calls(message: dict[str, Any], *, first_index: int) -> tuple[ToolCallDelta, ...]:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return ()
    out = []
    for offset, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise EngineError("UPSTREAM_PROTOCOL_ERROR", "a tool call without a function name")
        arguments = function.get("arguments")
        out.append(
            ToolCallDelta(
                index=first_index + offset,
                id=call.get("id") if isinstance(call.get("id"), str) else f"call_{first_index + offset}",
                name=function["name"],
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {}),
            )
        )
    return tuple(out)


class OllamaEngine:
    """``base_url`` is the server root, e.g. ``http://localhost:11434``. ``api_key``, when given, is sent
    as a Bearer token (for an Ollama behind an authenticating proxy)."""

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
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            transport=transport,
        )
        self.url = f"{self._http.base_url}/api/chat"

    def _body(self, request: EngineRequest) -> dict[str, Any]:
        options: dict[str, Any] = {"temperature": request.temperature, "top_p": request.top_p}
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.stop:
            options["stop"] = list(request.stop)
        for ours, theirs in _OPTIONS:
            value = getattr(request, ours)
            if value is not None:
                options[theirs] = value
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [_message(m) for m in request.messages],
            "stream": True,
            "options": options,
        }
        if request.tools:
            body["tools"] = request.tools
        if request.response_format is not None:
            kind = request.response_format.get("type")
            if kind == "json_object":
                body["format"] = "json"
            elif kind == "json_schema":
                body["format"] = (request.response_format.get("json_schema") or {}).get("schema") or "json"
        return body

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        with upstream_errors(self.url):
            async with self._http.client.stream("POST", self.url, json=self._body(request)) as response:
                if response.is_error:
                    raise http_failure(response.status_code, await response.aread(), self.url)
                async for chunk in self._lines(response):
                    yield chunk

    async def _lines(self, response: httpx.Response) -> AsyncIterator[EngineChunk]:
        content_lines = 0
        calls = 0
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise EngineError("UPSTREAM_PROTOCOL_ERROR", f"the upstream sent invalid JSON: {exc}") from exc
            if not isinstance(event, dict):
                raise EngineError("UPSTREAM_PROTOCOL_ERROR", "the upstream sent JSON that is not an object")
            if "error" in event:
                raise EngineError(
                    "UPSTREAM_HTTP_ERROR",
                    error_message(line.encode(), "error line in the stream"),
                    status=response.status_code,
                )
            message = event.get("message") or {}
            text = message.get("content") or ""
            thinking = message.get("thinking") or ""
            deltas = _tool_calls(message, first_index=calls)
            calls += len(deltas)
            if event.get("done"):
                eval_count = event.get("eval_count")
                finish = "length" if event.get("done_reason") == "length" else "tool_calls" if calls else "stop"
                yield EngineChunk(
                    text=text,
                    thinking=thinking,
                    tool_calls=deltas,
                    completion_tokens=eval_count if eval_count is not None else content_lines,
                    prompt_tokens=event.get("prompt_eval_count"),
                    finish_reason=finish,
                )
                return
            if text or thinking or deltas:
                content_lines += 1
                yield EngineChunk(text=text, thinking=thinking, tool_calls=deltas, completion_tokens=content_lines)
        raise EngineError("UPSTREAM_DISCONNECTED", f"{self.url} ended the stream before its final line")

    async def close(self) -> None:
        await self._http.close()
