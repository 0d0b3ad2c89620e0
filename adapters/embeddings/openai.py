"""Any OpenAI-compatible embeddings server (OpenAI, vLLM, TEI, llama.cpp, LiteLLM, Ollama's /v1): POST
``{base_url}/embeddings`` with ``{"model", "input": [...], "encoding_format": "float"}``.

Inputs go in requests of at most 256, one after another (the provider's rate limit is per key, so firing
them together only trades a slower answer for 429s). Each answer's ``data`` is put back in input order by
its ``index``, and ``usage.prompt_tokens`` is summed over the requests."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from adapters.embeddings._http import batches, check_vectors, dims_of, post_json
from adapters.engines._http import HttpUpstream
from application.embeddings import EmbeddingError, Embeddings

__all__ = ["OpenAIEmbedder"]


class OpenAIEmbedder:
    """``base_url`` is the API root that ``/embeddings`` hangs off, e.g. ``https://api.openai.com/v1``;
    ``api_key`` is sent as a Bearer token when given."""

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
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = HttpUpstream(
            base_url,
            headers=headers,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            transport=transport,
        )
        self.url = f"{self._http.base_url}/embeddings"

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        vectors: list[list[float]] = []
        tokens = 0
        for batch in batches(texts):
            body = {"model": self.model, "input": batch, "encoding_format": "float"}
            answer = await post_json(self._http, self.url, body)
            data = answer.get("data")
            if not isinstance(data, list) or not all(
                isinstance(item, dict) and isinstance(item.get("index"), int) for item in data
            ):
                raise EmbeddingError("UPSTREAM_ERROR", f"{self.url} sent no list of indexed embeddings")
            found = [item.get("embedding") for item in sorted(data, key=lambda item: item["index"])]
            vectors += check_vectors(found, len(batch), self.url)
            usage = answer.get("usage")
            prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
            tokens += prompt_tokens if isinstance(prompt_tokens, int) else 0
        return Embeddings(vectors=vectors, tokens=tokens, dims=dims_of(vectors, self.url))

    async def close(self) -> None:
        await self._http.close()
