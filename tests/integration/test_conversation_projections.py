"""The conversation read models on real Postgres: providers and models (with grants), chats, the tree of
messages in each, and generations, driven through the real services and projected by the real runtime.
Every query is checked against another tenant, and every table against a rebuild from the event store."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from application.context import CommandContext
from application.conversations import LOCAL_MODEL, Outcome, Sent
from application.identity import Principal
from domain.identity import tenant_id_for
from projections.conversations import (
    ChatsProjector,
    ModelsProjector,
    get_chat,
    get_generation,
    list_all_models,
    list_chats,
    list_models,
    list_providers,
)
from projections.runtime import ProjectorRunner, rebuild
from workers.bootstrap import Container

pytestmark = pytest.mark.timeout(180)

PASSWORD = "correct horse 9"
API_KEY = "sk-live-do-not-leak-0123456789"


# --- helpers -------------------------------------------------------------------------------------------
def as_user(p: Principal) -> CommandContext:
    return CommandContext(tenant_id=p.tenant_id, actor=p.actor)


def as_worker(p: Principal) -> CommandContext:
    return CommandContext(tenant_id=p.tenant_id, actor="system")


async def sign_up(c: Container, slug: str, email: str) -> Principal:
    """Self sign-up (the first user of a tenant is its admin), as the principal a token would give."""
    info = await c.identity.register(
        CommandContext(tenant_id=str(tenant_id_for(slug))),
        tenant=slug,
        email=email,
        password=PASSWORD,
        name="Someone",
    )
    return Principal(tenant_id=info.tenant_id, user_id=info.id, role=info.role, via="token")


async def add_user(c: Container, admin: Principal, email: str, role: str) -> Principal:
    info = await c.identity.create_user(
        as_user(admin), admin, email=email, password=PASSWORD, name="Member", role=role
    )
    return Principal(tenant_id=info.tenant_id, user_id=info.id, role=info.role, via="token")


async def project(c: Container) -> None:
    for projector in (ModelsProjector(), ChatsProjector()):
        await ProjectorRunner(projector, engine=c.engine, store=c.store).catch_up()


async def answer(
    c: Container,
    p: Principal,
    sent: Sent,
    text: str,
    *,
    status: str = "completed",
    attempt: int = 1,
    **usage: Any,
) -> None:
    """What the generation worker does: start the attempt, then record how it ended."""
    await c.generations.start(as_worker(p), sent.generation_id, attempt=attempt, worker="test")
    outcome = Outcome(
        status=status,
        text=text,
        prompt_tokens=usage.pop("prompt_tokens", 11),
        completion_tokens=usage.pop("completion_tokens", 5),
        attempt=attempt,
        **usage,
    )
    assert await c.generations.finish(as_worker(p), sent.generation_id, outcome)


@dataclass
class Tenant:
    slug: str
    id: str
    admin: Principal
    user: Principal


async def default_tenant(c: Container) -> Tenant:
    slug = c.settings.default_tenant
    admin = await sign_up(c, slug, "boss@default.test")
    assert admin.role == "admin"
    user = await sign_up(c, slug, "user@default.test")
    await c.models.ensure_local(admin.tenant_id)
    return Tenant(slug, admin.tenant_id, admin, user)


async def other_tenant(c: Container) -> Tenant:
    operator = CommandContext(tenant_id="", actor="system:cli")
    await c.identity.create_tenant(operator, None, slug="acme", name="Acme")
    invitation = await c.identity.invite(operator, None, tenant="acme", email="boss@acme.test", role="admin")
    info = await c.identity.accept_invitation(operator, token=invitation.token, name="Boss", password=PASSWORD)
    admin = Principal(tenant_id=info.tenant_id, user_id=info.id, role=info.role, via="token")
    user = await sign_up(c, "acme", "user@acme.test")
    await c.models.ensure_local(admin.tenant_id)
    return Tenant("acme", admin.tenant_id, admin, user)


def titles(page: tuple[list[dict[str, Any]], int]) -> list[str]:
    return [chat["title"] for chat in page[0]]


# --- chats ---------------------------------------------------------------------------------------------
async def test_chat_list_is_newest_first_searchable_and_filtered_by_archive(container: Container) -> None:
    c = container
    t = await default_tenant(c)
    p = t.user
    alpha = await c.chats.create(as_user(p), p, title="Alpha plan")
    beta = await c.chats.create(as_user(p), p, title="Beta 100% sure")
    await c.chats.create(as_user(p), p, title="gamma_x")
    gone = await c.chats.create(as_user(p), p, title="Deleted alpha")
    await c.chats.create(as_user(t.admin), t.admin, title="Alpha of the admin")
    await c.chats.update(as_user(p), p, beta.id, archived=True)
    await c.chats.send_message(as_user(p), p, alpha.id, content="Plan the launch", model=LOCAL_MODEL)
    await c.chats.delete(as_user(p), p, gone.id)
    await project(c)

    everything = await list_chats(c.engine, t.id, p.user_id)
    assert titles(everything) == ["Alpha plan", "Beta 100% sure", "gamma_x"]  # latest activity first
    assert everything[1] == 3
    first = everything[0][0]
    assert set(first) == {
        "id",
        "owner_id",
        "title",
        "source",
        "archived",
        "message_count",
        "head_id",
        "knowledge_ids",
        "file_ids",
        "client_chat_id",
        "pinned",
        "folder_id",
        "tags",
        "created_at",
        "updated_at",
    }
    assert first["id"] == str(alpha.id) and first["message_count"] == 1 and first["source"] == "api"
    assert first["updated_at"] > first["created_at"]
    assert titles(await list_chats(c.engine, t.id, p.user_id, archived=False)) == ["Alpha plan", "gamma_x"]
    assert titles(await list_chats(c.engine, t.id, p.user_id, archived=True)) == ["Beta 100% sure"]
    assert titles(await list_chats(c.engine, t.id, p.user_id, q="ALPHA")) == ["Alpha plan"]
    assert titles(await list_chats(c.engine, t.id, p.user_id, q="%")) == ["Beta 100% sure"]  # a literal %
    assert titles(await list_chats(c.engine, t.id, p.user_id, q="_")) == ["gamma_x"]  # a literal _
    assert titles(await list_chats(c.engine, t.id, p.user_id, q="0% s", archived=False)) == []
    assert await list_chats(c.engine, t.id, p.user_id, limit=1, offset=1) == (
        [everything[0][1]],
        3,
    )

    await c.chats.update(as_user(p), p, beta.id, title="Beta renamed", archived=False)
    await project(c)
    assert titles(await list_chats(c.engine, t.id, p.user_id, archived=False)) == [
        "Beta renamed",
        "Alpha plan",
        "gamma_x",
    ]


async def test_full_chat_holds_the_message_tree_with_usage_and_branches(container: Container) -> None:
    c = container
    t = await default_tenant(c)
    p = t.user
    chat = await c.chats.create(as_user(p), p, title="Greetings")
    empty = await c.chats.create(as_user(p), p, title="Nothing yet")
    sent = await c.chats.send_message(
        as_user(p), p, chat.id, content="Hello!", model=LOCAL_MODEL, params={"temperature": 0.5}
    )
    await answer(
        c,
        p,
        sent,
        "Hi there.",
        prompt_tokens=12,
        completion_tokens=4,
        ttft_ms=20.5,
        tokens_per_s=80.0,
        duration_ms=70.25,
        thinking="greet back",
    )
    again = await c.chats.regenerate(as_user(p), p, chat.id, sent.message_id, model=LOCAL_MODEL)
    await answer(c, p, again, "Hello to you!", prompt_tokens=12, completion_tokens=6)
    follow = await c.chats.send_message(
        as_user(p), p, chat.id, content="Thanks", model=LOCAL_MODEL, parent_id=again.answer_message_id
    )
    await project(c)

    full = await get_chat(c.engine, t.id, p.user_id, chat.id)
    assert full is not None
    assert full["id"] == str(chat.id) and full["title"] == "Greetings" and full["message_count"] == 4
    aggregate = await c.chats.get(p, chat.id)
    assert full["head_id"] == aggregate.head == follow.message_id
    by_id = {m["id"]: m for m in full["messages"]}
    assert [m["id"] for m in full["messages"]] == [
        sent.message_id,
        sent.answer_message_id,
        again.answer_message_id,
        follow.message_id,
    ]
    assert set(full["messages"][0]) == {
        "id",
        "parent_id",
        "role",
        "content",
        "model",
        "generation_id",
        "thinking",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "timings",
        "citations",
        "tool_calls",
        "tool_call_id",
        "tool_name",
        "tool_latency_ms",
        "images",
        "created_at",
    }
    question = by_id[sent.message_id]
    assert question["role"] == "user" and question["content"] == "Hello!" and question["parent_id"] is None
    assert question["status"] is None and question["prompt_tokens"] is None

    first = by_id[sent.answer_message_id]
    assert first == {
        "id": sent.answer_message_id,
        "parent_id": sent.message_id,
        "role": "assistant",
        "content": "Hi there.",
        "model": LOCAL_MODEL,
        "generation_id": str(sent.generation_id),
        "thinking": "greet back",
        "status": "completed",
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "timings": {"ttft_ms": 20.5, "tokens_per_s": 80.0, "duration_ms": 70.25},
        "citations": None,
        "tool_calls": None,
        "tool_call_id": None,
        "tool_name": None,
        "tool_latency_ms": None,
        "images": None,
        "created_at": first["created_at"],
    }
    second = by_id[again.answer_message_id]
    assert second["parent_id"] == first["parent_id"] == sent.message_id  # two answers, one question
    assert second["content"] == "Hello to you!" and second["completion_tokens"] == 6
    assert second["generation_id"] == str(again.generation_id)
    assert by_id[follow.message_id]["parent_id"] == again.answer_message_id  # the conversation went on there

    # The same tree the aggregate holds.
    assert {m["id"]: m["parent_id"] for m in full["messages"]} == {
        k: v["parent_id"] for k, v in aggregate.messages.items()
    }

    nothing = await get_chat(c.engine, t.id, p.user_id, empty.id)
    assert nothing is not None and nothing["messages"] == [] and nothing["head_id"] is None

    # Only the owner sees it; a deleted chat is gone; nonsense ids find nothing.
    assert await get_chat(c.engine, t.id, t.admin.user_id, chat.id) is None
    assert await get_chat(c.engine, t.id, p.user_id, uuid.uuid4()) is None
    assert await get_chat(c.engine, t.id, p.user_id, "not-a-uuid") is None
    await c.chats.delete(as_user(p), p, chat.id)
    await project(c)
    assert await get_chat(c.engine, t.id, p.user_id, chat.id) is None
    assert titles(await list_chats(c.engine, t.id, p.user_id)) == ["Nothing yet"]


async def test_an_answer_finishing_after_its_chat_was_deleted_is_not_kept(container: Container) -> None:
    c = container
    t = await default_tenant(c)
    p = t.user
    chat = await c.chats.create(as_user(p), p, title="Short-lived")
    sent = await c.chats.send_message(as_user(p), p, chat.id, content="Tell me a story", model=LOCAL_MODEL)
    await c.chats.delete(as_user(p), p, chat.id)
    await answer(c, p, sent, "Once upon a time")
    await project(c)

    from schema.tables import chats, messages

    async with c.engine.connect() as conn:
        assert (await conn.execute(select(messages).where(messages.c.chat_id == str(chat.id)))).all() == []
        row = (await conn.execute(select(chats).where(chats.c.chat_id == str(chat.id)))).one()
    assert row.deleted and row.message_count == 1
    generation = await get_generation(c.engine, t.id, sent.generation_id)
    assert generation is not None and generation["status"] == "completed"  # still billed, still visible


# --- generations ---------------------------------------------------------------------------------------
async def test_generation_moves_from_requested_to_completed(container: Container) -> None:
    c = container
    t = await default_tenant(c)
    p = t.user
    chat = await c.chats.create(as_user(p), p, title="Numbers")
    sent = await c.chats.send_message(
        as_user(p), p, chat.id, content="Count to three", model=LOCAL_MODEL, params={"max_tokens": 100}
    )
    await project(c)

    requested = await get_generation(c.engine, t.id, sent.generation_id)
    assert requested is not None
    assert set(requested) == {
        "id",
        "chat_id",
        "user_id",
        "model",
        "user_message_id",
        "answer_message_id",
        "params",
        "reserved_tokens",
        "status",
        "attempt",
        "cancel_requested",
        "text",
        "finish_reason",
        "error_code",
        "error_message",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "tokens_per_s",
        "duration_ms",
        "requested_at",
        "started_at",
        "finished_at",
        "purpose",
        "tool_calls",
        "tools_ignored",
    }
    assert requested["status"] == "requested" and requested["attempt"] == 0 and requested["purpose"] == "chat"
    assert requested["chat_id"] == str(chat.id) and requested["user_id"] == str(p.user_id)
    assert requested["user_message_id"] == sent.message_id
    assert requested["answer_message_id"] == sent.answer_message_id
    assert requested["params"] == {"temperature": 0.0, "max_tokens": 100}  # the model's defaults, overridden
    assert requested["reserved_tokens"] >= 100
    assert requested["started_at"] is None and requested["finished_at"] is None and requested["text"] is None

    await c.generations.start(as_worker(p), sent.generation_id, attempt=1, worker="test")
    await project(c)
    running = await get_generation(c.engine, t.id, sent.generation_id)
    assert running is not None and running["status"] == "running" and running["attempt"] == 1
    assert running["started_at"] >= running["requested_at"]

    outcome = Outcome(
        status="completed",
        text="One, two, three.",
        prompt_tokens=9,
        completion_tokens=7,
        attempt=1,
        finish_reason="length",
        ttft_ms=12.5,
        tokens_per_s=140.0,
        duration_ms=50.0,
    )
    assert await c.generations.finish(as_worker(p), sent.generation_id, outcome)
    await project(c)
    done = await get_generation(c.engine, t.id, sent.generation_id, user_id=p.user_id)
    assert done is not None
    assert (done["status"], done["text"], done["finish_reason"]) == (
        "completed",
        "One, two, three.",
        "length",
    )
    assert (done["prompt_tokens"], done["completion_tokens"]) == (9, 7)
    assert (done["ttft_ms"], done["tokens_per_s"], done["duration_ms"]) == (12.5, 140.0, 50.0)
    assert done["finished_at"] >= done["started_at"] and done["error_code"] is None
    assert await get_generation(c.engine, t.id, sent.generation_id, user_id=t.admin.user_id) is None
    assert await get_generation(c.engine, t.id, uuid.uuid4()) is None
    assert await get_generation(c.engine, t.id, "nonsense") is None


async def test_cancelled_and_failed_generations_keep_their_partial_text_and_usage(
    container: Container,
) -> None:
    c = container
    t = await default_tenant(c)
    p = t.user
    chat = await c.chats.create(as_user(p), p, title="Unlucky")
    stopped = await c.chats.send_message(as_user(p), p, chat.id, content="Write an essay", model=LOCAL_MODEL)
    await c.generations.start(as_worker(p), stopped.generation_id, attempt=1, worker="test")
    await c.generations.request_cancel(as_user(p), p, stopped.generation_id)
    await project(c)
    asked = await get_generation(c.engine, t.id, stopped.generation_id)
    assert asked is not None and asked["cancel_requested"] is True and asked["status"] == "running"

    await c.generations.finish(
        as_worker(p),
        stopped.generation_id,
        Outcome(status="cancelled", text="The essay beg", prompt_tokens=10, completion_tokens=4, attempt=1),
    )
    broken = await c.chats.regenerate(as_user(p), p, chat.id, stopped.message_id, model=LOCAL_MODEL)
    await c.generations.start(as_worker(p), broken.generation_id, attempt=1, worker="test")
    await c.generations.start(as_worker(p), broken.generation_id, attempt=2, worker="test")  # redelivered
    await c.generations.finish(
        as_worker(p),
        broken.generation_id,
        Outcome(
            status="failed",
            text="An es",
            prompt_tokens=10,
            completion_tokens=2,
            attempt=2,
            error_code="ENGINE_ERROR",
            error_message="the engine went away",
        ),
    )
    await project(c)

    cancelled = await get_generation(c.engine, t.id, stopped.generation_id)
    assert cancelled is not None
    assert (cancelled["status"], cancelled["text"]) == ("cancelled", "The essay beg")
    assert (cancelled["prompt_tokens"], cancelled["completion_tokens"]) == (10, 4)
    assert cancelled["finished_at"] is not None and cancelled["error_code"] is None

    failed = await get_generation(c.engine, t.id, broken.generation_id)
    assert failed is not None
    assert (failed["status"], failed["attempt"], failed["text"]) == ("failed", 2, "An es")
    assert (failed["error_code"], failed["error_message"]) == ("ENGINE_ERROR", "the engine went away")
    assert (failed["prompt_tokens"], failed["completion_tokens"]) == (10, 2)
    assert failed["cancel_requested"] is False

    full = await get_chat(c.engine, t.id, p.user_id, chat.id)
    assert full is not None
    answers = {m["id"]: m for m in full["messages"] if m["role"] == "assistant"}
    assert answers[stopped.answer_message_id]["status"] == "cancelled"
    assert answers[stopped.answer_message_id]["completion_tokens"] == 4
    assert answers[broken.answer_message_id]["status"] == "failed"
    assert answers[broken.answer_message_id]["content"] == "An es"


# --- models --------------------------------------------------------------------------------------------
async def test_model_listing_respects_activity_grants_and_roles(container: Container) -> None:
    c = container
    t = await default_tenant(c)
    admin, plain = t.admin, t.user
    premium = await add_user(c, admin, "vip@default.test", "premium")
    other = await add_user(c, admin, "other@default.test", "user")
    ctx = as_user(admin)
    await c.models.register_provider(
        ctx, admin, name="vllm", kind="openai", base_url="http://vllm.internal:8000/v1", api_key=API_KEY
    )
    await c.models.register_model(
        ctx, admin, name="private-a", provider="vllm", upstream_model="llama-3", open_to_tenant=False
    )
    await c.models.register_model(
        ctx,
        admin,
        name="premium-b",
        provider="vllm",
        upstream_model="qwen-2",
        display_name="Premium B",
        defaults={"temperature": 0.2},
        open_to_tenant=False,
    )
    await c.models.register_model(ctx, admin, name="retired", provider="vllm", upstream_model="old-1")
    await c.models.set_grant(ctx, admin, "private-a", grant=True, user_id=str(plain.user_id), role=None)
    await c.models.set_grant(ctx, admin, "private-a", grant=True, user_id=str(other.user_id), role=None)
    await c.models.set_grant(ctx, admin, "private-a", grant=False, user_id=str(other.user_id), role=None)
    await c.models.set_grant(ctx, admin, "premium-b", grant=True, user_id=None, role="premium")
    await c.models.update_model(ctx, admin, "retired", active=False)
    await project(c)

    async def names(p: Principal) -> list[str]:
        return [m["name"] for m in await list_models(c.engine, t.id, p.user_id, p.role)]

    assert await names(plain) == ["private-a", LOCAL_MODEL]
    assert await names(other) == [LOCAL_MODEL]
    assert await names(premium) == ["premium-b", LOCAL_MODEL]
    assert await names(admin) == ["premium-b", "private-a", LOCAL_MODEL]

    # The read model agrees with the rule the services enforce.
    everything = await list_all_models(c.engine, t.id)
    for p in (admin, plain, premium, other):
        usable = set()
        for m in everything:
            aggregate = await c.store.call(c.models._model, t.id, m["name"])
            if aggregate.can_use(p.user_id, p.role):
                usable.add(m["name"])
        assert set(await names(p)) == usable

    listed = (await list_models(c.engine, t.id, plain.user_id, plain.role))[0]
    assert set(listed) == {
        "id",
        "name",
        "display_name",
        "provider_kind",
        "upstream_model",
        "base_model",
        "defaults",
        "capabilities",
        "created_at",
        "updated_at",
    }
    by_name = {m["name"]: m for m in everything}
    assert list(by_name) == ["premium-b", "private-a", "retired", LOCAL_MODEL]
    assert set(by_name["premium-b"]) == set(listed) | {
        "provider_id",
        "provider",
        "open_to_tenant",
        "active",
        "granted_users",
        "granted_roles",
        "knowledge_ids",
    }
    assert by_name["private-a"]["granted_users"] == [str(plain.user_id)]
    assert by_name["private-a"]["granted_roles"] == []
    assert by_name["premium-b"]["granted_roles"] == ["premium"]
    assert by_name["premium-b"]["display_name"] == "Premium B"
    assert by_name["premium-b"]["defaults"] == {"temperature": 0.2}
    assert by_name["premium-b"]["provider"] == "vllm" and by_name["premium-b"]["provider_kind"] == "openai"
    assert by_name["retired"]["active"] is False
    assert by_name[LOCAL_MODEL]["provider"] == "local" and by_name[LOCAL_MODEL]["open_to_tenant"] is True

    provider_list = await list_providers(c.engine, t.id)
    assert [(pr["name"], pr["kind"], pr["base_url"]) for pr in provider_list] == [
        ("local", "local", None),
        ("vllm", "openai", "http://vllm.internal:8000/v1"),
    ]
    assert set(provider_list[0]) == {
        "id",
        "name",
        "kind",
        "base_url",
        "has_api_key",
        "created_at",
        "updated_at",
    }
    assert API_KEY not in repr(provider_list) + repr(everything)


async def test_provider_listing_says_whether_a_key_is_set(container: Container) -> None:
    c = container
    t = await default_tenant(c)
    await c.models.register_provider(
        as_user(t.admin),
        t.admin,
        name="vllm",
        kind="openai",
        base_url="http://vllm.internal/v1",
        api_key=API_KEY,
    )
    await project(c)
    keys = {pr["name"]: pr["has_api_key"] for pr in await list_providers(c.engine, t.id)}
    assert keys == {"local": False, "vllm": True}


# --- tenants -------------------------------------------------------------------------------------------
async def test_every_query_sees_only_its_own_tenant(container: Container) -> None:
    c = container
    home, away = await default_tenant(c), await other_tenant(c)
    made: dict[str, tuple[uuid.UUID, Sent]] = {}
    for t in (home, away):
        chat = await c.chats.create(as_user(t.user), t.user, title="Same title")
        sent = await c.chats.send_message(as_user(t.user), t.user, chat.id, content="hi", model=LOCAL_MODEL)
        await answer(c, t.user, sent, "hello")
        made[t.slug] = (chat.id, sent)
    await project(c)

    for mine, theirs in ((home, away), (away, home)):
        chat_id, sent = made[mine.slug]
        their_chat, their_sent = made[theirs.slug]
        assert [m["id"] for m in await list_all_models(c.engine, mine.id)] == [
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"/tenants/{mine.id}/models/{LOCAL_MODEL}"))
        ]
        assert [m["name"] for m in await list_models(c.engine, mine.id, mine.admin.user_id, "admin")] == [
            LOCAL_MODEL
        ]
        assert len(await list_providers(c.engine, mine.id)) == 1
        assert (await list_providers(c.engine, mine.id))[0]["id"] != (
            await list_providers(c.engine, theirs.id)
        )[0]["id"]
        assert [ch["id"] for ch in (await list_chats(c.engine, mine.id, mine.user.user_id))[0]] == [
            str(chat_id)
        ]
        assert await get_chat(c.engine, mine.id, mine.user.user_id, chat_id) is not None
        assert await get_generation(c.engine, mine.id, sent.generation_id) is not None

        # The other tenant's ids, even with the right owner, find nothing here.
        assert await list_chats(c.engine, mine.id, theirs.user.user_id) == ([], 0)
        assert await get_chat(c.engine, mine.id, theirs.user.user_id, their_chat) is None
        assert await get_chat(c.engine, mine.id, mine.user.user_id, their_chat) is None
        assert await get_generation(c.engine, mine.id, their_sent.generation_id) is None

    unknown = str(uuid.uuid4())
    assert await list_models(c.engine, unknown, home.admin.user_id, "admin") == []
    assert await list_all_models(c.engine, unknown) == []
    assert await list_providers(c.engine, "not-a-tenant") == []
    assert await list_chats(c.engine, "not-a-tenant", home.user.user_id) == ([], 0)


# --- rebuild -------------------------------------------------------------------------------------------
async def test_rebuilt_conversation_read_models_equal_the_incremental_ones(container: Container) -> None:
    c = container
    home, away = await default_tenant(c), await other_tenant(c)
    for t in (home, away):
        ctx, admin, p = as_user(t.admin), t.admin, t.user
        await project(c)  # incremental: project as the history grows
        await c.models.register_provider(
            ctx, admin, name="vllm", kind="openai", base_url="http://vllm.internal/v1", api_key=API_KEY
        )
        await c.models.register_model(
            ctx,
            admin,
            name="closed",
            provider="vllm",
            upstream_model="m-1",
            open_to_tenant=False,
            defaults={"temperature": 0.3, "stop": ["\n\n"]},
        )
        await c.models.set_grant(ctx, admin, "closed", grant=True, user_id=str(p.user_id), role=None)
        await c.models.set_grant(ctx, admin, "closed", grant=True, user_id=None, role="premium")
        await c.models.set_grant(ctx, admin, "closed", grant=False, user_id=None, role="premium")
        await c.models.update_model(ctx, admin, "closed", display_name="Closed One", open_to_tenant=True)
        await project(c)
        chat = await c.chats.create(as_user(p), p, title="First chat")
        sent = await c.chats.send_message(as_user(p), p, chat.id, content="Hi", model=LOCAL_MODEL)
        await answer(c, p, sent, "Hello", ttft_ms=3.25, tokens_per_s=99.5, duration_ms=40.0)
        again = await c.chats.regenerate(as_user(p), p, chat.id, sent.message_id, model="closed")
        await project(c)
        await c.generations.request_cancel(as_user(p), p, again.generation_id)
        await answer(c, p, again, "Hel", status="cancelled")
        await c.chats.update(as_user(p), p, chat.id, title="Renamed chat", archived=True)
        await c.chats.update(as_user(p), p, chat.id, archived=False)
        doomed = await c.chats.create(as_user(p), p, title="Doomed")
        lost = await c.chats.send_message(as_user(p), p, doomed.id, content="Bye", model=LOCAL_MODEL)
        await project(c)
        await c.chats.delete(as_user(p), p, doomed.id)
        await answer(c, p, lost, "", status="failed", error_code="TIMEOUT", error_message="too slow")
        pending = await c.chats.send_message(
            as_user(p), p, chat.id, content="Still there?", model=LOCAL_MODEL
        )
        await c.generations.start(as_worker(p), pending.generation_id, attempt=1, worker="test")
    await project(c)

    for projector in (ModelsProjector(), ChatsProjector()):
        incremental = await snapshot(c, projector)
        assert all(incremental.values()), f"{projector.name}: an empty table proves nothing"
        await rebuild(projector, engine=c.engine, store=c.store)
        assert await snapshot(c, projector) == incremental, f"{projector.name} differs after a rebuild"


async def snapshot(c: Container, projector: Any) -> dict[str, list[dict[str, Any]]]:
    result = {}
    async with c.engine.connect() as conn:
        for table in projector.tables:
            rows = await conn.execute(select(table).order_by(*table.primary_key.columns))
            result[table.name] = [dict(r) for r in rows.mappings()]
    return result
