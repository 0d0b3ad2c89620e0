"""End to end on the embedded engines with the real SmolLM2-135M-Instruct on CPU: a user asks, the worker
answers with the local model, the answer streams over SSE, and the chat read model holds both messages."""

from __future__ import annotations

import json

import httpx

from tests.conftest import Pipeline
from tests.sse import sse_events

PASSWORD = "correct horse 9"


async def test_the_local_model_answers_paris_and_the_chat_keeps_both_messages(
    client: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await client.post("/api/v1/auths/register", json={"email": "ann@example.com", "password": PASSWORD, "name": "Ann"})
    tokens = (await client.post("/api/v1/auths/login", json={"email": "ann@example.com", "password": PASSWORD})).json()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}

    await pipeline.settle()  # the models read model holds the built-in model once projected
    models = (await client.get("/api/v1/models", headers=auth)).json()
    assert "smollm2" in json.dumps(models)

    chat = (await client.post("/api/v1/chats", json={"title": "geography"}, headers=auth)).json()
    r = await client.post(
        f"/api/v1/chats/{chat['id']}/messages",
        json={"content": "What is the capital of France?", "model": "smollm2", "params": {"temperature": 0, "max_tokens": 40}},
        headers=auth,
    )
    assert r.status_code == 202, r.text
    generation_id = r.json()["generation_id"]

    r = await client.get(f"/api/v1/generations/{generation_id}/stream", headers=auth, timeout=300)
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    streamed = "".join(data.get("text", "") for name, data in events if name == "token")
    done = [data for name, data in events if name == "done"]
    assert "Paris" in streamed, streamed
    assert done and done[-1]["status"] == "completed"
    assert done[-1]["usage"]["completion_tokens"] > 0 and done[-1]["usage"]["prompt_tokens"] > 0

    await pipeline.settle()
    full = (await client.get(f"/api/v1/chats/{chat['id']}", headers=auth)).json()
    roles = [m["role"] for m in full["messages"]]
    assert roles == ["user", "assistant"]
    answer = full["messages"][1]
    assert answer["content"] == streamed and "Paris" in answer["content"]
    assert answer["completion_tokens"] == done[-1]["usage"]["completion_tokens"]
    assert answer["prompt_tokens"] == done[-1]["usage"]["prompt_tokens"]
    assert answer["model"] == "smollm2"
