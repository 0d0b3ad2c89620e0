"""Sharing chats, rating answers and searching one's own messages, through HTTP with the whole pipeline
running: who may see what across users and tenants, a share as it stood whatever the chat does after, a
revoked or shredded share gone for everyone, a shared chat copied and continued, ratings only their rater
sees and satisfaction per model for admins, ranked search with excerpts that leaves out others' messages,
archived chats unless asked and deleted or erased content."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import func, select

from domain.identity import ERASED
from domain.sharing import Share
from schema.tables import search_messages
from tests.conftest import Pipeline
from tests.e2e.test_chat_api import bearer, echo_tenant, error_code, finished, new_chat, send, sign_up
from tests.tenants import tenant_with_admin
from workers.bootstrap import Container


async def exchange(client: httpx.AsyncClient, tokens: dict[str, Any], chat_id: str, content: str) -> dict[str, Any]:
    """A question sent and its answer finished: the accepted ids."""
    r = await send(client, tokens, chat_id, content)
    assert r.status_code == 202, r.text
    accepted = dict(r.json())
    assert (await finished(client, tokens, accepted["generation_id"]))["status"] == "completed"
    return accepted


async def other_tenant(client: httpx.AsyncClient, platform: dict[str, Any]) -> dict[str, Any]:
    _, tokens = await tenant_with_admin(client, bearer(platform), "globex", "boss@globex.test")
    return tokens


# --- sharing ---------------------------------------------------------------------------------------------
async def test_a_share_shows_the_branch_as_it_stood_to_whom_it_may_until_revoked_or_shredded(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, alice = await echo_tenant(client)
    bob = await sign_up(client, "bob@example.com")
    outsider = await other_tenant(client, admin)
    chat = await new_chat(client, alice, title="Trip plans")
    first = await exchange(client, alice, chat, "Where should we go in spring?")

    r = await client.post(f"/api/v1/chats/{chat}/shares", json={}, headers=bearer(alice))
    assert r.status_code == 201, r.text
    share = r.json()
    assert share["leaf_message_id"] == first["answer_message_id"] and share["public"] is False
    assert share["url"] == f"/api/v1/shared/{share['id']}"
    # Only the owner shares their chat; a leaf must be a message of it.
    r = await client.post(f"/api/v1/chats/{chat}/shares", json={}, headers=bearer(bob))
    assert r.status_code == 404 and error_code(r) == "CHAT_NOT_FOUND"
    r = await client.post(f"/api/v1/chats/{chat}/shares", json={"leaf_message_id": "nope"}, headers=bearer(alice))
    assert r.status_code == 404 and error_code(r) == "MESSAGE_NOT_FOUND"
    empty = await new_chat(client, alice, title="Empty")
    r = await client.post(f"/api/v1/chats/{empty}/shares", headers=bearer(alice))
    assert r.status_code == 409 and error_code(r) == "CHAT_EMPTY"

    # The chat goes on, is renamed: the share does not change.
    await exchange(client, alice, chat, "And in autumn?")
    r = await client.patch(f"/api/v1/chats/{chat}", json={"title": "Renamed"}, headers=bearer(alice))
    assert r.status_code == 200
    await pipeline.settle()
    url = share["url"]
    r = await client.get(url, headers=bearer(bob))
    assert r.status_code == 200, r.text
    snapshot = r.json()
    assert snapshot["title"] == "Trip plans" and snapshot["public"] is False
    assert [(m["role"], m["id"]) for m in snapshot["messages"]] == [
        ("user", first["message_id"]),
        ("assistant", first["answer_message_id"]),
    ]
    assert snapshot["messages"][0]["content"] == "Where should we go in spring?"
    assert snapshot["messages"][1]["parent_id"] == first["message_id"]
    # Not signed in, or another tenant's user: no such share.
    assert (await client.get(url)).status_code == 404
    r = await client.get(url, headers=bearer(outsider))
    assert r.status_code == 404 and error_code(r) == "SHARE_NOT_FOUND"
    r = await client.post(f"{url}/copy", headers=bearer(outsider))
    assert r.status_code == 404

    # Public links: off by default, set by a tenant admin only.
    r = await client.post(f"/api/v1/chats/{chat}/shares", json={"public": True}, headers=bearer(alice))
    assert r.status_code == 403 and error_code(r) == "PUBLIC_LINKS_DISABLED"
    r = await client.put("/api/v1/sharing/settings", json={"allow_public_links": True}, headers=bearer(alice))
    assert r.status_code == 403 and error_code(r) == "ADMIN_REQUIRED"
    r = await client.put("/api/v1/sharing/settings", json={"allow_public_links": True}, headers=bearer(admin))
    assert r.status_code == 200 and r.json() == {"allow_public_links": True}
    r = await client.post(f"/api/v1/chats/{chat}/shares", json={"public": True}, headers=bearer(alice))
    assert r.status_code == 201, r.text
    public = r.json()
    assert public["leaf_message_id"] != first["answer_message_id"]  # the head now: four messages
    await pipeline.settle()
    r = await client.get(public["url"])
    assert r.status_code == 200 and len(r.json()["messages"]) == 4 and r.json()["title"] == "Renamed"
    assert (await client.get(public["url"], headers={"X-Tenant": "globex"})).status_code == 404
    assert (await client.get(public["url"], headers=bearer(outsider))).status_code == 404
    r = await client.put("/api/v1/sharing/settings", json={"allow_public_links": False}, headers=bearer(admin))
    assert r.status_code == 200
    await pipeline.settle()
    assert (await client.get(public["url"])).status_code == 404  # no longer public...
    assert (await client.get(public["url"], headers=bearer(bob))).status_code == 200  # ...still the tenant's

    # Copied into bob's own chats, with the same tree, and continued.
    r = await client.post(f"{url}/copy", headers=bearer(bob))
    assert r.status_code == 201, r.text
    copy = r.json()
    assert copy["title"] == "Trip plans" and copy["message_count"] == 2
    r = await client.get(f"/api/v1/chats/{copy['id']}", headers=bearer(bob))
    copied = r.json()["messages"]
    assert [m["content"] for m in copied] == [m["content"] for m in snapshot["messages"]]
    assert copied[1]["parent_id"] == copied[0]["id"] and copied[0]["parent_id"] is None
    more = await exchange(client, bob, copy["id"], "What about summer?")
    r = await client.get(f"/api/v1/chats/{copy['id']}", headers=bearer(bob))
    assert r.json()["head_id"] == more["answer_message_id"]

    # Revoked by its owner only; then gone for everyone.
    r = await client.get(f"/api/v1/chats/{chat}/shares", headers=bearer(alice))
    assert {s["id"] for s in r.json()} == {share["id"], public["id"]}
    assert (await client.get(f"/api/v1/chats/{chat}/shares", headers=bearer(bob))).status_code == 404
    assert (await client.delete(url, headers=bearer(bob))).status_code == 404
    assert (await client.delete(url, headers=bearer(alice))).status_code == 204
    await pipeline.settle()
    for who in (bob, alice, admin):
        r = await client.get(url, headers=bearer(who))
        assert r.status_code == 404 and error_code(r) == "SHARE_NOT_FOUND"
    assert (await client.post(f"{url}/copy", headers=bearer(bob))).status_code == 404
    assert (await client.delete(url, headers=bearer(alice))).status_code == 404

    # Deleting the chat shreds its shares: the title sealed in the share's event reads as erased.
    assert (await client.delete(f"/api/v1/chats/{chat}", headers=bearer(alice))).status_code == 204
    await pipeline.settle()
    assert (await client.get(public["url"], headers=bearer(bob))).status_code == 404
    assert (await client.post(f"{public['url']}/copy", headers=bearer(bob))).status_code == 404
    shredded = await container.store.call(container.store.get, Share, uuid.UUID(public["id"]))
    assert shredded.title == ERASED
    r = await client.get(f"/api/v1/chats/{copy['id']}", headers=bearer(bob))
    assert r.status_code == 200 and len(r.json()["messages"]) == 4  # the copy is bob's own


# --- ratings ---------------------------------------------------------------------------------------------
async def test_ratings_are_their_raters_own_and_count_per_model_for_admins(
    client: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    admin, alice = await echo_tenant(client)
    bob = await sign_up(client, "bob@example.com")
    outsider = await other_tenant(client, admin)
    chat = await new_chat(client, alice)
    asked = await exchange(client, alice, chat, "Summarise the plan")
    answer = f"/api/v1/chats/{chat}/messages/{asked['answer_message_id']}/rating"

    r = await client.put(answer, json={"rating": "up", "reason": "Accurate information", "comment": "Spot on"}, headers=bearer(alice))
    assert r.status_code == 200, r.text
    assert r.json()["rating"] == "up" and r.json()["model"] == "echo" and r.json()["comment"] == "Spot on"
    r = await client.put(answer, json={"rating": "down", "reason": "Not helpful"}, headers=bearer(alice))
    assert r.status_code == 200 and r.json()["rating"] == "down" and r.json()["comment"] is None
    # Nobody else rates, or reads, alice's ratings; only answers are rated; bad input is refused.
    r = await client.put(answer, json={"rating": "up"}, headers=bearer(bob))
    assert r.status_code == 404 and error_code(r) == "CHAT_NOT_FOUND"
    assert (await client.put(answer, json={"rating": "up"}, headers=bearer(outsider))).status_code == 404
    assert (await client.get(f"/api/v1/chats/{chat}/ratings", headers=bearer(bob))).status_code == 404
    question = f"/api/v1/chats/{chat}/messages/{asked['message_id']}/rating"
    r = await client.put(question, json={"rating": "up"}, headers=bearer(alice))
    assert r.status_code == 422 and error_code(r) == "NOT_AN_ANSWER"
    assert (await client.put(answer, json={"rating": "meh"}, headers=bearer(alice))).status_code == 400
    assert (await client.put(answer, json={"rating": "up", "comment": "x" * 2001}, headers=bearer(alice))).status_code == 400
    r = await client.put(answer, json={"rating": "up", "reason": "two\nlines"}, headers=bearer(alice))
    assert r.status_code == 422 and error_code(r) == "INVALID_REASON"

    their_chat = await new_chat(client, bob)
    theirs = await exchange(client, bob, their_chat, "Another question")
    r = await client.put(
        f"/api/v1/chats/{their_chat}/messages/{theirs['answer_message_id']}/rating",
        json={"rating": "up", "comment": "bob's own words"},
        headers=bearer(bob),
    )
    assert r.status_code == 200
    await pipeline.settle()
    r = await client.get(f"/api/v1/chats/{chat}/ratings", headers=bearer(alice))
    assert [(x["message_id"], x["rating"], x["reason"]) for x in r.json()] == [
        (asked["answer_message_id"], "down", "Not helpful")
    ]
    assert "bob's own words" not in r.text

    # Satisfaction per model: tenant admins (and auditors) only, their own tenant only.
    assert (await client.get("/api/v1/usage/satisfaction", headers=bearer(alice))).status_code == 403
    r = await client.get("/api/v1/usage/satisfaction", headers=bearer(admin))
    assert r.status_code == 200, r.text
    assert r.json()["items"] == [{"model": "echo", "up": 1, "down": 1, "ratio": 0.5}]
    r = await client.get("/api/v1/usage/satisfaction", headers=bearer(outsider))
    assert r.status_code == 200 and r.json()["items"] == []

    # Removed, then gone from the list and the counts; removing twice is 404; rating again works.
    assert (await client.delete(answer, headers=bearer(alice))).status_code == 204
    r = await client.delete(answer, headers=bearer(alice))
    assert r.status_code == 404 and error_code(r) == "RATING_NOT_FOUND"
    await pipeline.settle()
    assert (await client.get(f"/api/v1/chats/{chat}/ratings", headers=bearer(alice))).json() == []
    r = await client.get("/api/v1/usage/satisfaction", headers=bearer(admin))
    assert r.json()["items"] == [{"model": "echo", "up": 1, "down": 0, "ratio": 1.0}]
    assert (await client.put(answer, json={"rating": "up"}, headers=bearer(alice))).status_code == 200
    await pipeline.settle()
    r = await client.get("/api/v1/usage/satisfaction", headers=bearer(admin))
    assert r.json()["items"] == [{"model": "echo", "up": 2, "down": 0, "ratio": 1.0}]


# --- search in messages ----------------------------------------------------------------------------------
async def test_search_finds_the_callers_own_messages_ranked_with_excerpts(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, alice = await echo_tenant(client)
    bob = await sign_up(client, "bob@example.com")
    outsider = await other_tenant(client, admin)
    zoo = await new_chat(client, alice, title="Zoo")
    await exchange(client, alice, zoo, "The quokka is a small marsupial that lives on Rottnest Island near Perth")
    other = await new_chat(client, alice, title="Other")
    await exchange(client, alice, other, "Tell me about a quokka")
    await exchange(client, alice, other, "Something else entirely")
    bobs = await new_chat(client, bob, title="Bob's")
    await exchange(client, bob, bobs, "My own quokka question")
    await pipeline.settle()

    async def search(tokens: dict[str, Any], q: str, **params: Any) -> list[dict[str, Any]]:
        r = await client.get("/api/v1/chats/search", params={"q": q, **params}, headers=bearer(tokens))
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    hits = await search(alice, "quokka")
    assert {h["chat_id"] for h in hits} == {zoo, other}
    assert {h["role"] for h in hits} == {"user", "assistant"}  # the echo answers hold the word too
    assert all("Bob" not in h["chat_title"] for h in hits)
    for h in hits:
        assert h["highlights"] and all(h["excerpt"][s:e].lower() == "quokka" for s, e in h["highlights"])
    best = (await search(alice, "quokka marsupial island"))[0]
    assert best["chat_id"] == zoo and best["chat_title"] == "Zoo"
    assert [h["chat_id"] for h in await search(alice, '"rottnest island" -perthshire')] == [zoo, zoo]
    assert [h["chat_id"] for h in await search(bob, "quokka")] == [bobs, bobs]
    assert await search(outsider, "quokka") == []
    assert await search(alice, "the and of") == []  # stop words only: nothing to match
    assert len(await search(alice, "quokka", limit=1)) == 1
    r = await client.get("/api/v1/chats/search", params={"q": ""}, headers=bearer(alice))
    assert r.status_code == 400
    assert (await client.get("/api/v1/chats/search", params={"q": "quokka"})).status_code == 401

    # Archived chats only when asked; deleted chats never.
    assert (await client.patch(f"/api/v1/chats/{zoo}", json={"archived": True}, headers=bearer(alice))).status_code == 200
    await pipeline.settle()
    assert {h["chat_id"] for h in await search(alice, "quokka")} == {other}
    archived = await search(alice, "quokka", archived="true")
    assert {h["chat_id"] for h in archived} == {zoo, other}
    assert {h["archived"] for h in archived if h["chat_id"] == zoo} == {True}
    assert (await client.delete(f"/api/v1/chats/{zoo}", headers=bearer(alice))).status_code == 204
    await pipeline.settle()
    assert {h["chat_id"] for h in await search(alice, "quokka", archived="true")} == {other}

    # An erased user's messages leave the index.
    assert (await client.delete(f"/api/v1/users/{bob['id']}?erase=true", headers=bearer(admin))).status_code in (200, 204)
    await pipeline.settle()
    async with container.engine.connect() as conn:
        left = await conn.scalar(select(func.count()).where(search_messages.c.user_id == bob["id"]))
    assert left == 0
