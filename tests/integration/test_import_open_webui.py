"""``parley import open-webui`` on the real Open WebUI 0.12.4 fixture (../shared/fixtures/open-webui-0.12.4):
everything in its database is in parley afterwards (compared table by table against the SQLite file), an
imported user signs in with their Open WebUI password (and their bcrypt hash is replaced by argon2id), a
second run writes nothing, and an imported chat goes on with the echo engine."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.embedded import EngineUrls
from adapters.openwebui_db import OpenWebUISourceError, read_openwebui
from application.chat_exchange import imported_message_id
from application.context import CommandContext
from application.identity import Principal
from domain.chats import Chat, Generation, import_chat_id_for
from domain.errors import Unauthenticated
from domain.folders import FolderTree, folder_tree_id_for
from domain.identity import EmailIndex, User, email_index_id
from domain.imports import ImportRecord, import_record_id
from domain.knowledge import Document, KnowledgeBase
from domain.ratings import Rating, rating_id_for
from domain.sharing import Share
from tests.conftest import Pipeline, create_database
from tests.integration.procs import REPO_ROOT
from workers.bootstrap import Container
from workers.import_openwebui import TqdmProgress, import_open_webui, render_report

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "open-webui-0.12.4"
if not FIXTURE.is_dir():
    FIXTURE = Path("/work/shared/fixtures/open-webui-0.12.4")
PASSWORDS = {
    "maya.lindqvist@example.com": "Tundra-Lantern-42",
    "omar.haddad@example.com": "Quill-Harbor-19",
    "priya.raman@example.com": "Saffron-Bridge-73",
    "leo.martins@example.com": "Granite-Meadow-08",
}
TENANT = "northwind"

pytestmark = pytest.mark.skipif(not (FIXTURE / "webui.db").is_file(), reason="the Open WebUI fixture is not here")


def rows(table: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{FIXTURE / 'webui.db'}?immutable=1", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f'SELECT * FROM "{table}"')]
    finally:
        conn.close()


INGESTION_EVENTS = frozenset({"DocumentExtracted", "DocumentChunked", "DocumentFailed"})
"""What the ingestion worker records of an uploaded document, on its own time."""


async def run_import(c: Container, dry_run: bool = False) -> Any:
    return await import_open_webui(
        c,
        db=str(FIXTURE / "webui.db"),
        uploads=str(FIXTURE / "uploads"),
        tenant=TENANT,
        dry_run=dry_run,
        progress=TqdmProgress(),
    )


PG_TYPES = {"BIGINT": "bigint", "INTEGER": "bigint", "BOOLEAN": "boolean", "JSON": "json", "DATE": "date"}


def as_postgres(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "boolean":
        return bool(value)
    if kind == "json" and not isinstance(value, str):  # SQLite keeps a bare JSON number as a number
        return json.dumps(value)
    return value


def copy_to_postgres(url: str) -> None:
    """The fixture as Open WebUI's Postgres holds it: every table and row, typed as its SQLAlchemy models
    type them there (booleans, big integers, json)."""
    source = sqlite3.connect(f"file:{FIXTURE / 'webui.db'}?immutable=1", uri=True)
    with psycopg.connect(url, autocommit=True) as pg:
        for (table,) in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            columns = [(r[1], PG_TYPES.get(r[2], "text")) for r in source.execute(f"PRAGMA table_info('{table}')")]
            typed = ", ".join(f'"{name}" {kind}' for name, kind in columns)
            pg.execute(f'CREATE TABLE "{table}" ({typed})')
            rows = source.execute(f'SELECT * FROM "{table}"').fetchall()
            if rows:
                marks = ", ".join(f"%s::{t}" for _, t in columns)
                with pg.cursor() as cur:
                    cur.executemany(
                        f'INSERT INTO "{table}" VALUES ({marks})',
                        [[as_postgres(v, t) for v, (_, t) in zip(r, columns, strict=True)] for r in rows],
                    )
    source.close()


async def cli(c: Container, *args: str) -> tuple[int, str, str]:
    """``parley import open-webui`` run as a process against the test's engines."""
    env = {**os.environ, **c.settings.child_env(), "PARLEY_LOG_LEVEL": "warning"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.cli", "import", "open-webui", "--tenant", TENANT, *args,
        env=env, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


def folder_id(tenant_id: str, owner_id: uuid.UUID, source_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"/tenants/{tenant_id}/users/{owner_id}/imported-folders/{source_id}"))


async def find(c: Container, cls: type, id_: uuid.UUID) -> Any:
    return await c.store.call(c.store.find, cls, id_)


async def check_users(c: Container, tenant_id: str) -> dict[str, User]:
    """Open WebUI user id -> the parley user: same e-mail, name, role and password hash."""
    auth = {a["id"]: a for a in rows("auth")}
    users = {}
    for row in rows("user"):
        index = await find(c, EmailIndex, email_index_id(tenant_id, row["email"]))
        user = await find(c, User, index.user_id)
        assert (user.name, user.role, user.password_hash) == (row["name"], row["role"], auth[row["id"]]["password"])
        users[row["id"]] = user
    assert len(users) == 4
    return users


async def check_chats(c: Container, tenant_id: str, users: dict[str, User]) -> dict[str, Chat]:
    """Every chat with its title, flags, tags, folder and every message of its tree (parent, role, text);
    every ``chat_message`` row is a message of its chat with the same parent."""
    chats = {}
    for row in rows("chat"):
        chat = await find(c, Chat, import_chat_id_for(tenant_id, users[row["user_id"]].id, row["id"]))
        history = json.loads(row["chat"])["history"]
        meta = json.loads(row["meta"])
        assert (chat.title, chat.archived, chat.pinned) == (row["title"], bool(row["archived"]), bool(row["pinned"]))
        assert sorted(chat.tags) == sorted(meta.get("tags") or [])
        assert chat.folder_id == (folder_id(tenant_id, chat.owner_id, row["folder_id"]) if row["folder_id"] else None)
        assert len(chat.messages) == len(history["messages"])
        for mid, m in history["messages"].items():
            ours = chat.messages[imported_message_id(chat.id, mid)]
            parent = imported_message_id(chat.id, m["parentId"]) if m["parentId"] else None
            assert (ours["role"], ours["content"], ours["parent_id"]) == (m["role"], m["content"], parent)
        assert chat.head == imported_message_id(chat.id, history["currentId"])
        chats[row["id"]] = chat
    assert len(chats) == 10
    table = rows("chat_message")
    assert len(table) == sum(len(ch.messages) for ch in chats.values()) == 33
    for m in table:  # its id is "<chat id>-<message id>"
        chat = chats[m["chat_id"]]
        ours = chat.messages[imported_message_id(chat.id, m["id"].removeprefix(f"{m['chat_id']}-"))]
        assert ours["parent_id"] == (imported_message_id(chat.id, m["parent_id"]) if m["parent_id"] else None)
        assert (ours["role"], ours["content"]) == (m["role"], json.loads(m["content"]))  # a JSON column
    welcome = chats["27d58965-d805-4b58-8e73-44da54fd3f77"]  # the regenerated answer: two children of one question
    children: dict[str | None, int] = {}
    for m in welcome.messages.values():
        children[m["parent_id"]] = children.get(m["parent_id"], 0) + 1
    assert sorted(children.values()) == [1, 2]
    return chats


async def check_the_rest(c: Container, tenant_id: str, users: dict[str, User], chats: dict[str, Chat]) -> None:
    for row in rows("folder"):
        tree = await find(c, FolderTree, folder_tree_id_for(tenant_id, users[row["user_id"]].id))
        assert tree.folders[folder_id(tenant_id, users[row["user_id"]].id, row["id"])]["name"] == row["name"]
    for row in rows("model"):
        model = await c.store.call(c.models._find, tenant_id, row["id"])
        assert model is not None and model.name == row["id"] and model.open_to_tenant  # both public there
        params = json.loads(row["params"])
        if row["base_model_id"]:  # a workspace model: a preset; the other is parley's own local model
            assert model.display_name == row["name"]
            assert model.base_model == row["base_model_id"] and model.open_to_tenant
            assert (model.defaults["system_prompt"], model.defaults["temperature"]) == (
                params["system"],
                params["temperature"],
            )
    kbs = {}
    for row in rows("knowledge"):
        record = await find(c, ImportRecord, import_record_id(tenant_id, "open-webui", "knowledge", row["id"]))
        kb = await find(c, KnowledgeBase, uuid.UUID(record.target_id))
        assert (kb.name, kb.description, kb.owner_id) == (row["name"], row["description"], users[row["user_id"]].id)
        kbs[row["id"]] = kb
    by_file = {f["id"]: f for f in rows("file")}
    files = [by_file[k["file_id"]] for k in rows("knowledge_file")] + [by_file[k["file_id"]] for k in rows("chat_file")]
    ids = await document_ids(c, tenant_id, chats)
    assert len(ids) == len(files) == len(by_file) == 3
    for document_id, f in zip(ids, files, strict=True):
        document = await find(c, Document, document_id)
        size = (FIXTURE / "uploads" / Path(f["path"]).name).stat().st_size
        assert (document.filename, document.size, document.owner_id) == (f["filename"], size, users[f["user_id"]].id)
    for row in rows("feedback"):
        meta, data = json.loads(row["meta"]), json.loads(row["data"])
        chat = chats[meta["chat_id"]]
        message_id = imported_message_id(chat.id, meta["message_id"])
        rating = await find(c, Rating, rating_id_for(tenant_id, users[row["user_id"]].id, message_id))
        assert (rating.rating, rating.comment) == ("up" if data["rating"] == 1 else "down", data["comment"])
    for row in rows("shared_chat"):
        record = await find(c, ImportRecord, import_record_id(tenant_id, "open-webui", "share", row["id"]))
        share = await find(c, Share, uuid.UUID(record.target_id))
        chat = chats[row["chat_id"]]
        leaf = json.loads(row["chat"])["history"]["currentId"]
        assert (share.chat_id, share.leaf_message_id) == (chat.id, imported_message_id(chat.id, leaf))
    for row in rows("api_key"):  # stored in the clear by Open WebUI: it keeps working
        principal = await c.identity.authenticate(CommandContext(tenant_id=""), row["key"])
        assert principal.user_id == users[row["user_id"]].id


async def document_ids(c: Container, tenant_id: str, chats: dict[str, Chat]) -> list[uuid.UUID]:
    files = {f["id"]: f for f in rows("file")}
    places = []
    for link in rows("knowledge_file"):
        record = await find(
            c, ImportRecord, import_record_id(tenant_id, "open-webui", "knowledge", link["knowledge_id"])
        )
        places.append((f"knowledge/{record.target_id}", files[link["file_id"]]))
    for link in rows("chat_file"):
        places.append((f"chats/{chats[link['chat_id']].id}", files[link["file_id"]]))
    return [
        Document.create_id(
            tenant_id, scope, hashlib.sha256((FIXTURE / "uploads" / Path(f["path"]).name).read_bytes()).hexdigest()
        )
        for scope, f in places
    ]


async def wait_for(predicate: Any, within: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_open_webui_deployment_moves_in_whole_once_and_goes_on(
    engines: EngineUrls, container: Container, pipeline: Pipeline
) -> None:
    c = container
    info = await c.identity.create_tenant(
        CommandContext(tenant_id="", actor="system:cli"), None, slug=TENANT, name="Northwind"
    )
    tenant_id = str(info.id)

    # The command itself, dry: it says what it would import, with progress on stderr, and writes nothing.
    before = await c.store.call(c.store.max_id)
    rc, out, err = await cli(c, "--db", str(FIXTURE / "webui.db"), "--uploads", str(FIXTURE / "uploads"), "--dry-run")
    assert rc == 0, err
    assert "user: would import 4" in out and "chat: would import 10" in out and "file: would import 3" in out
    assert "chats: 100%" in err
    assert await c.store.call(c.store.max_id) == before
    with pytest.raises(OpenWebUISourceError, match="no Open WebUI database at"):
        read_openwebui(str(FIXTURE / "nothing.db"), FIXTURE / "uploads")
    with pytest.raises(OpenWebUISourceError, match="no uploads directory at"):
        read_openwebui(str(FIXTURE / "webui.db"), FIXTURE / "nowhere")

    report = await run_import(c)
    text = render_report(report)
    print(text)
    assert report.imported["user"] == 4 and report.imported["chat"] == 10 and report.imported["message"] == 33
    assert report.imported["model"] == 1 and report.already["model"] == 1  # smollm2: parley's own local model
    assert (report.imported["knowledge"], report.imported["file"], report.imported["rating"]) == (1, 3, 2)
    assert (report.imported["share"], report.imported["api key"], report.imported["folder"]) == (1, 1, 1)
    assert "config (378 rows): not carried" in text and "/s/06880216-ed5a-4002-a7c6-772fc406b51f" in text

    users = await check_users(c, tenant_id)
    chats = await check_chats(c, tenant_id, users)
    await check_the_rest(c, tenant_id, users, chats)

    # Open WebUI's password signs in; the bcrypt hash becomes argon2id; pending stays pending.
    ctx = CommandContext(tenant_id=tenant_id)
    for email, password in PASSWORDS.items():
        await c.identity.login(ctx, tenant=TENANT, email=email, password=password)
    with pytest.raises(Unauthenticated):
        await c.identity.login(ctx, tenant=TENANT, email="omar.haddad@example.com", password="Quill-Harbor-20")
    maya = next(u for u in users.values() if u.email == "maya.lindqvist@example.com")
    rehashed = await find(c, User, maya.id)
    assert rehashed.password_hash.startswith("$argon2id$")
    await c.identity.login(ctx, tenant=TENANT, email=maya.email, password=PASSWORDS[maya.email])
    leo = next(u for u in users.values() if u.email == "leo.martins@example.com")
    assert (await find(c, User, leo.id)).role == "pending"

    # Open WebUI on Postgres: the same tables, read by URL, give the same import (into another tenant).
    url = create_database(engines)
    await asyncio.to_thread(copy_to_postgres, url)
    await c.identity.create_tenant(
        CommandContext(tenant_id="", actor="system:cli"), None, slug="northwind-pg", name="PG"
    )
    from_pg = await import_open_webui(c, db=url, uploads=str(FIXTURE / "uploads"), tenant="northwind-pg")
    assert from_pg.imported == {k: n for k, n in report.imported.items() if k != "api key"}
    assert sorted(from_pg.skipped) == sorted(
        [
            *report.skipped,
            (
                "api key",
                "key_b3fdb5c8-7738-4a7e-961f-3358e2a751ad",
                "imported into another tenant before: a key opens one account",
            ),
        ]
    )

    # A second run adds nothing.
    before = await c.store.call(c.store.max_id)
    again = await run_import(c)
    # (The ingestion worker may still be extracting and chunking the first run's files meanwhile.)
    extra = await c.store.call(c.store.read, before + 1, 100)
    assert [e.type for e in extra if e.type not in INGESTION_EVENTS] == []
    assert not again.imported and again.already["chat"] == 10 and again.already["user"] == 4
    assert not (await run_import(c, dry_run=True)).imported  # and a dry run says so

    # An imported chat goes on: the next question follows its current message, the echo engine answers.
    admin = Principal(tenant_id, maya.id, "admin", via="token")
    await c.models.register_provider(ctx, admin, name="echoes", kind="echo")
    await c.models.register_model(ctx, admin, name="echo", provider="echoes", upstream_model="echo")
    welcome = chats["27d58965-d805-4b58-8e73-44da54fd3f77"]
    sent = await c.chats.send_message(ctx, admin, welcome.id, content="Make it shorter, please.", model="echo")

    async def answered() -> bool:
        generation = await find(c, Generation, sent.generation_id)
        return generation.status == "completed"

    await wait_for(answered)
    chat = await find(c, Chat, welcome.id)
    assert chat.messages[sent.message_id]["parent_id"] == welcome.head
    assert chat.messages[sent.answer_message_id]["parent_id"] == sent.message_id
    assert "Make it shorter" in chat.messages[sent.answer_message_id]["content"]

    # The files went through parley's own ingestion (extracted and chunked by the ingestion worker), and
    # every read model took every event in.
    documents = [await find(c, Document, d) for d in await document_ids(c, tenant_id, chats)]

    async def ingested() -> bool:
        return [(await find(c, Document, d.id)).status for d in documents] == ["chunked"] * len(documents)

    await wait_for(ingested, within=60)
    await pipeline.settle(timeout=30)
