"""The workspace of one user through HTTP (issue 15, part A): their settings (default model and
parameters applied to messages that name none, display name, avatar, bounded preferences), the prompt
library (commands, variables, access like knowledge bases') and model presets (a model on a base model
with its own system prompt, parameters, knowledge and access). Nobody sees another user's settings or
private prompts, in their tenant or another."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import httpx

from domain.chats import Generation
from tests.conftest import Pipeline
from tests.e2e.test_chat_api import add_echo_model, bearer, error_code, new_chat, sign_up
from tests.tenants import tenant_with_admin
from workers.bootstrap import Container


def png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def generation_params(c: Container, generation_id: str) -> tuple[str, dict[str, Any]]:
    generation = await c.store.call(c.store.get, Generation, __import__("uuid").UUID(generation_id))
    return generation.model, dict(generation.params)


# --- settings ------------------------------------------------------------------------------------------
async def test_settings_apply_to_messages_that_name_no_model_and_stay_the_users_own(
    client: httpx.AsyncClient, container: Container
) -> None:
    admin = await sign_up(client, "admin@example.com")
    user = await sign_up(client, "user@example.com")
    other = await sign_up(client, "other@example.com")
    await add_echo_model(client, admin)
    await add_echo_model(client, admin, name="closed", open_to_tenant=False)

    r = await client.get("/api/v1/users/me/settings", headers=bearer(user))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "user_id": user["id"], "display_name": "Someone", "default_model": None, "default_params": {},
        "preferences": {}, "avatar_url": None,
    }  # fmt: skip
    chat = await new_chat(client, user)
    r = await client.post(f"/api/v1/chats/{chat}/messages", json={"content": "hi"}, headers=bearer(user))
    assert r.status_code == 422 and error_code(r) == "MODEL_REQUIRED", r.text

    prefs = {"theme": "dark", "sidebar": {"open": True, "width": 280}, "pinned_models": ["echo"]}
    r = await client.patch(
        "/api/v1/users/me/settings",
        json={"display_name": "  Ada  ", "default_model": "ECHO", "default_params": {"temperature": 0.3, "seed": 7}, "preferences": prefs},
        headers=bearer(user),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["display_name"], body["default_model"], body["preferences"]) == ("Ada", "echo", prefs)
    assert body["default_params"] == {"temperature": 0.3, "seed": 7}
    r = await client.get("/api/v1/auths/me", headers=bearer(user))
    assert r.json()["name"] == "Ada"  # the display name is the user's name

    # A message naming no model gets the default one and the default parameters under its own.
    r = await client.post(f"/api/v1/chats/{chat}/messages", json={"content": "hi", "params": {"temperature": 1.1}}, headers=bearer(user))
    assert r.status_code == 202, r.text
    model, params = await generation_params(container, r.json()["generation_id"])
    assert model == "echo" and params["temperature"] == 1.1 and params["seed"] == 7
    # Naming a model overrides the default model; a default parameter it does not honour is left out.
    await add_echo_model(client, admin, name="plain", capabilities={"params": []})
    r = await client.post(f"/api/v1/chats/{chat}/messages", json={"content": "again", "model": "plain"}, headers=bearer(user))
    assert r.status_code == 202, r.text
    model, params = await generation_params(container, r.json()["generation_id"])
    assert model == "plain" and params["temperature"] == 0.3 and "seed" not in params
    # Regenerating names no model either.
    r = await client.post(f"/api/v1/chats/{chat}/messages/{r.json()['message_id']}/regenerate", json={}, headers=bearer(user))
    assert r.status_code == 202, r.text
    assert (await generation_params(container, r.json()["generation_id"]))[0] == "echo"

    # Bad settings, each with its code; nothing changes.
    bad = [
        ({"default_model": "closed"}, 404, "MODEL_NOT_FOUND"),
        ({"default_model": "nope"}, 404, "MODEL_NOT_FOUND"),
        ({"default_params": {"temperature": 9}}, 422, "INVALID_PARAMETER"),
        ({"default_params": {"warmth": 1}}, 422, "INVALID_PARAMETER"),
        ({"display_name": "\u202eevil"}, 422, "INVALID_NAME"),
        ({"preferences": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}}, 422, "PREFERENCES_TOO_DEEP"),
        ({"preferences": {f"k{i}": i for i in range(501)}}, 422, "PREFERENCES_TOO_MANY_KEYS"),
        ({"preferences": {"blob": "x" * 70_000}}, 422, "PREFERENCES_TOO_LARGE"),
        ({"preferences": {"x" * 101: 1}}, 422, "INVALID_PREFERENCES"),
        ({"preferences": [1, 2]}, 400, None),
        ({"colour": "red"}, 400, None),
    ]
    for patch, status, code in bad:
        r = await client.patch("/api/v1/users/me/settings", json=patch, headers=bearer(user))
        assert r.status_code == status, (patch, r.text)
        if code:
            assert error_code(r) == code, (patch, r.text)
    r = await client.get("/api/v1/users/me/settings", headers=bearer(user))
    assert r.json()["default_model"] == "echo" and r.json()["preferences"] == prefs

    # Null clears; another user's settings are their own.
    r = await client.patch("/api/v1/users/me/settings", json={"default_params": None}, headers=bearer(user))
    assert r.json()["default_params"] == {} and r.json()["default_model"] == "echo"
    r = await client.get("/api/v1/users/me/settings", headers=bearer(other))
    assert r.json()["user_id"] == other["id"] and r.json()["default_model"] is None and r.json()["preferences"] == {}


async def test_an_avatar_is_checked_stored_and_served_to_the_tenant_only(client: httpx.AsyncClient, container: Container) -> None:
    platform = await sign_up(client, "platform@example.com")  # the default tenant's first user
    user = await sign_up(client, "face@example.com")
    colleague = await sign_up(client, "colleague@example.com")
    _, stranger = await tenant_with_admin(client, bearer(platform), "elsewhere", "admin@elsewhere.test")
    image = png()

    def put(tokens: dict[str, Any], data: bytes, name: str = "me.png") -> Any:
        return client.put("/api/v1/users/me/avatar", files={"file": (name, data, "image/png")}, headers=bearer(tokens))

    r = await put(user, b"%PDF-1.4 not an image", "me.png")
    assert r.status_code == 415 and error_code(r) == "UNSUPPORTED_IMAGE_TYPE", r.text
    r = await put(user, image + bytes(1024 * 1024))
    assert r.status_code == 413 and error_code(r) == "AVATAR_TOO_LARGE", r.text
    r = await client.put("/api/v1/users/me/avatar", content=image, headers={**bearer(user), "Content-Type": "image/png"})
    assert r.status_code == 415, r.text
    r = await put(user, image)
    assert r.status_code == 200, r.text
    url = r.json()["avatar_url"]
    assert url == f"/api/v1/users/{user['id']}/avatar"

    r = await client.get(url, headers=bearer(colleague))
    assert r.status_code == 200 and r.content == image and r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert (await client.get(url)).status_code == 401
    r = await client.get(url, headers=bearer(stranger))
    assert r.status_code == 404, r.text  # another tenant's user: no such avatar there

    r = await client.delete("/api/v1/users/me/avatar", headers=bearer(user))
    assert r.status_code == 204
    assert (await client.get(url, headers=bearer(colleague))).status_code == 404
    assert (await client.get("/api/v1/users/me/settings", headers=bearer(user))).json()["avatar_url"] is None


# --- prompts -------------------------------------------------------------------------------------------
async def test_prompts_are_saved_shared_searched_by_command_and_rendered(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin = await sign_up(client, "admin@example.com")
    owner = await sign_up(client, "owner@example.com")
    friend = await sign_up(client, "friend@example.com")
    outsider = await sign_up(client, "outsider@example.com")

    async def create(tokens: dict[str, Any], **body: Any) -> httpx.Response:
        return await client.post("/api/v1/prompts", json=body, headers=bearer(tokens))

    r = await create(owner, command="summarize", title="Summary", content="Summarise {{text}} in {{ words }} words for {{text}}.")
    assert r.status_code == 201, r.text
    mine = r.json()
    assert (mine["command"], mine["variables"], mine["scope"], mine["level"]) == ("/summarize", ["text", "words"], "user", "write")
    r = await create(admin, command="/summarize", title="House summary", content="House style: {{text}}", scope="tenant")
    assert r.status_code == 201, r.text
    house = r.json()
    r = await create(friend, command="/summarize", title="Friend's", content="{{text}}!")  # each owner has their own
    assert r.status_code == 201, r.text

    bad = [
        (owner, {"command": "/summarize", "title": "Again", "content": "x"}, 409, "COMMAND_TAKEN"),
        (owner, {"command": "/Not Valid!", "title": "t", "content": "x"}, 422, "INVALID_COMMAND"),
        (owner, {"command": "/ok", "title": "", "content": "x"}, 422, "INVALID_TITLE"),
        (owner, {"command": "/ok", "title": "t", "content": "   "}, 422, "INVALID_CONTENT"),
        (owner, {"command": "/ok", "title": "t", "content": "x", "scope": "tenant"}, 403, "ADMIN_REQUIRED"),
        (owner, {"command": "/ok", "title": "t", "content": "x", "scope": "world"}, 422, "INVALID_SCOPE"),
        (admin, {"command": "/summarize", "title": "t", "content": "x", "scope": "tenant"}, 409, "COMMAND_TAKEN"),
    ]
    for tokens, body, status, code in bad:
        r = await create(tokens, **body)
        assert r.status_code == status and error_code(r) == code, (body, r.text)

    # Render: every variable filled, each missing one named.
    r = await client.post(f"/api/v1/prompts/{mine['id']}/render", json={"variables": {"text": "this", "words": "ten"}}, headers=bearer(owner))
    assert r.status_code == 200 and r.json()["text"] == "Summarise this in ten words for this.", r.text
    r = await client.post(f"/api/v1/prompts/{mine['id']}/render", json={"variables": {"text": "x"}}, headers=bearer(owner))
    assert r.status_code == 422 and error_code(r) == "MISSING_VARIABLES" and r.json()["error"]["detail"]["missing"] == ["words"]

    # Private until shared: the friend sees the tenant's and their own, not the owner's.
    await pipeline.settle()
    r = await client.get("/api/v1/prompts", params={"command": "sum"}, headers=bearer(friend))
    assert r.status_code == 200, r.text
    assert {p["title"] for p in r.json()["items"]} == {"House summary", "Friend's"}
    assert r.json()["items"][0]["title"] == "Friend's"  # their own first
    for path in (f"/api/v1/prompts/{mine['id']}", f"/api/v1/prompts/{mine['id']}/render"):
        call = client.get if path.endswith(mine["id"]) else client.post
        r = await call(path, headers=bearer(friend))
        assert r.status_code == 404 and error_code(r) == "PROMPT_NOT_FOUND", r.text

    r = await client.put(f"/api/v1/prompts/{mine['id']}/access/user:{friend['id']}", json={"level": "read"}, headers=bearer(owner))
    assert r.status_code == 200 and r.json()["access"] == {f"user:{friend['id']}": "read"}, r.text
    r = await client.patch(f"/api/v1/prompts/{mine['id']}", json={"title": "Mine"}, headers=bearer(friend))
    assert r.status_code == 403 and error_code(r) == "PROMPT_READ_ONLY"
    r = await client.put(f"/api/v1/prompts/{mine['id']}/access/role:user", json={"level": "write"}, headers=bearer(friend))
    assert r.status_code == 403 and error_code(r) == "PROMPT_READ_ONLY"
    r = await client.put(f"/api/v1/prompts/{mine['id']}/access/nobody", json={"level": "read"}, headers=bearer(owner))
    assert r.status_code == 422 and error_code(r) == "INVALID_GRANTEE"
    await pipeline.settle()
    r = await client.get("/api/v1/prompts", params={"command": "/summ"}, headers=bearer(friend))
    assert len(r.json()["items"]) == 3 and r.json()["total"] == 3
    assert next(p for p in r.json()["items"] if p["id"] == mine["id"])["access"] is None  # grants only for writers
    r = await client.get("/api/v1/prompts", headers=bearer(outsider))
    assert [p["title"] for p in r.json()["items"]] == ["House summary"]

    # Renaming the command frees the old one; deleting frees it too.
    r = await client.patch(f"/api/v1/prompts/{mine['id']}", json={"command": "tldr", "content": "TL;DR {{text}}"}, headers=bearer(owner))
    assert r.status_code == 200 and r.json()["command"] == "/tldr" and r.json()["variables"] == ["text"], r.text
    r = await create(owner, command="summarize", title="Second", content="again {{x}}")
    assert r.status_code == 201, r.text
    second = r.json()["id"]
    r = await client.patch(f"/api/v1/prompts/{second}", json={"command": "/tldr"}, headers=bearer(owner))
    assert r.status_code == 409 and error_code(r) == "COMMAND_TAKEN"
    assert (await client.delete(f"/api/v1/prompts/{mine['id']}", headers=bearer(friend))).status_code == 403
    assert (await client.delete(f"/api/v1/prompts/{mine['id']}", headers=bearer(owner))).status_code == 204
    r = await client.patch(f"/api/v1/prompts/{second}", json={"command": "/tldr"}, headers=bearer(owner))
    assert r.status_code == 200, r.text
    await pipeline.settle()  # single prompts are read from the prompts read model
    assert (await client.get(f"/api/v1/prompts/{mine['id']}", headers=bearer(owner))).status_code == 404
    r = await client.delete(f"/api/v1/prompts/{house['id']}", headers=bearer(owner))
    assert r.status_code == 403 and error_code(r) == "PROMPT_READ_ONLY"

    # Another tenant sees none of it.
    _, stranger = await tenant_with_admin(client, bearer(admin), "elsewhere", "admin@elsewhere.test")
    r = await client.get("/api/v1/prompts", headers=bearer(stranger))
    assert r.json()["items"] == []
    assert (await client.get(f"/api/v1/prompts/{house['id']}", headers=bearer(stranger))).status_code == 404


# --- model presets -------------------------------------------------------------------------------------
async def test_a_preset_runs_on_its_base_with_its_own_prompt_parameters_knowledge_and_access(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin = await sign_up(client, "admin@example.com")
    user = await sign_up(client, "user@example.com")
    granted = await sign_up(client, "granted@example.com")
    await add_echo_model(client, admin, defaults={"temperature": 0.2, "max_tokens": 64})
    r = await client.post("/api/v1/knowledge", json={"name": "Style guide"}, headers=bearer(admin))
    kb = r.json()["id"]
    r = await client.put(f"/api/v1/knowledge/{kb}/access/tenant", json={"level": "read"}, headers=bearer(admin))
    assert r.status_code == 200, r.text

    preset = {
        "name": "pirate", "base_model": "echo", "display_name": "Pirate", "open_to_tenant": False,
        "defaults": {"system_prompt": "Talk like a pirate.", "temperature": 0.9}, "knowledge_ids": [kb],
    }  # fmt: skip
    r = await client.post("/api/v1/models", json=preset, headers=bearer(admin))
    assert r.status_code == 201, r.text
    assert r.json()["base_model"] == "echo" and r.json()["upstream_model"] == "echo" and r.json()["knowledge_ids"] == [kb]
    assert r.json()["defaults"] == {"temperature": 0.9, "max_tokens": 64, "system_prompt": "Talk like a pirate."}

    bad = [
        ({"name": "x", "base_model": "nope"}, 404, "MODEL_NOT_FOUND"),
        ({"name": "x", "base_model": "echo", "provider": "echoes", "upstream_model": "echo"}, 422, "INVALID_MODEL_SOURCE"),
        ({"name": "x"}, 422, "INVALID_MODEL_SOURCE"),
        ({"name": "pirate", "base_model": "echo"}, 409, "MODEL_EXISTS"),
        ({"name": "x", "base_model": "echo", "defaults": {"temperature": 5}}, 422, "INVALID_PARAMETER"),
        ({"name": "x", "base_model": "echo", "defaults": {"top_k": 5}}, 422, "UNSUPPORTED_PARAMETER"),
        ({"name": "x", "base_model": "echo", "knowledge_ids": ["not-an-id"]}, 422, "INVALID_KNOWLEDGE_ID"),
    ]
    for body, status, code in bad:
        r = await client.post("/api/v1/models", json=body, headers=bearer(admin))
        assert r.status_code == status and error_code(r) == code, (body, r.text)
    r = await client.post("/api/v1/models", json={"name": "y", "base_model": "echo"}, headers=bearer(user))
    assert r.status_code == 403

    # Only those it is open to see it in /v1/models, and only they may use it.
    r = await client.post("/api/v1/models/pirate/grants", json={"user_id": granted["id"]}, headers=bearer(admin))
    assert r.status_code in (200, 201), r.text
    await pipeline.settle()
    for tokens, sees in ((user, False), (granted, True), (admin, True)):
        r = await client.get("/v1/models", headers=bearer(tokens))
        listed = {m["id"]: m for m in r.json()["data"]}
        assert ("pirate" in listed) is sees, (tokens["id"], listed.keys())
    assert listed["pirate"]["parley_base_model"] == "echo"
    chat = await new_chat(client, user)
    r = await client.post(f"/api/v1/chats/{chat}/messages", json={"content": "hi", "model": "pirate"}, headers=bearer(user))
    assert r.status_code == 404 and error_code(r) == "MODEL_NOT_FOUND"

    # A message to it runs on the base's engine with its system prompt, parameters and knowledge.
    chat = await new_chat(client, granted)
    r = await client.post(
        f"/api/v1/chats/{chat}/messages", json={"content": "Where is the gold?", "model": "pirate"}, headers=bearer(granted)
    )
    assert r.status_code == 202, r.text
    answer = await finished_answer(client, granted, r.json()["generation_id"])
    assert answer["status"] == "completed" and answer["model"] == "pirate", answer
    generation_id = __import__("uuid").UUID(r.json()["generation_id"])
    generation = await container.store.call(container.store.get, Generation, generation_id)
    assert generation.params["system_prompt"] == "Talk like a pirate." and generation.params["temperature"] == 0.9
    from application.conversations import _engine_request, _retrieval
    from domain.chats import Chat
    from domain.models import Model

    model = await container.store.call(container.store.get, Model, generation.model_id)
    chat_aggregate = await container.store.call(container.store.get, Chat, generation.chat_id)
    request = _engine_request(generation, chat_aggregate.branch(generation.user_message_id), model)
    assert request.model == "echo" and request.messages[0].role == "system" and request.messages[0].content == "Talk like a pirate."
    retrieval = _retrieval(generation, chat_aggregate, model, "user")
    assert retrieval is not None and [str(k) for k in retrieval.knowledge_ids] == [kb]
    assert container.models.target(model).kind == "echo"

    # A preset stops serving with its base.
    r = await client.patch("/api/v1/models/echo", json={"active": False}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/v1/chats/{chat}/messages", json={"content": "again", "model": "pirate"}, headers=bearer(granted))
    assert r.status_code == 404 and error_code(r) == "MODEL_NOT_FOUND"


async def finished_answer(client: httpx.AsyncClient, tokens: dict[str, Any], generation_id: str) -> dict[str, Any]:
    from tests.e2e.test_chat_api import finished

    return await finished(client, tokens, generation_id, timeout=30)
