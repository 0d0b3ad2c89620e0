"""Embedding engines behind the one ``application.embeddings.Embedder`` interface: the local
all-MiniLM-L6-v2, any OpenAI-compatible ``/v1/embeddings`` server, and Ollama.

Importing this package does not import torch: the local embedder does so when it loads its model."""

from __future__ import annotations

from adapters.embeddings.local import LocalEmbedder
from adapters.embeddings.ollama import OllamaEmbedder
from adapters.embeddings.openai import OpenAIEmbedder
from application.embeddings import LOCAL_EMBEDDING_MODEL, Embedder, EmbeddingError

__all__ = [
    "EMBEDDER_KINDS",
    "LOCAL_EMBEDDING_MODEL",
    "LocalEmbedder",
    "OllamaEmbedder",
    "OpenAIEmbedder",
    "build_embedder",
]

EMBEDDER_KINDS = ("local", "openai", "ollama")


def build_embedder(
    kind: str,
    *,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    device: str | None = None,
) -> Embedder:
    """The embedder for a provider kind: "local" (the bundled model, on ``device``), "openai" and
    "ollama" (``model`` at ``base_url``, with ``api_key``). An unknown kind, an unknown local model or a
    remote kind without a URL is MODEL_UNAVAILABLE: the model cannot be served as configured."""
    if kind == "local":
        return LocalEmbedder(model, device=device)
    if kind in ("openai", "ollama"):
        if not base_url:
            raise EmbeddingError("MODEL_UNAVAILABLE", f"a {kind} embedder needs a base_url")
        if kind == "openai":
            return OpenAIEmbedder(base_url, model=model, api_key=api_key)
        return OllamaEmbedder(base_url, model=model, api_key=api_key)
    raise EmbeddingError(
        "MODEL_UNAVAILABLE", f"unknown embedder kind {kind!r}; expected one of {', '.join(EMBEDDER_KINDS)}"
    )
