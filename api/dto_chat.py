"""Request and response bodies of the conversation routes: providers and models, chats and messages,
generations, and the OpenAI-compatible routes. Unknown fields are rejected (except on the OpenAI routes,
whose clients send whatever their SDK version knows); every string is bounded, except a message's
content, which the domain checks so that an oversized one is answered 413 MESSAGE_TOO_LARGE."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

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


class ModelCreate(_Body):
    name: ModelName
    provider: ModelName
    upstream_model: Annotated[str, Meta(min_length=1, max_length=300)]
    display_name: DisplayName | None = None
    defaults: Params | None = None
    open_to_tenant: bool = True


class ModelUpdate(_Body):
    display_name: DisplayName | UnsetType = UNSET
    defaults: Params | UnsetType = UNSET
    open_to_tenant: bool | UnsetType = UNSET
    active: bool | UnsetType = UNSET
    knowledge_ids: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=50)] | UnsetType = UNSET
    """Knowledge every answer of the model draws on (as far as the asking user may read it)."""


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
    provider_id: str | None = None
    provider: str | None = None
    open_to_tenant: bool | None = None
    active: bool | None = None
    granted_users: list[str] | None = None
    granted_roles: list[str] | None = None
    knowledge_ids: list[str] | None = None


# --- chats ---------------------------------------------------------------------------------------------
class ChatCreate(_Body):
    title: Title = "New chat"


class ChatUpdate(_Body):
    title: Title | UnsetType = UNSET
    archived: bool | UnsetType = UNSET
    knowledge_ids: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=50)] | UnsetType = UNSET
    """The knowledge bases the chat's answers draw on (each must be readable by you)."""


class Chat(msgspec.Struct, kw_only=True):
    id: str
    title: str
    source: str
    archived: bool
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
    created_at: datetime | None = None


class ChatDetail(msgspec.Struct, kw_only=True):
    """The chat with every message of its tree: each names its parent, so branches are all there."""

    id: str
    title: str
    source: str
    archived: bool
    head_id: str | None
    messages: list[Message]
    message_count: int = 0
    knowledge_ids: list[str] = msgspec.field(default_factory=list)
    file_ids: list[str] = msgspec.field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class MessageSend(_Body):
    """``parent_id``: the message this one follows; absent, the chat's newest message; null, none (a new
    first message beside the old one, as when the first question is edited)."""

    content: str
    model: ModelName
    params: Params | None = None
    parent_id: MessageId | None | UnsetType = UNSET


class RegenerateBody(_Body):
    model: ModelName
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
    chat_id: str
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


class CancelAccepted(msgspec.Struct, kw_only=True):
    generation_id: str
    status: str
    cancel_requested: bool = True


# --- OpenAI-compatible ---------------------------------------------------------------------------------
class OpenAIMessage(msgspec.Struct, kw_only=True):
    role: Annotated[str, Meta(max_length=20)]
    content: str | list[dict[str, Any]] | None = None
    name: Annotated[str, Meta(max_length=100)] | None = None


class OpenAIStreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    """The fields parley honours; others that OpenAI SDKs send (``user``, ``logit_bias``…) are ignored."""

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
    user: Annotated[str, Meta(max_length=256)] | None = None
