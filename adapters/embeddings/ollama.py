"""An Ollama server: POST ``{base_url}/api/embed`` with ``{"model", "input": [...]}`` and read
``{"embeddings": [[...], ...], "prompt_eval_count": n}`` (Ollama's vectors are already unit length; the
token count is its tokenizer's). Inputs go in requests of at most 256, one after another, as with the
OpenAI adapter."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from adapters.embeddings._http import batches, check_vectors, dims_of, post_json
from adapters.engines._http import HttpUpstream
from application.embeddings import Embeddings

__all__ = ["OllamaEmbedder"]


class OllamaEmbedder:
    """``base_url`` is the server root, e.g. ``http://localhost:11434``. ``api_key``, when given, is sent
    as a Bearer token (for an Ollama behind an authenticating proxy)."""

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
        self.url = f"{self._http.base_url}/api/embed"

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        vectors: list[list[float]] = []
        tokens = 0
        for batch in batches(texts):
            answer = await post_json(self._http, self.url, {"model": self.model, "input": batch})
            vectors += check_vectors(answer.get("embeddings"), len(batch), self.url)
            count = answer.get("prompt_eval_count")
            tokens += count if isinstance(count, int) else 0
        return Embeddings(vectors=vectors, tokens=tokens, dims=dims_of(vectors, self.url))

    async def close(self) -> None:
        await self._http.close()
