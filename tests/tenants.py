"""Test helper: a second tenant with its first admin, the way a deployment gets one — the platform admin
creates the tenant with the admin's e-mail, the admin accepts the invitation and signs in."""

from __future__ import annotations

from typing import Any

import httpx

PASSWORD = "correct horse 9"


async def tenant_with_admin(
    client: httpx.AsyncClient, platform: dict[str, str], slug: str, admin_email: str, **extra: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the admin's user record, their tokens); ``platform`` are the platform admin's headers."""
    r = await client.post(
        "/api/v1/tenants", json={"slug": slug, "name": slug.title(), "admin_email": admin_email, **extra}, headers=platform
    )
    assert r.status_code == 201, r.text
    token = r.json()["invitation"]["token"]
    r = await client.post("/api/v1/auths/invitations/accept", json={"token": token, "name": "Admin", "password": PASSWORD})
    assert r.status_code == 201, r.text
    user = r.json()
    r = await client.post(
        "/api/v1/auths/login", json={"email": admin_email, "password": PASSWORD}, headers={"X-Tenant": slug}
    )
    assert r.status_code == 200, r.text
    return user, r.json()
