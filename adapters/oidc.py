"""The OpenID Connect relying party's wire side: discovery, the JWKS (refetched on an unknown key id, a
bounded number of times), the authorization-code exchange and ID-token validation (joserfc, authlib's JOSE
library); and the Redis store of sign-ins in flight (state, nonce, PKCE verifier), each taken once.

Every request to a provider goes through ``adapters.outbound``'s guarded client, so an issuer URL a tenant
admin types cannot reach a metadata service or (unless the deployment allows it) a private address.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet
from redis.asyncio import Redis

from adapters.outbound import AddressPolicy, OutboundRefused, guarded_client, read_capped, refusal
from application.oidc import ProviderMetadata
from domain.errors import ParleyError, Unauthenticated, Unavailable

__all__ = ["HttpRelyingParty", "RedisOidcFlows"]

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""Asymmetric only: ``none`` and HMAC (keyed with the client secret, which parley stores) are refused."""
MAX_DOCUMENT_BYTES = 256 * 1024
LEEWAY_S = 60
METADATA_TTL_S = 3600.0
JWKS_REFETCHES_PER_MINUTE = 6
"""An unknown ``kid`` refetches the JWKS (the provider rotated its keys), at most this often per issuer:
tokens with made-up key ids cannot make parley hammer the provider."""


class RedisOidcFlows:
    """Sign-ins in flight under ``<namespace>:oidc:flow:<state>``, expiring on their own; taken with GETDEL,
    so a state works once."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis = redis
        self.prefix = f"{namespace}:oidc:flow:"

    async def put(self, state: str, flow: str, ttl_s: int) -> None:
        await self.redis.set(self.prefix + state, flow, ex=ttl_s)

    async def take(self, state: str) -> str | None:
        value = await self.redis.getdel(self.prefix + state)
        return value if isinstance(value, str) or value is None else value.decode()


@dataclass
class _Keys:
    keys: KeySet
    fetched: deque[float]


class HttpRelyingParty:
    """Talks to providers over HTTP(S), caching discovery documents and key sets per issuer."""

    def __init__(self, *, policy: AddressPolicy, timeout_s: float = 10.0) -> None:
        self.client = guarded_client(policy=policy, timeout=httpx.Timeout(timeout_s), max_connections=20)
        self._metadata: dict[str, tuple[float, ProviderMetadata]] = {}
        self._keys: dict[str, _Keys] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with self.client.stream("GET", url, headers={"Accept": "application/json"}) as response:
                body, more = await read_capped(response, MAX_DOCUMENT_BYTES)
        except httpx.HTTPError as exc:
            raise _unreachable(exc, what) from None
        if response.status_code != 200 or more:
            raise Unavailable("OIDC_PROVIDER_UNAVAILABLE", f"the identity provider's {what} could not be read")
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise Unavailable("OIDC_PROVIDER_UNAVAILABLE", f"the identity provider's {what} is not a JSON object")
        return document

    async def discover(self, issuer: str) -> ProviderMetadata:
        cached = self._metadata.get(issuer)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        doc = await self._get_json(f"{issuer}/.well-known/openid-configuration", "discovery document")
        # OpenID Connect Discovery 1.0 §4.3: the issuer in the document is exactly the one asked about.
        if doc.get("issuer", "").rstrip("/") != issuer:
            raise Unavailable("OIDC_DISCOVERY_MISMATCH", "the discovery document names another issuer")
        try:
            metadata = ProviderMetadata(
                issuer=doc["issuer"],
                authorization_endpoint=str(doc["authorization_endpoint"]),
                token_endpoint=str(doc["token_endpoint"]),
                jwks_uri=str(doc["jwks_uri"]),
                algorithms=tuple(
                    a for a in doc.get("id_token_signing_alg_values_supported", ["RS256"]) if a in ALGORITHMS
                ),
            )
        except KeyError as missing:
            raise Unavailable("OIDC_PROVIDER_UNAVAILABLE", f"the discovery document lacks {missing}") from None
        self._metadata[issuer] = (time.monotonic() + METADATA_TTL_S, metadata)
        return metadata

    async def exchange_code(
        self,
        metadata: ProviderMetadata,
        *,
        client_id: str,
        client_secret: str,
        code: str,
        redirect_uri: str,
        code_verifier: str,
    ) -> str:
        """The ID token the token endpoint returns for ``code`` (client_secret_basic, RFC 6749 §2.3.1)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        auth = httpx.BasicAuth(_form_quote(client_id), _form_quote(client_secret))
        try:
            async with self.client.stream(
                "POST", metadata.token_endpoint, data=form, auth=auth, headers={"Accept": "application/json"}
            ) as response:
                body, _ = await read_capped(response, MAX_DOCUMENT_BYTES)
        except httpx.HTTPError as exc:
            raise _unreachable(exc, "token endpoint") from None
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        if response.status_code != 200 or not isinstance(answer, dict) or not isinstance(answer.get("id_token"), str):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise Unauthenticated(
                "OIDC_CODE_EXCHANGE_FAILED",
                "the identity provider did not exchange the authorization code for an ID token",
                provider_error=str(error)[:100] if error else None,
            )
        return str(answer["id_token"])

    async def _key_set(self, metadata: ProviderMetadata, kid: str | None) -> KeySet:
        """The provider's keys, refetched where ``kid`` is not among them (bounded)."""
        lock = self._locks.setdefault(metadata.jwks_uri, asyncio.Lock())
        async with lock:
            known = self._keys.get(metadata.jwks_uri)
            if known is not None and (kid is None or _has_kid(known.keys, kid)):
                return known.keys
            now = time.monotonic()
            fetched = known.fetched if known is not None else deque()
            while fetched and fetched[0] < now - 60:
                fetched.popleft()
            if known is not None and len(fetched) >= JWKS_REFETCHES_PER_MINUTE:
                return known.keys  # the budget is spent: the unknown kid fails as a bad signature
            doc = await self._get_json(metadata.jwks_uri, "key set")
            try:
                keys = KeySet.import_key_set(doc)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError):
                raise Unavailable("OIDC_PROVIDER_UNAVAILABLE", "the identity provider's key set is not valid") from None
            fetched.append(now)
            self._keys[metadata.jwks_uri] = _Keys(keys, fetched)
            return keys

    async def verify_id_token(
        self, metadata: ProviderMetadata, id_token: str, *, client_id: str, nonce: str
    ) -> dict[str, Any]:
        """The ID token's claims once its signature (the provider's JWKS), ``iss``, ``aud`` (and ``azp``),
        ``exp`` and ``nonce`` hold (OpenID Connect Core §3.1.3.7); else ``Unauthenticated`` with the code
        of the first check that failed."""
        try:
            header = jws.extract_compact(id_token.encode()).headers()
        except (JoseError, ValueError):
            raise Unauthenticated("OIDC_TOKEN_INVALID", "the ID token is not a signed JWT") from None
        alg = header.get("alg")
        if alg not in (metadata.algorithms or ("RS256",)):
            raise Unauthenticated("OIDC_SIGNATURE_INVALID", "the ID token's algorithm is not accepted", alg=str(alg))
        kid = header.get("kid")
        keys = await self._key_set(metadata, kid if isinstance(kid, str) else None)
        if isinstance(kid, str) and not _has_kid(keys, kid):
            raise Unauthenticated(
                "OIDC_SIGNATURE_INVALID", "the ID token is signed with a key the provider does not publish"
            )
        try:
            token = jwt.decode(id_token, keys, algorithms=[alg])
        except BadSignatureError:
            raise Unauthenticated("OIDC_SIGNATURE_INVALID", "the ID token's signature does not verify") from None
        except (JoseError, ValueError):
            raise Unauthenticated("OIDC_TOKEN_INVALID", "the ID token could not be read") from None
        return check_id_token_claims(dict(token.claims), issuer=metadata.issuer, client_id=client_id, nonce=nonce)


def check_id_token_claims(claims: dict[str, Any], *, issuer: str, client_id: str, nonce: str) -> dict[str, Any]:
    """OpenID Connect Core §3.1.3.7, steps 2-4, 9-11, on verified claims."""
    if claims.get("iss") != issuer:
        raise Unauthenticated("OIDC_ISSUER_MISMATCH", "the ID token was issued by another issuer")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if client_id not in audiences:
        raise Unauthenticated("OIDC_AUDIENCE_MISMATCH", "the ID token was issued to another client")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise Unauthenticated("OIDC_AUDIENCE_MISMATCH", "the ID token's authorized party is another client")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise Unauthenticated("OIDC_TOKEN_INVALID", "the ID token has no expiry")
    if exp < time.time() - LEEWAY_S:
        raise Unauthenticated("OIDC_TOKEN_EXPIRED", "the ID token has expired")
    presented = claims.get("nonce")
    if not isinstance(presented, str) or not hmac.compare_digest(presented.encode(), nonce.encode()):
        raise Unauthenticated("OIDC_NONCE_MISMATCH", "the ID token's nonce is not this sign-in's")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise Unauthenticated("OIDC_TOKEN_INVALID", "the ID token names no subject")
    return claims


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


def _form_quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _unreachable(exc: BaseException, what: str) -> ParleyError:
    refused: OutboundRefused | None = refusal(exc)
    if refused is not None:
        return Unavailable("OIDC_PROVIDER_REFUSED", f"parley does not connect there: {refused.reason}")
    return Unavailable("OIDC_PROVIDER_UNREACHABLE", f"the identity provider's {what} did not answer")
