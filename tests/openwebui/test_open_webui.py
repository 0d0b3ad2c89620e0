"""parley as the OpenAI connection of the real Open WebUI 0.12.4, with a gateway key.

Open WebUI users chat through Open WebUI's own front-end API (tests/openwebui/driver.py). Open WebUI
forwards who they are (``X-OpenWebUI-User-*``) and which chat it is (``X-OpenWebUI-Chat-Id``) on every call,
sends each chat's whole current branch every turn, and runs its title / tags / follow-up tasks through the
same connection with the same chat id (capture.md). parley must:

1. make each Open WebUI user their own parley user (by e-mail) in the gateway key's tenant;
2. bill each of them their own usage, and audit their requests as themselves, through the key;
3. keep each Open WebUI chat as exactly one parley chat whose current branch is the conversation in order;
4. keep the task calls out of chats: generations with their purpose, billed to the same user;
5. hold each user to their own quota: one user over it gets Open WebUI's error, the other goes on.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from schema.tables import audit_log, chats, generations, messages, usage_daily, users
from tests.conftest import Pipeline
from tests.openwebui.conftest import Gateway
from tests.openwebui.driver import Account, Chat
from workers.bootstrap import Container

pytestmark = [pytest.mark.slow]


# --- reading parley's read models ---------------------------------------------------------------------
async def rows(container: Container, query: Any) -> list[dict[str, Any]]:
    async with container.engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(query)).all()]


async def parley_user(container: Container, tenant_id: str, email: str) -> dict[str, Any]:
    found = await rows(container, sa.select(users).where(users.c.tenant_id == tenant_id, users.c.email == email))
    assert len(found) == 1, f"{email}: {len(found)} parley users in tenant {tenant_id}"
    return found[0]


async def parley_chat(container: Container, owui_chat: Chat) -> dict[str, Any]:
    found = await rows(container, sa.select(chats).where(chats.c.client_chat_id == owui_chat.id))
    assert len(found) == 1, f"Open WebUI chat {owui_chat.id} is {len(found)} parley chats"
    return found[0]


async def chat_messages(container: Container, chat_id: str) -> dict[str, dict[str, Any]]:
    found = await rows(container, sa.select(messages).where(messages.c.chat_id == chat_id))
    return {m["message_id"]: m for m in found}


async def conversation(container: Container, chat: dict[str, Any]) -> list[tuple[str, str]]:
    """The chat's current branch, oldest first: from its head back through the parents."""
    held = await chat_messages(container, chat["chat_id"])
    path: list[dict[str, Any]] = []
    at = chat["head_id"]
    while at is not None:
        path.append(held[at])
        at = held[at]["parent_id"]
    return [(m["role"], m["content"]) for m in reversed(path)]


async def generations_of(container: Container, user_id: str) -> list[dict[str, Any]]:
    return await rows(
        container,
        sa.select(generations).where(generations.c.user_id == user_id).order_by(generations.c.requested_at),
    )


async def tokens_billed(container: Container, user_id: str) -> int:
    total = sa.func.coalesce(sa.func.sum(usage_daily.c.total_tokens), 0).label("total")
    found = await rows(container, sa.select(total).where(usage_daily.c.user_id == user_id))
    return int(found[0]["total"])


def turns(*texts: str) -> list[tuple[str, str]]:
    """What a chat holds after these user messages, each answered by the echo model."""
    out: list[tuple[str, str]] = []
    for text in texts:
        out += [("user", text), ("assistant", text)]
    return out


async def chat_as(gw: Gateway, who: Account, *texts: str, chat: Chat | None = None) -> Chat:
    chat = chat or gw.ui.new_chat(who, "echo")
    for text in texts:
        reply = await gw.ui.send(chat, text)
        assert reply.error is None, f"{who.email}: {reply.error}"
        assert reply.content == text  # echo
    return chat


# --- tests ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(600)
async def test_open_webui_users_chat_through_parley_as_themselves(
    gateway: Gateway, container: Container, pipeline: Pipeline
) -> None:
    gw = gateway
    alice, bob = gw.site.alice, gw.site.bob

    alice_1 = await chat_as(gw, alice, "Hello from Alice", "Alice asks a second question")
    bob_1 = await chat_as(gw, bob, "Bob checks in", "Bob follows up")
    alice_2 = await chat_as(gw, alice, "Alice starts another chat")
    await pipeline.settle()

    # 1. Each Open WebUI user is their own parley user in the gateway key's tenant, as Open WebUI named them.
    a = await parley_user(container, gw.tenant_id, alice.email)
    b = await parley_user(container, gw.tenant_id, bob.email)
    assert a["user_id"] != b["user_id"]
    assert (a["name"], a["role"], a["active"]) == ("Alice Ållberg", "user", True)
    assert (b["name"], b["role"], b["active"]) == ("Bob Brown", "user", True)

    # 3. Each Open WebUI chat is one parley chat of its user, holding the whole conversation in order.
    expected = {
        alice_1.id: (a, turns("Hello from Alice", "Alice asks a second question")),
        bob_1.id: (b, turns("Bob checks in", "Bob follows up")),
        alice_2.id: (a, turns("Alice starts another chat")),
    }
    for owui_chat in (alice_1, bob_1, alice_2):
        owner, held = expected[owui_chat.id]
        chat = await parley_chat(container, owui_chat)
        assert (chat["owner_id"], chat["tenant_id"]) == (owner["user_id"], gw.tenant_id)
        assert await conversation(container, chat) == held
        assert len(await chat_messages(container, chat["chat_id"])) == len(held)  # and nothing beside it
    # ...and nothing else is a chat: Open WebUI's tasks made none.
    parley_chats: dict[str, set[str]] = {}
    for who, owui_chats in ((a, [alice_1, alice_2]), (b, [bob_1])):
        theirs = await rows(
            container, sa.select(chats.c.chat_id, chats.c.client_chat_id).where(chats.c.owner_id == who["user_id"])
        )
        assert sorted(c["client_chat_id"] for c in theirs) == sorted(str(c.id) for c in owui_chats)
        parley_chats[who["user_id"]] = {str(c["chat_id"]) for c in theirs}

    # 4. The title / tags / follow-up calls are generations with their purpose, billed to the same user:
    # title and tags once per new chat, follow-ups after every answer. They post no message; a task may be
    # linked to the chat it was about (the first title runs before the chat exists).
    for who, chat_turns in ((a, [2, 1]), (b, [2])):
        gens = await generations_of(container, who["user_id"])
        purposes = Counter(g["purpose"] for g in gens)
        n_chats, n_turns = len(chat_turns), sum(chat_turns)
        assert purposes == Counter({"chat": n_turns, "title": n_chats, "tags": n_chats, "follow_ups": n_turns}), (
            who["email"],
            purposes,
        )
        assert all(g["status"] == "completed" for g in gens), [
            (g["purpose"], g["status"], g["error_code"]) for g in gens
        ]
        for g in gens:
            linked = None if g["chat_id"] is None else str(g["chat_id"])
            assert linked is None or linked in parley_chats[who["user_id"]], g
            if g["purpose"] == "chat":
                assert linked is not None
        answered = {
            str(m["generation_id"])
            for cid in parley_chats[who["user_id"]]
            for m in (await chat_messages(container, cid)).values()
            if m["generation_id"] is not None
        }
        assert answered == {str(g["generation_id"]) for g in gens if g["purpose"] == "chat"}

    # 2. Usage is billed to each of them, separately; nothing to anyone else.
    for who in (a, b):
        gens = await generations_of(container, who["user_id"])
        spent = sum((g["prompt_tokens"] or 0) + (g["completion_tokens"] or 0) for g in gens)
        assert spent > 0
        assert await tokens_billed(container, who["user_id"]) == spent
    billed = await rows(container, sa.select(usage_daily.c.user_id).where(usage_daily.c.tenant_id == gw.tenant_id))
    assert {r["user_id"] for r in billed} == {a["user_id"], b["user_id"]}
    # The tenant admin's usage report says the same.
    r = await gw.parley.get("/api/v1/usage", params={"group_by": "user"}, headers=gw.admin_headers)
    assert r.status_code == 200, r.text
    report = {i["email"]: i["total_tokens"] for i in r.json()["items"]}
    assert report == {
        alice.email: await tokens_billed(container, a["user_id"]),
        bob.email: await tokens_billed(container, b["user_id"]),
    }

    # ...and the audit log names the end user as the actor, through the gateway key.
    for who in (a, b):
        gens = await generations_of(container, who["user_id"])
        targets = {str(g["generation_id"]) for g in gens} | parley_chats[who["user_id"]]
        entries = await rows(
            container,
            sa.select(audit_log.c.action, audit_log.c.actor, audit_log.c.via, audit_log.c.target_id).where(
                audit_log.c.target_id.in_(targets), audit_log.c.action.in_(["GenerationRequested", "ChatCreated"])
            ),
        )
        assert {e["target_id"] for e in entries} == targets
        assert {(e["actor"], e["via"]) for e in entries} == {(f"user:{who['user_id']}", f"apikey:{gw.key_id}")}


@pytest.mark.timeout(600)
async def test_a_users_quota_stops_only_that_user_in_open_webui(
    gateway: Gateway, container: Container, pipeline: Pipeline
) -> None:
    gw = gateway
    alice, bob = gw.site.alice, gw.site.bob
    alice_chat = await chat_as(gw, alice, "Alice before her limit")
    await pipeline.settle()
    a = await parley_user(container, gw.tenant_id, alice.email)

    r = await gw.parley.put(f"/api/v1/quotas/users/{a['user_id']}", json={"limit": 5}, headers=gw.admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["user_limits"][a["user_id"]] == 5

    # Alice's next message fails: Open WebUI shows parley's 429 QUOTA_EXCEEDED message as the answer's error.
    reply = await gw.ui.send(alice_chat, "Alice over her limit")
    assert reply.error is not None and reply.content == ""
    assert "daily limit" in str(reply.error.get("content")), reply.error

    # Bob is not held to Alice's limit.
    bob_chat = await chat_as(gw, bob, "Bob is fine", "Bob is still fine")
    await pipeline.settle()

    # The refused turn wrote nothing: Alice's parley chat holds the turn before the limit only.
    chat = await parley_chat(container, alice_chat)
    assert await conversation(container, chat) == turns("Alice before her limit")
    assert len(await chat_messages(container, chat["chat_id"])) == 2
    assert all(g["status"] == "completed" for g in await generations_of(container, a["user_id"]))
    b = await parley_user(container, gw.tenant_id, bob.email)
    assert await conversation(container, await parley_chat(container, bob_chat)) == turns(
        "Bob is fine", "Bob is still fine"
    )
    assert all(g["status"] == "completed" for g in await generations_of(container, b["user_id"]))


@pytest.mark.timeout(600)
async def test_regenerate_and_edit_in_open_webui_keep_one_parley_chat_on_the_shown_branch(
    gateway: Gateway, container: Container, pipeline: Pipeline
) -> None:
    """Regenerate resends the history up to the answered user message; an edit sends a new branch (a
    sibling user message). The parley chat stays one chat and its current branch is what Open WebUI shows."""
    gw = gateway
    alice = gw.site.alice
    owui = await chat_as(gw, alice, "one", "two", "three")
    again = await gw.ui.regenerate(owui)
    assert (again.error, again.content) == (None, "three")
    two = next(m for m in owui.path() if m["role"] == "user" and m["content"] == "two")
    edited = await gw.ui.edit(owui, two["id"], "two, edited")
    assert (edited.error, edited.content) == (None, "two, edited")
    await chat_as(gw, alice, "four", chat=owui)
    await pipeline.settle()

    shown = [(m["role"], m["content"]) for m in owui.path()]
    assert shown == turns("one", "two, edited", "four")
    chat = await parley_chat(container, owui)
    assert await conversation(container, chat) == shown
    a = await parley_user(container, gw.tenant_id, alice.email)
    gens = await generations_of(container, a["user_id"])
    assert Counter(g["purpose"] for g in gens)["chat"] == 6  # three sends, a regeneration, an edit, one more


@pytest.mark.timeout(600)
async def test_messages_in_a_chat_with_a_file_are_chat_turns_not_housekeeping(
    gateway: Gateway, container: Container, pipeline: Pipeline
) -> None:
    """With a file in the chat, Open WebUI retrieves from it every turn and replaces the last user message
    by its RAG prompt, which starts with ``### Task:`` like its housekeeping prompts (but is streamed and
    carries tools). Each is still a chat turn, and the chat stays one chat although earlier user messages
    come back in another form; the search-query generation before each is housekeeping (``queries``).
    Open WebUI's embeddings (the upload, the queries) come from parley too."""
    gw = gateway
    bob = gw.site.bob
    notes = await gw.ui.upload(bob, "notes.txt", b"The launch code word is PELICAN. The office opens at 9am.\n")
    owui = gw.ui.new_chat(bob, "echo")
    for question in ("What is the code word?", "And when does the office open?"):
        reply = await gw.ui.send(owui, question, files=[notes] if question.startswith("What") else None)
        # The echo model answers the RAG prompt: the retrieved context, then the question.
        assert reply.error is None and "PELICAN" in reply.content and reply.content.endswith(question), reply
    await pipeline.settle()

    chat = await parley_chat(container, owui)
    held = await conversation(container, chat)
    assert [role for role, _ in held] == ["user", "assistant", "user", "assistant"]
    assert held[0][1].endswith("What is the code word?") and held[2][1].endswith("And when does the office open?")
    assert held[3][1].strip() == owui.path()[-1]["content"]  # the answer Open WebUI shows (it strips)
    b = await parley_user(container, gw.tenant_id, bob.email)
    purposes = Counter(g["purpose"] for g in await generations_of(container, b["user_id"]))
    assert (purposes["chat"], purposes["queries"]) == (2, 2), purposes
