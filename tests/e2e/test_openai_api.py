"""The OpenAI-compatible routes, driven by the official ``openai`` package with a parley API key: a
completion (recorded as a chat like any other), a stream with its usage chunk, the model list, and
errors in OpenAI's shape."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from domain.chats import Generation
from tests.conftest import Pipeline
from workers.bootstrap import Container

PASSWORD = "correct horse 9"
# A 1x1 PNG.
PNG_URL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


# --- helpers -------------------------------------------------------------------------------------------
def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def sign_up(http: httpx.AsyncClient, email: str) -> dict[str, Any]:
    r = await http.post(
        "/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": "Someone"}
    )
    assert r.status_code == 201, r.text
    r = await http.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def echo_key(http: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    """An API key of a user whose tenant has an open ``echo`` model; and the user's tokens."""
    admin = await sign_up(http, "admin@example.com")
    r = await http.post("/api/v1/providers", json={"name": "echoes", "kind": "echo"}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    r = await http.post(
        "/api/v1/models",
        json={"name": "echo", "provider": "echoes", "upstream_model": "echo"},
        headers=bearer(admin),
    )
    assert r.status_code == 201, r.text
    user = await sign_up(http, "user@example.com")
    r = await http.post("/api/v1/auths/api-keys", json={"name": "sdk"}, headers=bearer(user))
    assert r.status_code == 201, r.text
    assert r.json()["key"].startswith("pk_")
    return str(r.json()["key"]), user


def sdk(key: str, http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    base_url = str(http.base_url).rstrip("/") + "/v1"
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, http_client=http, max_retries=0)


async def head(container: Container) -> int:
    return await container.store.call(container.store.max_id)


# --- tests ---------------------------------------------------------------------------------------------
async def test_a_completion_answers_the_last_message_and_is_recorded_as_a_chat(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    key, user = await echo_key(client)
    ai = sdk(key, client)
    raw = await ai.chat.completions.with_raw_response.create(
        model="echo",
        messages=[
            {"role": "system", "content": "You repeat things."},
            {"role": "user", "content": "say something"},
            {"role": "assistant", "content": "something"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "now say "}, {"type": "text", "text": "this please"}],
            },
        ],
        temperature=0,
        top_p=0.5,
        seed=7,
        max_tokens=50,
        user="end-user-1",
    )
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "echo" and len(completion.choices) == 1
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "now say this please",
        "stop",
    )
    assert completion.usage is not None
    assert (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        completion.usage.total_tokens,
    ) == (
        10,
        4,
        14,
    )

    generation_id = uuid.UUID(raw.headers["x-parley-generation-id"])
    generation = await container.store.call(container.store.get, Generation, generation_id)
    assert generation.params == {"temperature": 0.0, "top_p": 0.5, "seed": 7, "max_tokens": 50}
    await pipeline.settle()
    chats = (await client.get("/api/v1/chats", headers=bearer(user))).json()["items"]
    assert [(c["title"], c["source"]) for c in chats] == [("say something", "openai")]
    chat = (await client.get(f"/api/v1/chats/{chats[0]['id']}", headers=bearer(user))).json()
    assert [(m["role"], m["content"]) for m in chat["messages"]] == [
        ("system", "You repeat things."),
        ("user", "say something"),
        ("assistant", "something"),
        ("user", "now say this please"),
        ("assistant", "now say this please"),
    ]


async def test_a_stream_sends_chunks_then_the_usage_then_done(
    live: str, container: Container, pipeline: Pipeline
) -> None:
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        key, _ = await echo_key(http)
        ai = sdk(key, http)
        words = [f"w{i}" for i in range(1, 41)]
        stream = await ai.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": " ".join(words)}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == " ".join(words)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
            40,
            40,
            80,
        )
        assert all(c.usage is None for c in chunks[:-1])
        assert len({c.id for c in chunks}) == 1

        # max_completion_tokens and stop are honoured; without include_usage there is no usage chunk.
        stream = await ai.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "a b c d e f"}],
            stream=True,
            max_completion_tokens=3,
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a b c"
        assert chunks[-1].choices[0].finish_reason == "length" and all(c.usage is None for c in chunks)
        completion = await ai.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "one two three four"}], stop=[" three"]
        )
        assert completion.choices[0].message.content == "one two"

        # The wire format itself: OpenAI's framing, ending with [DONE].
        r = await http.post(
            "/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in r.text.split("\n\n") if f]
        assert all(f.startswith("data: ") for f in frames) and frames[-1] == "data: [DONE]"


async def test_the_model_list_holds_the_models_the_caller_may_use(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    key, _ = await echo_key(client)
    await pipeline.settle()
    ai = sdk(key, client)
    models = [m async for m in ai.models.list()]
    assert sorted(m.id for m in models) == ["echo", "smollm2"]
    assert all(m.object == "model" and m.created > 0 for m in models)
    assert (await ai.models.retrieve("echo")).id == "echo"
    with pytest.raises(openai.NotFoundError):
        await ai.models.retrieve("nosuchmodel")


async def test_errors_take_openai_shape_and_write_nothing(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    key, _ = await echo_key(client)
    ai = sdk(key, client)
    hello = [{"role": "user", "content": "hello"}]
    before = await head(container)

    async def refused(
        error: type[openai.APIStatusError], status: int, code: str | None, **request: Any
    ) -> Any:
        with pytest.raises(error) as caught:
            await ai.chat.completions.create(**{"model": "echo", "messages": hello, **request})
        assert caught.value.status_code == status
        body = caught.value.body
        assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
        if code is not None:
            assert body["code"] == code, body
        return body

    body = await refused(openai.BadRequestError, 400, "unsupported_n", n=2)
    assert (body["param"], body["type"]) == ("n", "invalid_request_error")
    body = await refused(openai.NotFoundError, 404, "model_not_found", model="nosuchmodel")
    body = await refused(openai.BadRequestError, 400, "invalid_parameter", temperature=3)
    assert body["param"] == "temperature"
    await refused(openai.BadRequestError, 400, "invalid_parameter", max_tokens=-1)
    await refused(openai.BadRequestError, 400, "invalid_parameter", top_p=0)
    await refused(openai.BadRequestError, 400, "empty_message", messages=[{"role": "user", "content": " "}])
    await refused(openai.BadRequestError, 400, "invalid_role", messages=[{"role": "wizard", "content": "hi"}])
    await refused(
        openai.BadRequestError,
        400,
        "unsupported_content",
        messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}],
    )
    await refused(
        openai.PermissionDeniedError,
        403,
        "url_fetch_disabled",
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
    )
    await refused(
        openai.BadRequestError,
        400,
        "images_not_supported",
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}]}],
    )
    await refused(openai.BadRequestError, 400, "unsupported_parameter", extra_body={"top_k": 5})
    await refused(openai.BadRequestError, 400, "unsupported_parameter", logprobs=True)
    await refused(openai.BadRequestError, 400, "tool_call_id_required", messages=[{"role": "tool", "content": "42"}])
    await refused(openai.BadRequestError, 400, "invalid_request", messages=[])
    await refused(
        openai.APIStatusError, 413, "message_too_large", messages=[{"role": "user", "content": "x" * 100_001}]
    )

    with pytest.raises(openai.AuthenticationError) as caught:
        await sdk("pk_not_a_real_key", client).chat.completions.create(model="echo", messages=hello)  # type: ignore[arg-type]
    assert caught.value.status_code == 401 and set(caught.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    assert caught.value.body["type"] == "authentication_error"  # type: ignore[index]
    r = await client.post(
        "/v1/chat/completions", content=b"{oops", headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert await head(container) == before
