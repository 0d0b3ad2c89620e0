"""An Ollama server: POST ``{base_url}/api/embed`` with ``{"model", "input": [...]}`` and read
``{"embeddings": [[...], ...], "prompt_eval_count": n}`` (Ollama's vectors are already unit length; the
token count is its tokenizer's). Inputs go in requests of at most 256, one after another, as with the
OpenAI adapter."""

from __future__ import annotations

from typing import Any

from adapters.embeddings._http import HttpEmbedder, check_vectors

__all__ = ["OllamaEmbedder"]


class OllamaEmbedder(HttpEmbedder):
    """``base_url`` is the server root, e.g. ``http://localhost:11434``. ``api_key``, when given, is sent
    as a Bearer token (for an Ollama behind an authenticating proxy)."""

    path = "/api/embed"

    def _read(self, answer: dict[str, Any], batch: list[str]) -> tuple[list[list[float]], int]:
        count = answer.get("prompt_eval_count")
        return check_vectors(answer.get("embeddings"), len(batch), self.url), count if isinstance(count, int) else 0
