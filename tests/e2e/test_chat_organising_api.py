"""Organising and exchanging chats through HTTP with the whole pipeline running: folders (nested, renamed,
moved, never into themselves, deleted with what happens to their chats said), tags and pins, the chat list
filtered by folder, tag, pinned, archived, model and dates; export and import in Open WebUI's JSON (the
shared fixture's chats, branches intact) and in parley's own, the same export imported twice adding
nothing; and nobody reaching another user's folders, tags or chats, in their tenant or another."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from tests.conftest import Pipeline
from tests.e2e.test_chat_api import bearer, echo_tenant, error_code, finished, new_chat, send, sign_up
from tests.openwebui_chats import fixture_export
from tests.tenants import tenant_with_admin
from workers.bootstrap import Container


async def settled(pipeline: Pipeline) -> None:
    await pipeline.settle(timeout=20)


async def chats(client: httpx.AsyncClient, who: dict[str, Any], **params: Any) -> list[str]:
    r = await client.get("/api/v1/chats", params=params, headers=bearer(who))
    assert r.status_code == 200, r.text
    assert r.json()["total"] == len(r.json()["items"]) or "limit" in params
    return sorted(c["title"] for c in r.json()["items"])


async def folder(client: httpx.AsyncClient, who: dict[str, Any], name: str, parent: str | None = None) -> str:
    r = await client.post("/api/v1/folders", json={"name": name, "parent_id": parent}, headers=bearer(who))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def patch_chat(client: httpx.AsyncClient, who: dict[str, Any], chat_id: str, **body: Any) -> httpx.Response:
    return await client.patch(f"/api/v1/chats/{chat_id}", json=body, headers=bearer(who))


async def test_folders_tags_and_pins_organise_and_filter_a_users_chats_and_nobody_elses(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, alice = await echo_tenant(client)
    bob = await sign_up(client, "bob@example.com")
    plans = await new_chat(client, alice, "Plans")
    notes = await new_chat(client, alice, "Notes")
    trip = await new_chat(client, alice, "Trip")
    sent = await send(client, alice, plans, "Hello")
    assert sent.status_code == 202, sent.text
    await finished(client, alice, sent.json()["generation_id"])

    # Folders: nested, renamed, moved; never inside themselves; names unique among siblings.
    work = await folder(client, alice, "Work")
    q3 = await folder(client, alice, "Q3", work)
    deep = await folder(client, alice, "Launch", q3)
    r = await client.post("/api/v1/folders", json={"name": " work "}, headers=bearer(alice))
    assert r.status_code == 409 and error_code(r) == "FOLDER_EXISTS"
    r = await client.patch(f"/api/v1/folders/{work}", json={"parent_id": deep}, headers=bearer(alice))
    assert r.status_code == 409 and error_code(r) == "FOLDER_CYCLE"
    r = await client.patch(f"/api/v1/folders/{q3}", json={"name": "Q3 2026", "parent_id": None}, headers=bearer(alice))
    assert r.status_code == 200 and r.json()["path"] == ["Q3 2026"], r.text
    r = await client.patch(f"/api/v1/folders/{deep}", json={"name": "\x07"}, headers=bearer(alice))
    assert r.status_code == 422 and error_code(r) == "INVALID_FOLDER_NAME"

    # Filing, tags and pins (only the owner; the folder must be theirs).
    assert (await patch_chat(client, alice, plans, folder_id=deep, tags=["Launch", " launch", "Q3"], pinned=True)).status_code == 200
    assert (await patch_chat(client, alice, notes, folder_id=q3, tags=["q3"], archived=True)).status_code == 200
    r = await patch_chat(client, alice, trip, tags=["x" * 51])
    assert r.status_code == 422 and error_code(r) == "INVALID_TAG"
    bobs = await folder(client, bob, "Bob's")
    r = await patch_chat(client, alice, trip, folder_id=bobs)
    assert r.status_code == 404 and error_code(r) == "FOLDER_NOT_FOUND"
    r = await patch_chat(client, bob, plans, pinned=False)
    assert r.status_code == 404 and error_code(r) == "CHAT_NOT_FOUND"
    for body in ({"name": "Mine now"}, {"parent_id": bobs}):
        r = await client.patch(f"/api/v1/folders/{work}", json=body, headers=bearer(bob))
        assert r.status_code == 404 and error_code(r) == "FOLDER_NOT_FOUND"
    assert (await client.delete(f"/api/v1/folders/{work}", headers=bearer(bob))).status_code == 404
    await settled(pipeline)

    assert await chats(client, alice, folder_id=deep) == ["Plans"]
    assert await chats(client, alice, folder_id="none") == ["Trip"]
    assert await chats(client, alice, tag="q3") == ["Notes", "Plans"]
    assert await chats(client, alice, tag=["Q3", "launch"]) == ["Plans"]
    assert await chats(client, alice, pinned="true") == ["Plans"]
    assert await chats(client, alice, archived="true", tag="q3") == ["Notes"]
    assert await chats(client, alice, model="echo") == ["Plans"]
    assert await chats(client, alice, model="smollm2") == []
    assert await chats(client, alice, created_after="2000-01-01T00:00:00Z", updated_before="2999-01-01T00:00:00Z") == [
        "Notes", "Plans", "Trip",
    ]  # fmt: skip
    assert await chats(client, alice, created_before="2000-01-01T00:00:00Z") == []
    r = await client.get("/api/v1/chats", params={"folder_id": "elsewhere"}, headers=bearer(alice))
    assert r.status_code == 422 and error_code(r) == "INVALID_FOLDER_ID"
    r = await client.get("/api/v1/chats/tags", headers=bearer(alice))
    assert r.json() == [{"name": "launch", "chat_count": 1}, {"name": "q3", "chat_count": 2}]
    r = await client.get(f"/api/v1/chats/{plans}", headers=bearer(alice))
    assert (r.json()["pinned"], r.json()["folder_id"], r.json()["tags"]) == (True, deep, ["launch", "q3"])
    r = await client.get("/api/v1/folders", headers=bearer(alice))
    assert [(f["path"], f["chat_count"]) for f in r.json()] == [
        (["Q3 2026"], 1), (["Q3 2026", "Launch"], 1), (["Work"], 0),
    ]  # fmt: skip

    # Nobody else sees any of it: not bob, not the admin.
    for other in (bob, admin):
        assert await chats(client, other, tag="q3") == []
        assert (await client.get("/api/v1/chats/tags", headers=bearer(other))).json() == []
        assert await chats(client, other, folder_id=deep) == []
    assert [f["name"] for f in (await client.get("/api/v1/folders", headers=bearer(bob))).json()] == ["Bob's"]

    # Deleting a folder deletes its subfolders and says their chats move to the top level.
    r = await client.delete(f"/api/v1/folders/{q3}", headers=bearer(alice))
    assert r.status_code == 200, r.text
    assert r.json()["deleted_folder_ids"] == [q3, deep]
    assert r.json()["chats"] == "moved to the top level"
    await settled(pipeline)
    assert await chats(client, alice, folder_id="none") == ["Notes", "Plans", "Trip"]
    r = await client.get(f"/api/v1/chats/{plans}", headers=bearer(alice))
    assert r.json()["folder_id"] is None and r.json()["pinned"] is True
    r = await patch_chat(client, alice, plans, folder_id=deep)  # a deleted folder takes no chat
    assert r.status_code == 404 and error_code(r) == "FOLDER_NOT_FOUND"
    assert [f["path"] for f in (await client.get("/api/v1/folders", headers=bearer(alice))).json()] == [["Work"]]


async def test_export_and_import_in_both_formats_across_users_and_tenants(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, alice = await echo_tenant(client)
    bob = await sign_up(client, "bob@example.com")
    _, other_admin = await tenant_with_admin(client, bearer(admin), "acme", "boss@acme.test")

    # The shared fixture's chats, as Open WebUI exported them, into alice's account.
    export = fixture_export()
    r = await client.post("/api/v1/chats/import", json=export, headers=bearer(alice))
    assert r.status_code == 200, r.text
    assert r.json()["format"] == "openwebui" and len(r.json()["imported"]) == len(export) and r.json()["skipped"] == []
    assert r.json()["messages"] == sum(len(c["chat"]["history"]["messages"]) for c in export)
    again = await client.post("/api/v1/chats/import", json=export, headers=bearer(alice))
    assert again.json()["imported"] == [] and sorted(again.json()["skipped"]) == sorted(r.json()["imported"])
    before = await head(container)
    assert (await client.post("/api/v1/chats/import", json={"chats": export[:2]}, headers=bearer(alice))).json()["imported"] == []
    assert await head(container) == before  # nothing written at all
    await settled(pipeline)

    titles = await chats(client, alice, limit=50)
    assert "Welcome email for new hires" in titles and len(titles) == len(export)
    assert await chats(client, alice, tag="python") == ["Python list comprehensions"]
    assert await chats(client, alice, pinned="true") == ["Q3 launch planning"]
    assert await chats(client, alice, archived="true") == ["Weekly sync agenda"]
    assert "VPN from home" in await chats(client, alice, model="support-bot")
    found = await client.get("/api/v1/chats", params={"q": "Welcome email"}, headers=bearer(alice))
    [welcome_id] = [c["id"] for c in found.json()["items"]]
    assert welcome_id in r.json()["imported"]
    welcome = (await client.get(f"/api/v1/chats/{welcome_id}", headers=bearer(alice))).json()
    question = next(m for m in welcome["messages"] if m["role"] == "user")
    answers = [m for m in welcome["messages"] if m["parent_id"] == question["id"]]
    assert len(answers) == 2 and welcome["head_id"] == answers[1]["id"]  # the regenerated branch, intact
    source = next(c for c in export if c["title"] == "Welcome email for new hires")
    assert welcome["created_at"] == datetime.fromtimestamp(source["created_at"], UTC).isoformat().replace("+00:00", "Z")

    # An imported chat goes on like any other.
    sent = await send(client, alice, welcome_id, "Shorter, please")
    assert sent.status_code == 202, sent.text
    await finished(client, alice, sent.json()["generation_id"])
    await settled(pipeline)

    # Export (both formats) and import into another user's account: the same trees, their own chats.
    for fmt, who in (("parley", bob), ("openwebui", admin)):
        r = await client.get(f"/api/v1/chats/{welcome_id}/export", params={"format": fmt}, headers=bearer(alice))
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"], r.text
        one = r.json()
        r = await client.post("/api/v1/chats/import", json=one, headers=bearer(who))
        assert r.status_code == 200 and r.json()["format"] == fmt and len(r.json()["imported"]) == 1, r.text
        await settled(pipeline)
        copy = (await client.get(f"/api/v1/chats/{r.json()['imported'][0]}", headers=bearer(who))).json()
        assert shape(copy) == shape((await client.get(f"/api/v1/chats/{welcome_id}", headers=bearer(alice))).json())
    everything = (await client.get("/api/v1/chats/export", params={"format": "parley"}, headers=bearer(alice))).json()
    assert everything["format"] == "parley.chats" and len(everything["chats"]) == len(export)
    assert {c["title"] for c in everything["chats"]} == set(titles)

    # Nobody reaches another's chats: not bob, not another tenant's admin; the import is theirs alone.
    for other in (bob, other_admin):
        r = await client.get(f"/api/v1/chats/{welcome_id}/export", headers=bearer(other))
        assert r.status_code == 404 and error_code(r) == "CHAT_NOT_FOUND"
    r = await client.post("/api/v1/chats/import", json=export[:1], headers=bearer(other_admin))
    assert r.json()["imported"] and r.json()["imported"][0] not in (await ids(client, alice))
    await settled(pipeline)
    assert [c["title"] for c in (await client.get("/api/v1/chats/export", headers=bearer(other_admin))).json()] == [
        export[0]["title"]
    ]

    # Refusals: a body of neither shape, a broken tree, too many chats, too large a body.
    r = await client.post("/api/v1/chats/import", json={"hello": "world"}, headers=bearer(alice))
    assert r.status_code == 422 and error_code(r) == "INVALID_IMPORT"
    broken = [{"id": "b", "chat": {"history": {"messages": {"a": {"id": "a", "parentId": "zz", "role": "user"}}}}}]
    r = await client.post("/api/v1/chats/import", json=broken, headers=bearer(alice))
    assert r.status_code == 422 and error_code(r) == "INVALID_IMPORT" and "parent" in r.json()["error"]["message"]
    r = await client.post("/api/v1/chats/import", json=[{"chat": {"history": {"messages": {}}}}] * 1001, headers=bearer(alice))
    assert r.status_code == 413 and error_code(r) == "IMPORT_TOO_LARGE"
    r = await client.post(
        "/api/v1/chats/import",
        content=b"[" + b" " * (17 * 1024 * 1024) + b"]",
        headers={**bearer(alice), "Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text


async def head(container: Container) -> int:
    return await container.store.call(container.store.max_id)


async def ids(client: httpx.AsyncClient, who: dict[str, Any]) -> list[str]:
    r = await client.get("/api/v1/chats", params={"limit": 200}, headers=bearer(who))
    return [c["id"] for c in r.json()["items"]]


def shape(chat: dict[str, Any]) -> Any:
    """A chat's tree without ids: role, content, model and time of each message, children in order."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    for m in chat["messages"]:
        children.setdefault(m["parent_id"], []).append(m)

    def node(m: dict[str, Any]) -> Any:
        return (m["role"], m["content"], m["model"], m["created_at"][:19], tuple(node(c) for c in children.get(m["id"], [])))

    return chat["title"], chat["tags"], tuple(node(m) for m in children.get(None, []))

