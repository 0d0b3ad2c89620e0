"""How a tenant gets its first admin, and the rules on e-mail addresses and names, through the API.

Only the embedded single-tenant start makes its first sign-up the admin (the default tenant, no users
yet). Any other tenant's first admin is invited by the platform admin — at creation or later — with a
one-time token that expires: guessing a new tenant's slug gets nobody anything."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.errors import Invalid
from domain.identity import normalize_email
from workers.bootstrap import Container

PASSWORD = "correct horse 9"


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def register(client: httpx.AsyncClient, email: str, tenant: str | None = None) -> httpx.Response:
    headers = {"X-Tenant": tenant} if tenant else {}
    return await client.post(
        "/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": "Someone"}, headers=headers
    )


async def login(client: httpx.AsyncClient, email: str, tenant: str | None = None) -> dict[str, Any]:
    headers = {"X-Tenant": tenant} if tenant else {}
    r = await client.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD}, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def platform_admin(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await register(client, "root@example.com")
    assert r.status_code == 201 and r.json()["role"] == "admin", r.text  # the embedded start's first user
    return await login(client, "root@example.com")


async def accept(client: httpx.AsyncClient, token: str, name: str = "Invitee") -> httpx.Response:
    return await client.post("/api/v1/auths/invitations/accept", json={"token": token, "name": name, "password": PASSWORD})


async def test_a_new_tenant_cannot_be_taken_by_whoever_signs_up_first(client: httpx.AsyncClient) -> None:
    root = await platform_admin(client)
    for body in ({"slug": "gamma", "name": "Gamma", "allow_signup": False}, {"slug": "delta", "name": "Delta"}):
        r = await client.post("/api/v1/tenants", json=body, headers=bearer(root))
        assert r.status_code == 201 and r.json()["invitation"] is None, r.text
        r = await register(client, "guesser@evil.example", body["slug"])
        assert r.status_code == 403 and r.json()["error"]["code"] == "TENANT_NOT_READY", r.text
    # The platform admin invites the first admin later; after that, open sign-up gives the default role.
    r = await client.post("/api/v1/tenants/delta/invitations", json={"email": "boss@delta.example", "role": "admin"}, headers=bearer(root))
    assert r.status_code == 201, r.text
    assert (await accept(client, r.json()["token"], "Delta Boss")).json()["role"] == "admin"
    r = await register(client, "late@delta.example", "delta")
    assert r.status_code == 201 and r.json()["role"] == "user"
    r = await register(client, "late@gamma.example", "gamma")
    assert r.status_code == 403  # still nobody: gamma has no admin


async def test_an_invitation_is_used_once_by_its_own_email_and_expires(client: httpx.AsyncClient, container: Container) -> None:
    root = await platform_admin(client)
    r = await client.post(
        "/api/v1/tenants", json={"slug": "acme", "name": "Acme", "allow_signup": False, "admin_email": "Boss@Acme.example"},
        headers=bearer(root),
    )  # fmt: skip
    assert r.status_code == 201, r.text
    invitation = r.json()["invitation"]
    assert (invitation["email"], invitation["role"]) == ("boss@acme.example", "admin")
    assert invitation["token"].startswith("pi_")
    r = await accept(client, invitation["token"], "Acme Boss")
    assert r.status_code == 201 and r.json()["role"] == "admin" and r.json()["email"] == "boss@acme.example", r.text
    r = await accept(client, invitation["token"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "INVITATION_USED"
    boss = await login(client, "boss@acme.example", "acme")

    # A tenant admin invites into their own tenant (sign-up is closed there), not into another.
    r = await client.post("/api/v1/tenants/acme/invitations", json={"email": "ann@acme.example"}, headers=bearer(boss))
    assert r.status_code == 201 and r.json()["role"] == "user", r.text
    ann = r.json()
    r = await client.post("/api/v1/tenants/default/invitations", json={"email": "x@example.com"}, headers=bearer(boss))
    assert r.status_code == 404
    r = await client.post("/api/v1/tenants/acme/invitations", json={"email": "boss@acme.example"}, headers=bearer(boss))
    assert r.status_code == 409 and r.json()["error"]["code"] == "EMAIL_TAKEN"
    for token in (ann["token"][:-3] + "abc", "pi_nothing", "pk_" + ann["token"][3:], ""):
        r = await accept(client, token)
        assert r.status_code in (400, 401), (token, r.text)

    # Expired: the clock moves past the invitation's end.
    from domain.identity import Invitation

    stored = await container.store.call(container.store.get, Invitation, __import__("uuid").UUID(ann["id"]))
    with pytest.raises(Exception) as caught:
        stored.check_acceptable(datetime.now(UTC) + timedelta(days=8))
    assert getattr(caught.value, "code", "") == "INVITATION_EXPIRED"
    r = await accept(client, ann["token"], "Ann")
    assert r.status_code == 201 and r.json()["role"] == "user"


async def test_a_domain_belongs_to_one_tenant(client: httpx.AsyncClient) -> None:
    root = await platform_admin(client)
    r = await client.post("/api/v1/tenants", json={"slug": "one", "name": "One", "domains": ["chat.one.example"]}, headers=bearer(root))
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/tenants", json={"slug": "two", "name": "Two", "domains": ["CHAT.one.example"]}, headers=bearer(root))
    assert r.status_code == 409 and r.json()["error"]["code"] == "DOMAIN_TAKEN", r.text
    r = await client.get("/api/v1/tenants", headers=bearer(root))
    assert "two" not in {t["slug"] for t in r.json()}


LOOKALIKES = [
    "ａｌｉｃｅ@example.com",  # fullwidth: folds to alice@example.com
    "ALICE@EXAMPLE.COM",
]
REFUSED = [
    "аlice@example.com",  # Cyrillic а among Latin letters
    "al\u200bice@example.com",  # zero-width space
    "al\u202eice@example.com",  # right-to-left override
    "alice\ufe0f@example.com",  # variation selector
    "ali😀ce@example.com",  # emoji
    "alice@exa mple.com",
]


async def test_look_alike_addresses_are_one_account_or_refused(client: httpx.AsyncClient) -> None:
    await platform_admin(client)
    r = await register(client, "alice@example.com")
    assert r.status_code == 201
    for email in LOOKALIKES:
        r = await register(client, email)
        assert r.status_code == 409 and r.json()["error"]["code"] == "EMAIL_TAKEN", (email, r.text)
    for email in REFUSED:
        r = await register(client, email)
        assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_EMAIL", (email, r.text)
    r = await client.post("/api/v1/auths/register", json={"email": "bob@example.com", "password": PASSWORD, "name": "Bob\u202eexe.txt"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_NAME"
    r = await register(client, "алиса@example.com")  # one script, not Latin: a real address
    assert r.status_code == 201 and r.json()["email"] == "алиса@example.com"


INVISIBLE = st.sampled_from(["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202a", "\u202e", "\u2066", "\u00ad", "\ufe0f"])
CONFUSABLE = st.sampled_from(["а", "е", "о", "р", "с", "х", "і", "ј", "ѕ", "ԁ", "ɡ", "ο", "ν"])  # Cyrillic, Greek, IPA


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    local=st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789."), min_size=2, max_size=20).filter(
        lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s
    ),
    extra=st.one_of(INVISIBLE, CONFUSABLE),
    at=st.integers(min_value=0, max_value=20),
)
def test_no_invisible_or_look_alike_character_makes_a_second_latin_address(local: str, extra: str, at: int) -> None:
    position = min(at, len(local))
    spoof = local[:position] + extra + local[position:]
    try:
        normalized = normalize_email(f"{spoof}@example.com")
    except Invalid:
        return  # refused: fine
    # Accepted only as the very account the plain address names.
    assert normalized == f"{local}@example.com", (spoof, normalized)
