"""OpenID Connect sign-in per tenant, end to end: parley's HTTP API against real OpenID providers running in
the test — ``oidc-provider-mock`` (a real authorization server built on authlib) for whole sign-ins, and a
provider the test controls (``ForgedProvider``: discovery, a JWKS and a token endpoint) for the ID tokens the
mock never makes (a wrong nonce, expired, for another client, signed by a rotated-out key).

- a sign-in creates the user with the role its claims map to, ends with parley's own tokens, and a second
  sign-in finds the same user; a verified e-mail of an allowed domain links an existing password account;
- a disallowed domain, an unverified e-mail, a replayed state, a wrong nonce, an expired or foreign-audience
  ID token and a token signed by a rotated-out key are refused with stable codes and audited; a key rotated
  in is found by refetching the JWKS;
- two tenants with different providers never cross (a state, a provider, a user).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import RSAKey
from oidc_provider_mock import run_server_in_thread
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from adapters.settings import Settings
from domain.oidc import OidcDirectory, oidc_directory_id
from tests.e2e.test_users_admin import admin, bearer, error_code, register
from tests.tenants import tenant_with_admin

CLIENT_ID = "parley-client"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The providers listen on loopback: this deployment allows private addresses, as the webhook tests' does.
    return msgspec.structs.replace(settings, webhooks_allow_private=True)


@pytest.fixture(scope="module")
def provider_a() -> Iterator[str]:
    with run_server_in_thread(require_nonce=True) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def provider_b() -> Iterator[str]:
    with run_server_in_thread(require_nonce=True) as server:
        yield f"http://localhost:{server.server_port}"


class ForgedProvider:
    """An OpenID provider whose next ID token the test writes: claims over the good ones, and the key
    that signs it (published or not)."""

    def __init__(self) -> None:
        self.published = [RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)]
        self.signer = self.published[0]
        self.overrides: dict[str, Any] = {}
        self.nonce = ""
        self.code_challenge = ""
        self.jwks_fetches = 0
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"

    def rotate(self) -> RSAKey:
        """A new key replaces the published one (the old one is no longer published)."""
        key = RSAKey.generate_key(2048, parameters={"kid": f"k{len(self.published) + 1}"}, private=True)
        self.published = [key]
        return key

    def id_token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": "forged-subject",
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce,
            "email": "frank@forge.test",
            "email_verified": True,
        } | self.overrides
        return jwt.encode({"alg": "RS256", "kid": self.signer.kid}, claims, self.signer)

    @Request.application  # type: ignore[misc]
    def app(self, request: Request) -> Response:
        def json_response(body: Any) -> Response:
            return Response(json.dumps(body), content_type="application/json")

        if request.path == "/.well-known/openid-configuration":
            return json_response(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks",
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            )
        if request.path == "/jwks":
            self.jwks_fetches += 1
            return json_response({"keys": [k.as_dict(private=False) for k in self.published]})
        if request.path == "/token" and request.method == "POST":
            # PKCE (RFC 7636): the verifier parley sends is the one behind the challenge it sent.
            verifier = request.form.get("code_verifier", "")
            if create_s256_code_challenge(verifier) != self.code_challenge or request.authorization is None:
                return Response(json.dumps({"error": "invalid_grant"}), status=400, content_type="application/json")
            return json_response({"access_token": "x", "token_type": "Bearer", "id_token": self.id_token()})
        return Response("not found", status=404)


@pytest.fixture(scope="module")
def forged() -> Iterator[ForgedProvider]:
    provider = ForgedProvider()
    thread = threading.Thread(target=provider.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield provider
    provider.server.shutdown()


@pytest.fixture
async def external() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


async def add_provider(
    client: httpx.AsyncClient, headers: dict[str, str], slug: str, issuer: str, **extra: Any
) -> dict[str, Any]:
    body = {
        "slug": slug,
        "name": slug.title(),
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": "s3cret-value",
    }
    r = await client.post("/api/v1/auth/providers", json=body | extra, headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def start(client: httpx.AsyncClient, tenant: str, slug: str) -> dict[str, str]:
    """Begin a sign-in: the authorization URL's query (state, nonce, code_challenge...) and the URL."""
    r = await client.get(f"/api/v1/auth/oidc/{tenant}/{slug}/login")
    assert r.status_code == 302, r.text
    url = r.headers["location"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    return query | {"url": url}


async def sign_in(
    client: httpx.AsyncClient,
    external: httpx.AsyncClient,
    provider: str,
    tenant: str,
    slug: str,
    sub: str,
    claims: dict[str, Any],
) -> httpx.Response:
    """A whole sign-in at oidc-provider-mock as user ``sub`` with ``claims``: the callback's response."""
    r = await external.put(f"{provider}/users/{sub}", json=claims)
    assert r.status_code == 204, r.text
    flow = await start(client, tenant, slug)
    assert flow["code_challenge_method"] == "S256" and flow["nonce"] and flow["state"]
    r = await external.post(flow["url"], data={"sub": sub})
    assert r.status_code == 302, r.text
    back = urlsplit(r.headers["location"])
    assert back.path == f"/api/v1/auth/oidc/{tenant}/{slug}/callback"
    return await client.get(f"{back.path}?{back.query}")


async def audited_refusals(client: httpx.AsyncClient, headers: dict[str, str], pipeline: Any) -> list[str]:
    await pipeline.settle()
    r = await client.get("/api/v1/audit", params={"action": "SignInFailed", "limit": 100}, headers=headers)
    assert r.status_code == 200, r.text
    return [item["detail"]["reason"] for item in r.json()["items"]]


async def test_sign_in_creates_the_user_with_the_mapped_role_and_ends_as_a_password_sign_in(
    client, container, provider_a, external
) -> None:
    _, tokens = await admin(client)
    headers = bearer(tokens)
    created = await add_provider(
        client,
        headers,
        "corp",
        provider_a,
        allowed_domains=["acme.test"],
        role_claim="groups",
        role_map={"parley-premium": "premium", "parley-guests": "guest"},
    )
    assert "client_secret" not in created and created["has_client_secret"] is True
    listed = (await client.get("/api/v1/auth/providers", headers=headers)).json()
    assert [p["slug"] for p in listed] == ["corp"] and "s3cret-value" not in json.dumps(listed)
    tenant_id = str((await container.identity.tenant("default")).id)
    directory = await container.store.call(container.store.get, OidcDirectory, oidc_directory_id(tenant_id))
    assert "s3cret-value" not in json.dumps(directory.providers)  # sealed at rest

    claims = {
        "email": "alice@acme.test",
        "email_verified": True,
        "name": "Alice",
        "groups": ["staff", "parley-premium"],
    }
    r = await sign_in(client, external, provider_a, "default", "corp", "alice-sub", claims)
    assert r.status_code == 200, r.text
    pair = r.json()
    assert pair["token_type"] == "bearer" and pair["refresh_token"] and pair["expires_in"] > 0
    me = (await client.get("/api/v1/auths/me", headers=bearer(pair))).json()
    assert (me["email"], me["name"], me["role"]) == ("alice@acme.test", "Alice", "premium")
    refreshed = await client.post("/api/v1/auths/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text  # a session like any other

    # The same subject again is the same user; the role follows the claims.
    claims["groups"] = ["parley-guests"]
    r = await sign_in(client, external, provider_a, "default", "corp", "alice-sub", claims)
    again = (await client.get("/api/v1/auths/me", headers=bearer(r.json()))).json()
    assert (again["id"], again["role"]) == (me["id"], "guest")

    # A password account is linked by a verified e-mail of an allowed domain, not duplicated.
    bob = await register(client, "bob@acme.test", "Bob")
    r = await sign_in(
        client, external, provider_a, "default", "corp", "bob-sub", {"email": "bob@acme.test", "email_verified": True}
    )
    assert r.status_code == 200, r.text
    assert (await client.get("/api/v1/auths/me", headers=bearer(r.json()))).json()["id"] == bob["id"]


async def test_domain_unverified_email_and_replayed_state_are_refused_and_audited(
    client, container, pipeline, provider_a, external
) -> None:
    _, tokens = await admin(client)
    headers = bearer(tokens)
    await add_provider(client, headers, "corp", provider_a, allowed_domains=["acme.test"])
    await register(client, "carol@acme.test", "Carol")

    r = await sign_in(
        client, external, provider_a, "default", "corp", "eve-sub", {"email": "eve@evil.test", "email_verified": True}
    )
    assert (r.status_code, error_code(r)) == (403, "OIDC_DOMAIN_NOT_ALLOWED")
    # An unverified claim to a password account's address neither signs in nor links.
    r = await sign_in(
        client,
        external,
        provider_a,
        "default",
        "corp",
        "mallory-sub",
        {"email": "carol@acme.test", "email_verified": False},
    )
    assert (r.status_code, error_code(r)) == (403, "OIDC_EMAIL_UNVERIFIED")

    r = await sign_in(
        client, external, provider_a, "default", "corp", "dave-sub", {"email": "dave@acme.test", "email_verified": True}
    )
    assert r.status_code == 200, r.text
    replay = await client.get(str(r.request.url).replace(str(r.request.url).split("/api/")[0], ""))
    assert (replay.status_code, error_code(replay)) == (401, "OIDC_STATE_INVALID")
    forged_state = await client.get("/api/v1/auth/oidc/default/corp/callback", params={"state": "made-up", "code": "x"})
    assert (forged_state.status_code, error_code(forged_state)) == (401, "OIDC_STATE_INVALID")

    users = (await client.get("/api/v1/users", headers=headers)).json()
    emails = {u["email"] for u in (users["items"] if isinstance(users, dict) else users)}
    assert "eve@evil.test" not in emails and "dave@acme.test" in emails
    reasons = await audited_refusals(client, headers, pipeline)
    for code in ("OIDC_DOMAIN_NOT_ALLOWED", "OIDC_EMAIL_UNVERIFIED", "OIDC_STATE_INVALID"):
        assert code in reasons, reasons


async def test_forged_id_tokens_are_refused_and_a_rotated_key_is_found(client, container, pipeline, forged) -> None:
    _, tokens = await admin(client)
    headers = bearer(tokens)
    await add_provider(client, headers, "forge", forged.issuer)

    async def attempt(**overrides: Any) -> httpx.Response:
        flow = await start(client, "default", "forge")
        forged.nonce, forged.code_challenge = flow["nonce"], flow["code_challenge"]
        forged.overrides = overrides
        return await client.get(
            "/api/v1/auth/oidc/default/forge/callback", params={"state": flow["state"], "code": "c"}
        )

    r = await attempt()
    assert r.status_code == 200, r.text
    cases = {
        "OIDC_NONCE_MISMATCH": {"nonce": "not-this-sign-ins"},
        "OIDC_TOKEN_EXPIRED": {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200},
        "OIDC_AUDIENCE_MISMATCH": {"aud": "another-client"},
        "OIDC_ISSUER_MISMATCH": {"iss": "https://elsewhere.test"},
    }
    for code, overrides in cases.items():
        r = await attempt(**overrides)
        assert (r.status_code, error_code(r)) == (401, code), (code, r.text)

    # The provider rotates its key: a token under the new kid is accepted after a JWKS refetch...
    old = forged.signer
    fetches = forged.jwks_fetches
    forged.signer = forged.rotate()
    r = await attempt()
    assert r.status_code == 200, r.text
    assert forged.jwks_fetches == fetches + 1
    # ...and one signed by the rotated-out key is refused, though its kid was once good.
    forged.signer = old
    r = await attempt()
    assert (r.status_code, error_code(r)) == (401, "OIDC_SIGNATURE_INVALID")
    # A key never published, under a published kid: the signature does not verify.
    forged.signer = RSAKey.generate_key(2048, parameters={"kid": forged.published[0].kid}, private=True)
    r = await attempt()
    assert (r.status_code, error_code(r)) == (401, "OIDC_SIGNATURE_INVALID")
    forged.signer = forged.published[0]

    reasons = await audited_refusals(client, headers, pipeline)
    for code in [*cases, "OIDC_SIGNATURE_INVALID"]:
        assert code in reasons, reasons


async def test_two_tenants_with_different_providers_never_cross(
    client, container, provider_a, provider_b, external
) -> None:
    _, tokens = await admin(client)
    platform = bearer(tokens)
    corp = await add_provider(client, platform, "corp", provider_a)
    _, globex_tokens = await tenant_with_admin(client, platform, "globex", "boss@globex.test")
    globex = bearer(globex_tokens)
    await add_provider(client, globex, "gsso", provider_b, default_role="premium")

    assert [p["slug"] for p in (await client.get("/api/v1/auth/providers", headers=globex)).json()] == ["gsso"]
    # One tenant's admin can neither read, change nor remove another's provider.
    for method in ("GET", "PATCH", "DELETE"):
        r = await client.request(
            method,
            f"/api/v1/auth/providers/{corp['id']}",
            headers=globex,
            json={"name": "Mine"} if method == "PATCH" else None,
        )
        assert (r.status_code, error_code(r)) == (404, "OIDC_PROVIDER_NOT_FOUND"), method
    r = await client.get("/api/v1/auth/oidc/globex/corp/login")  # the default tenant's provider, not globex's
    assert (r.status_code, error_code(r)) == (404, "OIDC_PROVIDER_NOT_FOUND")

    # A state begun at one tenant's provider is not accepted at the other's callback.
    flow = await start(client, "default", "corp")
    r = await client.get("/api/v1/auth/oidc/globex/gsso/callback", params={"state": flow["state"], "code": "c"})
    assert (r.status_code, error_code(r)) == (401, "OIDC_STATE_INVALID")

    claims = {"email": "pat@shared.test", "email_verified": True, "name": "Pat"}
    in_default = await sign_in(client, external, provider_a, "default", "corp", "pat", claims)
    in_globex = await sign_in(client, external, provider_b, "globex", "gsso", "pat", claims)
    me_default = (await client.get("/api/v1/auths/me", headers=bearer(in_default.json()))).json()
    me_globex = (await client.get("/api/v1/auths/me", headers=bearer(in_globex.json()))).json()
    assert me_default["id"] != me_globex["id"]
    assert me_default["tenant_id"] != me_globex["tenant_id"]
    assert (me_default["role"], me_globex["role"]) == ("user", "premium")

    # Its own admin changes it (the secret rotated, never shown) and removes it: sign-in by it ends.
    r = await client.patch(
        f"/api/v1/auth/providers/{corp['id']}",
        json={"name": "Corp SSO", "client_secret": "n3w-secret", "allowed_domains": ["shared.test"]},
        headers=platform,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["allowed_domains"]) == (
        "Corp SSO",
        ["shared.test"],
    ) and "n3w-secret" not in r.text
    r = await client.patch(f"/api/v1/auth/providers/{corp['id']}", json={"default_role": "admin"}, headers=platform)
    assert (r.status_code, error_code(r)) == (422, "INVALID_ROLE")
    assert (await sign_in(client, external, provider_a, "default", "corp", "pat", claims)).status_code == 200
    assert (await client.delete(f"/api/v1/auth/providers/{corp['id']}", headers=platform)).status_code == 204
    r = await client.get("/api/v1/auth/oidc/default/corp/login")
    assert (r.status_code, error_code(r)) == (404, "OIDC_PROVIDER_NOT_FOUND")
    member = await client.get("/api/v1/auth/providers", headers=bearer(in_default.json()))
    assert member.status_code == 403  # admins only
