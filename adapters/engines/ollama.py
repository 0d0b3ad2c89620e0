"""An Ollama server: POST ``{base_url}/api/chat`` with ``stream: true`` and read newline-delimited JSON,
``{"message": {"role", "content"}, "done": false}`` per token and a final ``{"done": true, "done_reason",
"prompt_eval_count", "eval_count"}`` that carries the usage Ollama counted with the model's tokenizer.

When the stream is cut before that final line, ``completion_tokens`` is the number of content lines seen
(Ollama sends one per token), as in the OpenAI adapter."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from adapters.engines._http import HttpUpstream, error_message, upstream_errors
from application.engines import EngineChunk, EngineError, EngineRequest

__all__ = ["OllamaEngine"]


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
        options: dict[str, Any] = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "num_predict": request.max_tokens,
        }
        if request.stop:
            options["stop"] = list(request.stop)
        if request.seed is not None:
            options["seed"] = request.seed
        return {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "options": options,
        }

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
                async for chunk in self._lines(response):
                    yield chunk

    async def _lines(self, response: httpx.Response) -> AsyncIterator[EngineChunk]:
        content_lines = 0
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
            if event.get("done"):
                eval_count = event.get("eval_count")
                yield EngineChunk(
                    text=text,
                    thinking=thinking,
                    completion_tokens=eval_count if eval_count is not None else content_lines,
                    prompt_tokens=event.get("prompt_eval_count"),
                    finish_reason="length" if event.get("done_reason") == "length" else "stop",
                )
                return
            if text or thinking:
                content_lines += 1
                yield EngineChunk(text=text, thinking=thinking, completion_tokens=content_lines)
        raise EngineError("UPSTREAM_DISCONNECTED", f"{self.url} ended the stream before its final line")

    async def close(self) -> None:
        await self._http.close()
