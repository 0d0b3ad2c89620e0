"""Personal-data export through HTTP with the whole pipeline running: a user's export holds every message
of their chats, their documents' bytes as uploaded and the rest of their data, documented in the archive
itself, and nothing of anyone else; only they and their tenant's admins may take it (another tenant's
user does not exist); each export is recorded; the CLI writes the same archive."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import uuid
import zipfile
from typing import Any

import httpx
import pytest

from adapters.blobs import BlobMissing, DirectoryBlobs, PostgresBlobs
from tests.conftest import Pipeline
from tests.e2e.test_chat_api import add_echo_model, bearer, error_code, finished, new_chat, send, sign_up
from tests.tenants import tenant_with_admin
from workers.bootstrap import Container

pytestmark = pytest.mark.timeout(240)

ADA_DOCUMENT = b"Ada's field notes: the quokka count on the island was 37.\n"
BOB_DOCUMENT = b"Bob's ledger: zebra-42 owes nothing.\n"


async def talk(client: httpx.AsyncClient, tokens: dict[str, Any], chat: str, content: str) -> None:
    r = await send(client, tokens, chat, content)
    assert r.status_code == 202, r.text
    assert (await finished(client, tokens, r.json()["generation_id"]))["status"] == "completed"


async def attach(client: httpx.AsyncClient, tokens: dict[str, Any], chat: str, name: str, data: bytes) -> str:
    r = await client.post(
        f"/api/v1/chats/{chat}/files", files={"file": (name, data, "text/plain")}, headers=bearer(tokens)
    )
    assert r.status_code == 202, r.text
    return str(r.json()[0]["id"])


def unpacked(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


async def world(client: httpx.AsyncClient, pipeline: Pipeline) -> dict[str, Any]:
    """The default tenant's admin, Ada and Bob with chats and a document each, and another tenant's admin."""
    admin = await sign_up(client, "admin@example.com")
    await add_echo_model(client, admin)
    ada = await sign_up(client, "ada@example.com")
    bob = await sign_up(client, "bob@example.com")
    ada_chat = await new_chat(client, ada, "Island survey")
    await talk(client, ada, ada_chat, "How many quokkas did I count? xylophone-7")
    await talk(client, ada, ada_chat, "And the second transect, marmot-19?")
    ada_doc = await attach(client, ada, ada_chat, "../field notes?.txt", ADA_DOCUMENT)
    ada_old = await new_chat(client, ada, "Old talk")
    await talk(client, ada, ada_old, "An archived question, walrus-5")
    r = await client.patch(f"/api/v1/chats/{ada_old}", json={"archived": True}, headers=bearer(ada))
    assert r.status_code == 200, r.text
    ada_gone = await new_chat(client, ada, "Deleted talk")
    r = await client.delete(f"/api/v1/chats/{ada_gone}", headers=bearer(ada))
    assert r.status_code == 204, r.text
    bob_chat = await new_chat(client, bob, "Bob's ledger")
    await talk(client, bob, bob_chat, "Bob's private question: zebra-42")
    await attach(client, bob, bob_chat, "ledger.txt", BOB_DOCUMENT)
    _, other_admin = await tenant_with_admin(client, bearer(admin), "other", "boss@other.test")
    await pipeline.settle(timeout=60)
    return {
        "admin": admin,
        "ada": ada,
        "bob": bob,
        "other_admin": other_admin,
        "ada_chats": [ada_chat, ada_old, ada_gone],
        "ada_doc": ada_doc,
    }


async def test_a_users_export_holds_all_their_data_and_nothing_of_anyone_else(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    w = await world(client, pipeline)
    ada, bob = w["ada"], w["bob"]
    r = await client.get(f"/api/v1/users/{ada['id']}/export", headers=bearer(ada))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/zip")
    assert r.headers["content-disposition"].startswith('attachment; filename="parley-export-')
    files = unpacked(r.content)

    manifest = json.loads(files["manifest.json"])
    assert manifest["subject"] == {"id": ada["id"], "email": "ada@example.com"}
    assert manifest["tenant"]["slug"] == "default" and manifest["format_version"] == 1
    assert {f["path"] for f in manifest["files"]} == set(files), "the manifest lists every file"
    assert set(manifest["formats"]) <= {
        line.split("`")[1] for line in files["README.md"].decode().splitlines() if "`" in line
    }

    profile = json.loads(files["profile.json"])
    assert profile["user"]["email"] == "ada@example.com" and profile["user"]["status"] == "active"
    assert len(profile["sessions"]) == 1 and profile["sessions"][0]["ip"] == "203.0.113.7"

    # Every chat, archived and deleted ones too; every message of each, as the API shows them.
    live_chat, archived, deleted = w["ada_chats"]
    assert {f"chats/{c}.json" for c in w["ada_chats"]} == {p for p in files if p.startswith("chats/")}
    for chat in (live_chat, archived):
        shown = (await client.get(f"/api/v1/chats/{chat}", headers=bearer(ada))).json()
        exported = json.loads(files[f"chats/{chat}.json"])
        assert [(m["id"], m["parent_id"], m["role"], m["content"]) for m in exported["messages"]] == [
            (m["id"], m["parent_id"], m["role"], m["content"]) for m in shown["messages"]
        ]
        entry = next(f for f in manifest["files"] if f["path"] == f"chats/{chat}.json")
        assert entry["count"] == len(shown["messages"]) > 0
    assert json.loads(files[f"chats/{archived}.json"])["chat"]["archived"] is True
    assert json.loads(files[f"chats/{deleted}.json"])["chat"]["deleted"] is True
    everything = b"\n".join(files.values())
    for text in (b"xylophone-7", b"marmot-19", b"walrus-5"):
        assert text in files[f"chats/{live_chat}.json"] + files[f"chats/{archived}.json"]

    # The document as uploaded, under a safe name, with its metadata.
    doc = w["ada_doc"]
    metadata = json.loads(files[f"documents/{doc}/metadata.json"])
    assert metadata["sha256"] and metadata["original"] == f"documents/{doc}/field notes_.txt"
    assert files[metadata["original"]] == ADA_DOCUMENT

    generations = json.loads(files["generations.json"])["generations"]
    assert len(generations) == 3 and {g["status"] for g in generations} == {"completed"}
    usage = json.loads(files["usage.json"])
    assert sum(day["requests"] for day in usage["days"]) == 3
    audit = json.loads(files["audit.json"])["rows"]
    assert {"UserRegistered", "MessagePosted", "ChatCreated"} <= {row["action"] for row in audit}

    # Nothing of Bob's, in any file.
    for trace in (b"bob@example.com", b"zebra-42", BOB_DOCUMENT, bob["id"].encode()):
        assert trace not in everything, trace

    # The export itself is on record, naming who took it.
    await pipeline.settle()
    r = await client.get("/api/v1/audit", params={"action": "PersonalDataExported"}, headers=bearer(w["admin"]))
    assert r.status_code == 200, r.text
    (row,) = r.json()["items"]
    assert row["actor"] == f"user:{ada['id']}" and row["detail"]["subject_id"] == ada["id"]


async def test_only_the_user_and_their_tenants_admins_may_export(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    w = await world(client, pipeline)
    ada = w["ada"]
    r = await client.get(f"/api/v1/users/{ada['id']}/export", headers=bearer(w["bob"]))
    assert r.status_code == 403 and error_code(r) == "ADMIN_REQUIRED"
    r = await client.get(f"/api/v1/users/{ada['id']}/export", headers=bearer(w["other_admin"]))
    assert r.status_code == 404 and error_code(r) == "USER_NOT_FOUND"
    r = await client.get(f"/api/v1/users/{ada['id']}/export")
    assert r.status_code == 401
    r = await client.get(f"/api/v1/users/{ada['id']}/export", headers=bearer(w["admin"]))
    assert r.status_code == 200, r.text
    files = unpacked(r.content)
    assert b"xylophone-7" in files[f"chats/{w['ada_chats'][0]}.json"]
    assert files[f"documents/{w['ada_doc']}/field notes_.txt"] == ADA_DOCUMENT


async def test_the_cli_writes_the_same_archive(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import cli

    ada = await sign_up(client, "ada@example.com")
    chat = await new_chat(client, ada, "Notes")
    doc = await attach(client, ada, chat, "notes.txt", ADA_DOCUMENT)
    await pipeline.settle(timeout=60)
    for name, value in container.settings.child_env().items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "ada.zip"
    await asyncio.to_thread(
        cli.main, ["export", "user", "--tenant", "default", "--user", "ada@example.com", "--out", str(out)]
    )
    files = unpacked(out.read_bytes())
    assert files[f"documents/{doc}/notes.txt"] == ADA_DOCUMENT
    assert json.loads(files["manifest.json"])["subject"]["id"] == ada["id"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


async def test_blob_stores_hand_out_their_bytes_a_piece_at_a_time(container: Container, tmp_path: Any) -> None:
    tenant = str(uuid.uuid4())
    data = os.urandom(2 * 1024 * 1024 + 123)
    sha = hashlib.sha256(data).hexdigest()
    for store in (PostgresBlobs(container.engine), DirectoryBlobs(tmp_path)):
        await store.put(tenant, sha, data)
        pieces = [piece async for piece in store.chunks(tenant, sha)]
        assert [len(p) for p in pieces] == [1024 * 1024, 1024 * 1024, 123] and b"".join(pieces) == data
        with pytest.raises(BlobMissing):
            await anext(store.chunks(tenant, "0" * 64))
