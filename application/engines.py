"""The one engine interface every inference backend implements: submit a request, get an async stream of
token chunks; cancelling is closing the stream (or cancelling the task that iterates it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec

__all__ = ["ChatTurn", "EngineRequest", "EngineChunk", "Engine", "EngineError"]


class ChatTurn(msgspec.Struct, frozen=True, kw_only=True):
    role: str  # system, user, assistant, tool
    content: str


class EngineRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    """The model's name at the provider (the upstream name, or a local path/alias)."""
    messages: list[ChatTurn]
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = msgspec.field(default_factory=list)
    seed: int | None = None


class EngineChunk(msgspec.Struct, frozen=True, kw_only=True):
    text: str = ""
    """New text since the previous chunk."""
    completion_tokens: int | None = None
    """Completion tokens generated so far (cumulative), where the engine knows it."""
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    """Set on the last chunk: "stop" (end of turn or stop sequence) or "length" (max_tokens)."""
    thinking: str = ""
    """Reasoning text, for models that separate it."""


class EngineError(Exception):
    """An engine or upstream failure, with a stable code (UPSTREAM_HTTP_ERROR, UPSTREAM_TIMEOUT,
    UPSTREAM_DISCONNECTED, UPSTREAM_PROTOCOL_ERROR, MODEL_UNAVAILABLE, ENGINE_ERROR)."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        self.code = code
        self.message = message
        self.status = status
        super().__init__(f"{code}: {message}")


class Engine(Protocol):
    def stream(self, request: EngineRequest) -> AsyncIterator[EngineChunk]: ...

    async def close(self) -> None: ...
