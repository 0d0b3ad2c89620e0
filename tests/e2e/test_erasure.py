"""Erasure and chat deletion end to end on the real engines, through HTTP with the whole pipeline running.

A user with chats, an answered message, an uploaded document, usage and audit rows is erased; then no byte
of their e-mail, name, message text or document text is left anywhere parley keeps data: every table of
the database (the event store and its snapshots included, bytea searched as bytes), the JetStream store
directory, the blob store (a table here) and every Redis key and value. Another user's data is untouched,
every read model rebuilds to what it was, and the audit chain still verifies. Deleting one chat shreds that
chat and nothing else of its owner."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from domain.chats import Chat
from domain.identity import ERASED
from projections.audit import verify_chain
from projections.runtime import rebuild
from tests.conftest import ENGINES_HOME, Pipeline
from tests.e2e.test_chat_api import bearer, echo_tenant, error_code, finished, new_chat, send, sign_up
from tests.e2e.test_knowledge_api import upload, wait_documents
from tests.integration.test_rebuild_equality import snapshot
from workers.bootstrap import Container, all_projectors

pytestmark = pytest.mark.timeout(300)


async def database_holds(c: Container, needles: list[bytes]) -> dict[bytes, list[str]]:
    """Every (table.column) of the database whose content holds each needle: text columns as text,
    bytea as bytes, everything else as its text form."""
    found: dict[bytes, list[str]] = {n: [] for n in needles}
    async with c.engine.connect() as conn:
        columns = (
            await conn.execute(
                text(
                    "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                    " AND table_name IN (SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE')"
                )
            )
        ).all()
        for schema, table, column, data_type in columns:
            for needle in needles:
                ident = f'"{schema}"."{table}"'
                col = f'"{column}"'
                if data_type == "bytea":
                    where = f"position(CAST(:n AS bytea) IN {col}) > 0"
                    arg: Any = needle
                else:
                    where = f"strpos(CAST({col} AS text), :n) > 0"
                    arg = needle.decode()
                hit = (await conn.execute(text(f"SELECT 1 FROM {ident} WHERE {where} LIMIT 1"), {"n": arg})).first()
                if hit is not None:
                    found[needle].append(f"{table}.{column}")
    return {n: where for n, where in found.items() if where}


def directory_holds(root: Path, needles: list[bytes]) -> dict[bytes, list[str]]:
    found: dict[bytes, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                if needle in data:
                    found.setdefault(needle, []).append(str(path.relative_to(root)))
    return found


async def redis_holds(c: Container, needles: list[bytes]) -> dict[bytes, list[str]]:
    found: dict[bytes, list[str]] = {}
    raw = Redis.from_url(c.settings.redis_url)  # bytes as stored, not decoded
    try:
        async for key in raw.scan_iter(count=1000):
            value = await raw.dump(key) or b""
            for needle in needles:
                if needle in key or needle in value:
                    found.setdefault(needle, []).append(str(key))
    finally:
        await raw.aclose()
    return found


async def test_an_erased_user_leaves_no_byte_of_their_personal_data_and_everything_still_verifies(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    c = container
    admin, other = await echo_tenant(client)
    erin = await sign_up(client, "erin.q7x@example.com")
    r = await client.patch("/api/v1/users/" + erin["id"], json={"name": "Erin Quokkafeather"}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    secrets = [b"erin.q7x@example.com", b"Quokkafeather", b"marmalade-lighthouse-4412", b"zanzibar-orchard-7731", b"tidepool-ledger-9931"]

    chat = await new_chat(client, erin, title="Trip zanzibar-orchard-7731")
    r = await send(client, erin, chat, "My recipe is marmalade-lighthouse-4412")
    assert r.status_code == 202, r.text
    answer = await finished(client, erin, r.json()["generation_id"])
    assert "marmalade-lighthouse-4412" in answer["text"]  # the echo engine said it back: in the answer too
    r = await client.post("/api/v1/knowledge", json={"name": "Notes"}, headers=bearer(erin))
    assert r.status_code == 201, r.text
    r = await upload(client, erin, r.json()["id"], "notes.txt", b"The tidepool-ledger-9931 holds my notes.\n" * 20, "text/plain")
    assert r.status_code in (201, 202), r.text
    await wait_documents(client, erin, [r.json()[0]["id"] if isinstance(r.json(), list) else r.json()["id"]])

    kept_chat = await new_chat(client, other, title="Kept")
    r = await send(client, other, kept_chat, "untouched-heron-6654")
    await finished(client, other, r.json()["generation_id"])
    await pipeline.settle(timeout=60)
    held = await database_holds(c, [b"Quokkafeather", b"marmalade-lighthouse-4412"])
    assert held[b"Quokkafeather"] == ["rm_users.name"]  # the read model has it; the event store does not
    assert [w for w in held[b"marmalade-lighthouse-4412"] if w.startswith(("parley_", "audit"))] == []

    # Only an admin erases, never themselves.
    r = await client.delete(f"/api/v1/users/{erin['id']}?erase=true", headers=bearer(other))
    assert r.status_code == 403, r.text
    r = await client.delete(f"/api/v1/users/{admin['id']}?erase=true", headers=bearer(admin))
    assert r.status_code == 403 and error_code(r) == "CANNOT_ERASE_SELF", r.text
    r = await client.delete(f"/api/v1/users/{erin['id']}?erase=true", headers=bearer(admin))
    assert r.status_code == 200, r.text
    assert r.json()["name"] == ERASED and r.json()["active"] is False
    r = await client.delete(f"/api/v1/users/{erin['id']}?erase=true", headers=bearer(admin))
    assert r.status_code == 409 and error_code(r) == "USER_ERASED", r.text
    await pipeline.settle(timeout=60)

    # Nothing of theirs anywhere, in the clear.
    assert await database_holds(c, secrets) == {}
    assert directory_holds(ENGINES_HOME[0] / "nats", secrets) == {}
    assert await redis_holds(c, secrets) == {}
    r = await client.get(f"/api/v1/chats/{chat}", headers=bearer(admin))
    assert r.status_code == 404
    # Their chat still replays from the event store, its content erased.
    events = await c.store.call(c.store.events_of, uuid.UUID(chat))
    posted = [e for e in events if type(e).__name__ == "MessagePosted"]
    assert posted and all(e.content == ERASED for e in posted)
    replayed = await c.store.call(c.store.get, Chat, uuid.UUID(chat))
    assert replayed.title == ERASED
    # So does every generation of theirs (its key named them when it was made, with the request).
    generation = await c.store.call(c.store.events_of, uuid.UUID(answer["id"]))
    completed = [e for e in generation if type(e).__name__ == "GenerationCompleted"]
    assert completed and completed[0].text == ERASED
    async with c.engine.connect() as conn:
        live = await conn.execute(
            text("SELECT count(*) FROM parley_subject_keys WHERE user_id = CAST(:u AS uuid) AND wrapped IS NOT NULL"),
            {"u": erin["id"]},
        )
        assert live.scalar_one() == 0  # every key naming them is destroyed
        named = await conn.execute(
            text("SELECT count(*) FROM parley_subject_keys WHERE user_id = CAST(:u AS uuid)"), {"u": erin["id"]}
        )
        assert named.scalar_one() >= 4  # their user, e-mail index, chat, generation and document keys

    # The other user's chat is intact.
    r = await client.get(f"/api/v1/chats/{kept_chat}", headers=bearer(other))
    assert r.status_code == 200 and "untouched-heron-6654" in r.text

    # Every read model rebuilds to what the projectors built; the audit chain verifies.
    for projector in all_projectors(c):
        if not projector.tables:
            continue
        before = await snapshot(c, projector.tables)
        await rebuild(projector, engine=c.engine, store=c.store)
        assert await snapshot(c, projector.tables) == before, projector.name
    assert await verify_chain(c.engine) == []


async def test_deleting_a_chat_shreds_that_chat_and_nothing_else_of_its_owner(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    c = container
    _, user = await echo_tenant(client)
    doomed = await new_chat(client, user, title="Doomed")
    r = await send(client, user, doomed, "shred-me-please-5521")
    await finished(client, user, r.json()["generation_id"])
    kept = await new_chat(client, user, title="Kept")
    r = await send(client, user, kept, "keep-me-please-1250")
    await finished(client, user, r.json()["generation_id"])
    await pipeline.settle(timeout=60)

    r = await client.delete(f"/api/v1/chats/{doomed}", headers=bearer(user))
    assert r.status_code in (200, 204), r.text
    await pipeline.settle(timeout=60)

    gone = await c.store.call(c.store.events_of, uuid.UUID(doomed))
    assert all(getattr(e, "content", ERASED) == ERASED for e in gone)
    assert await database_holds(c, [b"shred-me-please-5521"]) == {}
    assert directory_holds(ENGINES_HOME[0] / "nats", [b"shred-me-please-5521"]) == {}
    r = await client.get(f"/api/v1/chats/{kept}", headers=bearer(user))
    assert r.status_code == 200 and "keep-me-please-1250" in r.text
    r = await client.get("/api/v1/auths/me", headers=bearer(user))
    assert r.status_code == 200 and r.json()["email"] == "user@example.com"


async def test_a_user_erases_themselves_only_where_the_tenant_allows_it(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, user = await echo_tenant(client)
    r = await client.delete(f"/api/v1/users/{user['id']}?erase=true", headers=bearer(user))
    assert r.status_code == 403 and error_code(r) == "SELF_ERASURE_DISABLED", r.text
    r = await client.put("/api/v1/privacy/settings", json={"allow_self_erasure": True}, headers=bearer(user))
    assert r.status_code == 403, r.text
    r = await client.put("/api/v1/privacy/settings", json={"allow_self_erasure": True}, headers=bearer(admin))
    assert r.status_code == 200 and r.json() == {"allow_self_erasure": True}, r.text
    r = await client.get("/api/v1/privacy/settings", headers=bearer(user))
    assert r.json() == {"allow_self_erasure": True}
    r = await client.delete(f"/api/v1/users/{admin['id']}?erase=true", headers=bearer(admin))
    assert r.status_code == 403 and error_code(r) == "CANNOT_ERASE_SELF", r.text
    r = await client.delete(f"/api/v1/users/{user['id']}?erase=true", headers=bearer(user))
    assert r.status_code == 200 and r.json()["email"] != "user@example.com", r.text
    r = await client.get("/api/v1/auths/me", headers=bearer(user))
    assert r.status_code == 401, r.text  # their tokens died with them
