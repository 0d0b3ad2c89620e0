"""``/v1/chat/completions`` as complete as a provider can honour, driven by the official ``openai`` SDK over
real HTTP against a live parley, in front of a local server speaking OpenAI's wire protocol: tool calling
(non-streamed and streamed, the call -> result -> answer loop, recorded in the chat, the audit log and the
usage read model), images, every sampling parameter reaching the upstream, ``response_format``, a prompt
past the context window answered 400 before any byte is streamed, tools ignored (and recorded) for a model
that cannot call them, any role last, model names in any case and by id, and no silent cap on answers."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from adapters.blobs import BlobMissing
from domain.chats import Chat, Generation
from schema.tables import audit_log, generations, messages, usage_tools
from tests.conftest import Pipeline
from tests.fakes.upstreams import FakeUpstreams
from workers.bootstrap import Container

PASSWORD = "correct horse 9"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
LOOKUP = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}},
}
ALL_PARAMS = ["seed", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty",
              "logit_bias", "response_format", "reasoning_effort"]  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreams]:
    with FakeUpstreams(context_words=200) as fake:
        yield fake


class Setup:
    def __init__(self, live: str, admin: dict[str, str], user: dict[str, str], key: str) -> None:
        self.live = live
        self.admin = admin
        self.user = user
        self.key = key

    def sdk(self, **headers: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.live}/v1", api_key=self.key, max_retries=0, default_headers=headers)


async def _login(http: httpx.AsyncClient, email: str) -> dict[str, str]:
    r = await http.post("/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": "Someone"})
    assert r.status_code == 201, r.text
    r = await http.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
async def setup(live: str, pipeline: Pipeline, upstream: FakeUpstreams) -> AsyncIterator[Setup]:
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        admin = await _login(http, "admin@example.com")
        r = await http.post(
            "/api/v1/providers", json={"name": "up", "kind": "openai", "base_url": upstream.openai_url}, headers=admin
        )
        assert r.status_code == 201, r.text
        capable = {"params": ALL_PARAMS, "context_window": 4096, "tools": True, "vision": True}
        for name, upstream_model, caps in (
            ("Tools", "fake-tools", capable),
            ("plain", "fake-ok", {"tools": False, "vision": False, "params": []}),
        ):
            r = await http.post(
                "/api/v1/models",
                json={"name": name, "provider": "up", "upstream_model": upstream_model, "capabilities": caps},
                headers=admin,
            )
            assert r.status_code == 201, r.text
        await pipeline.settle()  # /v1/models lists the models read model: both listed once projected
        user = await _login(http, "user@example.com")
        r = await http.post("/api/v1/auths/api-keys", json={"name": "sdk"}, headers=user)
        assert r.status_code == 201, r.text
        yield Setup(live, admin, user, r.json()["key"])


def _last_upstream_body(upstream: FakeUpstreams) -> dict[str, Any]:
    return next(r.body for r in reversed(upstream.requests) if r.path == "/v1/chat/completions")


async def _rows(c: Container, stmt: Any) -> list[Any]:
    async with c.engine.connect() as conn:
        return list(await conn.execute(stmt))


# --- tools -----------------------------------------------------------------------------------------------
async def test_a_tool_call_loop_non_streamed_is_answered_and_recorded(
    setup: Setup, container: Container, pipeline: Pipeline, upstream: FakeUpstreams
) -> None:
    ai = setup.sdk(**{"X-Parley-Chat-Id": "loop-1"})
    question = [{"role": "user", "content": "weather in Oslo"}]
    first = await ai.chat.completions.create(model="tools", messages=question, tools=[WEATHER, LOOKUP])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.type, c.function.name) for c in calls] == [("function", "get_weather"), ("function", "lookup")]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"query": "weather in Oslo", "n": 0},
        {"query": "weather in Oslo", "n": 1},
    ]
    assert all(c.id.startswith("call_") and c.id != "call_up0" for c in calls)  # parley's own ids
    sent = _last_upstream_body(upstream)
    assert sent["tools"] == [WEATHER, LOOKUP]

    history = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 21 C"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "Oslo is the capital of Norway"},
    ]
    answer = await ai.chat.completions.create(model="tools", messages=history, tools=[WEATHER, LOOKUP])
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "The tool said: Oslo is the capital of Norway"
    # The upstream got the history in OpenAI's shape, with the calls and their results.
    body = _last_upstream_body(upstream)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in body["messages"][1]["tool_calls"]] == [c.id for c in calls]
    assert body["messages"][2]["tool_call_id"] == calls[0].id

    # One chat holds the loop: the question, the calls, both results (linked, timed), the answer.
    await pipeline.settle()
    chat_rows = await _rows(container, select(messages).order_by(messages.c.seq))
    assert [r.role for r in chat_rows] == ["user", "assistant", "tool", "tool", "assistant"]
    assert len({r.chat_id for r in chat_rows}) == 1
    call_row = chat_rows[1]
    assert [c["id"] for c in call_row.tool_calls] == [c.id for c in calls]
    assert [(r.tool_call_id, r.tool_name) for r in chat_rows[2:4]] == [
        (calls[0].id, "get_weather"),
        (calls[1].id, "lookup"),
    ]
    assert all(r.tool_latency_ms is not None and r.tool_latency_ms >= 0 for r in chat_rows[2:4])
    # The audit log has the calls and the results as events; usage counts them per tool.
    actions = [r.action for r in await _rows(container, select(audit_log.c.action).order_by(audit_log.c.seq))]
    assert actions.count("ToolResultPosted") == 2
    completed = [
        r.detail for r in await _rows(container, select(audit_log.c.detail).where(audit_log.c.action == "GenerationCompleted"))
    ]
    # The calls' arguments are personal (sealed in the audit log); the tools' names are not.
    assert any(d.get("tool_names") == ["get_weather", "lookup"] for d in completed)
    assert all(str(d["tool_calls"]).startswith("enc:v1:") for d in completed if d.get("tool_calls"))
    tools = {r.tool: r for r in await _rows(container, select(usage_tools))}
    assert (tools["get_weather"].calls, tools["get_weather"].results) == (1, 1)
    assert tools["lookup"].result_bytes == len(b"Oslo is the capital of Norway")


async def test_tool_calls_stream_as_deltas_the_sdk_reassembles(setup: Setup, pipeline: Pipeline) -> None:
    ai = setup.sdk()
    messages = [{"role": "user", "content": "look it up"}]
    async with ai.chat.completions.stream(
        model="tools", messages=messages, tools=[WEATHER], parallel_tool_calls=False
    ) as stream:
        deltas = [event async for event in stream if event.type == "chunk"]
        final = await stream.get_final_completion()
    pieces = [c.choices[0].delta.tool_calls for c in (e.chunk for e in deltas) if c.choices and c.choices[0].delta.tool_calls]
    # A header, then argument fragments: in chunks of their own, or several in one chunk when the engine's
    # output arrived together (under load); OpenAI's clients merge deltas by index either way.
    assert sum(len(p) for p in pieces) >= 2
    assert final.choices[0].finish_reason == "tool_calls"
    calls = final.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"query": "look it up", "n": 0})
    ]
    # tool_choice naming a function calls that one.
    forced = await ai.chat.completions.create(
        model="tools", messages=messages, tools=[WEATHER, LOOKUP],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    )  # fmt: skip
    assert [c.function.name for c in forced.choices[0].message.tool_calls or []] == ["lookup"]
    with pytest.raises(openai.BadRequestError) as caught:
        await ai.chat.completions.create(
            model="tools", messages=messages, tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )  # fmt: skip
    assert caught.value.body["code"] == "invalid_tool_choice"  # type: ignore[index]


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    text=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(str.strip),
    parallel=st.booleans(),
)
async def test_streamed_tool_call_deltas_reassemble_to_the_non_streamed_answer(
    setup: Setup, pipeline: Pipeline, text: str, parallel: bool
) -> None:
    ai = setup.sdk()
    request: dict[str, Any] = {
        "model": "tools",
        "messages": [{"role": "user", "content": text}],
        "tools": [WEATHER, LOOKUP],
        "parallel_tool_calls": parallel,
        "seed": 1,
    }
    whole = (await ai.chat.completions.create(**request)).choices[0]
    async with ai.chat.completions.stream(**request) as stream:
        streamed = (await stream.get_final_completion()).choices[0]

    def shape(message: Any) -> list[tuple[str, str]]:
        return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]

    assert shape(streamed.message) == shape(whole.message) and shape(whole.message)
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"


async def test_tools_sent_to_a_model_that_cannot_call_them_are_ignored_and_recorded(
    setup: Setup, container: Container, pipeline: Pipeline, upstream: FakeUpstreams
) -> None:
    raw = await setup.sdk().chat.completions.with_raw_response.create(
        model="plain", messages=[{"role": "user", "content": "hello"}], tools=[WEATHER, LOOKUP]
    )
    assert raw.parse().choices[0].message.content == "You said: hello"
    assert raw.headers["x-parley-tools-ignored"] == "2"
    assert "tools" not in _last_upstream_body(upstream)
    generation = await container.store.call(container.store.get, Generation, uuid.UUID(raw.headers["x-parley-generation-id"]))
    assert generation.tools_ignored == ["get_weather", "lookup"] and generation.tools is None


# --- images, parameters, formats ------------------------------------------------------------------------
async def test_images_reach_the_upstream_from_the_blob_store_and_never_sit_in_events(
    setup: Setup, container: Container, pipeline: Pipeline
) -> None:
    content = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": PNG_URL}}]
    raw = await setup.sdk().chat.completions.with_raw_response.create(
        model="tools", messages=[{"role": "user", "content": content}]
    )
    assert raw.parse().choices[0].message.content == f"You said: what is this [image image/png {len(PNG)} bytes]"
    chat = await container.store.call(container.store.get, Chat, uuid.UUID(raw.headers["x-parley-chat-id"]))
    image = next(m for m in chat.messages.values() if m["role"] == "user")["images"][0]
    assert image["media_type"] == "image/png" and len(image["sha256"]) == 64
    assert await container.knowledge.blobs.get(chat.tenant_id, image["sha256"]) == PNG
    encoded = base64.b64encode(PNG).decode()
    everything = await container.store.call(container.store.read, 1, 100_000)
    assert not any(encoded in json.dumps(e.data, default=str) for e in everything)
    with pytest.raises(BlobMissing):
        await container.knowledge.blobs.get(chat.tenant_id, "0" * 64)
    # Not an image: refused by what the bytes are, whatever the URL claims.
    with pytest.raises(openai.APIStatusError) as caught:
        fake = "data:image/png;base64," + base64.b64encode(b"%PDF-1.4 not an image").decode()
        await setup.sdk().chat.completions.create(
            model="tools", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": fake}}]}]
        )
    assert caught.value.status_code == 415 and caught.value.body["code"] == "unsupported_image_type"  # type: ignore[index]


async def test_every_sampling_parameter_reaches_the_upstream(setup: Setup, pipeline: Pipeline, upstream: FakeUpstreams) -> None:
    await setup.sdk().chat.completions.create(
        model="tools",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.3,
        top_p=0.9,
        max_tokens=20,
        stop=["zzz"],
        seed=42,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        logit_bias={"50256": -100},
        reasoning_effort="low",
        extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    body = _last_upstream_body(upstream)
    assert {k: body.get(k) for k in (
        "temperature", "top_p", "max_tokens", "stop", "seed", "frequency_penalty", "presence_penalty", "logit_bias",
        "reasoning_effort", "top_k", "min_p", "repetition_penalty",
    )} == {
        "temperature": 0.3, "top_p": 0.9, "max_tokens": 20, "stop": ["zzz"], "seed": 42, "frequency_penalty": 0.5,
        "presence_penalty": -0.5, "logit_bias": {"50256": -100.0}, "reasoning_effort": "low", "top_k": 40,
        "min_p": 0.05, "repetition_penalty": 1.1,
    }  # fmt: skip
    # A model that does not honour one refuses it by name, rather than dropping it.
    with pytest.raises(openai.BadRequestError) as caught:
        await setup.sdk().chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}], seed=1)
    assert (caught.value.body["code"], caught.value.body["param"]) == ("unsupported_parameter", "seed")  # type: ignore[index]


async def test_response_format_json_reaches_the_upstream(setup: Setup, pipeline: Pipeline, upstream: FakeUpstreams) -> None:
    ai = setup.sdk()
    answer = await ai.chat.completions.create(
        model="tools", messages=[{"role": "user", "content": "hi"}], response_format={"type": "json_object"}
    )
    assert json.loads(answer.choices[0].message.content or "") == {"said": "You said: hi"}
    schema = {"type": "json_schema", "json_schema": {"name": "said", "schema": {"type": "object"}}}
    await ai.chat.completions.create(model="tools", messages=[{"role": "user", "content": "hi"}], response_format=schema)  # type: ignore[arg-type]
    assert _last_upstream_body(upstream)["response_format"] == schema


# --- errors and limits ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_past_the_context_window_is_a_400_before_any_byte(
    setup: Setup, container: Container, pipeline: Pipeline, stream: bool
) -> None:
    long = " ".join(["word"] * 300)  # the upstream reads 200
    with pytest.raises(openai.BadRequestError) as caught:
        if stream:
            async for _ in await setup.sdk().chat.completions.create(
                model="tools", messages=[{"role": "user", "content": long}], stream=True
            ):
                pass
        else:
            await setup.sdk().chat.completions.create(model="tools", messages=[{"role": "user", "content": long}])
    body = caught.value.body
    assert caught.value.status_code == 400
    assert (body["code"], body["type"], body["param"]) == ("context_length_exceeded", "invalid_request_error", "messages")  # type: ignore[index]
    assert "maximum context length" in body["message"]  # type: ignore[index]


async def test_without_max_tokens_an_answer_is_not_capped_unless_the_quota_bounds_it(
    setup: Setup, container: Container, pipeline: Pipeline, upstream: FakeUpstreams
) -> None:
    ai = setup.sdk()
    await ai.chat.completions.create(model="tools", messages=[{"role": "user", "content": "hi"}])
    assert "max_tokens" not in _last_upstream_body(upstream)  # the model's whole window is the limit
    # A user with 500 tokens left: the answer may use what the quota leaves, and is told so.
    async with httpx.AsyncClient(base_url=setup.live) as http:
        me = (await http.get("/api/v1/auths/me", headers=setup.user)).json()
        r = await http.put(f"/api/v1/quotas/users/{me['id']}", json={"limit": 500}, headers=setup.admin)
        assert r.status_code == 200, r.text
    await pipeline.settle()
    await ai.chat.completions.create(model="tools", messages=[{"role": "user", "content": "hi"}])
    bounded = _last_upstream_body(upstream)["max_tokens"]
    assert 0 < bounded < 500
    await pipeline.settle()  # the generations read model, once projected
    rows = await _rows(container, select(generations.c.reserved_tokens, generations.c.params).order_by(generations.c.requested_at))
    # "hi" is estimated at 0 prompt tokens: the reservation is the answer's bound, within what was left.
    assert rows[-1].reserved_tokens == bounded and rows[-1].params["max_tokens"] == bounded
    assert "max_tokens" not in rows[0].params


async def test_any_role_may_come_last(setup: Setup, pipeline: Pipeline, upstream: FakeUpstreams) -> None:
    ai = setup.sdk()
    cont = await ai.chat.completions.create(
        model="tools", messages=[{"role": "user", "content": "count"}, {"role": "assistant", "content": "one two"}]
    )
    assert cont.choices[0].message.content
    assert _last_upstream_body(upstream)["messages"][-1] == {"role": "assistant", "content": "one two"}
    system_last = await ai.chat.completions.create(
        model="tools", messages=[{"role": "user", "content": "hi"}, {"role": "system", "content": "be brief"}]
    )
    assert system_last.choices[0].finish_reason == "stop"


async def test_models_are_named_in_any_case_or_by_id_and_show_their_capabilities(
    setup: Setup, live: str, pipeline: Pipeline
) -> None:
    ai = setup.sdk()
    listed = {m.id: m for m in (await ai.models.list()).data}
    assert set(listed) >= {"Tools", "plain", "smollm2"}
    caps = listed["Tools"].model_extra["capabilities"]  # type: ignore[index]
    assert caps["tools"] is True and caps["vision"] is True and caps["context_window"] == 4096
    assert listed["smollm2"].model_extra["capabilities"]["tools"] is False  # type: ignore[index]
    for name in ("TOOLS", "tools", listed["Tools"].model_extra["parley_id"]):  # type: ignore[index]
        answer = await ai.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "You said: hi"
    async with httpx.AsyncClient(base_url=live, timeout=120) as http:
        models = (await http.get("/api/v1/models", headers=setup.user)).json()
        tools = next(m for m in models if m["name"] == "Tools")
        assert tools["capabilities"]["params"] == ALL_PARAMS
        chat = (await http.post("/api/v1/chats", json={}, headers=setup.user)).json()
        r = await http.post(
            f"/api/v1/chats/{chat['id']}/messages", json={"content": "hi", "model": tools["id"]}, headers=setup.user
        )
        assert r.status_code == 202, r.text
        r = await http.post(
            "/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "hello"}, headers={"Authorization": f"Bearer {setup.key}"}
        )
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
