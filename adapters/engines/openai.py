"""Any OpenAI-compatible chat server (OpenAI, vLLM, TGI, llama.cpp, LiteLLM, Ollama's /v1): POST
``{base_url}/chat/completions`` with ``stream: true`` and read the server-sent events.

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

from adapters.engines._http import HttpUpstream, error_message, upstream_errors
from application.engines import EngineChunk, EngineError, EngineRequest

__all__ = ["OpenAIEngine"]


def _finish(reason: Any) -> str:
    # EngineChunk speaks two reasons; tool_calls, content_filter and others end the turn as well.
    return "length" if reason == "length" else "stop"


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
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        with upstream_errors(self.url):
            async with self._http.client.stream("POST", self.url, json=self._body(request)) as response:
                if response.is_error:
                    body = await response.aread()
                    raise EngineError(
                        "UPSTREAM_HTTP_ERROR",
                        error_message(body, f"HTTP {response.status_code} from {self.url}"),
                        status=response.status_code,
                    )
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
                raise EngineError(
                    "UPSTREAM_HTTP_ERROR",
                    error_message(data.encode(), "error event in the stream"),
                    status=status if isinstance(status, int) else response.status_code,
                )
            if isinstance(event.get("usage"), dict):
                usage = event["usage"]
            choices = event.get("choices") or []
            if not choices:
                continue
            choice = choices[0]
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
            if text or thinking:
                content_chunks += 1
                yield EngineChunk(text=text, thinking=thinking, completion_tokens=content_chunks)
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
    return EngineChunk(
        text=message.get("content") or "",
        thinking=message.get("reasoning_content") or message.get("reasoning") or "",
        completion_tokens=usage.get("completion_tokens"),
        prompt_tokens=usage.get("prompt_tokens"),
        finish_reason=_finish(choice.get("finish_reason")),
    )
