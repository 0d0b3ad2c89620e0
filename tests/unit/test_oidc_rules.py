"""The pure rules of OpenID Connect sign-in (no I/O): a provider's settings, claims -> role, the ID-token
claim checks after the signature, and the tenant's directory of providers."""

from __future__ import annotations

import time
import uuid

import pytest

from adapters.oidc import check_id_token_claims
from application.oidc import provider_settings
from domain.errors import Conflict, Invalid, NotFound, Unauthenticated
from domain.oidc import OidcDirectory, check_provider_settings, map_role


def settings(**overrides: object) -> object:
    base: dict[str, object] = {"name": "Corp", "issuer": "https://sso.example/realms/corp/", "client_id": "parley"}
    return provider_settings(**(base | overrides))  # type: ignore[arg-type]


def test_settings_are_normalised_and_bad_ones_name_their_field() -> None:
    s = check_provider_settings(settings(allowed_domains=["Acme.TEST", "acme.test"]))  # type: ignore[arg-type]
    assert (s.issuer, s.allowed_domains) == ("https://sso.example/realms/corp", ("acme.test",))
    for overrides, code in (
        ({"issuer": "ftp://sso.example"}, "INVALID_ISSUER"),
        ({"issuer": "https://sso.example/?x=1"}, "INVALID_ISSUER"),
        ({"scopes": ["email"]}, "INVALID_SCOPES"),
        ({"role_map": {"staff": "premium"}}, "INVALID_ROLE_MAP"),  # no claim to read it from
        ({"role_claim": "groups", "role_map": {"staff": "root"}}, "INVALID_ROLE"),
        ({"default_role": "admin"}, "INVALID_ROLE"),
        ({"client_id": " "}, "INVALID_CLIENT_ID"),
    ):
        with pytest.raises(Invalid) as refused:
            check_provider_settings(settings(**overrides))  # type: ignore[arg-type]
        assert refused.value.code == code, overrides


def test_the_most_privileged_mapped_role_wins_and_no_match_maps_nothing() -> None:
    role_map = {"staff": "user", "ops": "admin", "paying": "premium"}
    assert map_role({"groups": ["staff", "paying", "ops"]}, "groups", role_map) == "admin"
    assert map_role({"groups": "paying"}, "groups", role_map) == "premium"
    assert map_role({"groups": ["visitors", 7]}, "groups", role_map) is None
    assert map_role({}, "groups", role_map) is None
    assert map_role({"groups": ["ops"]}, None, {}) is None


def test_id_token_claims_are_checked_in_order_with_stable_codes() -> None:
    good = {"iss": "https://i", "aud": "c", "exp": time.time() + 60, "nonce": "n", "sub": "s"}
    assert check_id_token_claims(dict(good), issuer="https://i", client_id="c", nonce="n")["sub"] == "s"
    for change, code in (
        ({"iss": "https://other"}, "OIDC_ISSUER_MISMATCH"),
        ({"aud": ["other"]}, "OIDC_AUDIENCE_MISMATCH"),
        ({"aud": ["c", "other"]}, "OIDC_AUDIENCE_MISMATCH"),  # several audiences: azp must be parley
        ({"exp": time.time() - 3600}, "OIDC_TOKEN_EXPIRED"),
        ({"exp": "soon"}, "OIDC_TOKEN_INVALID"),
        ({"nonce": "replayed"}, "OIDC_NONCE_MISMATCH"),
        ({"sub": ""}, "OIDC_TOKEN_INVALID"),
    ):
        with pytest.raises(Unauthenticated) as refused:
            check_id_token_claims(good | change, issuer="https://i", client_id="c", nonce="n")
        assert refused.value.code == code, change
    several = good | {"aud": ["c", "other"], "azp": "c"}
    assert check_id_token_claims(several, issuer="https://i", client_id="c", nonce="n")


def test_a_directory_keeps_slugs_unique_and_forgets_removed_providers() -> None:
    directory = OidcDirectory(tenant_id="t")
    first, second = uuid.uuid4(), uuid.uuid4()
    s = check_provider_settings(settings())  # type: ignore[arg-type]
    directory.register(first, "corp", s, "sealed-1")
    with pytest.raises(Conflict):
        directory.register(second, "corp", s, "sealed-2")
    with pytest.raises(Invalid):
        directory.register(second, "Not A Slug", s, "sealed-2")
    directory.change(first, s, None)
    assert directory.provider(str(first))["client_secret_encrypted"] == "sealed-1"  # None keeps the secret
    directory.remove(first)
    with pytest.raises(NotFound):
        directory.by_slug("corp")
    directory.register(second, "corp", s, "sealed-2")  # the slug is free again
    assert [type(e).__name__ for e in directory.collect_events()] == [
        "OidcDirectoryOpened",
        "OidcProviderRegistered",
        "OidcProviderChanged",
        "OidcProviderRemoved",
        "OidcProviderRegistered",
    ]
