"""Conversations: model providers and models, chats, and the generations that answer them.

``Chats.send_message`` appends the user's message and a ``GenerationRequested`` in one transaction; the
relay turns the latter into a job; a worker calls ``Generations.start`` / ``finish`` around the engine.
``Chats.converse`` takes a whole conversation handed in at once (the OpenAI API): into the chat a client
chat id maps to (only the turns it does not hold yet), into a new chat, or, for a front end's housekeeping
prompt, into a generation of its own.

An answer's size: ``max_tokens`` when the request or the model's defaults set it; otherwise whatever the
model's context window leaves after the prompt. Either way the quota reservation covers it: a set size is
reserved whole or refused; an open one reserves as much as the user's limits leave (at least
``MIN_ANSWER_TOKENS``), and the engine is told to stop there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET, UnsetType

from application.context import CommandContext
from application.engines import ChatTurn, EngineRequest, Image, ToolCall
from application.folders import check_folder_id
from application.identity import Principal, check_user_of_tenant
from application.ports import Blobs, EventStorePort, SecretBox, Shredder
from domain.chats import (
    Chat,
    Generation,
    check_can_generate,
    check_content,
    check_title,
    client_chat_id_for,
    generation_id_for,
    generation_of_tool_call,
    housekeeping_purpose,
    normalise_tags,
)
from domain.errors import Conflict, Invalid, NotFound
from domain.folders import FolderTree, folder_tree_id_for
from domain.identity import User, check_role
from domain.knowledge import KnowledgeBase, Reader
from domain.models import (
    PROVIDER_KINDS,
    Model,
    Provider,
    check_capabilities,
    check_model_name,
    check_params,
    default_capabilities,
    legacy_model_id_for,
    model_id_for,
    provider_id_for,
)
from domain.user_settings import UserSettings, settings_id_for

if TYPE_CHECKING:
    from application.quotas import Quotas

__all__ = [
    "Models",
    "Chats",
    "Generations",
    "SecretBox",
    "EngineTarget",
    "Sent",
    "Outcome",
    "Conversation",
    "estimate_prompt_tokens",
    "LOCAL_MODEL",
    "ROOT",
]

LOCAL_MODEL = "smollm2"
ROOT = ""
"""``parent_id`` of a message that starts the chat anew, beside its first message."""
LOCAL_DEFAULTS: dict[str, Any] = {"temperature": 0.0}
_OLD_LOCAL_DEFAULTS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 256}
"""What the built-in model's defaults were: a 256-token cap on every answer that set none."""
MIN_ANSWER_TOKENS = 16
"""The least an answer of open size is reserved; less left under a user's limits is ``QUOTA_EXCEEDED``."""
IMAGE_PROMPT_TOKENS = 1_000
"""What an image weighs in a prompt's estimate (vision models take ~85-1,500 tokens an image)."""
MAX_TOOLS = 128


@dataclass(frozen=True)
class EngineTarget:
    """Which engine serves a model, and how to reach it."""

    kind: str
    base_url: str | None
    api_key: str | None
    upstream_model: str


@dataclass(frozen=True)
class Sent:
    chat_id: uuid.UUID | None
    """None for a front end's housekeeping outside any chat."""
    message_id: str
    generation_id: uuid.UUID
    answer_message_id: str
    purpose: str = "chat"
    tools_ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conversation:
    """A whole conversation handed in at once (``/v1/chat/completions``), answered by its last turn.
    ``turns`` carry images with their bytes (``Image.data``); ``tools`` are OpenAI function tools."""

    turns: Sequence[ChatTurn]
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    tools: Sequence[dict[str, Any]] = ()
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    client_chat_id: str | None = None
    source: str = "openai"
    streamed: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a generation attempt ended, as the worker saw it."""

    status: str  # completed, failed, cancelled
    text: str
    prompt_tokens: int
    completion_tokens: int
    attempt: int
    thinking: str = ""
    finish_reason: str = "stop"
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0
    duration_ms: float = 0.0
    error_code: str = ""
    error_message: str = ""
    citations: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    """The tool calls the answer made (id, name, arguments), ids as ``tool_call_id_for`` gives them."""


@dataclass(frozen=True)
class Retrieval:
    """What a generation looks up before answering: the question, in the knowledge bases of its chat and
    model and the chat's own files, with the rights of the user who asked."""

    reader: Reader
    query: str
    knowledge_ids: tuple[uuid.UUID, ...]
    chat_id: uuid.UUID | None


@dataclass(frozen=True)
class Started:
    generation: Generation
    target: EngineTarget
    request: EngineRequest
    """Images name their bytes (``Image.sha256``) and tools are not in yet: ``Generations.complete_request``
    loads both from the blob store."""
    retrieval: Retrieval | None


class Models:
    def __init__(self, *, store: EventStorePort, secrets: SecretBox, allow_echo: bool = False) -> None:
        self.store = store
        self.secrets = secrets
        self.allow_echo = allow_echo

    def _find(self, tenant_id: str, name: str) -> Model | None:
        """A model by name in any case, or by its id."""
        try:
            model = self.store.find(Model, uuid.UUID(name))
        except ValueError:
            model = self.store.find(Model, model_id_for(tenant_id, name)) or self.store.find(
                Model, legacy_model_id_for(tenant_id, name)
            )
        return model if model is not None and model.tenant_id == tenant_id else None

    def _model(self, tenant_id: str, name: str) -> Model:
        model = self._find(tenant_id, name)
        if model is None:
            raise NotFound("MODEL_NOT_FOUND", f"no model named '{name}'", model=name)
        return model

    def usable(self, principal: Principal, name: str) -> Model:
        """The model, if the caller may generate with it (sync: inside a command or via ``store.call``)."""
        model = self._model(principal.tenant_id, name)
        if not model.can_use(principal.user_id, principal.role):
            raise NotFound("MODEL_NOT_FOUND", f"no model named '{name}'", model=name)
        if model.base_model_id is not None:  # a preset serves while its base does
            base = self.store.find(Model, model.base_model_id)
            if base is None or not base.active:
                raise NotFound("MODEL_NOT_FOUND", f"the base model of '{name}' is gone", model=name)
        return model

    async def register_provider(
        self,
        ctx: CommandContext,
        principal: Principal,
        *,
        name: str,
        kind: str,
        base_url: str | None = None,
        api_key: str | None = None,
    ) -> Provider:
        principal.require_admin()
        check_model_name(name)
        if kind not in PROVIDER_KINDS or (kind == "echo" and not self.allow_echo):
            allowed = [k for k in PROVIDER_KINDS if k != "echo" or self.allow_echo]
            raise Invalid("INVALID_PROVIDER_KIND", f"kind must be one of {', '.join(allowed)}", field="kind")
        if kind in ("openai", "ollama"):
            if not base_url or not base_url.startswith(("http://", "https://")) or len(base_url) > 500:
                raise Invalid("INVALID_BASE_URL", "an http(s) base_url is required for this kind", field="base_url")
        elif base_url:
            raise Invalid("INVALID_BASE_URL", f"a {kind} provider takes no base_url", field="base_url")
        encrypted = self.secrets.encrypt(api_key) if api_key else None

        def command() -> Provider:
            if self.store.find(Provider, provider_id_for(principal.tenant_id, name)) is not None:
                raise Conflict("PROVIDER_EXISTS", f"a provider named '{name}' exists")
            provider = Provider(
                tenant_id=principal.tenant_id, name=name, kind=kind, base_url=base_url, api_key_encrypted=encrypted
            )
            self.store.save(provider)
            return provider

        return await self.store.execute(ctx, command)

    async def register_model(
        self,
        ctx: CommandContext,
        principal: Principal,
        *,
        name: str,
        provider: str,
        upstream_model: str,
        display_name: str | None = None,
        defaults: dict[str, Any] | None = None,
        open_to_tenant: bool = True,
        capabilities: dict[str, Any] | None = None,
    ) -> Model:
        principal.require_admin()
        check_model_name(name)
        if not upstream_model.startswith("/"):  # a local model may be a directory path
            check_model_name(upstream_model, "upstream_model")
        defaults = check_params(defaults)
        display = (display_name or name).strip()[:100] or name

        def command() -> Model:
            p = self.store.find(Provider, provider_id_for(principal.tenant_id, provider))
            if p is None or p.tenant_id != principal.tenant_id:
                raise NotFound("PROVIDER_NOT_FOUND", f"no provider named '{provider}'", field="provider")
            if self._find(principal.tenant_id, name) is not None:
                raise Conflict("MODEL_EXISTS", f"a model named '{name}' exists")
            if capabilities is not None:
                check_capabilities(capabilities, default_capabilities(p.kind))
            model = Model(
                tenant_id=principal.tenant_id,
                name=name,
                display_name=display,
                provider_id=p.id,
                provider_kind=p.kind,
                upstream_model=upstream_model,
                defaults=defaults,
                open_to_tenant=open_to_tenant,
            )
            if capabilities is not None:
                model.set_capabilities(capabilities)
            self.store.save(model)
            return model

        return await self.store.execute(ctx, command)

    async def register_preset(
        self,
        ctx: CommandContext,
        principal: Principal,
        *,
        name: str,
        base_model: str,
        display_name: str | None = None,
        defaults: dict[str, Any] | None = None,
        open_to_tenant: bool = True,
        knowledge_ids: list[str] | None = None,
    ) -> Model:
        """A model based on another (Open WebUI's workspace model): its own name, defaults (a system prompt
        among them, over the base's), knowledge and access; its base's engine and capabilities."""
        principal.require_admin()
        check_model_name(name)
        check_model_name(base_model, "base_model")
        given = check_params(defaults)
        wanted = _knowledge_ids(knowledge_ids)

        def command() -> Model:
            base = self._model(principal.tenant_id, base_model)
            if self._find(principal.tenant_id, name) is not None:
                raise Conflict("MODEL_EXISTS", f"a model named '{name}' exists")
            merged = {**base.defaults, **given}
            base.check_serves(merged, images=False)
            model = Model(
                tenant_id=principal.tenant_id,
                name=name,
                display_name=(display_name or name).strip()[:100] or name,
                provider_id=base.provider_id,
                provider_kind=base.provider_kind,
                upstream_model=base.upstream_model,
                defaults=merged,
                open_to_tenant=open_to_tenant,
                base_model_id=base.id,
                base_model=base.name,
            )
            model.set_capabilities(base.capabilities.as_dict())
            if wanted:
                _check_readable(self.store, principal, wanted)
                model.set_knowledge([str(k) for k in wanted])
            self.store.save(model)
            return model

        return await self.store.execute(ctx, command)

    async def update_model(
        self,
        ctx: CommandContext,
        principal: Principal,
        name: str,
        *,
        display_name: str | None = None,
        defaults: dict[str, Any] | None = None,
        open_to_tenant: bool | None = None,
        active: bool | None = None,
        knowledge_ids: list[str] | None = None,
        capabilities: dict[str, Any] | None = None,
    ) -> Model:
        principal.require_admin()
        checked = check_params(defaults) if defaults is not None else None
        wanted = _knowledge_ids(knowledge_ids)

        def command() -> Model:
            m = self._model(principal.tenant_id, name)
            new = (
                (display_name or m.display_name).strip()[:100],
                checked if checked is not None else m.defaults,
                m.open_to_tenant if open_to_tenant is None else open_to_tenant,
                m.active if active is None else active,
            )
            if new != (m.display_name, m.defaults, m.open_to_tenant, m.active):
                m.change(display_name=new[0], defaults=new[1], open_to_tenant=new[2], active=new[3])
            if wanted is not None:
                _check_readable(self.store, principal, wanted)
                m.set_knowledge([str(k) for k in wanted])
            if capabilities is not None:
                m.set_capabilities(capabilities)
            self.store.save(m)
            return m

        return await self.store.execute(ctx, command)

    async def set_grant(
        self, ctx: CommandContext, principal: Principal, name: str, *, grant: bool, user_id: str | None, role: str | None
    ) -> Model:
        principal.require_admin()
        if role is not None:
            check_role(role)
        if user_id is not None:
            try:
                user_id = str(uuid.UUID(user_id))
            except ValueError:
                raise Invalid("INVALID_USER_ID", "user_id is not a UUID", field="user_id") from None

        def command() -> Model:
            m = self._model(principal.tenant_id, name)
            if grant and user_id is not None:
                check_user_of_tenant(self.store, principal.tenant_id, user_id)
            if grant:
                m.grant(user_id=user_id, role=role)
            else:
                m.revoke(user_id=user_id, role=role)
            self.store.save(m)
            return m

        return await self.store.execute(ctx, command)

    def target(self, model: Model) -> EngineTarget:
        provider = self.store.get(Provider, model.provider_id)
        api_key = self.secrets.decrypt(provider.api_key_encrypted) if provider.api_key_encrypted else None
        return EngineTarget(provider.kind, provider.base_url, api_key, model.upstream_model)

    async def ensure_local(self, tenant_id: str) -> None:
        """Every tenant starts with the built-in local model (SmolLM2-135M-Instruct) open to all. A tenant
        whose built-in model still has the old defaults (a 256-token cap) gets today's."""
        existing = await self.store.call(self.store.find, Model, model_id_for(tenant_id, LOCAL_MODEL))
        if existing is not None and existing.defaults != _OLD_LOCAL_DEFAULTS:
            return

        def command() -> None:
            model = self.store.find(Model, model_id_for(tenant_id, LOCAL_MODEL))
            if model is not None:
                if model.defaults == _OLD_LOCAL_DEFAULTS:
                    model.change(
                        display_name=model.display_name,
                        defaults=LOCAL_DEFAULTS,
                        open_to_tenant=model.open_to_tenant,
                        active=model.active,
                    )
                    self.store.save(model)
                return
            provider = self.store.find(Provider, provider_id_for(tenant_id, "local"))
            if provider is None:
                provider = Provider(tenant_id=tenant_id, name="local", kind="local", base_url=None, api_key_encrypted=None)
            model = Model(
                tenant_id=tenant_id,
                name=LOCAL_MODEL,
                display_name="SmolLM2 135M Instruct (local)",
                provider_id=provider.id,
                provider_kind="local",
                upstream_model="SmolLM2-135M-Instruct",
                defaults=LOCAL_DEFAULTS,
                open_to_tenant=True,
            )
            self.store.save(provider, model)

        try:
            await self.store.execute(CommandContext(tenant_id=tenant_id, actor="system"), command)
        except Conflict:
            pass  # another process registered it first


class Chats:
    def __init__(
        self, *, store: EventStorePort, models: Models, quotas: Quotas | None = None, blobs: Blobs | None = None
    ) -> None:
        self.store = store
        self.models = models
        self.quotas = quotas
        self.blobs = blobs
        self.shredder: Shredder | None = None
        """Set by the composition root: what deleting a chat does outside the event store, at once."""

    def _reserve(
        self, loop: asyncio.AbstractEventLoop, principal: Principal, model: Model, turns: Sequence[dict[str, Any]],
        params: dict[str, Any], generation_id: uuid.UUID,
    ) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """Reserve the generation's tokens before its events are saved (a refused request writes nothing):
        (tokens reserved, the parameters with ``max_tokens`` where the reservation bounds the answer).
        Runs inside the command, on the store's worker thread; the reservation itself (Redis) runs on the
        event loop, which is free while the command runs. The caller releases it if the save fails."""
        prompt = estimate_prompt_tokens(turns)
        room = model.capabilities.answer_room(prompt)
        if "max_tokens" in params:
            amount = minimum = prompt + int(params["max_tokens"])
        else:
            amount, minimum = prompt + room, prompt + min(room, MIN_ANSWER_TOKENS)
        if self.quotas is None:
            return amount, params
        policy = self.quotas.current_policy(principal.tenant_id)
        reserve = self.quotas.reserve_for(principal, model.name, amount, generation_id, minimum=minimum, policy=policy)
        granted = asyncio.run_coroutine_threadsafe(reserve, loop).result()
        if granted < amount:  # the user's limits leave less than the model could write: stop there
            params = {**params, "max_tokens": granted - prompt}
        return granted, params

    def _save_reserved(
        self, loop: asyncio.AbstractEventLoop, principal: Principal, model: Model, turns: Sequence[dict[str, Any]],
        params: dict[str, Any], build: Any, *aggregates: Any,
    ) -> Generation:  # fmt: skip
        """Reserve, build the generation (``build(answer_message_id, reserved, params)``) and save it with
        ``aggregates`` in one transaction; the reservation is released if that fails."""
        answer_message_id = _new_id()
        generation_id = generation_id_for(answer_message_id)
        reserved, params = self._reserve(loop, principal, model, turns, params, generation_id)
        try:
            generation: Generation = build(answer_message_id, reserved, params)
            assert generation.id == generation_id
            self.store.save(*aggregates, generation)
        except BaseException:
            if self.quotas is not None:
                asyncio.run_coroutine_threadsafe(self.quotas.release(generation_id), loop).result()
            raise
        return generation

    def _model_for(self, principal: Principal, name: str | None) -> tuple[Model, dict[str, Any]]:
        """The model a message names, else the user's default model; and the user's default parameters
        for it (which the message's own override)."""
        settings = self.store.find(UserSettings, settings_id_for(principal.tenant_id, principal.user_id))
        chosen = name or (settings.default_model if settings is not None else None)
        if not chosen:
            raise Invalid("MODEL_REQUIRED", "name a model, or choose a default model in your settings", field="model")
        model = self.models.usable(principal, chosen)
        return model, settings.params_for(model) if settings is not None else {}

    def _chat(self, principal: Principal, chat_id: uuid.UUID) -> Chat:
        chat = self.store.find(Chat, chat_id)
        if chat is None or chat.tenant_id != principal.tenant_id:
            raise NotFound("CHAT_NOT_FOUND", "no such chat")
        chat.check_owner(principal.user_id)
        return chat

    async def get(self, principal: Principal, chat_id: uuid.UUID) -> Chat:
        return await self.store.call(self._chat, principal, chat_id)

    async def create(self, ctx: CommandContext, principal: Principal, *, title: str = "New chat") -> Chat:
        title = check_title(title)

        def command() -> Chat:
            chat = Chat(tenant_id=principal.tenant_id, owner_id=principal.user_id, title=title, source="api")
            self.store.save(chat)
            return chat

        return await self.store.execute(ctx, command)

    async def update(
        self,
        ctx: CommandContext,
        principal: Principal,
        chat_id: uuid.UUID,
        *,
        title: str | None = None,
        archived: bool | None = None,
        knowledge_ids: list[str] | None = None,
        pinned: bool | None = None,
        tags: list[str] | None = None,
        folder_id: str | None | UnsetType = UNSET,
    ) -> Chat:
        """Change what is given. ``folder_id``: one of the owner's folders, or None (out of any folder)."""
        wanted = _knowledge_ids(knowledge_ids)
        folder = check_folder_id(folder_id) if isinstance(folder_id, str) else folder_id
        if tags is not None:
            normalise_tags(tags)  # refused before the command runs

        def command() -> Chat:
            chat = self._chat(principal, chat_id)
            if title is not None:
                chat.rename(title)
            if archived is not None:
                chat.set_archived(archived)
            if wanted is not None:
                _check_readable(self.store, principal, wanted)
                chat.set_knowledge([str(k) for k in wanted])
            if pinned is not None:
                chat.set_pinned(pinned)
            if tags is not None:
                chat.set_tags(tags)
            if not isinstance(folder, UnsetType):
                tree = self.store.find(FolderTree, folder_tree_id_for(principal.tenant_id, principal.user_id))
                if folder is not None:
                    if tree is None:
                        raise NotFound("FOLDER_NOT_FOUND", "no such folder", field="folder_id")
                    tree.check_folder(folder)
                chat.file_in(folder if tree is None or folder is None else tree.effective(folder))
            self.store.save(chat)
            return chat

        return await self.store.execute(ctx, command)

    async def delete(self, ctx: CommandContext, principal: Principal, chat_id: uuid.UUID) -> None:
        """Delete a chat: its content is shredded (its keys destroyed, its files and images deleted, its
        token chunks erased), nothing else of its owner."""
        await self.store.call(self._chat, principal, chat_id)  # 404 before gathering
        doomed = None
        if self.shredder is not None:
            doomed = await self.shredder.gather(principal.tenant_id, chat_id=str(chat_id))

        def command() -> None:
            chat = self._chat(principal, chat_id)
            chat.delete()
            self.store.save(chat)

        await self.store.execute(ctx, command)
        if self.shredder is not None:
            await self.shredder.shred(doomed, chat_id=chat_id)

    def _answer(
        self, loop: asyncio.AbstractEventLoop, principal: Principal, chat: Chat, message_id: str, model: Model,
        params: dict[str, Any], *aggregates: Any, **extra: Any,
    ) -> Generation:  # fmt: skip
        """Request an answer to ``message_id`` of ``chat``, saved with ``aggregates``."""
        merged = {**model.defaults, **params}
        turns = chat.branch(message_id)
        model.check_serves(merged, images=any(t.get("images") for t in turns))

        def build(answer_message_id: str, reserved: int, effective: dict[str, Any]) -> Generation:
            return Generation(
                tenant_id=principal.tenant_id,
                chat_id=chat.id,
                user_id=principal.user_id,
                model_id=model.id,
                model=model.name,
                user_message_id=message_id,
                answer_message_id=answer_message_id,
                params=effective,
                reserved_tokens=reserved,
                **extra,
            )

        return self._save_reserved(loop, principal, model, turns, merged, build, *aggregates)

    async def send_message(
        self,
        ctx: CommandContext,
        principal: Principal,
        chat_id: uuid.UUID,
        *,
        content: str,
        model: str | None = None,
        params: dict[str, Any] | None = None,
        parent_id: str | None = None,
    ) -> Sent:
        """Append the user's message and request an answer, in one transaction. The message follows
        ``parent_id``, or the chat's newest message when it is None; ``ROOT`` starts a new first message
        (the first question, edited)."""
        check_can_generate(principal.role)
        check_content(content)
        checked = check_params(params)
        message_id = _new_id()
        loop = asyncio.get_running_loop()

        def command() -> Sent:
            chat = self._chat(principal, chat_id)
            m, defaults = self._model_for(principal, model)
            parent = chat.head if parent_id is None else (None if parent_id == ROOT else parent_id)
            chat.post(message_id, "user", content, parent)
            generation = self._answer(loop, principal, chat, message_id, m, {**defaults, **checked}, chat)
            return Sent(chat.id, message_id, generation.id, generation.answer_message_id)

        return await self.store.execute(ctx, command)

    async def regenerate(
        self,
        ctx: CommandContext,
        principal: Principal,
        chat_id: uuid.UUID,
        message_id: str,
        *,
        model: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Sent:
        """A new answer to an existing user message: a new branch beside the old answer."""
        check_can_generate(principal.role)
        checked = check_params(params)
        loop = asyncio.get_running_loop()

        def command() -> Sent:
            chat = self._chat(principal, chat_id)
            chat.check_writable()
            chat.check_parent(message_id)
            if chat.messages[message_id]["role"] != "user":
                raise Invalid("NOT_A_USER_MESSAGE", "answers are regenerated from the user message they answer")
            m, defaults = self._model_for(principal, model)
            generation = self._answer(loop, principal, chat, message_id, m, {**defaults, **checked})
            return Sent(chat.id, message_id, generation.id, generation.answer_message_id)

        return await self.store.execute(ctx, command)

    async def converse(self, ctx: CommandContext, principal: Principal, conversation: Conversation) -> Sent:
        """Answer a conversation handed in whole. Its images and tool definitions go to the blob store
        first (events name them by hash). Tools sent to a model that cannot call them are dropped and
        recorded as ignored (front ends send tools on every request); anything else the model cannot
        serve is refused."""
        check_can_generate(principal.role)
        checked = check_params(conversation.params)
        turns = await self._stored_images(principal.tenant_id, conversation.turns)
        if not turns:
            raise Invalid("NO_MESSAGES", "messages holds no message", field="messages")
        tools = await self._stored_tools(principal.tenant_id, conversation)
        purpose = housekeeping_purpose(
            [(t.role, t.content) for t in turns], streamed=conversation.streamed, tools=bool(conversation.tools)
        )
        loop = asyncio.get_running_loop()

        def command() -> Sent:
            m, defaults = self._model_for(principal, conversation.model)
            offered, ignored = (tools, []) if tools is None or m.capabilities.tools else (None, list(tools["names"]))
            extra = {"tools": offered, "tools_ignored": ignored}
            chat_id = (
                client_chat_id_for(principal.tenant_id, principal.user_id, conversation.client_chat_id)
                if conversation.client_chat_id
                else None
            )
            chat = self.store.find(Chat, chat_id) if chat_id else None
            if purpose is not None:
                return self._housekeeping(loop, principal, m, turns, checked, purpose, chat, **extra)
            if chat is not None and chat.deleted:
                raise Conflict("CHAT_DELETED", "this chat was deleted; start a new one", field="chat_id")
            if chat is None:
                chat = Chat(
                    tenant_id=principal.tenant_id,
                    owner_id=principal.user_id,
                    title=_title_of(turns),
                    source=conversation.source,
                    client_chat_id=conversation.client_chat_id,
                )
            parent, held = chat.match([_turn_dict(t) for t in turns])
            for turn in turns[held:]:
                parent = self._post_turn(chat, turn, parent)
            assert parent is not None
            generation = self._answer(loop, principal, chat, parent, m, {**defaults, **checked}, chat, **extra)
            return Sent(chat.id, parent, generation.id, generation.answer_message_id, tools_ignored=tuple(ignored))

        return await self.store.execute(ctx, command)

    def _housekeeping(
        self, loop: asyncio.AbstractEventLoop, principal: Principal, model: Model, turns: Sequence[ChatTurn],
        params: dict[str, Any], purpose: str, chat: Chat | None, **extra: Any,
    ) -> Sent:  # fmt: skip
        """A front end's own call (a title, tags, follow-ups): a generation with the prompt on it, billed to
        the user and linked to their chat where there is one, and no message in any chat."""
        merged = {**model.defaults, **params}
        prompt = [_turn_dict(t) for t in turns]
        model.check_serves(merged, images=any(t.images for t in turns))

        def build(answer_message_id: str, reserved: int, effective: dict[str, Any]) -> Generation:
            return Generation(
                tenant_id=principal.tenant_id,
                chat_id=chat.id if chat is not None and not chat.deleted else None,
                user_id=principal.user_id,
                model_id=model.id,
                model=model.name,
                user_message_id="",
                answer_message_id=answer_message_id,
                params=effective,
                reserved_tokens=reserved,
                purpose=purpose,
                prompt=prompt,
                **extra,
            )

        generation = self._save_reserved(loop, principal, model, prompt, merged, build)
        ignored = tuple(extra.get("tools_ignored") or ())
        return Sent(generation.chat_id, "", generation.id, "", purpose=purpose, tools_ignored=ignored)

    def _post_turn(self, chat: Chat, turn: ChatTurn, parent: str | None) -> str:
        message_id = _new_id()
        if turn.role == "tool":
            if parent is None:
                raise Invalid("TOOL_RESULT_WITHOUT_CALL", "a tool message must follow the call it answers", field="messages")
            chat.post_tool_result(
                message_id,
                parent,
                tool_call_id=turn.tool_call_id or "",
                name=turn.name,
                content=turn.content,
                latency_ms=self._since_call(turn.tool_call_id or ""),
            )
        else:
            chat.post(
                message_id,
                turn.role,
                turn.content,
                parent,
                tool_calls=[_call_dict(c) for c in turn.tool_calls],
                images=[_image_dict(i) for i in turn.images],
            )
        return message_id

    def _since_call(self, tool_call_id: str) -> float | None:
        """Milliseconds since the generation that made this call finished (None: not a call of ours)."""
        generation_id = generation_of_tool_call(tool_call_id)
        generation = self.store.find(Generation, generation_id) if generation_id else None
        if generation is None or not generation.finished:
            return None
        return max(0.0, (datetime.now(UTC) - generation.modified_on).total_seconds() * 1000)

    async def _stored_images(self, tenant_id: str, turns: Sequence[ChatTurn]) -> list[ChatTurn]:
        """The turns with their images' bytes in the blob store and out of the turns."""
        out = []
        for turn in turns:
            if turn.images:
                if self.blobs is None:
                    raise Invalid("IMAGES_NOT_SUPPORTED", "this deployment stores no images", field="messages")
                images = []
                for image in turn.images:
                    if image.data is not None:
                        await self.blobs.put(tenant_id, image.sha256, image.data)
                    images.append(Image(sha256=image.sha256, media_type=image.media_type))
                turn = ChatTurn(role=turn.role, content=turn.content, images=tuple(images))
            out.append(turn)
        return out

    async def _stored_tools(self, tenant_id: str, conversation: Conversation) -> dict[str, Any] | None:
        """The tools' definitions in the blob store, by hash (a front end sends the same ones every time):
        what a generation records of them."""
        if not conversation.tools:
            return None
        if len(conversation.tools) > MAX_TOOLS:
            raise Invalid("TOO_MANY_TOOLS", f"at most {MAX_TOOLS} tools", field="tools")
        names = [_tool_name(t) for t in conversation.tools]
        choice = conversation.tool_choice
        if isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name")
            if wanted not in names:
                raise Invalid("INVALID_TOOL_CHOICE", f"tool_choice names '{wanted}', which is not among the tools", field="tool_choice")
        elif choice not in (None, "none", "auto", "required"):
            raise Invalid("INVALID_TOOL_CHOICE", "tool_choice is none, auto, required or a function", field="tool_choice")
        data = json.dumps(list(conversation.tools), sort_keys=True, separators=(",", ":")).encode()
        sha256 = hashlib.sha256(data).hexdigest()
        if self.blobs is None:
            raise Invalid("TOOLS_NOT_SUPPORTED", "this deployment stores no tools", field="tools")
        await self.blobs.put(tenant_id, sha256, data)
        return {"sha256": sha256, "names": names, "choice": choice, "parallel": conversation.parallel_tool_calls}


class Generations:
    def __init__(self, *, store: EventStorePort, models: Models, blobs: Blobs | None = None) -> None:
        self.store = store
        self.models = models
        self.blobs = blobs

    def _visible(self, principal: Principal, generation_id: uuid.UUID) -> Generation:
        generation = self.store.find(Generation, generation_id)
        if generation is None:
            raise NotFound("GENERATION_NOT_FOUND", "no such generation")
        generation.check_visible_to(principal.user_id, principal.tenant_id)
        return generation

    async def get(self, principal: Principal, generation_id: uuid.UUID) -> Generation:
        return await self.store.call(self._visible, principal, generation_id)

    async def request_cancel(self, ctx: CommandContext, principal: Principal, generation_id: uuid.UUID) -> Generation:
        def command() -> Generation:
            generation = self._visible(principal, generation_id)
            generation.request_cancel()
            self.store.save(generation)
            return generation

        return await self.store.execute(ctx, command)

    # --- the worker's side --------------------------------------------------------------------------------
    async def start(self, ctx: CommandContext, generation_id: uuid.UUID, *, attempt: int, worker: str) -> Started | None:
        """Record the attempt and build the engine request; ``None`` if there is nothing to do."""

        def command() -> Started | None:
            generation = self.store.find(Generation, generation_id)
            if generation is None or generation.finished:
                return None
            chat = self.store.get(Chat, generation.chat_id) if generation.chat_id and generation.prompt is None else None
            model = self.store.get(Model, generation.model_id)
            generation.start(attempt=attempt, worker=worker)
            self.store.save(generation)
            user = self.store.find(User, generation.user_id)
            retrieval = (
                _retrieval(generation, chat, model, user.role)
                if chat is not None and user is not None and user.active
                else None
            )
            turns = generation.prompt if chat is None else chat.branch(generation.user_message_id)
            request = _engine_request(generation, turns or [], model)
            return Started(generation, self.models.target(model), request, retrieval)

        return await self.store.execute(ctx, command)

    async def complete_request(self, generation: Generation, request: EngineRequest) -> EngineRequest:
        """The engine request with what lives in the blob store loaded: the images' bytes, the tools."""
        if self.blobs is None or not (generation.tools or any(t.images for t in request.messages)):
            return request
        turns = []
        for turn in request.messages:
            if turn.images:
                images = []
                for i in turn.images:
                    data = await self.blobs.get(generation.tenant_id, i.sha256)
                    images.append(Image(sha256=i.sha256, media_type=i.media_type, data=data))
                turn = msgspec.structs.replace(turn, images=tuple(images))
            turns.append(turn)
        changes: dict[str, Any] = {"messages": turns}
        if generation.tools:
            changes["tools"] = json.loads(await self.blobs.get(generation.tenant_id, generation.tools["sha256"]))
            changes["tool_choice"] = generation.tools.get("choice")
            changes["parallel_tool_calls"] = generation.tools.get("parallel")
        return msgspec.structs.replace(request, **changes)

    async def finish(self, ctx: CommandContext, generation_id: uuid.UUID, outcome: Outcome) -> bool:
        """Record the outcome on the generation and the answer in the chat, in one transaction. False if
        the generation had already finished (a duplicate delivery)."""

        def command() -> bool:
            generation = self.store.get(Generation, generation_id)
            if generation.finished:
                return False
            common = dict(
                text=outcome.text,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                attempt=outcome.attempt,
            )
            if outcome.status == "completed":
                generation.complete(
                    **common,
                    thinking=outcome.thinking,
                    finish_reason=outcome.finish_reason,
                    ttft_ms=round(outcome.ttft_ms, 2),
                    tokens_per_s=round(outcome.tokens_per_s, 2),
                    duration_ms=round(outcome.duration_ms, 2),
                    citations=outcome.citations,
                    tool_calls=outcome.tool_calls,
                )
            elif outcome.status == "cancelled":
                generation.cancel(**common)
            else:
                generation.fail(**common, code=outcome.error_code or "ENGINE_ERROR", message=outcome.error_message[:500])
            if generation.prompt is not None or generation.chat_id is None:  # housekeeping: in no chat
                self.store.save(generation)
                return True
            chat = self.store.get(Chat, generation.chat_id)
            chat.record_answer(
                message_id=generation.answer_message_id,
                parent_id=generation.user_message_id,
                generation_id=generation.id,
                model=generation.model,
                content=outcome.text,
                thinking=outcome.thinking,
                status=outcome.status,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                timings={
                    "ttft_ms": round(outcome.ttft_ms, 2),
                    "tokens_per_s": round(outcome.tokens_per_s, 2),
                    "duration_ms": round(outcome.duration_ms, 2),
                },
                citations=outcome.citations,
                tool_calls=outcome.tool_calls if outcome.status == "completed" else None,
            )
            self.store.save(generation, chat)
            return True

        return await self.store.execute(ctx, command)


def _new_id() -> str:
    return uuid.uuid4().hex


def estimate_prompt_tokens(turns: Sequence[dict[str, Any]]) -> int:
    """A generous estimate of a prompt's tokens, for reserving before any tokenizer has seen it: a token
    per 3 bytes of UTF-8 (English runs ~4 characters a token, CJK ~1 character a token: 3 bytes), tool
    calls likewise, ``IMAGE_PROMPT_TOKENS`` an image."""
    total = 0
    for turn in turns:
        size = len(str(turn.get("content") or "").encode())
        size += sum(len(str(c.get("name", "")).encode()) + len(str(c.get("arguments", "")).encode()) for c in turn.get("tool_calls") or ())
        total += size // 3 + IMAGE_PROMPT_TOKENS * len(turn.get("images") or ())
    return total


def _call_dict(call: ToolCall) -> dict[str, str]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def _image_dict(image: Image) -> dict[str, str]:
    return {"sha256": image.sha256, "media_type": image.media_type}


def _turn_dict(turn: ChatTurn) -> dict[str, Any]:
    """A turn as messages hold it (and as ``Chat.match`` compares it)."""
    out: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        out["tool_calls"] = [_call_dict(c) for c in turn.tool_calls]
    if turn.images:
        out["images"] = [_image_dict(i) for i in turn.images]
    if turn.role == "tool":
        out["tool_call_id"] = turn.tool_call_id
        out["name"] = turn.name
    return out


def _turn_of(message: dict[str, Any]) -> ChatTurn:
    return ChatTurn(
        role=message["role"],
        content=message["content"],
        tool_calls=tuple(ToolCall(id=c["id"], name=c["name"], arguments=c.get("arguments", "")) for c in message.get("tool_calls") or ()),
        tool_call_id=message.get("tool_call_id"),
        name=message.get("name") if message["role"] == "tool" else None,
        images=tuple(Image(sha256=i["sha256"], media_type=i["media_type"]) for i in message.get("images") or ()),
    )


def _tool_name(tool: dict[str, Any]) -> str:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if tool.get("type", "function") != "function" or not isinstance(name, str) or not name:
        raise Invalid("INVALID_TOOL", "tools are {\"type\": \"function\", \"function\": {\"name\": ...}}", field="tools")
    return name


def _title_of(turns: Sequence[ChatTurn]) -> str:
    first_user = next((t.content for t in turns if t.role == "user" and t.content.strip()), "Chat")
    return " ".join(first_user.split())[:80] or "Chat"


def _knowledge_ids(raw: list[str] | None) -> list[uuid.UUID] | None:
    if raw is None:
        return None
    try:
        ids: list[uuid.UUID] = [uuid.UUID(k) for k in raw]
        return list(dict.fromkeys(ids))
    except ValueError:
        raise Invalid("INVALID_KNOWLEDGE_ID", "knowledge_ids holds ids of knowledge bases", field="knowledge_ids") from None


def _check_readable(store: EventStorePort, principal: Principal, knowledge_ids: list[uuid.UUID]) -> None:
    for knowledge_id in knowledge_ids:
        kb = store.find(KnowledgeBase, knowledge_id)
        if kb is None or kb.tenant_id != principal.tenant_id:
            raise NotFound("KNOWLEDGE_NOT_FOUND", "no such knowledge base", knowledge_id=str(knowledge_id))
        kb.check_readable(principal.user_id, principal.role, is_admin=principal.is_admin)


def _retrieval(generation: Generation, chat: Chat, model: Model, role: str) -> Retrieval | None:
    knowledge_ids = tuple(uuid.UUID(k) for k in dict.fromkeys([*chat.knowledge_ids, *model.knowledge_ids]))
    if not knowledge_ids and not chat.file_ids:
        return None
    branch = chat.branch(generation.user_message_id)
    question = next((m["content"] for m in reversed(branch) if m["role"] == "user"), "")
    if not question.strip():
        return None
    reader = Reader(tenant_id=generation.tenant_id, user_id=generation.user_id, role=role, is_admin=role == "admin")
    return Retrieval(reader=reader, query=question, knowledge_ids=knowledge_ids, chat_id=chat.id if chat.file_ids else None)


_ENGINE_PARAMS = (
    "seed", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias",
    "response_format", "reasoning_effort",
)  # fmt: skip


def _engine_request(generation: Generation, messages: Sequence[dict[str, Any]], model: Model) -> EngineRequest:
    params = generation.params
    turns = [_turn_of(m) for m in messages]
    system_prompt = params.get("system_prompt")
    if system_prompt and not (turns and turns[0].role == "system"):
        turns.insert(0, ChatTurn(role="system", content=system_prompt))
    return EngineRequest(
        model=model.upstream_model,
        messages=turns,
        max_tokens=int(params["max_tokens"]) if "max_tokens" in params else None,
        temperature=float(params.get("temperature", 0.7)),
        top_p=float(params.get("top_p", 1.0)),
        stop=list(params.get("stop", [])),
        **{name: params[name] for name in _ENGINE_PARAMS if name in params},
    )
