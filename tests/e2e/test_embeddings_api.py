"""Embeddings: OpenAI's ``/v1/embeddings`` on the local model and on a provider's model (a local server
that speaks OpenAI's wire protocol), knowledge bases on a provider's model of any dimension (3,072 is past
what pgvector can index, so it is searched exactly), and a switch to another embedding model that
re-embeds in the background while search keeps answering, without a gap."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from schema.tables import chunks, vector_spaces
from tests import corpus
from tests.conftest import Pipeline
from tests.e2e.test_chat_api import bearer, error_code, sign_up
from tests.e2e.test_knowledge_api import create_kb, upload, wait_documents
from tests.fakes.upstreams import FakeUpstreams
from workers.bootstrap import Container

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreams]:
    with FakeUpstreams() as fake:
        yield fake


async def provider(client: httpx.AsyncClient, admin: dict[str, Any], upstream: FakeUpstreams, *models: str) -> str:
    r = await client.post(
        "/api/v1/providers",
        json={"name": "embeddings", "kind": "openai", "base_url": upstream.openai_url, "api_key": "sk-embed"},
        headers=bearer(admin),
    )
    assert r.status_code == 201, r.text
    for name in models:
        r = await client.post(
            "/api/v1/models", json={"name": name, "provider": "embeddings", "upstream_model": name}, headers=bearer(admin)
        )
        assert r.status_code == 201, r.text
    return str(r.json()["provider_id"]) if models else ""


async def test_v1_embeddings_on_the_local_model_and_on_a_provider(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline, upstream: FakeUpstreams
) -> None:
    admin = await sign_up(client, "admin@example.com")
    r = await client.post(
        "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a cat on a mat", "a kitten on a rug"]}, headers=bearer(admin)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 384 and body["usage"]["prompt_tokens"] > 0
    r = await client.post(
        "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "a cat on a mat", "encoding_format": "base64"}, headers=bearer(admin)
    )
    packed = base64.b64decode(r.json()["data"][0]["embedding"])
    assert struct.unpack("<384f", packed)[0] == pytest.approx(body["data"][0]["embedding"][0], abs=1e-6)

    await provider(client, admin, upstream, "fake-embed-8")
    r = await client.post("/v1/embeddings", json={"model": "fake-embed-8", "input": "hello world"}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 8 and r.json()["usage"]["prompt_tokens"] == 2

    # OpenAI's error shape: every invalid request 400, lower-case codes.
    bad = [
        ({"model": "all-minilm-l6-v2", "input": ""}, 400, "empty_input"),
        ({"model": "all-minilm-l6-v2", "input": []}, 400, "empty_input"),
        ({"model": "all-minilm-l6-v2", "input": [1, 2, 3]}, 400, "unsupported_input"),
        ({"model": "all-minilm-l6-v2", "input": "x", "dimensions": 12}, 400, "unsupported_dimensions"),
        ({"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "hex"}, 400, "invalid_encoding_format"),
        ({"model": "nope", "input": "x"}, 404, "model_not_found"),
        ({"model": "smollm2", "input": "x"}, 400, "model_cannot_embed"),
    ]
    for body, status, code in bad:
        r = await client.post("/v1/embeddings", json=body, headers=bearer(admin))
        assert r.status_code == status and r.json()["error"]["code"] == code, (body, r.text)


async def test_a_knowledge_base_on_a_3072_dimension_provider_model_is_indexed_and_searched(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline, upstream: FakeUpstreams
) -> None:
    admin = await sign_up(client, "admin@example.com")
    provider_id = await provider(client, admin, upstream, "fake-embed-3072")
    r = await client.post(
        "/api/v1/knowledge",
        json={"name": "Wide", "embedding_model": "fake-embed-9999-nope", "provider_id": provider_id},
        headers=bearer(admin),
    )
    assert r.status_code == 422 and error_code(r) == "EMBEDDING_MODEL_UNAVAILABLE", r.text
    kb = await create_kb(client, admin, name="Wide", embedding_model="fake-embed-3072", provider_id=provider_id)
    ids = {}
    for name in ("text", "markdown", "html"):
        sample = corpus.SAMPLES[name]
        ids[name] = (await upload(client, admin, kb, sample.filename, sample.data)).json()[0]["id"]
    docs = await wait_documents(client, admin, list(ids.values()))
    assert all(d["status"] == "indexed" for d in docs.values()), docs
    for name, document_id in ids.items():
        sample = corpus.SAMPLES[name]
        r = await client.get(f"/api/v1/knowledge/{kb}/search", params={"q": sample.question}, headers=bearer(admin))
        assert r.json()["items"][0]["document_id"] == document_id, (name, r.json())


async def test_changing_the_embedding_model_reembeds_and_switches_without_a_gap_in_search(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline, upstream: FakeUpstreams
) -> None:
    admin = await sign_up(client, "admin@example.com")
    provider_id = await provider(client, admin, upstream, "fake-embed-64")
    kb = await create_kb(client, admin)
    ids = {}
    for name in ("text", "markdown", "pdf", "docx"):
        sample = corpus.SAMPLES[name]
        ids[name] = (await upload(client, admin, kb, sample.filename, sample.data)).json()[0]["id"]
    await wait_documents(client, admin, list(ids.values()))
    question = corpus.SAMPLES["pdf"].question

    async def top() -> str:
        r = await client.get(f"/api/v1/knowledge/{kb}/search", params={"q": question}, headers=bearer(admin))
        assert r.status_code == 200, r.text
        if not r.json()["items"]:
            async with container.engine.connect() as conn:
                spaces = (await conn.execute(select(chunks.c.space, func.count()).group_by(chunks.c.space))).all()
                vs = (await conn.execute(select(vector_spaces))).all()
            raise AssertionError(f"search answered nothing: chunks {spaces}, spaces {vs}")
        return str(r.json()["items"][0]["document_id"])

    assert await top() == ids["pdf"]
    r = await client.patch(
        f"/api/v1/knowledge/{kb}", json={"embedding_model": "fake-embed-64", "provider_id": provider_id}, headers=bearer(admin)
    )
    assert r.status_code == 200 and r.json()["pending_embedding"]["model"] == "fake-embed-64", r.text
    r = await client.patch(
        f"/api/v1/knowledge/{kb}", json={"embedding_model": "fake-embed-64", "provider_id": provider_id}, headers=bearer(admin)
    )
    assert r.status_code == 409 and error_code(r) == "EMBEDDING_CHANGE_PENDING"

    space = f"{provider_id}/fake-embed-64"
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # searching all along: every search answers, before, during and after the switch
        assert await top() == ids["pdf"]
        async with container.engine.connect() as conn:
            spaces = (await conn.execute(select(chunks.c.space, func.count()).where(chunks.c.knowledge_id == kb).group_by(chunks.c.space))).all()
        if [s for s, _ in spaces] == [space]:
            break
        assert asyncio.get_running_loop().time() < deadline, spaces
        await asyncio.sleep(0.05)
    await pipeline.settle()
    r = await client.get(f"/api/v1/knowledge/{kb}", headers=bearer(admin))
    assert r.json()["embedding"] == {"provider_id": provider_id, "model": "fake-embed-64"} and r.json()["pending_embedding"] is None
    # New documents go straight into the new space.
    sample = corpus.SAMPLES["html"]
    new = (await upload(client, admin, kb, sample.filename, sample.data)).json()[0]["id"]
    await wait_documents(client, admin, [new])
    r = await client.get(f"/api/v1/knowledge/{kb}/search", params={"q": sample.question}, headers=bearer(admin))
    assert r.json()["items"][0]["document_id"] == new
