"""What the remote engines share: one httpx client per engine, and the mapping of transport failures and
upstream error bodies onto ``EngineError`` codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from application.engines import EngineError

__all__ = ["HttpUpstream", "error_message", "http_failure", "upstream_errors"]


def error_message(body: bytes, fallback: str) -> str:
    """The message of an upstream error body: OpenAI's ``{"error": {"message": ...}}``, Ollama's
    ``{"error": "..."}``, or the start of whatever text came back."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:500] or fallback
    if isinstance(data, dict):
        error = data.get("error", data.get("detail"))
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(data.get("message"), str):
            return data["message"]
    return fallback


def _error_code(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def http_failure(status: int, body: bytes, url: str) -> EngineError:
    """The ``EngineError`` for an upstream's HTTP error answer. What the upstream refuses as a bad request
    (400, 413, 422) is the request's fault: status 400 with the upstream's own code and message, so the
    client learns what to change (a prompt past the context window is ``CONTEXT_LENGTH_EXCEEDED``, as at
    OpenAI). Its rate limit is a 429. Anything else (a bad provider key, a missing model, a crash) is the
    deployment's: ``UPSTREAM_HTTP_ERROR``, a 502 to the client."""
    message = error_message(body, f"HTTP {status} from {url}")
    code = _error_code(body)
    if status in (400, 413, 422):
        if code == "context_length_exceeded" or "context length" in message.lower():
            return EngineError("CONTEXT_LENGTH_EXCEEDED", message, status=400, param="messages")
        return EngineError("UPSTREAM_REJECTED", message, status=400)
    if status == 429:
        return EngineError("UPSTREAM_RATE_LIMITED", message, status=429)
    return EngineError("UPSTREAM_HTTP_ERROR", message, status=status)


@contextmanager
def upstream_errors(what: str) -> Iterator[None]:
    """Turn httpx failures into ``EngineError``: timeouts into UPSTREAM_TIMEOUT, a refused or dropped
    connection into UPSTREAM_DISCONNECTED."""
    try:
        yield
    except httpx.TimeoutException as exc:
        kind = {
            httpx.ConnectTimeout: "connecting to",
            httpx.ReadTimeout: "waiting for",
            httpx.WriteTimeout: "sending to",
            httpx.PoolTimeout: "waiting for a connection to",
        }.get(type(exc), "talking to")
        raise EngineError("UPSTREAM_TIMEOUT", f"timed out {kind} {what}") from exc
    except httpx.ConnectError as exc:
        raise EngineError("UPSTREAM_DISCONNECTED", f"cannot connect to {what}: {exc}") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as exc:
        raise EngineError("UPSTREAM_DISCONNECTED", f"{what} closed the connection mid-stream: {exc}") from exc
    except httpx.HTTPError as exc:
        raise EngineError("ENGINE_ERROR", f"request to {what} failed: {type(exc).__name__}: {exc}") from exc


class HttpUpstream:
    """A lazily opened ``httpx.AsyncClient`` with the engine's timeouts and headers; ``api_key``, when
    given, goes as a Bearer token."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {**(headers or {}), **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self._timeout = httpx.Timeout(
            connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=connect_timeout_s
        )
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout, transport=self._transport)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
