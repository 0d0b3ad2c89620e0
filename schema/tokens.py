"""The token stream wire format: what workers publish to ``PARLEY_TOKENS`` (subject
``parley.tokens.<generation_id>``, ``Nats-Msg-Id`` = ``<generation_id>:<attempt>:<seq>``) and what the
SSE endpoint relays. One message carries ~20-50 ms of tokens, not one token.

Each delivery attempt of a generation restarts ``seq`` at 1; a reader that sees a higher ``attempt``
than before must drop the text of the earlier attempt (the worker died and another one started over).
The last message of an attempt has ``done`` set, with the final status and usage.

Tool calls stream as ``tool_calls`` pieces: the first piece of call ``index`` carries its ``id`` and
``name``, later ones add to its ``arguments`` (OpenAI's streamed shape).

Version 1. Evolve only by adding fields with defaults.
"""

from __future__ import annotations

import msgspec

__all__ = ["TokenChunk", "ToolCallPiece", "encode_chunk", "decode_chunk"]


class ToolCallPiece(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class TokenChunk(msgspec.Struct, frozen=True, kw_only=True):
    generation_id: str
    attempt: int
    seq: int
    text: str = ""
    thinking: str = ""
    completion_tokens: int | None = None
    done: bool = False
    status: str | None = None
    """On ``done``: completed, failed or cancelled."""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    published_at: float = 0.0
    """``time.time()`` when the worker published the chunk (0 when unknown): for measuring delivery lag."""
    tool_calls: tuple[ToolCallPiece, ...] = ()

    @property
    def event_id(self) -> str:
        return f"{self.attempt}:{self.seq}"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TokenChunk)


def encode_chunk(chunk: TokenChunk) -> bytes:
    return _encoder.encode(chunk)


def decode_chunk(payload: bytes) -> TokenChunk:
    return _decoder.decode(payload)
