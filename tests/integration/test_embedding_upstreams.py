"""The OpenAI-compatible and Ollama embedders against a local server that speaks those providers' wire
protocols (tests/fakes/upstreams.py): vectors in input order, usage summed, inputs split into requests
of at most 256, and every failure turned into a stable ``EmbeddingError`` code."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.embeddings import OllamaEmbedder, OpenAIEmbedder, build_embedder
from application.embeddings import Embedder, EmbeddingError
from tests.fakes import FakeUpstreams
from tests.fakes.upstreams import fake_embedding

KINDS = ["openai", "ollama"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreams]:
    with FakeUpstreams() as fake:
        yield fake


def embedder(upstream: FakeUpstreams, kind: str, model: str, **options: float) -> Embedder:
    if kind == "openai":
        return OpenAIEmbedder(upstream.openai_url, model=model, api_key="sk-test", **options)
    return OllamaEmbedder(upstream.ollama_url, model=model, **options)


def requests_to(upstream: FakeUpstreams, kind: str, since: int) -> list[dict[str, object]]:
    path = "/v1/embeddings" if kind == "openai" else "/api/embed"
    return [r.body for r in upstream.requests[since:] if r.path == path]


async def failure(e: Embedder, texts: list[str]) -> EmbeddingError:
    with pytest.raises(EmbeddingError) as caught:
        await e.embed(texts)
    await e.close()
    return caught.value


@pytest.mark.parametrize("kind", KINDS)
async def test_vectors_come_back_in_input_order_with_usage(upstream: FakeUpstreams, kind: str) -> None:
    texts = ["the cat sat on the mat", "quarterly tax filing", "a cat on a rug"]
    since = len(upstream.requests)
    e = embedder(upstream, kind, "fake-embed-8")
    result = await e.embed(texts)
    await e.close()
    assert result.dims == 8
    assert result.vectors == [pytest.approx(fake_embedding(t, 8)) for t in texts]
    assert result.tokens == 6 + 3 + 5  # words, as the fake counts them
    (body,) = requests_to(upstream, kind, since)
    assert body["model"] == "fake-embed-8" and body["input"] == texts
    if kind == "openai":
        assert body["encoding_format"] == "float"
        assert upstream.requests[-1].headers["authorization"] == "Bearer sk-test"


async def test_openai_data_is_put_back_in_order_by_index(upstream: FakeUpstreams) -> None:
    texts = [f"text number {i}" for i in range(5)]
    e = OpenAIEmbedder(upstream.openai_url, model="fake-embed-16-reversed")
    result = await e.embed(texts)
    await e.close()
    assert result.vectors == [pytest.approx(fake_embedding(t, 16)) for t in texts]


@pytest.mark.parametrize("kind", KINDS)
async def test_more_than_256_inputs_go_in_several_requests(upstream: FakeUpstreams, kind: str) -> None:
    texts = [f"document chunk {i} about topic {i % 7}" for i in range(600)]
    since = len(upstream.requests)
    e = embedder(upstream, kind, "fake-embed-3072")
    result = await e.embed(texts)
    await e.close()
    assert [len(b["input"]) for b in requests_to(upstream, kind, since)] == [256, 256, 88]  # type: ignore[arg-type]
    assert result.dims == 3072 and len(result.vectors) == 600
    assert result.tokens == 6 * 600
    for i in (0, 255, 256, 511, 512, 599):
        assert result.vectors[i] == pytest.approx(fake_embedding(texts[i], 3072))


@pytest.mark.parametrize("kind", KINDS)
async def test_no_texts_sends_no_request(upstream: FakeUpstreams, kind: str) -> None:
    since = len(upstream.requests)
    result = await embedder(upstream, kind, "fake-embed-8").embed([])
    assert (result.vectors, result.tokens) == ([], 0)
    assert upstream.requests[since:] == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("model", "code", "status"),
    [
        ("fake-401", "UPSTREAM_UNAUTHORIZED", 401),
        ("fake-500", "UPSTREAM_ERROR", 500),
        ("no-such-model", "MODEL_UNAVAILABLE", 404),
        ("fake-badjson", "UPSTREAM_ERROR", None),
    ],
)
async def test_upstream_failures_have_stable_codes(
    upstream: FakeUpstreams, kind: str, model: str, code: str, status: int | None
) -> None:
    error = await failure(embedder(upstream, kind, model), ["hello"])
    assert (error.code, error.status) == (code, status)
    assert error.message


@pytest.mark.parametrize("kind", KINDS)
async def test_a_silent_upstream_times_out(upstream: FakeUpstreams, kind: str) -> None:
    error = await failure(embedder(upstream, kind, "fake-hang", read_timeout_s=0.3), ["hello"])
    assert error.code == "UPSTREAM_TIMEOUT"


@pytest.mark.parametrize("kind", KINDS)
async def test_an_unreachable_upstream_is_an_upstream_error(kind: str) -> None:
    with FakeUpstreams() as gone:
        url = gone.openai_url if kind == "openai" else gone.ollama_url
    e = build_embedder(kind, model="fake-embed-8", base_url=url)
    assert (await failure(e, ["hello"])).code == "UPSTREAM_ERROR"


def test_remote_kinds_need_a_url() -> None:
    with pytest.raises(EmbeddingError) as caught:
        build_embedder("openai", model="text-embedding-3-small")
    assert caught.value.code == "MODEL_UNAVAILABLE"
