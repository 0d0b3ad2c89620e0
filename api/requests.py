"""The request class every route reads its body through: a JSON body that cannot be decoded — invalid
UTF-8, nesting past what the decoder can follow, bytes that are not JSON — is one ``400 INVALID_JSON``,
whatever the route, never an exception from the decoder's depths."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException

from domain.errors import BadRequest

__all__ = ["ParleyRequest", "decode_json_body"]

_UNDECODABLE = (UnicodeDecodeError, RecursionError, SerializationException, msgspec.DecodeError, ValueError)


def _refusal(exc: BaseException) -> BadRequest:
    reason = {
        UnicodeDecodeError: "the body is not valid UTF-8",
        RecursionError: "the body nests too deeply",
    }.get(type(exc), "the body is not valid JSON")
    return BadRequest("INVALID_JSON", reason)


class ParleyRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            return await super().json()
        except _UNDECODABLE as exc:
            raise _refusal(exc) from None


def decode_json_body(body: bytes, type: Any) -> Any:  # noqa: A002 - msgspec's own name for it
    """``body`` decoded into ``type``, or ``400 INVALID_JSON`` / ``INVALID_BODY`` (for routes that read
    their body themselves)."""
    try:
        return msgspec.json.decode(body, type=type)
    except msgspec.ValidationError as exc:
        raise BadRequest("INVALID_BODY", f"the body does not match the expected shape: {exc}") from None
    except _UNDECODABLE as exc:
        raise _refusal(exc) from None
