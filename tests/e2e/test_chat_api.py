"""Chats through HTTP with the whole pipeline running (relay, projectors, a generation worker): providers
and models with their grants, the life of a chat, sending and regenerating, every bad input refused
with no event written, and nobody but the owner reading or touching a chat or a generation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import Pipeline
from tests.tenants import tenant_with_admin
from workers.bootstrap import Container

PASSWORD = "correct horse 9"
FINISHED = ("completed", "failed", "cancelled")


# --- helpers -------------------------------------------------------------------------------------------
def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


async def sign_up(client: httpx.AsyncClient, email: str, tenant: str | None = None) -> dict[str, Any]:
    """Registers and signs in; the tokens, with the user's ``id`` added."""
    headers = {"X-Tenant": tenant} if tenant else {}
    r = await client.post(
        "/api/v1/auths/register",
        json={"email": email, "password": PASSWORD, "name": "Someone"},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    r = await client.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD}, headers=headers)
    assert r.status_code == 200, r.text
    return {**r.json(), "id": user_id}


async def add_echo_model(
    client: httpx.AsyncClient, admin: dict[str, Any], name: str = "echo", **extra: Any
) -> None:
    r = await client.post("/api/v1/providers", json={"name": "echoes", "kind": "echo"}, headers=bearer(admin))
    assert r.status_code in (201, 409), r.text
    r = await client.post(
        "/api/v1/models",
        json={"name": name, "provider": "echoes", "upstream_model": "echo", **extra},
        headers=bearer(admin),
    )
    assert r.status_code == 201, r.text


async def echo_tenant(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """The default tenant's admin and a plain user, with an open ``echo`` model: (admin, user)."""
    admin = await sign_up(client, "admin@example.com")
    user = await sign_up(client, "user@example.com")
    await add_echo_model(client, admin)
    return admin, user


async def new_chat(client: httpx.AsyncClient, tokens: dict[str, Any], title: str = "Talk") -> str:
    r = await client.post("/api/v1/chats", json={"title": title}, headers=bearer(tokens))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def send(
    client: httpx.AsyncClient, tokens: dict[str, Any], chat_id: str, content: str, **extra: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/chats/{chat_id}/messages",
        json={"content": content, "model": "echo", **extra},
        headers=bearer(tokens),
    )


async def finished(
    client: httpx.AsyncClient, tokens: dict[str, Any], generation_id: str, timeout: float = 10, interval: float = 0.05
) -> dict[str, Any]:
    """The generation once it has finished (poll a real model gently: the rate limit counts every poll)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await client.get(f"/api/v1/generations/{generation_id}", headers=bearer(tokens))
        assert r.status_code == 200, r.text
        if r.json()["status"] in FINISHED:
            return dict(r.json())
        assert asyncio.get_running_loop().time() < deadline, r.json()
        await asyncio.sleep(interval)


async def head(container: Container) -> int:
    return await container.store.call(container.store.max_id)


# --- providers and models ------------------------------------------------------------------------------
async def test_admin_registers_a_provider_and_a_model_that_users_then_list(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, user = await echo_tenant(client)
    r = await client.post(
        "/api/v1/providers",
        json={
            "name": "vllm",
            "kind": "openai",
            "base_url": "http://vllm.internal:8000/v1",
            "api_key": "sk-secret",
        },
        headers=bearer(admin),
    )
    assert r.status_code == 201, r.text
    assert r.json()["has_api_key"] is True and "api_key" not in r.json()
    r = await client.post("/api/v1/providers", json={"name": "mine", "kind": "echo"}, headers=bearer(user))
    assert r.status_code == 403 and error_code(r) == "ADMIN_REQUIRED"
    r = await client.post(
        "/api/v1/providers", json={"name": "bad", "kind": "telepathy"}, headers=bearer(admin)
    )
    assert r.status_code == 422 and error_code(r) == "INVALID_PROVIDER_KIND"
    r = await client.post(
        "/api/v1/models",
        json={"name": "x", "provider": "nowhere", "upstream_model": "x"},
        headers=bearer(admin),
    )
    assert r.status_code == 404 and error_code(r) == "PROVIDER_NOT_FOUND"
    r = await client.post(
        "/api/v1/models",
        json={"name": "hot", "provider": "echoes", "upstream_model": "x", "defaults": {"temperature": 3}},
        headers=bearer(admin),
    )
    assert r.status_code == 422 and error_code(r) == "INVALID_PARAMETER"
    await pipeline.settle()

    r = await client.get("/api/v1/providers", headers=bearer(admin))
    assert [(p["name"], p["kind"], p["has_api_key"]) for p in r.json()] == [
        ("echoes", "echo", False),
        ("local", "local", False),
        ("vllm", "openai", True),
    ]
    assert (await client.get("/api/v1/providers", headers=bearer(user))).status_code == 403
    r = await client.get("/api/v1/models", headers=bearer(user))
    assert r.status_code == 200 and [m["name"] for m in r.json()] == ["echo", "smollm2"]
    assert "granted_users" not in r.json()[0]
    r = await client.get("/api/v1/models", params={"all": "true"}, headers=bearer(admin))
    assert [(m["name"], m["provider"], m["active"]) for m in r.json()] == [
        ("echo", "echoes", True),
        ("smollm2", "local", True),
    ]
    assert (
        await client.get("/api/v1/models", params={"all": "true"}, headers=bearer(user))
    ).status_code == 403


async def test_a_closed_model_serves_only_those_granted_it(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, user = await echo_tenant(client)
    chat = await new_chat(client, user)
    r = await client.patch("/api/v1/models/echo", json={"open_to_tenant": False}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["open_to_tenant"] is False
    r = await send(client, user, chat, "hello")
    assert r.status_code == 404 and error_code(r) == "MODEL_NOT_FOUND"

    r = await client.post("/api/v1/models/echo/grants", json={"user_id": user["id"]}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["granted_users"] == [user["id"]]
    r = await client.post("/api/v1/models/echo/grants", json={"user_id": user["id"]}, headers=bearer(admin))
    assert r.status_code == 409 and error_code(r) == "ALREADY_GRANTED"
    assert (await send(client, user, chat, "hello")).status_code == 202
    await pipeline.settle()
    assert "echo" in [m["name"] for m in (await client.get("/api/v1/models", headers=bearer(user))).json()]

    r = await client.delete(
        "/api/v1/models/echo/grants", params={"user_id": user["id"]}, headers=bearer(admin)
    )
    assert r.status_code == 200 and r.json()["granted_users"] == []
    r = await client.post("/api/v1/models/echo/grants", json={"role": "user"}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["granted_roles"] == ["user"]
    r = await client.patch("/api/v1/models/echo", json={"active": False}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["active"] is False
    r = await send(client, user, chat, "hello again")
    assert r.status_code == 404 and error_code(r) == "MODEL_NOT_FOUND"
    r = await client.patch("/api/v1/models/echo", json={"active": True}, headers=bearer(user))
    assert r.status_code == 403
    r = await client.patch("/api/v1/models/nothing", json={"active": True}, headers=bearer(admin))
    assert r.status_code == 404 and error_code(r) == "MODEL_NOT_FOUND"


# --- chats ---------------------------------------------------------------------------------------------
async def test_a_message_is_answered_and_the_chat_holds_both(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    _, user = await echo_tenant(client)
    chat = await new_chat(client, user, "First talk")
    r = await send(client, user, chat, "hello there parley")
    assert r.status_code == 202, r.text
    sent = r.json()
    assert sent["chat_id"] == chat and {"message_id", "generation_id", "answer_message_id"} <= set(sent)

    generation = await finished(client, user, sent["generation_id"])
    assert generation["status"] == "completed"
    assert generation["text"] == "hello there parley"
    assert generation["usage"]["completion_tokens"] == 3
    assert generation["usage"]["total_tokens"] == generation["usage"]["prompt_tokens"] + 3
    await pipeline.settle()
    generation = (
        await client.get(f"/api/v1/generations/{sent['generation_id']}", headers=bearer(user))
    ).json()
    assert generation["finish_reason"] == "stop" and generation["timings"]["duration_ms"] is not None

    r = await client.get(f"/api/v1/chats/{chat}", headers=bearer(user))
    assert r.status_code == 200
    body = r.json()
    assert body["title"] == "First talk" and body["head_id"] == sent["answer_message_id"]
    question, answer = body["messages"]
    assert (question["id"], question["role"], question["content"], question["parent_id"]) == (
        sent["message_id"],
        "user",
        "hello there parley",
        None,
    )
    assert (answer["id"], answer["role"], answer["content"], answer["parent_id"], answer["status"]) == (
        sent["answer_message_id"],
        "assistant",
        "hello there parley",
        sent["message_id"],
        "completed",
    )
    assert answer["generation_id"] == sent["generation_id"] and answer["model"] == "echo"


async def test_regenerating_and_editing_keep_every_branch(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    _, user = await echo_tenant(client)
    chat = await new_chat(client, user)
    first = (await send(client, user, chat, "one two")).json()
    await finished(client, user, first["generation_id"])

    r = await client.post(
        f"/api/v1/chats/{chat}/messages/{first['message_id']}/regenerate",
        json={"model": "echo", "params": {"max_tokens": 1}},
        headers=bearer(user),
    )
    assert r.status_code == 202, r.text
    again = r.json()
    assert again["message_id"] == first["message_id"] and again["generation_id"] != first["generation_id"]
    assert (await finished(client, user, again["generation_id"]))["text"] == "one"
    r = await client.post(
        f"/api/v1/chats/{chat}/messages/{first['answer_message_id']}/regenerate",
        json={"model": "echo"},
        headers=bearer(user),
    )
    assert r.status_code == 422 and error_code(r) == "NOT_A_USER_MESSAGE"
    r = await client.post(
        f"/api/v1/chats/{chat}/messages/nosuchmessage/regenerate",
        json={"model": "echo"},
        headers=bearer(user),
    )
    assert r.status_code == 404 and error_code(r) == "MESSAGE_NOT_FOUND"

    # An edited question: a sibling of the first one (same parent, the root).
    edited = (await send(client, user, chat, "three four", parent_id=None)).json()
    await finished(client, user, edited["generation_id"])
    follow = (await send(client, user, chat, "five", parent_id=first["answer_message_id"])).json()
    await finished(client, user, follow["generation_id"])
    r = await send(client, user, chat, "six", parent_id="nosuchmessage")
    assert r.status_code == 404 and error_code(r) == "MESSAGE_NOT_FOUND"
    await pipeline.settle()

    messages = {
        m["id"]: m
        for m in (await client.get(f"/api/v1/chats/{chat}", headers=bearer(user))).json()["messages"]
    }
    assert len(messages) == 7
    answers = sorted(m["content"] for m in messages.values() if m["parent_id"] == first["message_id"])
    assert answers == ["one", "one two"]
    assert messages[follow["message_id"]]["parent_id"] == first["answer_message_id"]
    assert (messages[edited["message_id"]]["content"], messages[edited["message_id"]]["parent_id"]) == (
        "three four",
        None,
    )
    assert messages[edited["answer_message_id"]]["parent_id"] == edited["message_id"]


async def test_chats_are_listed_newest_first_searched_archived_renamed_and_deleted(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    _, user = await echo_tenant(client)
    r = await client.post("/api/v1/chats", headers=bearer(user))
    assert r.status_code == 201 and r.json()["title"] == "New chat"
    untitled = r.json()["id"]
    assert (await client.delete(f"/api/v1/chats/{untitled}", headers=bearer(user))).status_code == 204
    ids = [await new_chat(client, user, title) for title in ("Alpha plans", "Beta notes", "alpha review")]
    r = await client.patch(f"/api/v1/chats/{ids[1]}", json={"archived": True}, headers=bearer(user))
    assert r.status_code == 200 and r.json()["archived"] is True
    r = await client.patch(f"/api/v1/chats/{ids[2]}", json={"title": "  Alpha retro  "}, headers=bearer(user))
    assert r.status_code == 200 and r.json()["title"] == "Alpha retro"
    r = await client.patch(f"/api/v1/chats/{ids[2]}", json={"title": "   "}, headers=bearer(user))
    assert r.status_code == 422 and error_code(r) == "INVALID_TITLE"
    r = await send(client, user, ids[1], "hello")
    assert r.status_code == 409 and error_code(r) == "CHAT_ARCHIVED"
    await pipeline.settle()

    async def titles(**params: Any) -> list[str]:
        r = await client.get("/api/v1/chats", params=params, headers=bearer(user))
        assert r.status_code == 200, r.text
        return [c["title"] for c in r.json()["items"]]

    assert await titles() == ["Alpha retro", "Beta notes", "Alpha plans"]
    assert await titles(q="alpha") == ["Alpha retro", "Alpha plans"]
    assert await titles(archived="true") == ["Beta notes"]
    assert await titles(archived="false", limit=1) == ["Alpha retro"]
    r = await client.get("/api/v1/chats", params={"limit": 1, "offset": 1}, headers=bearer(user))
    assert r.json()["total"] == 3 and [c["title"] for c in r.json()["items"]] == ["Beta notes"]
    assert (await client.get("/api/v1/chats", params={"limit": 0}, headers=bearer(user))).status_code == 400

    r = await client.delete(f"/api/v1/chats/{ids[0]}", headers=bearer(user))
    assert r.status_code == 204
    assert (await send(client, user, ids[0], "anyone?")).status_code == 404  # the event store knows at once
    await pipeline.settle()  # the read model a moment later
    r = await client.get(f"/api/v1/chats/{ids[0]}", headers=bearer(user))
    assert r.status_code == 404 and error_code(r) == "CHAT_NOT_FOUND"
    assert await titles() == ["Alpha retro", "Beta notes"]


# --- bad input -----------------------------------------------------------------------------------------
async def test_every_bad_message_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, user = await echo_tenant(client)
    for email, role in (("guest@example.com", "guest"), ("pending@example.com", "pending")):
        r = await client.post(
            "/api/v1/users",
            json={"email": email, "password": PASSWORD, "name": role.title(), "role": role},
            headers=bearer(admin),
        )
        assert r.status_code == 201, r.text
    guest = (
        await client.post("/api/v1/auths/login", json={"email": "guest@example.com", "password": PASSWORD})
    ).json()
    guest_chat = await new_chat(client, guest)
    r = await client.post("/api/v1/auths/login", json={"email": "pending@example.com", "password": PASSWORD})
    pending = r.json() if r.status_code == 200 else None
    chat = await new_chat(client, user)
    before = await head(container)

    async def refused(tokens: dict[str, Any], chat_id: str, body: Any, status: int, code: str | None) -> None:
        r = await client.post(f"/api/v1/chats/{chat_id}/messages", json=body, headers=bearer(tokens))
        assert r.status_code == status, (body if len(str(body)) < 200 else "(long)", r.text[:300])
        if code is not None:
            assert error_code(r) == code, r.text[:300]

    await refused(guest, guest_chat, {"content": "hi", "model": "echo"}, 403, "ROLE_CANNOT_GENERATE")
    if pending is not None:
        await refused(pending, guest_chat, {"content": "hi", "model": "echo"}, 403, None)
    await refused(user, chat, {"content": "hi", "model": "nosuchmodel"}, 404, "MODEL_NOT_FOUND")
    await refused(user, chat, {"content": "", "model": "echo"}, 422, "EMPTY_MESSAGE")
    await refused(user, chat, {"content": " \n\t ", "model": "echo"}, 422, "EMPTY_MESSAGE")
    await refused(user, chat, {"content": "a\x00b", "model": "echo"}, 422, "INVALID_CONTENT")
    await refused(user, chat, {"content": "x" * 100_001, "model": "echo"}, 413, "MESSAGE_TOO_LARGE")
    await refused(
        user, chat, {"content": "\U0001f600" * 300_000, "model": "echo"}, 413, None
    )  # over the body limit
    for params in (
        {"temperature": 3},
        {"temperature": "hot"},
        {"max_tokens": -1},
        {"max_tokens": 1.5},
        {"top_p": 0},
        {"seed": -4},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"frequency_penalty": 3},
        {"colour": "red"},
        {"logit_bias": {"not-a-token": 1}},
        {"response_format": {"type": "yaml"}},
        {"reasoning_effort": "extreme"},
    ):
        await refused(
            user, chat, {"content": "hi", "model": "echo", "params": params}, 422, "INVALID_PARAMETER"
        )
    # A parameter this model does not honour is refused, never silently dropped.
    for params in ({"frequency_penalty": 1}, {"top_k": 5}, {"response_format": {"type": "json_object"}}):
        await refused(
            user, chat, {"content": "hi", "model": "echo", "params": params}, 422, "UNSUPPORTED_PARAMETER"
        )
    await refused(user, chat, {"content": "hi"}, 422, "MODEL_REQUIRED")  # no model named, none chosen in settings
    await refused(user, chat, {"content": "hi", "model": "echo", "colour": "red"}, 400, None)
    await refused(user, chat, {"content": 42, "model": "echo"}, 400, None)
    await refused(user, chat, ["not", "an", "object"], 400, None)
    r = await client.post(
        f"/api/v1/chats/{chat}/messages",
        content=b"{not json",
        headers={**bearer(user), "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and error_code(r) == "MALFORMED_JSON"
    r = await client.post(f"/api/v1/chats/{chat}/messages", json={"content": "hi", "model": "echo"})
    assert r.status_code == 401
    assert await head(container) == before

    # The largest message there may be is taken.
    r = await send(client, user, chat, "y" * 100_000, params={"max_tokens": 1})
    assert r.status_code == 202, r.text[:300]
    assert (await finished(client, user, r.json()["generation_id"]))[
        "text"
    ] == "y" * 100_000  # one echoed word


# --- access ----------------------------------------------------------------------------------------------
async def test_only_the_owner_sees_or_touches_a_chat_and_its_generation(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, owner = await echo_tenant(client)
    neighbour = await sign_up(client, "neighbour@example.com")
    _, stranger = await tenant_with_admin(client, bearer(admin), "other", "stranger@other.test")  # its admin
    await add_echo_model(client, stranger)

    chat = await new_chat(client, owner)
    sent = (await send(client, owner, chat, "private words")).json()
    await finished(client, owner, sent["generation_id"])
    await pipeline.settle()
    before = await head(container)

    for intruder in (neighbour, stranger, admin):
        h = bearer(intruder)
        checks = [
            await client.get(f"/api/v1/chats/{chat}", headers=h),
            await client.patch(f"/api/v1/chats/{chat}", json={"title": "mine"}, headers=h),
            await client.delete(f"/api/v1/chats/{chat}", headers=h),
            await send(client, intruder, chat, "let me in"),
            await client.post(
                f"/api/v1/chats/{chat}/messages/{sent['message_id']}/regenerate",
                json={"model": "echo"},
                headers=h,
            ),
            await client.get(f"/api/v1/generations/{sent['generation_id']}", headers=h),
            await client.get(f"/api/v1/generations/{sent['generation_id']}/stream", headers=h),
            await client.post(f"/api/v1/generations/{sent['generation_id']}/cancel", headers=h),
        ]
        assert [r.status_code for r in checks] == [404] * len(checks), [r.text for r in checks]
        assert {error_code(r) for r in checks} <= {"CHAT_NOT_FOUND", "GENERATION_NOT_FOUND"}
        listed = (await client.get("/api/v1/chats", headers=h)).json()
        assert chat not in [c["id"] for c in listed["items"]]
    assert await head(container) == before
    r = await client.get(f"/api/v1/generations/{sent['generation_id']}", headers=bearer(owner))
    assert r.status_code == 200 and r.json()["text"] == "private words"
