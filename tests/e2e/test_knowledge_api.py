"""Knowledge through HTTP with the whole pipeline running (relay, projectors incl. the vector index, the
ingestion worker, a generation worker): a corpus of every supported type is uploaded, extracted, chunked,
embedded with the local model and found by hybrid search; a chat with the knowledge base attached is
answered by the local model from it, citing the right document; bad uploads each get a clear error and
a ``DocumentFailed`` event; nobody reads what they may not."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from schema.tables import embedding_spaces
from tests import corpus
from tests.conftest import Pipeline
from tests.e2e.test_chat_api import bearer, error_code, new_chat, sign_up
from tests.e2e.test_chat_api import finished as chat_finished
from tests.tenants import tenant_with_admin
from workers.bootstrap import Container

pytestmark = pytest.mark.timeout(240)


async def create_kb(client: httpx.AsyncClient, tokens: dict[str, Any], name: str = "Facts", **extra: Any) -> str:
    r = await client.post("/api/v1/knowledge", json={"name": name, **extra}, headers=bearer(tokens))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def upload(
    client: httpx.AsyncClient, tokens: dict[str, Any], kb: str, filename: str, data: bytes, media_type: str = "application/octet-stream"
) -> httpx.Response:
    return await client.post(
        f"/api/v1/knowledge/{kb}/documents", files={"file": (filename, data, media_type)}, headers=bearer(tokens)
    )


async def wait_documents(
    client: httpx.AsyncClient, tokens: dict[str, Any], ids: list[str], timeout: float = 120
) -> dict[str, dict[str, Any]]:
    """Each document, once it is indexed or failed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        docs = {}
        for document_id in ids:
            r = await client.get(f"/api/v1/documents/{document_id}", headers=bearer(tokens))
            assert r.status_code == 200, r.text
            docs[document_id] = r.json()
        if all(d["status"] in ("indexed", "failed") for d in docs.values()):
            return docs
        assert asyncio.get_running_loop().time() < deadline, docs
        await asyncio.sleep(0.3)


async def finished(client: httpx.AsyncClient, tokens: dict[str, Any], generation_id: str, timeout: float = 120) -> dict[str, Any]:
    return await chat_finished(client, tokens, generation_id, timeout=timeout, interval=0.5)  # the local model takes seconds


async def event_types(c: Container, aggregate_id: str) -> list[str]:
    events = await c.store.call(c.store.read, 1, 100_000)
    return [e.type for e in events if str(e.aggregate_id) == aggregate_id]


async def test_a_corpus_of_every_type_is_indexed_and_search_finds_each_answer(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    owner = await sign_up(client, "owner@example.com")
    kb = await create_kb(client, owner, description="one document of each kind")
    ids = {}
    for sample in corpus.SAMPLES.values():
        r = await upload(client, owner, kb, sample.filename, sample.data, sample.media_type)
        assert r.status_code == 202, r.text
        (document,) = r.json()
        assert document["status"] == "queued" and document["media_type"] == sample.media_type
        ids[sample.name] = document["id"]
    docs = await wait_documents(client, owner, list(ids.values()))
    assert all(d["status"] == "indexed" and d["chunks_indexed"] == d["chunk_count"] > 0 for d in docs.values()), docs

    for sample in corpus.SAMPLES.values():
        r = await client.get(f"/api/v1/knowledge/{kb}/search", params={"q": sample.question}, headers=bearer(owner))
        assert r.status_code == 200, r.text
        top = r.json()["items"][0]
        assert top["document_id"] == ids[sample.name], (sample.name, r.json()["items"][:3])
        assert sample.fact in top["text"] and top["filename"] == sample.filename

    # Filter by document; the listing shows every document with its progress.
    r = await client.get(
        f"/api/v1/knowledge/{kb}/search",
        params={"q": corpus.SAMPLES["pdf"].question, "document_id": ids["docx"]},
        headers=bearer(owner),
    )
    assert {h["document_id"] for h in r.json()["items"]} == {ids["docx"]}, r.text
    await pipeline.settle()
    r = await client.get(f"/api/v1/knowledge/{kb}/documents", headers=bearer(owner))
    assert {d["id"] for d in r.json()["items"]} == set(ids.values())

    # The space's HNSW index is built beside the writers (CONCURRENTLY), valid, and then used by search.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        async with container.engine.connect() as conn:
            row = (await conn.execute(select(embedding_spaces).where(embedding_spaces.c.space == "local/all-minilm-l6-v2"))).one()
            valid = (
                await conn.execute(
                    text("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :n"),
                    {"n": row.index_name},
                )
            ).scalar()
        if row.indexed:
            break
        assert asyncio.get_running_loop().time() < deadline, row
        await asyncio.sleep(0.2)
    assert row.dims == 384 and valid is True
    r = await client.get(f"/api/v1/knowledge/{kb}", headers=bearer(owner))
    assert r.json()["document_count"] == len(ids)


async def test_a_chat_with_the_knowledge_base_attached_answers_from_it_and_cites_the_document(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    owner = await sign_up(client, "owner@example.com")
    kb = await create_kb(client, owner)
    documents = {}
    for name in ("pdf", "text", "markdown"):
        sample = corpus.SAMPLES[name]
        r = await upload(client, owner, kb, sample.filename, sample.data, sample.media_type)
        documents[name] = r.json()[0]["id"]
    await wait_documents(client, owner, list(documents.values()))
    chat = await new_chat(client, owner)
    r = await client.patch(f"/api/v1/chats/{chat}", json={"knowledge_ids": [kb]}, headers=bearer(owner))
    assert r.status_code == 200 and r.json()["knowledge_ids"] == [kb], r.text

    r = await client.post(
        f"/api/v1/chats/{chat}/messages",
        json={
            "content": "How long is the Drelkan bridge?",
            "model": "smollm2",
            "params": {"temperature": 0, "max_tokens": 40},
        },
        headers=bearer(owner),
    )
    assert r.status_code == 202, r.text
    generation = await finished(client, owner, r.json()["generation_id"], timeout=120)
    assert generation["status"] == "completed", generation
    assert "312" in generation["text"], generation["text"]
    await pipeline.settle()
    r = await client.get(f"/api/v1/chats/{chat}", headers=bearer(owner))
    answer = next(m for m in r.json()["messages"] if m["role"] == "assistant")
    assert answer["citations"][0]["document_id"] == documents["markdown"], answer["citations"]
    assert answer["citations"][0]["filename"] == "drelkan.md"

    # Knowledge attached to the model instead (the first user is the admin): every chat with it draws on it.
    r = await client.patch("/api/v1/models/smollm2", json={"knowledge_ids": [kb]}, headers=bearer(owner))
    assert r.status_code == 200 and r.json()["knowledge_ids"] == [kb], r.text
    await pipeline.settle()
    r = await client.get("/api/v1/models", params={"all": "true"}, headers=bearer(owner))  # admin fields
    assert next(m for m in r.json() if m["name"] == "smollm2")["knowledge_ids"] == [kb]
    plain = await new_chat(client, owner, "no knowledge of its own")
    r = await client.post(
        f"/api/v1/chats/{plain}/messages",
        json={"content": corpus.SAMPLES["pdf"].question, "model": "smollm2", "params": {"temperature": 0, "max_tokens": 30}},
        headers=bearer(owner),
    )
    generation = await finished(client, owner, r.json()["generation_id"])
    assert "451" in generation["text"], generation["text"]


async def test_bad_uploads_each_get_a_clear_error_and_a_failed_document(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    owner = await sign_up(client, "owner@example.com")
    kb = await create_kb(client, owner)
    good = await upload(client, owner, kb, "notes.txt", b"Plain notes about nothing in particular.")
    assert good.status_code == 202

    refused_now = {
        "EMPTY.txt": (b"", 422, "DOCUMENT_EMPTY"),
        "photo.pdf": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 415, "UNSUPPORTED_TYPE"),
        "latin1.txt": (corpus.invalid_utf8(), 422, "INVALID_UTF8"),
    }
    for filename, (data, status, code) in refused_now.items():
        r = await upload(client, owner, kb, filename, data)
        assert r.status_code == status and error_code(r) == code, (filename, r.text)
        document_id = r.json()["error"]["detail"]["document_id"]
        assert (await event_types(container, document_id))[-1] == "DocumentFailed"

    failed_later = {
        "encrypted.pdf": (corpus.encrypted_pdf(), "PDF_ENCRYPTED"),
        "corrupt.pdf": (corpus.corrupt_pdf(), "PDF_CORRUPT"),
        "blank.pdf": (corpus.empty_pdf(), "DOCUMENT_EMPTY"),
        "bomb.docx": (corpus.zip_bomb_docx(), "ZIP_BOMB"),
    }
    ids = {}
    for filename, (data, _) in failed_later.items():
        r = await upload(client, owner, kb, filename, data)
        assert r.status_code == 202, (filename, r.text)
        ids[filename] = r.json()[0]["id"]
    docs = await wait_documents(client, owner, [*ids.values(), good.json()[0]["id"]])
    for filename, (_, code) in failed_later.items():
        document = docs[ids[filename]]
        assert document["status"] == "failed" and document["error"]["code"] == code, document
        assert (await event_types(container, ids[filename]))[-1] == "DocumentFailed"
    assert docs[good.json()[0]["id"]]["status"] == "indexed"  # nothing else is affected

    # The same content twice is a duplicate; a failed one may be uploaded again (and fails again).
    r = await upload(client, owner, kb, "again.txt", b"Plain notes about nothing in particular.")
    assert r.status_code == 409 and error_code(r) == "DUPLICATE_DOCUMENT"
    r = await client.post(f"/api/v1/knowledge/{kb}/documents", json={"url": "http://example.com/"}, headers=bearer(owner))
    assert r.status_code == 403 and error_code(r) == "URL_FETCH_DISABLED"
    r = await client.post(
        f"/api/v1/knowledge/{kb}/documents", content=b"raw", headers={**bearer(owner), "Content-Type": "text/plain"}
    )
    assert r.status_code == 415 and error_code(r) == "UNSUPPORTED_MEDIA_TYPE"


async def test_only_readers_see_a_knowledge_base_its_documents_and_search_hits(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin = await sign_up(client, "admin@example.com")  # the first user is the tenant's admin
    owner = await sign_up(client, "owner@example.com")
    friend = await sign_up(client, "friend@example.com")
    stranger = await sign_up(client, "stranger@example.com")
    kb = await create_kb(client, owner, name="Private")
    sample = corpus.SAMPLES["markdown"]
    r = await upload(client, owner, kb, sample.filename, sample.data)
    document_id = r.json()[0]["id"]
    await wait_documents(client, owner, [document_id])

    for who in (stranger, friend):
        assert (await client.get(f"/api/v1/knowledge/{kb}", headers=bearer(who))).status_code == 404
        r = await client.get(f"/api/v1/knowledge/{kb}/search", params={"q": sample.question}, headers=bearer(who))
        assert r.status_code == 404 and error_code(r) == "KNOWLEDGE_NOT_FOUND"
        assert (await client.get(f"/api/v1/documents/{document_id}", headers=bearer(who))).status_code == 404
    r = await client.put(f"/api/v1/knowledge/{kb}/access/user:{friend['id']}", json={"level": "read"}, headers=bearer(owner))
    assert r.status_code == 200, r.text
    r = await client.get(f"/api/v1/knowledge/{kb}/search", params={"q": sample.question}, headers=bearer(friend))
    assert r.status_code == 200 and r.json()["items"][0]["document_id"] == document_id
    r = await upload(client, friend, kb, "mine.txt", b"A reader cannot add documents.")
    assert r.status_code == 403 and error_code(r) == "KNOWLEDGE_READ_ONLY"
    r = await client.put(f"/api/v1/knowledge/{kb}/access/tenant", json={"level": "read"}, headers=bearer(friend))
    assert r.status_code == 403 and error_code(r) == "KNOWLEDGE_READ_ONLY"
    r = await client.put(f"/api/v1/knowledge/{kb}/access/user:{friend['id']}", json={"level": "write"}, headers=bearer(owner))
    assert r.status_code == 200, r.text
    r = await upload(client, friend, kb, "mine.txt", b"A writer can add documents.")
    assert r.status_code == 202, r.text
    r = await client.put(f"/api/v1/knowledge/{kb}/access/tenant", json={"level": "read"}, headers=bearer(friend))
    assert r.status_code == 403 and error_code(r) == "KNOWLEDGE_OWNER_ONLY"
    assert (await client.get(f"/api/v1/knowledge/{kb}", headers=bearer(admin))).status_code == 200
    await pipeline.settle()
    listed = await client.get("/api/v1/knowledge", headers=bearer(stranger))
    assert listed.json()["items"] == []
    listed = await client.get("/api/v1/knowledge", headers=bearer(friend))
    assert [k["id"] for k in listed.json()["items"]] == [kb] and listed.json()["items"][0]["your_access"] == "write"

    # A stranger's chat cannot attach it, and a chat whose owner lost access retrieves nothing from it.
    chat = await new_chat(client, stranger)
    r = await client.patch(f"/api/v1/chats/{chat}", json={"knowledge_ids": [kb]}, headers=bearer(stranger))
    assert r.status_code == 404 and error_code(r) == "KNOWLEDGE_NOT_FOUND"
    friends_chat = await new_chat(client, friend)
    r = await client.patch(f"/api/v1/chats/{friends_chat}", json={"knowledge_ids": [kb]}, headers=bearer(friend))
    assert r.status_code == 200
    r = await client.delete(f"/api/v1/knowledge/{kb}/access/user:{friend['id']}", headers=bearer(owner))
    assert r.status_code == 204
    r = await client.post(
        f"/api/v1/chats/{friends_chat}/messages",
        json={"content": sample.question, "model": "smollm2", "params": {"max_tokens": 4}},
        headers=bearer(friend),
    )
    generation = await finished(client, friend, r.json()["generation_id"], timeout=60)
    assert generation["status"] == "completed"
    await pipeline.settle()
    r = await client.get(f"/api/v1/chats/{friends_chat}", headers=bearer(friend))
    answer = next(m for m in r.json()["messages"] if m["role"] == "assistant")
    assert not answer["citations"]


async def test_another_tenant_never_sees_the_knowledge_base(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    owner = await sign_up(client, "owner@example.com")
    kb = await create_kb(client, owner)
    sample = corpus.SAMPLES["text"]
    r = await upload(client, owner, kb, sample.filename, sample.data)
    document_id = r.json()[0]["id"]
    await wait_documents(client, owner, [document_id])
    # The owner signed up first: the default tenant's admin, so the platform admin.
    _, outsider = await tenant_with_admin(client, bearer(owner), "other", "admin@other.example")  # its admin
    assert (await client.get(f"/api/v1/knowledge/{kb}", headers=bearer(outsider))).status_code == 404
    r = await client.get(f"/api/v1/knowledge/{kb}/search", params={"q": sample.question}, headers=bearer(outsider))
    assert r.status_code == 404
    assert (await client.get(f"/api/v1/documents/{document_id}", headers=bearer(outsider))).status_code == 404
    r = await client.put(f"/api/v1/knowledge/{kb}/access/tenant", json={"level": "write"}, headers=bearer(outsider))
    assert r.status_code == 404


async def test_files_uploaded_into_a_chat_answer_in_that_chat_only(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    owner = await sign_up(client, "owner@example.com")
    other = await sign_up(client, "other@example.com")
    chat, elsewhere = await new_chat(client, owner, "with file"), await new_chat(client, owner, "without")
    sample = corpus.SAMPLES["pdf"]
    r = await client.post(
        f"/api/v1/chats/{chat}/files", files={"file": (sample.filename, sample.data, "application/pdf")}, headers=bearer(owner)
    )
    assert r.status_code == 202, r.text
    document_id = r.json()[0]["id"]
    assert r.json()[0]["chat_id"] == chat and r.json()[0]["knowledge_id"] is None
    await wait_documents(client, owner, [document_id])
    r = await client.post(
        f"/api/v1/chats/{chat}/files", files={"file": ("x.txt", b"not yours", "text/plain")}, headers=bearer(other)
    )
    assert r.status_code == 404 and error_code(r) == "CHAT_NOT_FOUND"
    assert (await client.get(f"/api/v1/documents/{document_id}", headers=bearer(other))).status_code == 404

    answers = {}
    for where in (chat, elsewhere):
        r = await client.post(
            f"/api/v1/chats/{where}/messages",
            json={"content": sample.question, "model": "smollm2", "params": {"temperature": 0, "max_tokens": 30}},
            headers=bearer(owner),
        )
        answers[where] = await finished(client, owner, r.json()["generation_id"])
    assert "451" in answers[chat]["text"], answers[chat]["text"]
    await pipeline.settle()
    cited = {}
    for where in (chat, elsewhere):
        r = await client.get(f"/api/v1/chats/{where}", headers=bearer(owner))
        assert r.json()["file_ids"] == ([document_id] if where == chat else [])
        cited[where] = next(m for m in r.json()["messages"] if m["role"] == "assistant")["citations"]
    assert [c["document_id"] for c in cited[chat]] == [document_id]
    assert not cited[elsewhere]
    r = await client.get(f"/api/v1/chats/{chat}/files", headers=bearer(owner))
    assert [d["id"] for d in r.json()["items"]] == [document_id]


async def test_size_limits_and_web_pages_by_url(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    import dataclasses

    import msgspec

    from tests.fakes.upstreams import FakeUpstreams

    owner = await sign_up(client, "owner@example.com")
    kb = await create_kb(client, owner)
    container.knowledge.limits = dataclasses.replace(container.knowledge.limits, max_file_bytes=2_000)
    r = await upload(client, owner, kb, "big.txt", b"word " * 1_000)
    assert r.status_code == 413 and error_code(r) == "FILE_TOO_LARGE", r.text
    assert (await event_types(container, r.json()["error"]["detail"]["document_id"]))[-1] == "DocumentFailed"
    container.knowledge.limits = dataclasses.replace(container.knowledge.limits, max_file_bytes=10_000, tenant_storage_bytes=3_000)
    assert (await upload(client, owner, kb, "a.txt", b"first " * 400)).status_code == 202
    await pipeline.settle()
    r = await upload(client, owner, kb, "b.txt", b"second " * 300)
    assert r.status_code == 413 and error_code(r) == "TENANT_STORAGE_FULL", r.text
    container.knowledge.limits = dataclasses.replace(container.knowledge.limits, tenant_storage_bytes=10**9)

    # Web pages: only where the deployment allows it (private addresses need their own switch).
    with FakeUpstreams() as web:
        page = f"{web.openai_url}/models"  # any URL the local server answers (JSON)
        container.settings = msgspec.structs.replace(container.settings, allow_url_fetch=True)
        r = await client.post(f"/api/v1/knowledge/{kb}/documents", json={"url": page}, headers=bearer(owner))
        assert r.status_code == 403 and error_code(r) == "URL_FORBIDDEN", r.text
        container.settings = msgspec.structs.replace(container.settings, url_fetch_private=True)
        r = await client.post(f"/api/v1/knowledge/{kb}/documents", json={"url": page}, headers=bearer(owner))
        assert r.status_code == 202, r.text
        assert r.json()[0]["source_url"] == page and r.json()[0]["media_type"] == "application/json"
        r = await client.post(f"/api/v1/knowledge/{kb}/documents", json={"url": "ftp://example.com/x"}, headers=bearer(owner))
        assert r.status_code == 422 and error_code(r) == "INVALID_URL"
