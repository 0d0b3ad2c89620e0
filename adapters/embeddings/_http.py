"""What the remote embedders share: the engines' HTTP client and transport error mapping
(``adapters.engines._http``), re-coded for ``EmbeddingError``, and the mapping of upstream statuses.

Embeddings are one JSON request and one JSON answer, so every failure is either a transport failure, an
error status, or a body we cannot read; the codes say which, and whether retrying could help."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from adapters.engines._http import HttpUpstream, error_message, upstream_errors
from application.embeddings import EmbeddingError, Embeddings
from application.engines import EngineError

__all__ = ["BATCH_INPUTS", "HttpEmbedder", "batches", "check_vectors", "dims_of", "post_json", "status_error"]

BATCH_INPUTS = 256
"""The most texts sent in one request: OpenAI accepts up to 2048, but smaller requests keep each answer
(256 × 3072 floats as JSON is ~15 MB) and each retry affordable."""

_TOO_LARGE_HINTS = ("context length", "too long", "too many tokens", "exceeds", "maximum input")


def status_error(status: int, body: bytes, url: str) -> EmbeddingError:
    """The ``EmbeddingError`` for an upstream's error status."""
    message = error_message(body, f"HTTP {status} from {url}")
    if status in (401, 403):
        code = "UPSTREAM_UNAUTHORIZED"
    elif status == 404:
        code = "MODEL_UNAVAILABLE"
    elif status == 413 or (status in (400, 422) and any(h in message.lower() for h in _TOO_LARGE_HINTS)):
        code = "EMBEDDING_INPUT_TOO_LARGE"
    else:  # 429, 5xx and any other refusal: the upstream's trouble, not the caller's
        code = "UPSTREAM_ERROR"
    return EmbeddingError(code, message, status=status)


@contextmanager
def _transport_errors(url: str) -> Iterator[None]:
    try:
        with upstream_errors(url):
            yield
    except EngineError as exc:
        code = "UPSTREAM_TIMEOUT" if exc.code == "UPSTREAM_TIMEOUT" else "UPSTREAM_ERROR"
        raise EmbeddingError(code, exc.message) from exc


async def post_json(http: HttpUpstream, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` and return the JSON object that comes back, or raise ``EmbeddingError``."""
    with _transport_errors(url):
        response = await http.client.post(url, json=body)
        content = await response.aread()
    if response.is_error:
        raise status_error(response.status_code, content, url)
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise EmbeddingError("UPSTREAM_ERROR", f"{url} answered with invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EmbeddingError("UPSTREAM_ERROR", f"{url} answered with JSON that is not an object")
    return data


def check_vectors(vectors: Any, expected: int, url: str) -> list[list[float]]:
    """``vectors`` if it is ``expected`` lists of numbers of one length, else UPSTREAM_ERROR."""
    if not isinstance(vectors, list) or len(vectors) != expected:
        got = len(vectors) if isinstance(vectors, list) else type(vectors).__name__
        raise EmbeddingError("UPSTREAM_ERROR", f"{url} sent {got} embeddings for {expected} inputs")
    dims = {len(v) if isinstance(v, list) else -1 for v in vectors}
    if len(dims) > 1 or -1 in dims or 0 in dims:
        raise EmbeddingError("UPSTREAM_ERROR", f"{url} sent embeddings that are not vectors of one length")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for v in vectors for x in v):
        raise EmbeddingError("UPSTREAM_ERROR", f"{url} sent embeddings with values that are not numbers")
    return [[float(x) for x in v] for v in vectors]


def batches(texts: Sequence[str]) -> Iterator[list[str]]:
    """``texts`` in slices of at most ``BATCH_INPUTS``."""
    for start in range(0, len(texts), BATCH_INPUTS):
        yield list(texts[start : start + BATCH_INPUTS])


def dims_of(vectors: list[list[float]], url: str) -> int:
    """The one length of all ``vectors`` (0 for none); UPSTREAM_ERROR when batches disagree."""
    dims = {len(v) for v in vectors}
    if len(dims) > 1:
        raise EmbeddingError("UPSTREAM_ERROR", f"{url} sent embeddings of different lengths: {sorted(dims)}")
    return dims.pop() if dims else 0


class HttpEmbedder:
    """What the remote embedders share: the HTTP client, the bearer key, requests of at most
    ``BATCH_INPUTS`` inputs one after another, and the answer put together. A subclass names its ``path`` and
    reads one answer (``_read``: the batch's vectors and the tokens it was charged)."""

    path = ""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.model = model
        self._http = HttpUpstream(
            base_url,
            api_key=api_key,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            transport=transport,
        )
        self.url = f"{self._http.base_url}{self.path}"

    def _body(self, batch: list[str]) -> dict[str, Any]:
        return {"model": self.model, "input": batch}

    def _read(self, answer: dict[str, Any], batch: list[str]) -> tuple[list[list[float]], int]:
        raise NotImplementedError

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        vectors: list[list[float]] = []
        tokens = 0
        for batch in batches(texts):
            answer = await post_json(self._http, self.url, self._body(batch))
            found, charged = self._read(answer, batch)
            vectors += found
            tokens += charged
        return Embeddings(vectors=vectors, tokens=tokens, dims=dims_of(vectors, self.url))

    async def close(self) -> None:
        await self._http.close()
