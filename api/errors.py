"""Errors map to responses in this one place: ``{"error": {"code", "message", "detail"}}`` with a stable
code and the right status. Never a stack trace; never a 500 for bad input."""

from __future__ import annotations

import math
from typing import Any

import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from domain.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    ParleyError,
    RateLimited,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedType,
)

__all__ = ["exception_handlers", "error_body", "STATUS_OF"]

log = structlog.get_logger("parley.api")

STATUS_OF: dict[type[ParleyError], int] = {
    BadRequest: 400,
    Invalid: 422,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    UnsupportedType: 415,
    RateLimited: 429,
    Unavailable: 503,
}

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
    503: "UNAVAILABLE",
}


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail or {}}}


def _respond(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(content=body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _parley_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, ParleyError)
    status = next((s for cls, s in STATUS_OF.items() if isinstance(exc, cls)), 400)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc.detail, dict) and isinstance(exc.detail.get("retry_after_s"), int | float):
        headers = {"Retry-After": str(max(1, math.ceil(exc.detail["retry_after_s"])))}
    return _respond(status, error_body(exc.code, exc.message, exc.detail), headers)


def _http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if isinstance(exc, ValidationException):
        text = str(exc.detail or "")
        code = "MALFORMED_JSON" if "malformed" in text.lower() or "json" in text.lower() and "decode" in text.lower() else "VALIDATION_FAILED"
        return _respond(400, error_body(code, text or "request is not valid", {"errors": exc.extra or []}))
    if isinstance(exc.__cause__, SerializationException):
        # Litestar decodes every body as JSON and wraps the decoder's error in a plain 400.
        content_type = (request.headers.get("content-type") or "").partition(";")[0].strip().lower()
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            return _respond(
                415,
                error_body("UNSUPPORTED_MEDIA_TYPE", "send the body as application/json", {"content_type": content_type}),
            )
        return _respond(400, error_body("MALFORMED_JSON", f"request body is not valid JSON: {exc.detail}"))
    if status >= 500:
        from api.server import CLIENT_GONE, TIMED_OUT  # the server module answers its own timeouts with error_body

        state = request.scope.get("state", {})
        if state.get(CLIENT_GONE) or state.get(TIMED_OUT):  # the body stopped arriving: the client's doing
            log.info("request_abandoned", path=request.url.path, detail=str(exc.detail))
        else:
            log.error("http_error", status=status, path=request.url.path, detail=str(exc.detail))
        return _respond(status, error_body("INTERNAL_ERROR", "internal error"))
    code = _HTTP_CODES.get(status, f"HTTP_{status}")
    return _respond(status, error_body(code, str(exc.detail or code.lower())), exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
    return _respond(HTTP_500_INTERNAL_SERVER_ERROR, error_body("INTERNAL_ERROR", "internal error"))


exception_handlers: dict[Any, Any] = {
    ParleyError: _parley_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
