"""The one engine interface every inference backend implements: submit a request, get an async stream of
token chunks; cancelling is closing the stream (or cancelling the task that iterates it).

A request carries what the OpenAI Chat Completions API defines that an engine can honour: the turns (with
tool calls, tool results and images), the sampling parameters, tools and a response format. Which of them a
model honours is its ``Capabilities`` (``domain.models``); the application refuses what a model cannot serve
before a request reaches an engine, so an engine may take every field it is given at its word.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec

__all__ = [
    "ChatTurn",
    "EngineChunk",
    "EngineError",
    "EngineRequest",
    "Engine",
    "Image",
    "ToolCall",
    "ToolCallDelta",
]


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A function call a model made: ``arguments`` is the JSON text the model wrote (not parsed: a model
    may write invalid JSON, and the caller's tool decides what to make of it)."""

    id: str
    name: str
    arguments: str = ""


class ToolCallDelta(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of a tool call as it streams: the first piece of call ``index`` names its ``id`` and
    ``name``; later pieces add to its ``arguments``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Image(msgspec.Struct, frozen=True, kw_only=True):
    """An image in a user turn. Events and requests name it by ``sha256`` (the bytes live in the blob
    store); the worker fills in ``data`` before the engine sees it."""

    sha256: str
    media_type: str
    data: bytes | None = None

    @property
    def data_url(self) -> str:
        import base64

        assert self.data is not None, "image bytes not loaded"
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode()}"


class ChatTurn(msgspec.Struct, frozen=True, kw_only=True):
    role: str  # system, user, assistant, tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    """On an assistant turn: the calls it made."""
    tool_call_id: str | None = None
    """On a tool turn: the call it answers."""
    name: str | None = None
    """On a tool turn: the function's name."""
    images: tuple[Image, ...] = ()
    """On a user turn: images, after its text."""


class EngineRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    """The model's name at the provider (the upstream name, or a local path/alias)."""
    messages: list[ChatTurn]
    max_tokens: int | None = None
    """The most tokens to write; None: as many as the model's context window leaves."""
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = msgspec.field(default_factory=list)
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    """Token id (as text, as OpenAI sends it) -> bias added to its logit."""
    response_format: dict[str, Any] | None = None
    """OpenAI's ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {...}}``."""
    reasoning_effort: str | None = None
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """OpenAI function tools: ``{"type": "function", "function": {"name", "description", "parameters"}}``."""
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @property
    def continues_answer(self) -> bool:
        """The last turn is the assistant's: continue its text rather than start a new answer."""
        return bool(self.messages) and self.messages[-1].role == "assistant" and not self.messages[-1].tool_calls


class EngineChunk(msgspec.Struct, frozen=True, kw_only=True):
    text: str = ""
    """New text since the previous chunk."""
    completion_tokens: int | None = None
    """Completion tokens generated so far (cumulative), where the engine knows it."""
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    """Set on the last chunk: "stop" (end of turn or stop sequence), "length" (max_tokens) or
    "tool_calls" (the model called tools and waits for their results)."""
    thinking: str = ""
    """Reasoning text, for models that separate it."""
    tool_calls: tuple[ToolCallDelta, ...] = ()


class EngineError(Exception):
    """An engine or upstream failure, with a stable code (UPSTREAM_HTTP_ERROR, UPSTREAM_TIMEOUT,
    UPSTREAM_DISCONNECTED, UPSTREAM_PROTOCOL_ERROR, MODEL_UNAVAILABLE, ENGINE_ERROR,
    CONTEXT_LENGTH_EXCEEDED, UPSTREAM_REJECTED). ``status`` is the HTTP status the failure deserves where it
    is the request's fault (400: the request cannot be served as it is); ``param`` names the field at fault."""

    def __init__(self, code: str, message: str, *, status: int | None = None, param: str | None = None) -> None:
        self.code = code
        self.message = message
        self.status = status
        self.param = param
        super().__init__(f"{code}: {message}")


class Engine(Protocol):
    def stream(self, request: EngineRequest) -> AsyncIterator[EngineChunk]: ...

    async def close(self) -> None: ...
