"""The one embedding interface every embedding backend implements: texts in, one vector per text out, with
the token count the backend charged for them (knowledge ingestion and ``/v1/embeddings`` bill it as usage).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from domain.knowledge import LOCAL_EMBEDDING_MODEL

__all__ = ["LOCAL_EMBEDDING_MODEL", "Embedder", "EmbeddingError", "Embeddings"]



class EmbeddingError(Exception):
    """An embedding backend failure, with a stable code, as ``application.engines.EngineError`` has:
    UPSTREAM_UNAUTHORIZED (the provider refused the key), UPSTREAM_ERROR (it failed, throttled us or sent
    something we cannot read), UPSTREAM_TIMEOUT, MODEL_UNAVAILABLE (unknown model or backend, weights
    missing), EMBEDDING_INPUT_TOO_LARGE."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        self.code = code
        self.message = message
        self.status = status
        """The upstream's HTTP status, where there was one."""
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    """One per input, in input order. Unit length (L2-normalised) for the local model, so a dot product is
    the cosine similarity; remote providers' vectors are passed on as they come."""
    tokens: int
    """Input tokens, counted by the model's own tokenizer (local) or taken from the upstream's usage."""
    dims: int


class Embedder(Protocol):
    model: str
    """The model's name at the backend."""

    async def embed(self, texts: Sequence[str]) -> Embeddings: ...

    async def close(self) -> None: ...
