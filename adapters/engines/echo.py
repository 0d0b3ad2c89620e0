"""A diagnostic engine with no model: it answers with the last user message, word by word, as fast as
the consumer reads (or ``delay_s`` apart). Deterministic, so pipeline tests can assert the exact text and
usage, and cheap, so the pipeline benchmark measures parley rather than a model.

A "token" is one word; the first goes out bare, later ones with their leading space. ``prompt_tokens`` is
the number of words in all the request's messages.

The request's model name can ask for a long answer, so that a deployment configured with the plain
``build_engine("echo")`` still serves the tests that need a generation to last:

- ``echo`` (or any other name): the engine's own settings;
- ``echo-repeat``: repeat the words until ``max_tokens``;
- ``echo-slow``: repeat until ``max_tokens``, one token every 50 ms (20 tokens/s), for cancel and resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from application.engines import EngineChunk, EngineRequest

__all__ = ["EchoEngine"]

_NOTHING_TO_ECHO = "The echo engine has no user message to repeat."
_SLOW_DELAY_S = 0.05
_REPEAT_TOKENS = 256
"""How long a repeating answer runs when the request sets no ``max_tokens``."""


class EchoEngine:
    """``text``: answer with this instead of the last user message. ``repeat``: start over at the end of
    the text until ``max_tokens`` (finish "length"), to produce long answers of an exact size.
    ``delay_s``: pause before each token, to mimic a model's pace."""

    def __init__(self, *, delay_s: float = 0.0, text: str | None = None, repeat: bool = False) -> None:
        self.delay_s = delay_s
        self.text = text
        self.repeat = repeat

    def _words(self, request: EngineRequest) -> list[str]:
        if self.text is not None:
            return self.text.split() or _NOTHING_TO_ECHO.split()
        for turn in reversed(request.messages):
            if turn.role == "user" and turn.content.split():
                return turn.content.split()
        return _NOTHING_TO_ECHO.split()

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineChunk]:
        words = self._words(request)
        repeat = self.repeat or request.model in ("echo-repeat", "echo-slow")
        delay_s = _SLOW_DELAY_S if request.model == "echo-slow" else self.delay_s
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        max_tokens = request.max_tokens if request.max_tokens is not None else (_REPEAT_TOKENS if repeat else len(words))
        if repeat or len(words) > max_tokens:
            limit, finish = max(0, max_tokens), "length"
        else:
            limit, finish = len(words), "stop"
        text = ""
        emitted = 0
        count = 0
        for count in range(1, limit + 1):
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            else:
                await asyncio.sleep(0)  # a cancellation point per token, and fairness to other tasks
            word = words[(count - 1) % len(words)]
            text += word if count == 1 else f" {word}"
            # A stop cannot start inside text already sent (a possible start is always held back).
            cut = min(
                (i for s in request.stop if s and (i := text.find(s, max(0, emitted - len(s) + 1))) != -1),
                default=-1,
            )
            if cut != -1:
                yield EngineChunk(
                    text=text[emitted:cut] if cut > emitted else "",
                    completion_tokens=count,
                    prompt_tokens=prompt_tokens,
                    finish_reason="stop",
                )
                return
            # Hold back a tail that may still become a stop sequence.
            safe = len(text)
            for stop in request.stop:
                for k in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:k]):
                        safe = min(safe, len(text) - k)
                        break
            if count == limit:
                break
            if safe > emitted:
                yield EngineChunk(text=text[emitted:safe], completion_tokens=count, prompt_tokens=prompt_tokens)
                emitted = safe
        yield EngineChunk(
            text=text[emitted:], completion_tokens=count, prompt_tokens=prompt_tokens, finish_reason=finish
        )

    async def close(self) -> None:
        return None
