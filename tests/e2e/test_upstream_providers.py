"""Remote providers through the whole pipeline: an admin registers an OpenAI-compatible and an Ollama
provider (local servers that speak those exact wire protocols), users chat with their models, answers
stream back; an upstream error becomes a clear SSE error event and GenerationFailed, with no hang."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from domain.chats import Generation
from tests.conftest import Pipeline
from tests.fakes.upstreams import FakeUpstreams
from tests.sse import sse_events

PASSWORD = "correct horse 9"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreams]:
    with FakeUpstreams(cut_after=3) as fake:
        yield fake


async def _admin(client: httpx.AsyncClient) -> dict[str, str]:
    await client.post("/api/v1/auths/register", json={"email": "ops@example.com", "password": PASSWORD, "name": "Ops"})
    r = await client.post("/api/v1/auths/login", json={"email": "ops@example.com", "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _ask(client: httpx.AsyncClient, auth: dict[str, str], model: str, content: str) -> tuple[str, list]:
    chat = (await client.post("/api/v1/chats", json={"title": model}, headers=auth)).json()
    r = await client.post(
        f"/api/v1/chats/{chat['id']}/messages", json={"content": content, "model": model}, headers=auth
    )
    assert r.status_code == 202, r.text
    generation_id = r.json()["generation_id"]
    stream = await client.get(f"/api/v1/generations/{generation_id}/stream", headers=auth, timeout=60)
    assert stream.status_code == 200, stream.text
    return generation_id, sse_events(stream.text)


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_remote_provider_answers_stream_and_upstream_errors_fail_cleanly(
    client: httpx.AsyncClient, container, pipeline: Pipeline, upstream: FakeUpstreams, kind: str
) -> None:
    auth = await _admin(client)
    base_url = upstream.openai_url if kind == "openai" else upstream.ollama_url
    r = await client.post(
        "/api/v1/providers",
        json={"name": "upstream", "kind": kind, "base_url": base_url, "api_key": "sk-upstream-secret"},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    assert "sk-upstream-secret" not in r.text
    for name, upstream_model in (("remote", "fake-ok"), ("broken", "fake-500"), ("cut", "fake-cut")):
        r = await client.post(
            "/api/v1/models", json={"name": name, "provider": "upstream", "upstream_model": upstream_model}, headers=auth
        )
        assert r.status_code == 201, r.text

    # A normal answer is proxied token by token, with the upstream's usage.
    generation_id, events = await _ask(client, auth, "remote", "hello there")
    text = "".join(d.get("text", "") for n, d in events if n == "token")
    assert text == "You said: hello there"
    done = [d for n, d in events if n == "done"][-1]
    assert done["status"] == "completed" and done["usage"]["completion_tokens"] > 0

    # An upstream HTTP error: an error event, then done; the generation failed with the upstream's code.
    generation_id, events = await _ask(client, auth, "broken", "hello")
    errors = [d for n, d in events if n == "error"]
    assert errors and errors[0]["code"] == "UPSTREAM_HTTP_ERROR"
    assert [d for n, d in events if n == "done"][-1]["status"] == "failed"
    generation = await container.store.call(container.store.get, Generation, uuid.UUID(generation_id))
    assert generation.status == "failed"

    # A connection cut mid-stream: the partial text is kept, the failure is clear, nothing hangs.
    generation_id, events = await _ask(client, auth, "cut", "one two three four five six")
    assert [d for n, d in events if n == "error"][0]["code"] == "UPSTREAM_DISCONNECTED"
    partial = "".join(d.get("text", "") for n, d in events if n == "token")
    generation = await container.store.call(container.store.get, Generation, uuid.UUID(generation_id))
    assert generation.status == "failed" and generation.text == partial and partial

    # The provider's key went upstream (decrypted by the worker), and never came back out.
    sent = {req.headers.get("authorization") for req in upstream.requests if req.path.endswith("/chat/completions") or req.path.endswith("/api/chat")}
    assert "Bearer sk-upstream-secret" in sent
    providers = (await client.get("/api/v1/providers", headers=auth)).json()
    assert "sk-upstream-secret" not in json.dumps(providers)
