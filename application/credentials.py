"""Formats of the opaque secrets parley hands out. Pure functions, no I/O.

Refresh tokens are ``<session-id-hex>.<secret>``; API keys ``pk_<key-id-hex>_<secret>`` (or, imported from
Open WebUI, its ``sk-<32 hex>``, whose id follows from its hash); invitations
``pi_<invitation-id-hex>_<secret>``. The id part
finds the aggregate directly (no lookup table); only a SHA-256 of the whole token is stored. These are
256-bit random secrets, so a plain SHA-256 is a sound hash (nothing to brute-force) and keeps each
request's check cheap."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from domain.errors import Unauthenticated

__all__ = [
    "API_KEY_PREFIX",
    "OPENWEBUI_KEY_PREFIX",
    "imported_api_key_id",
    "new_refresh_token",
    "parse_refresh_token",
    "new_api_key",
    "parse_api_key",
    "new_invitation_token",
    "parse_invitation_token",
    "secret_hash",
    "secrets_equal",
]

API_KEY_PREFIX = "pk_"
INVITATION_PREFIX = "pi_"
OPENWEBUI_KEY_PREFIX = "sk-"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secrets_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_refresh_token(session_id: uuid.UUID) -> str:
    return f"{session_id.hex}.{secrets.token_urlsafe(32)}"


def parse_refresh_token(token: str) -> uuid.UUID:
    session, _, secret = token.partition(".")
    try:
        if len(secret) < 20:
            raise ValueError
        return uuid.UUID(hex=session)
    except ValueError:
        raise Unauthenticated("INVALID_REFRESH_TOKEN", "refresh token is not valid") from None


def new_api_key(key_id: uuid.UUID) -> str:
    return f"{API_KEY_PREFIX}{key_id.hex}_{secrets.token_urlsafe(32)}"


def imported_api_key_id(key: str) -> uuid.UUID:
    """The id of an API key imported from Open WebUI (``sk-`` and 32 hex digits, 128 random bits): from
    its hash, so that the key finds its aggregate as parley's own do."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"/api-keys/openwebui/{secret_hash(key)}")


def parse_api_key(key: str) -> uuid.UUID:
    if key.startswith(OPENWEBUI_KEY_PREFIX) and len(key) == 35 and all(c in "0123456789abcdef" for c in key[3:]):
        return imported_api_key_id(key)
    try:
        if not key.startswith(API_KEY_PREFIX):
            raise ValueError
        key_hex, _, secret = key[len(API_KEY_PREFIX):].partition("_")
        if len(secret) < 20:
            raise ValueError
        return uuid.UUID(hex=key_hex)
    except ValueError:
        raise Unauthenticated("INVALID_API_KEY", "API key is not valid") from None


def new_invitation_token(invitation_id: uuid.UUID) -> str:
    return f"{INVITATION_PREFIX}{invitation_id.hex}_{secrets.token_urlsafe(32)}"


def parse_invitation_token(token: str) -> uuid.UUID:
    try:
        if not token.startswith(INVITATION_PREFIX):
            raise ValueError
        hex_id, _, secret = token[len(INVITATION_PREFIX) :].partition("_")
        if len(secret) < 20:
            raise ValueError
        return uuid.UUID(hex=hex_id)
    except ValueError:
        raise Unauthenticated("INVALID_INVITATION", "this invitation is not valid") from None
