"""Request and response bodies of the conversation routes: providers and models, chats and messages,
generations, and the OpenAI-compatible routes. Unknown fields are rejected (except on the OpenAI routes,
whose clients send whatever their SDK version knows); every string is bounded, except a message's
content, which the domain checks so that an oversized one is answered 413 MESSAGE_TOO_LARGE."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

__all__ = [
    "Accepted",
    "CancelAccepted",
    "Chat",
    "ChatCompletionRequest",
    "ChatCreate",
    "ChatDetail",
    "ChatPage",
    "ChatUpdate",
    "GenerationError",
    "GenerationView",
    "GrantBody",
    "Message",
    "MessageSend",
    "Model",
    "ModelCreate",
    "ModelUpdate",
    "OpenAIMessage",
    "OpenAIStreamOptions",
    "Provider",
    "ProviderCreate",
    "RegenerateBody",
    "Timings",
    "Usage",
]

ModelName = Annotated[str, Meta(min_length=1, max_length=100)]
Kind = Annotated[str, Meta(min_length=1, max_length=20)]
Url = Annotated[str, Meta(min_length=1, max_length=500)]
Secret = Annotated[str, Meta(min_length=1, max_length=1000)]
DisplayName = Annotated[str, Meta(min_length=1, max_length=100)]
Title = Annotated[str, Meta(max_length=1000)]  # the domain says 1-200 characters, with its own error code
MessageId = Annotated[str, Meta(min_length=1, max_length=64)]
Params = Annotated[dict[str, Any], Meta(max_length=20)]


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# --- providers and models ------------------------------------------------------------------------------
class ProviderCreate(_Body):
    name: ModelName
    kind: Kind
    base_url: Url | None = None
    api_key: Secret | None = None


class Provider(msgspec.Struct, kw_only=True):
    id: str
    name: str
    kind: str
    base_url: str | None = None
    has_api_key: bool = False
    created_at: datetime | None = None


class Capabilities(_Body):
    """What a model can serve (each field optional: the rest keep their values, or the defaults of the
    provider's kind). ``params``: the optional parameters it honours, among seed, top_k, min_p,
    frequency_penalty, presence_penalty, repetition_penalty, logit_bias, response_format, reasoning_effort."""

    context_window: int | UnsetType = UNSET
    max_output_tokens: int | None | UnsetType = UNSET
    tools: bool | UnsetType = UNSET
    vision: bool | UnsetType = UNSET
    params: Annotated[list[Annotated[str, Meta(max_length=40)]], Meta(max_length=20)] | UnsetType = UNSET


def capabilities_given(value: Capabilities | None | UnsetType) -> dict[str, Any] | None:
    if value is None or value is UNSET:
        return None
    assert isinstance(value, Capabilities)
    return {f: getattr(value, f) for f in value.__struct_fields__ if getattr(value, f) is not UNSET}


class ModelCreate(_Body):
    """A model on a provider (``provider`` and ``upstream_model``), or a preset based on another model
    (``base_model``: its engine and capabilities, with this entry's own name, ``defaults`` — a
    ``system_prompt`` among them — ``knowledge_ids`` and access)."""

    name: ModelName
    provider: ModelName | None = None
    upstream_model: Annotated[str, Meta(min_length=1, max_length=300)] | None = None
    base_model: ModelName | None = None
    display_name: DisplayName | None = None
    defaults: Params | None = None
    open_to_tenant: bool = True
    capabilities: Capabilities | None = None
    knowledge_ids: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=10)] | None = None
    """A preset's knowledge bases (each readable by you)."""


class ModelUpdate(_Body):
    display_name: DisplayName | UnsetType = UNSET
    defaults: Params | UnsetType = UNSET
    open_to_tenant: bool | UnsetType = UNSET
    active: bool | UnsetType = UNSET
    knowledge_ids: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=50)] | UnsetType = UNSET
    """Knowledge every answer of the model draws on (as far as the asking user may read it)."""
    capabilities: Capabilities | UnsetType = UNSET


class GrantBody(_Body):
    """Exactly one of ``user_id`` or ``role``."""

    user_id: Annotated[str, Meta(max_length=64)] | None = None
    role: Annotated[str, Meta(max_length=20)] | None = None


class Model(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A model; the administrative fields (from ``provider_id`` on) only for admins."""

    id: str
    name: str
    display_name: str
    provider_kind: str
    upstream_model: str
    defaults: dict[str, Any]
    capabilities: dict[str, Any] | None = None
    """context_window, max_output_tokens, tools, vision, params (the optional parameters it honours)."""
    provider_id: str | None = None
    provider: str | None = None
    open_to_tenant: bool | None = None
    active: bool | None = None
    granted_users: list[str] | None = None
    granted_roles: list[str] | None = None
    knowledge_ids: list[str] | None = None
    base_model: str | None = None
    """A preset's base model."""


# --- chats ---------------------------------------------------------------------------------------------
class ChatCreate(_Body):
    title: Title = "New chat"


class ChatUpdate(_Body):
    title: Title | UnsetType = UNSET
    archived: bool | UnsetType = UNSET
    knowledge_ids: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=50)] | UnsetType = UNSET
    """The knowledge bases the chat's answers draw on (each must be readable by you)."""
    pinned: bool | UnsetType = UNSET
    tags: Annotated[list[Annotated[str, Meta(max_length=200)]], Meta(max_length=100)] | UnsetType = UNSET
    """All the chat's tags (they replace those it has): normalised, at most 20, each 1-50 characters."""
    folder_id: Annotated[str, Meta(max_length=64)] | None | UnsetType = UNSET
    """One of your folders; null: out of any folder (a chat is in at most one)."""


class Chat(msgspec.Struct, kw_only=True):
    id: str
    title: str
    source: str
    archived: bool
    pinned: bool = False
    folder_id: str | None = None
    """Its folder; null: none (or its folder was deleted)."""
    tags: list[str] = msgspec.field(default_factory=list)
    message_count: int = 0
    head_id: str | None = None
    knowledge_ids: list[str] = msgspec.field(default_factory=list)
    file_ids: list[str] = msgspec.field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ChatPage(msgspec.Struct, kw_only=True):
    items: list[Chat]
    total: int
    limit: int
    offset: int


class Message(msgspec.Struct, kw_only=True):
    id: str
    parent_id: str | None
    role: str
    content: str
    model: str | None = None
    generation_id: str | None = None
    thinking: str | None = None
    status: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict[str, Any] | None = None
    citations: list[dict[str, Any]] | None = None
    """The sources an answer drew on: document, chunk, score (``n`` is the [n] the answer cites)."""
    tool_calls: list[dict[str, Any]] | None = None
    """An assistant message's tool calls: id, name, arguments (JSON text)."""
    tool_call_id: str | None = None
    """A tool message: the call it answers."""
    tool_name: str | None = None
    tool_latency_ms: float | None = None
    """A tool message: from the answer that made the call to the result handed back."""
    images: list[dict[str, Any]] | None = None
    """A user message's images: sha256 and media type."""
    created_at: datetime | None = None


class ChatDetail(msgspec.Struct, kw_only=True):
    """The chat with every message of its tree: each names its parent, so branches are all there."""

    id: str
    title: str
    source: str
    archived: bool
    head_id: str | None
    messages: list[Message]
    pinned: bool = False
    folder_id: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    message_count: int = 0
    knowledge_ids: list[str] = msgspec.field(default_factory=list)
    file_ids: list[str] = msgspec.field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class MessageSend(_Body):
    """``parent_id``: the message this one follows; absent, the chat's newest message; null, none (a new
    first message beside the old one, as when the first question is edited)."""

    content: str
    model: ModelName | None = None
    """Absent: your default model (``/api/v1/users/me/settings``)."""
    params: Params | None = None
    parent_id: MessageId | None | UnsetType = UNSET


class RegenerateBody(_Body):
    model: ModelName | None = None
    params: Params | None = None


class Accepted(msgspec.Struct, kw_only=True):
    chat_id: str
    message_id: str
    generation_id: str
    answer_message_id: str


# --- generations ---------------------------------------------------------------------------------------
class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(msgspec.Struct, kw_only=True):
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    duration_ms: float | None = None


class GenerationError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class GenerationView(msgspec.Struct, kw_only=True):
    id: str
    chat_id: str | None
    model: str
    status: str
    """requested, running, completed, failed or cancelled."""
    attempt: int
    cancel_requested: bool
    text: str
    usage: Usage
    timings: Timings
    user_message_id: str
    answer_message_id: str
    finish_reason: str | None = None
    error: GenerationError | None = None
    requested_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    purpose: str = "chat"
    """chat, or a front end's housekeeping: title, tags, follow_ups, queries, autocomplete, emoji, task."""
    tool_calls: list[dict[str, Any]] | None = None


class CancelAccepted(msgspec.Struct, kw_only=True):
    generation_id: str
    status: str
    cancel_requested: bool = True


# --- OpenAI-compatible ---------------------------------------------------------------------------------
class OpenAIFunctionCall(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    arguments: Annotated[str, Meta(max_length=1_000_000)] = ""


class OpenAIToolCall(msgspec.Struct, kw_only=True):
    id: Annotated[str, Meta(min_length=1, max_length=256)]
    function: OpenAIFunctionCall
    type: Literal["function"] = "function"


class OpenAIMessage(msgspec.Struct, kw_only=True):
    role: Annotated[str, Meta(max_length=20)]
    content: str | list[dict[str, Any]] | None = None
    name: Annotated[str, Meta(max_length=100)] | None = None
    tool_calls: Annotated[list[OpenAIToolCall], Meta(max_length=128)] | None = None
    tool_call_id: Annotated[str, Meta(max_length=256)] | None = None


class OpenAIStreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    """OpenAI's Chat Completions request. What a model does not honour is refused (400
    ``unsupported_parameter``), except ``tools`` for a model that cannot call them: answered without,
    and recorded as ignored. Fields OpenAI defines for its own bookkeeping (``user``, ``metadata``,
    ``store``, ``service_tier``) are accepted and not acted on."""

    model: ModelName
    messages: Annotated[list[OpenAIMessage], Meta(min_length=1, max_length=1000)]
    stream: bool = False
    stream_options: OpenAIStreamOptions | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: Annotated[str, Meta(max_length=20)] | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    tools: Annotated[list[dict[str, Any]], Meta(max_length=128)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
