"""Any OpenAI-compatible embeddings server (OpenAI, vLLM, TEI, llama.cpp, LiteLLM, Ollama's /v1): POST
``{base_url}/embeddings`` with ``{"model", "input": [...], "encoding_format": "float"}``.

Inputs go in requests of at most 256, one after another (the provider's rate limit is per key, so firing
them together only trades a slower answer for 429s). Each answer's ``data`` is put back in input order by
its ``index``, and ``usage.prompt_tokens`` is summed over the requests."""

from __future__ import annotations

from typing import Any

from adapters.embeddings._http import HttpEmbedder, check_vectors
from application.embeddings import EmbeddingError

__all__ = ["OpenAIEmbedder"]


class OpenAIEmbedder(HttpEmbedder):
    """``base_url`` is the API root that ``/embeddings`` hangs off, e.g. ``https://api.openai.com/v1``;
    ``api_key`` is sent as a Bearer token when given."""

    path = "/embeddings"

    def _body(self, batch: list[str]) -> dict[str, Any]:
        return {"model": self.model, "input": batch, "encoding_format": "float"}

    def _read(self, answer: dict[str, Any], batch: list[str]) -> tuple[list[list[float]], int]:
        data = answer.get("data")
        if not isinstance(data, list) or not all(isinstance(item, dict) and isinstance(item.get("index"), int) for item in data):
            raise EmbeddingError("UPSTREAM_ERROR", f"{self.url} sent no list of indexed embeddings")
        found = [item.get("embedding") for item in sorted(data, key=lambda item: item["index"])]
        usage = answer.get("usage")
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return check_vectors(found, len(batch), self.url), prompt_tokens if isinstance(prompt_tokens, int) else 0
