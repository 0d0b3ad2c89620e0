"""The request class every route reads its body through: a JSON body that cannot be decoded — invalid
UTF-8, nesting past what the decoder can follow, bytes that are not JSON — is the one error Litestar
raises for undecodable bodies (``SerializationException``), which ``api.errors`` answers ``400
MALFORMED_JSON`` (or 415 where the body was not declared JSON), never an exception from the decoder's
depths."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException

from domain.errors import BadRequest

__all__ = ["ParleyRequest", "decode_json_body"]

_UNDECODABLE = (UnicodeDecodeError, RecursionError, SerializationException, msgspec.DecodeError, ValueError)


def _reason(exc: BaseException) -> str:
    return {
        UnicodeDecodeError: "the body is not valid UTF-8",
        RecursionError: "the body nests too deeply",
    }.get(type(exc), str(exc) or "the body is not valid JSON")


class ParleyRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            return await super().json()
        except SerializationException:
            raise
        except _UNDECODABLE as exc:
            raise SerializationException(_reason(exc)) from None


def decode_json_body(body: bytes, type: Any) -> Any:  # noqa: A002 - msgspec's own name for it
    """``body`` decoded into ``type``, or ``400 MALFORMED_JSON`` / ``INVALID_BODY`` (for routes that read
    their body themselves)."""
    try:
        return msgspec.json.decode(body, type=type)
    except msgspec.ValidationError as exc:
        raise BadRequest("INVALID_BODY", f"the body does not match the expected shape: {exc}") from None
    except _UNDECODABLE as exc:
        raise BadRequest("MALFORMED_JSON", f"request body is not valid JSON: {_reason(exc)}") from None
