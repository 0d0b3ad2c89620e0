"""Conversations: model providers and models, chats, and the generations that answer them.

``Chats.send_message`` appends the user's message and a ``GenerationRequested`` in one transaction; the
relay turns the latter into a job; a worker calls ``Generations.start`` / ``finish`` around the engine.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from application.context import CommandContext
from application.engines import ChatTurn, EngineRequest
from application.identity import Principal
from application.ports import EventStorePort
from domain.chats import Chat, Generation, check_can_generate, check_content, check_title
from domain.errors import Conflict, Invalid, NotFound
from domain.identity import User, check_role
from domain.knowledge import KnowledgeBase, Reader
from domain.models import PROVIDER_KINDS, Model, Provider, check_model_name, check_params, model_id_for, provider_id_for

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
    "LOCAL_MODEL",
    "ROOT",
]

LOCAL_MODEL = "smollm2"
ROOT = ""
"""``parent_id`` of a message that starts the chat anew, beside its first message."""
DEFAULT_MAX_TOKENS = 512


class SecretBox(Protocol):
    """Encrypts provider API keys at rest (they are never returned)."""

    def encrypt(self, plaintext: str) -> str: ...

    def decrypt(self, ciphertext: str) -> str: ...


@dataclass(frozen=True)
class EngineTarget:
    """Which engine serves a model, and how to reach it."""

    kind: str
    base_url: str | None
    api_key: str | None
    upstream_model: str


@dataclass(frozen=True)
class Sent:
    chat_id: uuid.UUID
    message_id: str
    generation_id: uuid.UUID
    answer_message_id: str


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
    retrieval: Retrieval | None


def _new_id() -> str:
    return uuid.uuid4().hex


class Models:
    def __init__(self, *, store: EventStorePort, secrets: SecretBox, allow_echo: bool = False) -> None:
        self.store = store
        self.secrets = secrets
        self.allow_echo = allow_echo

    def _model(self, tenant_id: str, name: str) -> Model:
        model = self.store.find(Model, model_id_for(tenant_id, name))
        if model is None or model.tenant_id != tenant_id:
            raise NotFound("MODEL_NOT_FOUND", f"no model named '{name}'", model=name)
        return model

    def usable(self, principal: Principal, name: str) -> Model:
        """The model, if the caller may generate with it (sync: inside a command or via ``store.call``)."""
        model = self._model(principal.tenant_id, name)
        if not model.can_use(principal.user_id, principal.role):
            raise NotFound("MODEL_NOT_FOUND", f"no model named '{name}'", model=name)
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
            if self.store.find(Model, model_id_for(principal.tenant_id, name)) is not None:
                raise Conflict("MODEL_EXISTS", f"a model named '{name}' exists")
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
        """Every tenant starts with the built-in local model (SmolLM2-135M-Instruct) open to all."""
        if await self.store.call(self.store.find, Model, model_id_for(tenant_id, LOCAL_MODEL)) is not None:
            return

        def command() -> None:
            if self.store.find(Model, model_id_for(tenant_id, LOCAL_MODEL)) is not None:
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
                defaults={"temperature": 0.0, "max_tokens": 256},
                open_to_tenant=True,
            )
            self.store.save(provider, model)

        try:
            await self.store.execute(CommandContext(tenant_id=tenant_id, actor="system"), command)
        except Conflict:
            pass  # another process registered it first


class Chats:
    def __init__(self, *, store: EventStorePort, models: Models, quotas: Quotas | None = None) -> None:
        self.store = store
        self.models = models
        self.quotas = quotas

    @contextmanager
    def _reserved(self, loop: asyncio.AbstractEventLoop, principal: Principal, generation: Generation) -> Iterator[None]:
        """Reserve the generation's tokens before its events are saved (a refused request writes nothing),
        and release them if the save fails. Runs inside the command, on the store's worker thread: the
        reservation itself (Redis) runs on the event loop, which is free while the command runs."""
        if self.quotas is None:
            yield
            return
        policy = self.quotas.policy(principal.tenant_id)
        reserve = self.quotas.reserve_for(
            principal, generation.model, generation.reserved_tokens, generation.id, policy=policy
        )
        asyncio.run_coroutine_threadsafe(reserve, loop).result()
        try:
            yield
        except BaseException:
            asyncio.run_coroutine_threadsafe(self.quotas.release(generation.id), loop).result()
            raise

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
    ) -> Chat:
        wanted = _knowledge_ids(knowledge_ids)

        def command() -> Chat:
            chat = self._chat(principal, chat_id)
            if title is not None:
                chat.rename(title)
            if archived is not None:
                chat.set_archived(archived)
            if wanted is not None:
                _check_readable(self.store, principal, wanted)
                chat.set_knowledge([str(k) for k in wanted])
            self.store.save(chat)
            return chat

        return await self.store.execute(ctx, command)

    async def delete(self, ctx: CommandContext, principal: Principal, chat_id: uuid.UUID) -> None:
        def command() -> None:
            chat = self._chat(principal, chat_id)
            chat.delete()
            self.store.save(chat)

        await self.store.execute(ctx, command)

    def _request(
        self, principal: Principal, chat: Chat, user_message_id: str, model: Model, params: dict[str, Any]
    ) -> Generation:
        merged = {**model.defaults, **params}
        prompt_chars = sum(len(m["content"]) for m in chat.branch(user_message_id))
        max_tokens = int(merged.get("max_tokens", DEFAULT_MAX_TOKENS))
        return Generation(
            tenant_id=principal.tenant_id,
            chat_id=chat.id,
            user_id=principal.user_id,
            model_id=model.id,
            model=model.name,
            user_message_id=user_message_id,
            answer_message_id=_new_id(),
            params=merged,
            reserved_tokens=prompt_chars // 3 + max_tokens,  # a prompt token is ~3-4 characters
        )

    async def send_message(
        self,
        ctx: CommandContext,
        principal: Principal,
        chat_id: uuid.UUID,
        *,
        content: str,
        model: str,
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
            m = self.models.usable(principal, model)
            parent = chat.head if parent_id is None else (None if parent_id == ROOT else parent_id)
            chat.post(message_id, "user", content, parent)
            generation = self._request(principal, chat, message_id, m, checked)
            with self._reserved(loop, principal, generation):
                self.store.save(chat, generation)
            return Sent(chat.id, message_id, generation.id, generation.answer_message_id)

        return await self.store.execute(ctx, command)

    async def regenerate(
        self,
        ctx: CommandContext,
        principal: Principal,
        chat_id: uuid.UUID,
        message_id: str,
        *,
        model: str,
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
            m = self.models.usable(principal, model)
            generation = self._request(principal, chat, message_id, m, checked)
            with self._reserved(loop, principal, generation):
                self.store.save(generation)
            return Sent(chat.id, message_id, generation.id, generation.answer_message_id)

        return await self.store.execute(ctx, command)

    async def start_conversation(
        self,
        ctx: CommandContext,
        principal: Principal,
        *,
        turns: Sequence[ChatTurn],
        model: str,
        params: dict[str, Any] | None = None,
        source: str = "openai",
    ) -> Sent:
        """A whole conversation handed in at once (``/v1/chat/completions``), answered by its last turn."""
        check_can_generate(principal.role)
        checked = check_params(params)
        if not turns or turns[-1].role != "user":
            raise Invalid("LAST_MESSAGE_NOT_USER", "the last message must come from the user", field="messages")
        loop = asyncio.get_running_loop()

        def command() -> Sent:
            m = self.models.usable(principal, model)
            first_user = next((t.content for t in turns if t.role == "user"), "Chat")
            title = " ".join(first_user.split())[:80] or "Chat"
            chat = Chat(tenant_id=principal.tenant_id, owner_id=principal.user_id, title=title, source=source)
            parent = None
            for turn in turns:
                message_id = _new_id()
                chat.post(message_id, turn.role, turn.content, parent)
                parent = message_id
            assert parent is not None
            generation = self._request(principal, chat, parent, m, checked)
            with self._reserved(loop, principal, generation):
                self.store.save(chat, generation)
            return Sent(chat.id, parent, generation.id, generation.answer_message_id)

        return await self.store.execute(ctx, command)


class Generations:
    def __init__(self, *, store: EventStorePort, models: Models) -> None:
        self.store = store
        self.models = models

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
            chat = self.store.get(Chat, generation.chat_id)
            model = self.store.get(Model, generation.model_id)
            generation.start(attempt=attempt, worker=worker)
            self.store.save(generation)
            user = self.store.find(User, generation.user_id)
            retrieval = _retrieval(generation, chat, model, user.role) if user is not None and user.active else None
            return Started(generation, self.models.target(model), _engine_request(generation, chat, model), retrieval)

        return await self.store.execute(ctx, command)

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
                )
            elif outcome.status == "cancelled":
                generation.cancel(**common)
            else:
                generation.fail(**common, code=outcome.error_code or "ENGINE_ERROR", message=outcome.error_message[:500])
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
            )
            self.store.save(generation, chat)
            return True

        return await self.store.execute(ctx, command)


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
    question = chat.messages[generation.user_message_id]["content"]
    reader = Reader(tenant_id=generation.tenant_id, user_id=generation.user_id, role=role, is_admin=role == "admin")
    return Retrieval(reader=reader, query=question, knowledge_ids=knowledge_ids, chat_id=chat.id if chat.file_ids else None)


def _engine_request(generation: Generation, chat: Chat, model: Model) -> EngineRequest:
    params = generation.params
    turns = [ChatTurn(role=m["role"], content=m["content"]) for m in chat.branch(generation.user_message_id)]
    system_prompt = params.get("system_prompt")
    if system_prompt and not (turns and turns[0].role == "system"):
        turns.insert(0, ChatTurn(role="system", content=system_prompt))
    return EngineRequest(
        model=model.upstream_model,
        messages=turns,
        max_tokens=int(params.get("max_tokens", DEFAULT_MAX_TOKENS)),
        temperature=float(params.get("temperature", 0.7)),
        top_p=float(params.get("top_p", 1.0)),
        stop=list(params.get("stop", [])),
        seed=params.get("seed"),
    )
