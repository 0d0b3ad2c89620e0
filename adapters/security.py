"""Credentials: argon2id password hashing and JWT access tokens (joserfc: Authlib's own JOSE module is
deprecated in its favour and Authlib depends on it)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid

import bcrypt
from argon2 import PasswordHasher as Argon2Hasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import OctKey
from joserfc.jwt import JWTClaimsRegistry

from application.identity import AccessClaims
from domain.errors import Unauthenticated

__all__ = ["Passwords", "AccessTokens", "FernetBox"]


BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


class Passwords:
    """argon2id with the library's (RFC 9106 low-memory) defaults. A bcrypt hash (a user imported from Open
    WebUI) is verified too, and ``needs_rehash`` says so: sign-in then replaces it with an argon2id hash."""

    def __init__(self, hasher: Argon2Hasher | None = None) -> None:
        self._hasher = hasher or Argon2Hasher()
        # Verifying against this when the user does not exist keeps sign-in timing uniform.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        if password_hash is not None and password_hash.startswith(BCRYPT_PREFIXES):
            try:
                return bcrypt.checkpw(password.encode()[:72], password_hash.encode())
            except ValueError:
                return False
        try:
            return self._hasher.verify(password_hash or self._dummy, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether a hash that just verified is to be replaced: a bcrypt one only. (Not an argon2 hash of
        older parameters: replacing it records PasswordChanged, which signs the user out everywhere.)"""
        return password_hash.startswith(BCRYPT_PREFIXES)


class AccessTokens:
    """Short-lived HS256 JWTs. Only HS256 is accepted, so ``alg=none`` and algorithm confusion fail."""

    algorithm = "HS256"

    def __init__(self, secret: str, ttl_s: int, issuer: str = "parley") -> None:
        self._key = OctKey.import_key(hashlib.sha256(f"jwt:{secret}".encode()).digest())
        self.ttl_s = ttl_s
        self.issuer = issuer
        self._registry = JWTClaimsRegistry(
            iss={"essential": True, "value": issuer},
            sub={"essential": True},
            exp={"essential": True},
            tid={"essential": True},
            ver={"essential": True},
        )

    def issue(self, *, user_id: uuid.UUID, tenant_id: str, role: str, token_version: int, session_id: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": str(user_id),
            "tid": tenant_id,
            "role": role,
            "ver": token_version,
            "sid": session_id,
            "iat": now,
            "exp": now + self.ttl_s,
            "jti": uuid.uuid4().hex,
            "typ": "access",
        }
        return jwt.encode({"alg": self.algorithm}, claims, self._key)

    def verify(self, token: str) -> AccessClaims:
        try:
            decoded = jwt.decode(token, self._key, algorithms=[self.algorithm])
            self._registry.validate(decoded.claims)
        except ExpiredTokenError:
            raise Unauthenticated("TOKEN_EXPIRED", "access token has expired; refresh it") from None
        except (JoseError, ValueError, TypeError):
            raise Unauthenticated("INVALID_TOKEN", "access token is not valid") from None
        c = decoded.claims
        try:
            if c.get("typ") != "access":
                raise ValueError("not an access token")
            return AccessClaims(
                user_id=uuid.UUID(str(c["sub"])),
                tenant_id=str(c["tid"]),
                role=str(c.get("role", "")),
                token_version=int(c["ver"]),
                session_id=str(c.get("sid", "")),
                jti=str(c.get("jti", "")),
                expires_at=int(c["exp"]),
            )
        except (KeyError, ValueError, TypeError):
            raise Unauthenticated("INVALID_TOKEN", "access token is not valid") from None


class FernetBox:
    """Provider API keys at rest: Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from the
    deployment secret. Changing the secret makes stored keys unreadable: re-enter them."""

    def __init__(self, secret: str) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(f"box:{secret}".encode()).digest()))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise ValueError("stored secret cannot be decrypted with this deployment's secret key") from None
