"""Gateway keys: a front end in front of parley (Open WebUI, any other) names each request's end user, and
that user's access, quotas, rate limits, usage and audit apply. Client chat ids keep a front end's chat in
one parley chat; its housekeeping calls (titles, tags) are generations of their own, not chats.

The trust model under test: only a key with the ``gateway`` scope, which only a tenant admin can create,
may name an end user, and only into its own tenant; a named user who is deactivated or awaits approval is
refused as a sign-in would be."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from domain.chats import client_chat_id_for
from schema.tables import audit_log, chats, generations, messages, users
from tests.conftest import Pipeline
from workers.bootstrap import Container

PASSWORD = "correct horse 9"
TITLE_PROMPT = (
    "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
    "### Guidelines:\n- The title should clearly represent the main theme\n### Chat History:\n<chat_history>\n"
    "USER: hello\nASSISTANT: hello\n</chat_history>"
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_up(http: httpx.AsyncClient, email: str, tenant: str | None = None) -> dict[str, str]:
    extra = {"X-Tenant": tenant} if tenant else {}
    r = await http.post(
        "/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": "Someone"}, headers=extra
    )
    assert r.status_code == 201, r.text
    r = await http.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD}, headers=extra)
    return bearer(r.json()["access_token"])


async def echo_model(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    r = await http.post("/api/v1/providers", json={"name": "echoes", "kind": "echo"}, headers=admin)
    assert r.status_code == 201, r.text
    r = await http.post("/api/v1/models", json={"name": "echo", "provider": "echoes", "upstream_model": "echo"}, headers=admin)
    assert r.status_code == 201, r.text


async def key(http: httpx.AsyncClient, auth: dict[str, str], *scopes: str, **extra: Any) -> str:
    r = await http.post(
        "/api/v1/auths/api-keys", json={"name": "front end", "scopes": list(scopes or ("read", "write")), **extra}, headers=auth
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def end_user(email: str, name: str = "End User", role: str = "user", chat: str | None = None) -> dict[str, str]:
    headers = {
        "X-OpenWebUI-User-Email": email,
        "X-OpenWebUI-User-Name": name,
        "X-OpenWebUI-User-Role": role,
        "X-OpenWebUI-User-Id": str(uuid.uuid4()),
    }
    if chat:
        headers["X-OpenWebUI-Chat-Id"] = chat
    return headers


async def complete(http: httpx.AsyncClient, gateway: str, headers: dict[str, str], *turns: str, model: str = "echo") -> httpx.Response:
    roles = ["user", "assistant"]
    body = {"model": model, "messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]}
    return await http.post("/v1/chat/completions", json=body, headers={**bearer(gateway), **headers})


async def rows(c: Container, stmt: Any) -> list[Any]:
    async with c.engine.connect() as conn:
        return list(await conn.execute(stmt))


async def test_a_gateway_names_its_end_users_and_each_is_billed_limited_and_audited_alone(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin = await sign_up(client, "admin@example.com")
    await echo_model(client, admin)
    gateway = await key(client, admin, "read", "write", "gateway", role_map={"admin": "premium", "user": "user"})

    r = await complete(client, gateway, end_user("ada@example.com", "Ada%20Lovelace", role="admin"), "hello there")
    assert r.status_code == 200, r.text
    r = await complete(client, gateway, end_user("bob@example.com", "Bob", role="user"), "hi")
    assert r.status_code == 200, r.text
    await pipeline.settle()

    people = {u.email: u for u in await rows(container, select(users))}
    ada, bob = people["ada@example.com"], people["bob@example.com"]
    assert (ada.name, ada.role, bob.role) == ("Ada Lovelace", "premium", "user")  # through the role map
    created = await rows(container, select(audit_log).where(audit_log.c.action == "UserRegistered"))
    assert {r.actor for r in created if r.target_id in (str(ada.user_id), str(bob.user_id))} == {f"apikey:{gateway_id(gateway)}"}

    # Each end user's generation is theirs, and the audit row names the user and the gateway.
    gens = {g.user_id: g for g in await rows(container, select(generations))}
    assert set(gens) >= {str(ada.user_id), str(bob.user_id)}
    requested = await rows(container, select(audit_log).where(audit_log.c.action == "GenerationRequested"))
    assert {(r.actor, r.via) for r in requested} == {
        (f"user:{ada.user_id}", f"apikey:{gateway_id(gateway)}"),
        (f"user:{bob.user_id}", f"apikey:{gateway_id(gateway)}"),
    }

    # Quotas: Bob's spent day stops Bob, never Ada.
    r = await client.put(f"/api/v1/quotas/users/{bob.user_id}", json={"limit": 5}, headers=admin)
    assert r.status_code == 200, r.text
    r = await complete(client, gateway, end_user("bob@example.com"), "tell me more")
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded", r.text
    r = await complete(client, gateway, end_user("ada@example.com", role="admin"), "tell me more")
    assert r.status_code == 200, r.text

    # Usage per user, in the admin's report.
    await pipeline.settle()
    report = (await client.get("/api/v1/usage", params={"group_by": "user"}, headers=admin)).json()
    by_user = {item["user_id"]: item for item in report["items"]}
    assert by_user[str(ada.user_id)]["requests"] == 2 and by_user[str(bob.user_id)]["requests"] == 1


def gateway_id(secret: str) -> str:
    from application.credentials import parse_api_key

    return str(parse_api_key(secret))


async def test_only_gateway_keys_may_name_a_user_and_only_into_their_tenant(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin = await sign_up(client, "admin@example.com")
    await echo_model(client, admin)
    plain = await key(client, admin, "read", "write")
    session = admin["Authorization"].removeprefix("Bearer ")
    for credential in (plain, session):
        r = await complete(client, credential, end_user("mallory@example.com"), "hi")
        assert r.status_code == 403 and r.json()["error"]["code"] == "gateway_scope_required", r.text
    r = await client.post("/v1/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
                          headers={**bearer(plain), "X-Parley-User-Email": "mallory@example.com"})  # fmt: skip
    assert r.status_code == 403
    r = await complete(client, plain, {"X-OpenWebUI-User-Name": "No Mail"}, "hi")
    assert r.status_code == 403  # naming anyone without the scope is refused first

    # Only a tenant admin creates gateway keys.
    user = await sign_up(client, "user@example.com")
    r = await client.post("/api/v1/auths/api-keys", json={"name": "x", "scopes": ["read", "gateway"]}, headers=user)
    assert r.status_code == 403 and r.json()["error"]["code"] == "SCOPE_NOT_ALLOWED"
    r = await client.post(
        "/api/v1/auths/api-keys", json={"name": "x", "scopes": ["gateway"], "role_map": {"user": "admin"}}, headers=admin
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_ROLE_MAP"

    # A second tenant with a user of the same e-mail: tenant A's gateway cannot reach them.
    platform = admin
    r = await client.post(
        "/api/v1/tenants", json={"slug": "beta", "name": "Beta", "admin_email": "boss@beta.example"}, headers=platform
    )
    assert r.status_code == 201, r.text
    beta_admin = await _beta_admin(client, r.json()["invitation"]["token"])
    await echo_model(client, beta_admin)
    beta_user_email = "shared@example.com"
    r = await client.post(
        "/api/v1/users",
        json={"email": beta_user_email, "password": PASSWORD, "name": "In Beta", "role": "user"},
        headers=beta_admin,
    )
    assert r.status_code == 201, r.text
    beta_user_id = r.json()["id"]
    gateway_a = await key(client, admin, "read", "write", "gateway")
    r = await complete(client, gateway_a, end_user(beta_user_email), "hello")
    assert r.status_code == 200, r.text
    r = await complete(client, gateway_a, {**end_user(beta_user_email), "X-Tenant": "beta"}, "hello")
    assert r.status_code == 403 and r.json()["error"]["code"] == "tenant_mismatch"
    await pipeline.settle()
    same_mail = [u for u in await rows(container, select(users)) if u.email == beta_user_email]
    assert len(same_mail) == 2 and len({u.tenant_id for u in same_mail}) == 2
    beta_generations = [g for g in await rows(container, select(generations)) if g.user_id == beta_user_id]
    assert beta_generations == []  # nothing ran as Beta's user


async def _beta_admin(client: httpx.AsyncClient, invitation: str) -> dict[str, str]:
    """Tenant Beta's first admin, by the invitation its creation made."""
    r = await client.post(
        "/api/v1/auths/invitations/accept", json={"token": invitation, "name": "Boss", "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/auths/login", json={"email": "boss@beta.example", "password": PASSWORD}, headers={"X-Tenant": "beta"})
    assert r.status_code == 200, r.text
    return bearer(r.json()["access_token"])


async def test_a_deactivated_or_pending_end_user_is_refused_as_on_sign_in(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin = await sign_up(client, "admin@example.com")
    await echo_model(client, admin)
    gateway = await key(client, admin, "read", "write", "gateway", role_map={"guest": "pending"})
    r = await complete(client, gateway, end_user("eve@example.com"), "hi")
    assert r.status_code == 200, r.text
    await pipeline.settle()
    eve = next(u for u in await rows(container, select(users)) if u.email == "eve@example.com")
    r = await client.patch(f"/api/v1/users/{eve.user_id}", json={"active": False}, headers=admin)
    assert r.status_code == 200, r.text
    r = await complete(client, gateway, end_user("eve@example.com"), "hi again")
    assert r.status_code == 403 and r.json()["error"]["code"] == "user_deactivated"

    r = await complete(client, gateway, end_user("newbie@example.com", role="guest"), "hi")
    assert r.status_code == 403 and r.json()["error"]["code"] == "user_pending"
    # Approved by an admin, they may go on.
    await pipeline.settle()
    newbie = next(u for u in await rows(container, select(users)) if u.email == "newbie@example.com")
    assert newbie.role == "pending"
    r = await client.patch(f"/api/v1/users/{newbie.user_id}", json={"role": "user"}, headers=admin)
    assert r.status_code == 200
    r = await complete(client, gateway, end_user("newbie@example.com", role="guest"), "hi")
    assert r.status_code == 200, r.text
    # A gateway-made user has no password: no password signs them in.
    r = await client.post("/api/v1/auths/login", json={"email": "newbie@example.com", "password": PASSWORD})
    assert r.status_code == 401


async def test_a_client_chat_is_one_parley_chat_and_housekeeping_is_not_a_chat(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline, live: str
) -> None:
    admin = await sign_up(client, "admin@example.com")
    await echo_model(client, admin)
    gateway = await key(client, admin, "read", "write", "gateway")
    ada = end_user("ada@example.com", chat="owui-chat-1")
    r = await complete(client, gateway, ada, "first question")
    assert r.status_code == 200, r.text
    first = r.json()["choices"][0]["message"]["content"]
    # Open WebUI resends the whole history each turn; parley appends what is new.
    r = await complete(client, gateway, ada, "first question", f"  {first}\n", "second question")
    assert r.status_code == 200, r.text
    chat_id = r.headers["x-parley-chat-id"]
    # The title task, as Open WebUI sends it, with the same chat id.
    r = await complete(client, gateway, ada, TITLE_PROMPT)
    assert r.status_code == 200, r.text
    assert "x-parley-chat-id" not in r.headers and r.headers["x-parley-purpose"] == "title"
    # Regenerating the last answer: the same history up to the question, a new branch beside the old answer.
    r = await complete(client, gateway, ada, "first question", first, "second question")
    assert r.status_code == 200 and r.headers["x-parley-chat-id"] == chat_id
    # The same client chat id from another end user is another chat.
    r = await complete(client, gateway, end_user("bob@example.com", chat="owui-chat-1"), "mine")
    assert r.status_code == 200 and r.headers["x-parley-chat-id"] != chat_id
    await pipeline.settle()

    ada_id = next(u.user_id for u in await rows(container, select(users)) if u.email == "ada@example.com")
    assert chat_id == str(client_chat_id_for(str(next(iter(await rows(container, select(users.c.tenant_id)))).tenant_id), uuid.UUID(ada_id), "owui-chat-1"))
    adas = await rows(container, select(chats).where(chats.c.owner_id == ada_id))
    assert len(adas) == 1 and adas[0].client_chat_id == "owui-chat-1" and adas[0].title == "first question"
    held = await rows(container, select(messages).where(messages.c.chat_id == chat_id).order_by(messages.c.seq))
    assert [(m.role, m.content) for m in held] == [
        ("user", "first question"),
        ("assistant", "first question"),
        ("user", "second question"),
        ("assistant", "second question"),
        ("assistant", "second question"),  # the regenerated answer, a sibling of the first
    ]
    assert held[3].parent_id == held[4].parent_id == held[2].message_id
    purposes = sorted(g.purpose for g in await rows(container, select(generations).where(generations.c.user_id == ada_id)))
    assert purposes == ["chat", "chat", "chat", "title"]
    title = next(g for g in await rows(container, select(generations)) if g.purpose == "title")
    assert title.chat_id == chat_id and title.status == "completed" and (title.prompt_tokens or 0) > 0

    # The chat is Ada's to read through parley's own API too (a gateway acts as her).
    async with httpx.AsyncClient(base_url=live) as http:
        r = await http.get(f"/api/v1/chats/{chat_id}", headers={**bearer(gateway), **end_user("ada@example.com")})
        assert r.status_code == 200 and r.json()["message_count"] == 5
        r = await http.get(f"/api/v1/chats/{chat_id}", headers={**bearer(gateway), **end_user("bob@example.com")})
        assert r.status_code == 404


async def test_the_openai_sdk_names_the_end_user_through_default_headers(
    live: str, container: Container, pipeline: Pipeline
) -> None:
    async with httpx.AsyncClient(base_url=live) as http:
        admin = await sign_up(http, "admin@example.com")
        await echo_model(http, admin)
        gateway = await key(http, admin, "read", "write", "gateway")
    ai = openai.AsyncOpenAI(
        base_url=f"{live}/v1",
        api_key=gateway,
        max_retries=0,
        default_headers={"X-Parley-User-Email": "sdk-user@example.com", "X-Parley-Chat-Id": "app-chat-9"},
    )
    answer = await ai.chat.completions.create(model="ECHO", messages=[{"role": "user", "content": "ping"}])
    assert answer.choices[0].message.content == "ping"
    await pipeline.settle()
    who = next(u for u in await rows(container, select(users)) if u.email == "sdk-user@example.com")
    assert who.role == "user"  # no role forwarded: the tenant's default role
    owned = await rows(container, select(chats).where(chats.c.owner_id == who.user_id))
    assert [c.client_chat_id for c in owned] == ["app-chat-9"]
    with pytest.raises(openai.BadRequestError):
        await openai.AsyncOpenAI(
            base_url=f"{live}/v1", api_key=gateway, max_retries=0, default_headers={"X-Parley-User-Email": "not an e-mail"}
        ).chat.completions.create(model="echo", messages=[{"role": "user", "content": "ping"}])
