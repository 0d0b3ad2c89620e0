"""The inference engines against real counterparts: the OpenAI and Ollama adapters against local servers
that speak those providers' wire protocols (tests/fakes/upstreams.py), the echo engine, and the local
engine running the real SmolLM2-135M-Instruct on CPU.

The local model loads once for this module. Its converted weights are cached under
``$PARLEY_TEST_MODEL_HOME`` (default: a folder in the system temp directory), so only the first run on a
machine pays the GGUF conversion."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import openai
import pytest

from adapters.engines import (
    DEFAULT_LOCAL_MODEL,
    EchoEngine,
    LocalEngine,
    OllamaEngine,
    OpenAIEngine,
    build_engine,
)
from application.engines import ChatTurn, Engine, EngineChunk, EngineError, EngineRequest
from tests.fakes import FakeUpstreams

MODEL_HOME = Path(os.environ.get("PARLEY_TEST_MODEL_HOME", Path(tempfile.gettempdir()) / "parley-test-models"))


def ask(content: str, model: str = "fake-ok", **params: object) -> EngineRequest:
    return EngineRequest(model=model, messages=[ChatTurn(role="user", content=content)], **params)  # type: ignore[arg-type]


async def collect(engine: Engine, request: EngineRequest) -> tuple[str, list[EngineChunk]]:
    chunks = [chunk async for chunk in engine.stream(request)]
    return "".join(c.text for c in chunks), chunks


async def failure(engine: Engine, request: EngineRequest) -> tuple[EngineError, str]:
    """The EngineError the stream ends with, and the text that arrived before it."""
    seen: list[str] = []
    with pytest.raises(EngineError) as caught:
        async for chunk in engine.stream(request):
            seen.append(chunk.text)
    return caught.value, "".join(seen)


# --------------------------------------------------------------------------------------------------------
# Remote providers: OpenAI-compatible and Ollama, over HTTP to the fake servers


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreams]:
    with FakeUpstreams(cut_after=3) as fake:
        yield fake


@pytest.fixture(params=["openai", "ollama"])
async def remote(request: pytest.FixtureRequest, upstream: FakeUpstreams) -> AsyncIterator[Engine]:
    engine: Engine
    if request.param == "openai":
        engine = OpenAIEngine(upstream.openai_url, api_key="sk-test", read_timeout_s=0.5)
    else:
        engine = OllamaEngine(upstream.ollama_url, read_timeout_s=0.5)
    yield engine
    await engine.close()


async def test_remote_streams_the_answer_then_the_usage(remote: Engine) -> None:
    text, chunks = await collect(remote, ask("hello there friend"))
    assert text == "You said: hello there friend"
    assert len(chunks) > 2, "one chunk per token, not one blob"
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert (final.prompt_tokens, final.completion_tokens) == (3, 5)
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_remote_request_carries_the_parameters(upstream: FakeUpstreams) -> None:
    engine = OpenAIEngine(upstream.openai_url, api_key="sk-test")
    await collect(engine, ask("hi", max_tokens=7, temperature=0.2, top_p=0.9, stop=["END"], seed=11))
    await engine.close()
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body == {
        "model": "fake-ok",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 7, "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "seed": 11,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip

    ollama = OllamaEngine(upstream.ollama_url)
    await collect(ollama, ask("hi", max_tokens=7, temperature=0.2, top_p=0.9, stop=["END"], seed=11))
    await ollama.close()
    sent = upstream.requests[-1]
    assert sent.path == "/api/chat"
    assert "authorization" not in sent.headers
    assert sent.body["stream"] is True
    assert sent.body["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "num_predict": 7,
        "stop": ["END"],
        "seed": 11,
    }


async def test_openai_server_that_ignores_stream_still_answers(upstream: FakeUpstreams) -> None:
    engine = OpenAIEngine(upstream.openai_url)
    text, chunks = await collect(engine, ask("hi there", model="fake-nostream"))
    await engine.close()
    assert text == "You said: hi there"
    assert (chunks[-1].finish_reason, chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == ("stop", 2, 4)


async def test_remote_max_tokens_finishes_with_length(remote: Engine) -> None:
    text, chunks = await collect(remote, ask("one two three four", max_tokens=3))
    assert text == "You said: one"
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 3


async def test_remote_stop_sequence_ends_the_answer(remote: Engine) -> None:
    text, chunks = await collect(remote, ask("one two three four", stop=["three"]))
    assert text == "You said: one two "
    assert chunks[-1].finish_reason == "stop"


async def test_remote_reasoning_arrives_as_thinking(remote: Engine) -> None:
    text, chunks = await collect(remote, ask("hi", model="fake-think"))
    assert text == "You said: hi"
    assert "".join(c.thinking for c in chunks) == "Let me think about what they said."


@pytest.mark.parametrize(("model", "status", "message"), [
    ("fake-401", 401, ("Incorrect API key provided", "unauthorized")),
    ("fake-500", 500, ("The server had an error", "llama runner process has terminated")),
])  # fmt: skip
async def test_remote_http_error_keeps_status_and_message(
    remote: Engine, model: str, status: int, message: tuple[str, str]
) -> None:
    error, _ = await failure(remote, ask("hi", model=model))
    assert error.code == "UPSTREAM_HTTP_ERROR"
    assert error.status == status
    assert error.message.startswith(message[0] if isinstance(remote, OpenAIEngine) else message[1])


async def test_remote_that_never_answers_times_out(remote: Engine) -> None:
    started = time.monotonic()
    error, _ = await failure(remote, ask("hi", model="fake-hang"))
    assert error.code == "UPSTREAM_TIMEOUT"
    assert time.monotonic() - started < 3


async def test_remote_that_stalls_mid_stream_times_out(remote: Engine) -> None:
    error, partial = await failure(remote, ask("a b c d e f", model="fake-stall"))
    assert error.code == "UPSTREAM_TIMEOUT"
    assert partial.startswith("You said:")


async def test_remote_connection_cut_mid_stream_is_a_disconnect(remote: Engine) -> None:
    error, partial = await failure(remote, ask("a b c d e f", model="fake-cut"))
    assert error.code == "UPSTREAM_DISCONNECTED"
    assert partial.startswith("You said:") and "f" not in partial


async def test_remote_stream_that_ends_unfinished_is_a_disconnect(remote: Engine) -> None:
    error, _ = await failure(remote, ask("a b c d e f", model="fake-truncate"))
    assert error.code == "UPSTREAM_DISCONNECTED"


async def test_remote_invalid_json_is_a_protocol_error(remote: Engine) -> None:
    error, _ = await failure(remote, ask("a b c", model="fake-badjson"))
    assert error.code == "UPSTREAM_PROTOCOL_ERROR"


async def test_remote_that_refuses_connections_fails_fast() -> None:
    with FakeUpstreams() as fake:
        url = fake.openai_url
    engine = OpenAIEngine(url, connect_timeout_s=0.5)  # the port is closed now
    started = time.monotonic()
    error, _ = await failure(engine, ask("hi"))
    await engine.close()
    assert error.code == "UPSTREAM_DISCONNECTED"
    assert time.monotonic() - started < 2


async def test_remote_cancel_closes_the_upstream_connection(remote: Engine, upstream: FakeUpstreams) -> None:
    before = upstream.abandoned
    stream = remote.stream(ask("hi", model="fake-slow"))
    received = [await anext(stream) for _ in range(3)]
    assert any(c.text for c in received)
    await stream.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(upstream.wait_abandoned, before + 1, 1.0), "the server kept streaming"


async def test_fake_speaks_the_protocol_the_official_openai_client_reads(upstream: FakeUpstreams) -> None:
    client = openai.AsyncOpenAI(base_url=upstream.openai_url, api_key="sk-test", max_retries=0)
    stream = await client.chat.completions.create(
        model="fake-ok", messages=[{"role": "user", "content": "hi you"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    parts, usage = [], None
    async for chunk in stream:
        parts.extend(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    assert "".join(parts) == "You said: hi you"
    assert usage is not None and usage.completion_tokens == 4
    whole = await client.chat.completions.create(model="fake-ok", messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == "You said: hi"
    assert "fake-ok" in [m.id async for m in client.models.list()]
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="fake-401", messages=[{"role": "user", "content": "hi"}])
    await client.close()
    async with httpx.AsyncClient() as http:
        tags = (await http.get(f"{upstream.ollama_url}/api/tags")).json()
        assert "fake-ok" in [m["name"] for m in tags["models"]]
        body = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        reply = (await http.post(f"{upstream.ollama_url}/api/chat", json=body)).json()
        assert reply["message"]["content"] == "You said: hi" and reply["done"] is True


# --------------------------------------------------------------------------------------------------------
# The echo engine and the factory


async def test_echo_repeats_the_last_user_message() -> None:
    engine = EchoEngine()
    request = EngineRequest(
        model="echo",
        messages=[
            ChatTurn(role="system", content="be brief"),
            ChatTurn(role="user", content="first question"),
            ChatTurn(role="assistant", content="an answer"),
            ChatTurn(role="user", content="the quick brown fox"),
        ],
    )
    text, chunks = await collect(engine, request)
    assert text == "the quick brown fox"
    assert [c.text for c in chunks] == ["the", " quick", " brown", " fox"]
    assert (chunks[-1].finish_reason, chunks[-1].completion_tokens, chunks[-1].prompt_tokens) == (
        "stop",
        4,
        10,
    )


async def test_echo_honours_max_tokens_stop_and_repeat() -> None:
    text, chunks = await collect(EchoEngine(), ask("a b c d e", max_tokens=3))
    assert (text, chunks[-1].finish_reason, chunks[-1].completion_tokens) == ("a b c", "length", 3)
    text, chunks = await collect(EchoEngine(), ask("alpha beta gamma delta", stop=["gam"]))
    assert (text, chunks[-1].finish_reason) == ("alpha beta ", "stop")
    text, chunks = await collect(EchoEngine(repeat=True), ask("x y", max_tokens=5))
    assert (text, chunks[-1].finish_reason, chunks[-1].completion_tokens) == ("x y x y x", "length", 5)
    text, chunks = await collect(EchoEngine(), ask("x y", model="echo-repeat", max_tokens=4))
    assert (text, chunks[-1].finish_reason) == ("x y x y", "length")
    started = time.monotonic()
    text, chunks = await collect(EchoEngine(), ask("x", model="echo-slow", max_tokens=4))
    assert (text, chunks[-1].completion_tokens) == ("x x x x", 4)
    assert time.monotonic() - started >= 0.15


async def test_echo_stops_when_the_consumer_cancels() -> None:
    engine = EchoEngine(delay_s=0.01, repeat=True)
    received: list[EngineChunk] = []

    async def consume() -> None:
        async for chunk in engine.stream(ask("tick", max_tokens=10_000)):
            received.append(chunk)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    count = len(received)
    await asyncio.sleep(0.1)
    assert 0 < count == len(received) < 100


def test_build_engine_makes_each_kind(tmp_path: Path) -> None:
    assert isinstance(build_engine("echo", home=tmp_path), EchoEngine)
    assert isinstance(build_engine("openai", base_url="http://h/v1", api_key="k", home=tmp_path), OpenAIEngine)
    assert isinstance(build_engine("ollama", base_url="http://h:11434", home=tmp_path), OllamaEngine)
    local = build_engine("local", home=tmp_path, device="cpu")
    assert isinstance(local, LocalEngine) and local.home == tmp_path
    with pytest.raises(ValueError, match="base_url"):
        build_engine("openai", home=tmp_path)
    with pytest.raises(ValueError, match="unknown engine kind"):
        build_engine("vllm", home=tmp_path)


# --------------------------------------------------------------------------------------------------------
# The local engine: SmolLM2-135M-Instruct on CPU, loaded once for the module

FRANCE = "What is the capital of France?"
PROMPTS = [
    FRANCE,
    "Name three primary colors.",
    "Explain gravity in one sentence.",
    "Write a haiku about a quiet mountain lake at dawn.",
]


@pytest.fixture(scope="module")
async def local() -> AsyncIterator[LocalEngine]:
    engine = LocalEngine(home=MODEL_HOME, device="cpu")
    await engine.warmup()
    yield engine
    await engine.close()


async def test_local_greedy_answer_and_usage_by_the_models_tokenizer(local: LocalEngine) -> None:
    text, chunks = await collect(local, ask(FRANCE, model=DEFAULT_LOCAL_MODEL, temperature=0))
    assert "Paris" in text
    final = chunks[-1]
    assert final.finish_reason == "stop"
    tokenizer = local.tokenizer()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": FRANCE}], add_generation_prompt=True)
    prompt_ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    assert final.prompt_tokens == len(prompt_ids)
    # Every token the model produced, the closing end-of-turn token included.
    assert final.completion_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts) and len(chunks) > 3, "streamed token by token, counts cumulative"


async def test_local_max_tokens_finishes_with_length(local: LocalEngine) -> None:
    text, chunks = await collect(local, ask(PROMPTS[3], model="", temperature=0, max_tokens=5))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 5
    assert text and len(local.tokenizer()(text, add_special_tokens=False)["input_ids"]) <= 5


async def test_local_stop_sequence_is_not_emitted(local: LocalEngine) -> None:
    text, chunks = await collect(local, ask(FRANCE, model="", temperature=0, stop=[" Paris"]))
    assert chunks[-1].finish_reason == "stop"
    assert "Paris" not in text
    assert text.startswith("The capital of France is")


async def test_local_seeded_sampling_repeats(local: LocalEngine) -> None:
    request = ask(PROMPTS[3], model="", temperature=0.9, top_p=0.9, seed=7, max_tokens=8)
    first, _ = await collect(local, request)
    again, _ = await collect(local, request)
    assert first == again and first


async def drained_within(engine: LocalEngine, seconds: float) -> bool:
    started = time.monotonic()
    while engine.active_streams and time.monotonic() - started < seconds:  # noqa: ASYNC110 - a count
        await asyncio.sleep(0.01)  # kept by the decode thread, which has no event to wait on
    return engine.active_streams == 0


async def test_local_closing_the_stream_stops_decoding_within_a_second(local: LocalEngine) -> None:
    stream = local.stream(ask(PROMPTS[3], model="", temperature=0, max_tokens=200))
    await anext(stream)
    assert local.active_streams == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert await drained_within(local, 1.0)


async def test_local_cancelling_the_task_stops_decoding_within_a_second(local: LocalEngine) -> None:
    async def consume(request: EngineRequest) -> None:
        async for _ in local.stream(request):
            pass

    for request, after_s in [
        (ask(PROMPTS[3], model="", temperature=0, max_tokens=200), 0.3),  # mid-decode
        (ask("Summarise: " + "the cat sat on the mat. " * 250, model="", max_tokens=5), 0.1),  # mid-prefill
    ]:
        task = asyncio.create_task(consume(request))
        while not local.active_streams:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(after_s)
        task.cancel()
        assert await drained_within(local, 1.0)


async def test_local_concurrent_streams_each_match_their_single_stream_answer(local: LocalEngine) -> None:
    requests = [ask(p, model="", temperature=0, max_tokens=10) for p in PROMPTS]
    alone = [await collect(local, r) for r in requests]

    async def staggered(i: int, request: EngineRequest) -> tuple[str, list[EngineChunk]]:
        await asyncio.sleep(0.05 * i)  # join the running batch at different steps
        return await collect(local, request)

    together = await asyncio.gather(*(staggered(i, r) for i, r in enumerate(requests)))
    assert local.peak_batch >= 3, "the streams were decoded together"
    for (text, chunks), (single_text, single_chunks) in zip(together, alone, strict=True):
        assert text == single_text
        assert chunks[-1] == single_chunks[-1]


async def test_local_second_start_loads_the_cached_conversion(local: LocalEngine) -> None:
    cached = MODEL_HOME / "models" / DEFAULT_LOCAL_MODEL
    assert (cached / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())
    # Without batching, concurrent requests take turns, each with a KV cache of its own.
    again = LocalEngine(home=MODEL_HOME, device="cpu", batching=False)
    started = time.monotonic()
    await again.warmup()
    assert time.monotonic() - started < 10
    (france, _), (colors, _) = await asyncio.gather(
        collect(again, ask(FRANCE, model="", temperature=0, max_tokens=12)),
        collect(again, ask(PROMPTS[1], model="", temperature=0, max_tokens=6)),
    )
    assert again.peak_batch == 1
    await again.close()
    assert "Paris" in france and colors


async def test_local_unknown_model_is_unavailable(local: LocalEngine) -> None:
    error, _ = await failure(local, ask("hi", model="no-such-model"))
    assert error.code == "MODEL_UNAVAILABLE"


async def test_local_prompt_past_the_context_window_is_refused_before_decoding(local: LocalEngine) -> None:
    error, text = await failure(local, ask("word " * 9000, model="", temperature=0))
    assert (error.code, error.status, error.param, text) == ("CONTEXT_LENGTH_EXCEEDED", 400, "messages", "")
    assert "maximum context length is 8192 tokens" in error.message


async def test_local_without_max_tokens_writes_until_the_answer_ends(local: LocalEngine) -> None:
    text, chunks = await collect(local, ask(FRANCE, model="", temperature=0))
    assert "Paris" in text and chunks[-1].finish_reason == "stop"


async def test_local_continues_an_answer_the_assistant_began(local: LocalEngine) -> None:
    request = EngineRequest(
        model="",
        temperature=0,
        max_tokens=8,
        messages=[ChatTurn(role="user", content=FRANCE), ChatTurn(role="assistant", content="The capital of France is")],
    )
    text, _ = await collect(local, request)
    assert "Paris" in text and not text.lstrip().startswith("The capital")


async def test_local_logit_bias_and_penalties_steer_the_sampler(local: LocalEngine) -> None:
    tokenizer = local.tokenizer()
    plain, _ = await collect(local, ask(FRANCE, model="", temperature=0, max_tokens=12))
    banned = tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    biased, _ = await collect(local, ask(FRANCE, model="", temperature=0, max_tokens=12, logit_bias={str(banned): -100.0}))
    assert "Paris" in plain and banned not in tokenizer(biased, add_special_tokens=False)["input_ids"]
    # A heavy frequency penalty makes a long greedy answer repeat its tokens less.
    long = ask(PROMPTS[3], model="", temperature=0, max_tokens=48)
    free, _ = await collect(local, long)
    penalised, _ = await collect(local, msgspec.structs.replace(long, frequency_penalty=2.0, repetition_penalty=1.3))

    def repeats(text: str) -> int:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return len(ids) - len(set(ids))

    assert free != penalised and repeats(penalised) <= repeats(free)
    # top_k=1 is greedy whatever the temperature; min_p=1 keeps only the likeliest token too.
    for steer in ({"top_k": 1}, {"min_p": 1.0}):
        sampled, _ = await collect(local, ask(FRANCE, model="", temperature=1.5, seed=3, max_tokens=12, **steer))
        assert sampled == plain


async def test_ollama_tool_calls_arrive_whole_as_deltas() -> None:
    from adapters.engines.ollama import _tool_calls

    message = {"tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    (delta,) = _tool_calls(message, first_index=2)
    assert (delta.index, delta.name, json.loads(delta.arguments)) == (2, "get_weather", {"city": "Oslo"})
    with pytest.raises(EngineError):
        _tool_calls({"tool_calls": [{"function": {}}]}, first_index=0)
