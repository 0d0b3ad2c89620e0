"""The one error hierarchy. The class says what kind of failure it is (the API maps kinds to HTTP
statuses in one place); the ``code`` is the stable, machine-readable name clients switch on."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ParleyError",
    "BadRequest",
    "Invalid",
    "Unauthenticated",
    "Forbidden",
    "NotFound",
    "Conflict",
    "TooLarge",
    "UnsupportedType",
    "RateLimited",
    "Unavailable",
]


class ParleyError(Exception):
    default_code = "ERROR"

    def __init__(self, code: str | None = None, message: str = "", **detail: Any) -> None:
        self.code = code or self.default_code
        self.message = message or self.code.replace("_", " ").lower()
        self.detail = detail
        super().__init__(f"{self.code}: {self.message}")


class BadRequest(ParleyError):
    default_code = "BAD_REQUEST"


class Invalid(ParleyError):
    """Well-formed input that breaks a rule (weak password, unknown role)."""

    default_code = "VALIDATION_FAILED"


class Unauthenticated(ParleyError):
    default_code = "UNAUTHENTICATED"


class Forbidden(ParleyError):
    default_code = "FORBIDDEN"


class NotFound(ParleyError):
    default_code = "NOT_FOUND"


class Conflict(ParleyError):
    default_code = "CONFLICT"


class TooLarge(ParleyError):
    default_code = "PAYLOAD_TOO_LARGE"


class UnsupportedType(ParleyError):
    """Content of a kind parley cannot take (an image uploaded as a document)."""

    default_code = "UNSUPPORTED_MEDIA_TYPE"


class RateLimited(ParleyError):
    default_code = "RATE_LIMITED"


class Unavailable(ParleyError):
    default_code = "UNAVAILABLE"
