"""Uploads are read as they arrive and refused as soon as a limit is passed: a file past the size limit is
answered while the client is still sending (and recorded as a failed document), as are too many files, a
declared length past what an upload may carry, and a caller who may not write there at all. Bodies that
are not multipart, or not well-formed, are a 4xx, never a 500. (The API process's memory over a 400 MB
upload: ``tests/integration/test_upload_memory.py``.)"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest

from api.uploads import MAX_FILES_PER_REQUEST, upload_body_limit
from domain.knowledge import document_id_for
from tests.e2e.test_chat_api import bearer, error_code, sign_up
from tests.e2e.test_knowledge_api import create_kb
from tests.multipart_stream import TextFile, post_streaming
from workers.bootstrap import Container

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
LIMIT = 4 * MiB  # the per-file limit these tests run under (a request may then carry 81 MiB)
# What the kernel's socket buffers and the server's read-ahead may hold beyond what the server has taken.
IN_FLIGHT = 8 * MiB


def sent_text(f: TextFile) -> bytes:
    return b"".join(f.pieces())


@pytest.fixture
def limited(container: Container) -> Container:
    container.knowledge.limits = dataclasses.replace(container.knowledge.limits, max_file_bytes=LIMIT)
    return container


async def test_a_file_past_the_limit_is_refused_while_the_client_is_still_sending(
    client: httpx.AsyncClient, live: str, limited: Container
) -> None:
    owner = await sign_up(client, "owner@example.com")
    kb = await create_kb(client, owner)
    small, huge = TextFile("small.txt", 10_000), TextFile("huge.txt", 70 * MiB)
    answer = await post_streaming(live, f"/api/v1/knowledge/{kb}/documents", [small, huge], bearer(owner))

    assert answer.status == 413 and answer.body["error"]["code"] == "FILE_TOO_LARGE", answer.body
    assert answer.sent_when_answered < LIMIT + IN_FLIGHT < answer.length, answer
    # The refusal is recorded, under what was read of it; the file before it was taken.
    refused = answer.body["error"]["detail"]["document_id"]
    r = await client.get(f"/api/v1/documents/{refused}", headers=bearer(owner))
    assert r.json()["status"] == "failed" and r.json()["error"]["code"] == "FILE_TOO_LARGE", r.text
    assert r.json()["filename"] == "huge.txt" and r.json()["size"] == LIMIT + 1
    tenant = (await client.get("/api/v1/auths/me", headers=bearer(owner))).json()["tenant_id"]
    taken = document_id_for(tenant, f"knowledge/{kb}", hashlib.sha256(sent_text(small)).hexdigest())
    r = await client.get(f"/api/v1/documents/{taken}", headers=bearer(owner))
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["size"] == small.size, r.text


async def test_a_chat_file_past_the_limit_is_refused_the_same_way(
    client: httpx.AsyncClient, live: str, limited: Container
) -> None:
    owner = await sign_up(client, "owner@example.com")
    chat = (await client.post("/api/v1/chats", json={}, headers=bearer(owner))).json()["id"]
    answer = await post_streaming(live, f"/api/v1/chats/{chat}/files", [TextFile("huge.txt", 70 * MiB)], bearer(owner))
    assert answer.status == 413 and answer.body["error"]["code"] == "FILE_TOO_LARGE", answer.body
    assert answer.sent_when_answered < LIMIT + IN_FLIGHT < answer.length, answer


async def test_one_file_too_many_ends_the_request_and_nothing_is_stored(
    client: httpx.AsyncClient, live: str, limited: Container
) -> None:
    owner = await sign_up(client, "owner@example.com")
    kb = await create_kb(client, owner)
    files = [TextFile(f"n{n}.txt", 2_000) for n in range(MAX_FILES_PER_REQUEST + 1)]
    answer = await post_streaming(live, f"/api/v1/knowledge/{kb}/documents", files, bearer(owner))
    assert answer.status == 400 and answer.body["error"]["code"] == "TOO_MANY_FILES", answer.body
    r = await client.get(f"/api/v1/knowledge/{kb}/documents", headers=bearer(owner))
    assert r.json()["items"] == []
    tenant = (await client.get("/api/v1/auths/me", headers=bearer(owner))).json()["tenant_id"]
    first = document_id_for(tenant, f"knowledge/{kb}", hashlib.sha256(sent_text(files[0])).hexdigest())
    assert (await client.get(f"/api/v1/documents/{first}", headers=bearer(owner))).status_code == 404

    answer = await post_streaming(live, f"/api/v1/knowledge/{kb}/documents", files[:-1], bearer(owner))
    assert answer.status == 202 and len(answer.body) == MAX_FILES_PER_REQUEST, answer.body


async def test_a_declared_length_past_what_an_upload_may_carry_is_refused_unread(
    client: httpx.AsyncClient, live: str, limited: Container
) -> None:
    owner = await sign_up(client, "owner@example.com")
    kb = await create_kb(client, owner)
    too_long = TextFile("long.txt", upload_body_limit(LIMIT))  # with its framing, one byte too many and more
    answer = await post_streaming(live, f"/api/v1/knowledge/{kb}/documents", [too_long], bearer(owner))
    assert answer.status == 413 and answer.body["error"]["code"] == "REQUEST_TOO_LARGE", answer.body
    assert answer.body["error"]["detail"]["limit"] == upload_body_limit(LIMIT)
    assert answer.sent_when_answered < IN_FLIGHT < answer.length, answer


async def test_a_caller_who_may_not_write_there_is_refused_before_the_body_is_read(
    client: httpx.AsyncClient, live: str, limited: Container
) -> None:
    owner = await sign_up(client, "owner@example.com")
    reader = await sign_up(client, "reader@example.com")
    kb = await create_kb(client, owner)
    r = await client.put(f"/api/v1/knowledge/{kb}/access/user:{reader['id']}", json={"level": "read"}, headers=bearer(owner))
    assert r.status_code == 200, r.text
    files = [TextFile(f"n{n}.txt", LIMIT) for n in range(MAX_FILES_PER_REQUEST)]
    answer = await post_streaming(live, f"/api/v1/knowledge/{kb}/documents", files, bearer(reader))
    assert answer.status == 403 and answer.body["error"]["code"] == "KNOWLEDGE_READ_ONLY", answer.body
    assert answer.sent_when_answered < answer.length
    r = await client.get(f"/api/v1/knowledge/{kb}/documents", headers=bearer(owner))
    assert r.json()["items"] == []


async def test_bodies_that_are_not_well_formed_multipart_are_a_4xx(client: httpx.AsyncClient, limited: Container) -> None:
    owner = await sign_up(client, "owner@example.com")
    kb = await create_kb(client, owner)
    path = f"/api/v1/knowledge/{kb}/documents"
    cases = {
        "no boundary": ("multipart/form-data", b"--x\r\n\r\n--x--\r\n", "INVALID_MULTIPART"),
        "not multipart at all": ("multipart/form-data; boundary=x", b"\x00\xff" * 500, "INVALID_MULTIPART"),
        "cut short": (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nsome text',
            "INVALID_MULTIPART",
        ),
        "no disposition": ("multipart/form-data; boundary=x", b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n", "INVALID_MULTIPART"),
        "fields but no file": (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot a file\r\n--x--\r\n',
            "NO_FILE",
        ),
        "empty form": ("multipart/form-data; boundary=x", b"--x--\r\n", "NO_FILE"),
    }
    for name, (content_type, body, code) in cases.items():
        r = await client.post(path, content=body, headers={**bearer(owner), "Content-Type": content_type})
        assert r.status_code == 400 and error_code(r) == code, (name, r.text)
    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"url": "http://example.com/"}'

    r = await client.post(path, content=chunked(), headers={**bearer(owner), "Content-Type": "application/json"})
    assert r.status_code == 400 and error_code(r) == "LENGTH_REQUIRED", r.text
    r = await client.post(
        path, content=b'{"url": "' + b"x" * 2_000_000 + b'"}', headers={**bearer(owner), "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and error_code(r) == "REQUEST_TOO_LARGE", r.text  # a JSON body stays small

    # Fields that are not files are read past, whatever their size; files keep their names and order.
    r = await client.post(
        path,
        data={"note": "y" * 300_000},
        files=[("files", ("one.md", b"# One\n\nfirst", "text/markdown")), ("file", ("two.txt", b"second", "text/plain"))],
        headers=bearer(owner),
    )
    assert r.status_code == 202, r.text
    assert [(d["filename"], d["media_type"]) for d in r.json()] == [("one.md", "text/markdown"), ("two.txt", "text/plain")]
