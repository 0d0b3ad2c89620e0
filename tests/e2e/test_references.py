"""References name something that exists in the same tenant: a grant to a user of another tenant, or to
no one, is refused and stores nothing; and what a change answers agrees with what a read answers."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import Pipeline, wait_projected
from workers.bootstrap import Container

PASSWORD = "correct horse 9"


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def signed_in(client: httpx.AsyncClient, email: str, tenant: str | None = None) -> dict[str, Any]:
    headers = {"X-Tenant": tenant} if tenant else {}
    r = await client.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD}, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_grants_name_users_of_the_tenant_and_nobody_else(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    await client.post("/api/v1/auths/register", json={"email": "root@example.com", "password": PASSWORD, "name": "Root"})
    root = await signed_in(client, "root@example.com")
    r = await client.post(
        "/api/v1/tenants", json={"slug": "other", "name": "Other", "admin_email": "boss@other.example"}, headers=bearer(root)
    )
    token = r.json()["invitation"]["token"]
    r = await client.post("/api/v1/auths/invitations/accept", json={"token": token, "name": "Boss", "password": PASSWORD})
    foreign = r.json()["id"]
    r = await client.post(
        "/api/v1/users", json={"email": "mine@example.com", "password": PASSWORD, "name": "Mine", "role": "user"},
        headers=bearer(root),
    )  # fmt: skip
    mine = r.json()["id"]
    kb = (await client.post("/api/v1/knowledge", json={"name": "Handbook"}, headers=bearer(root))).json()["id"]
    r = await client.post("/api/v1/providers", json={"name": "echoes", "kind": "echo"}, headers=bearer(root))
    r = await client.post(
        "/api/v1/models", json={"name": "closed", "provider": "echoes", "upstream_model": "echo", "open_to_tenant": False},
        headers=bearer(root),
    )  # fmt: skip
    assert r.status_code == 201, r.text

    for nobody in (foreign, str(uuid.uuid4())):
        r = await client.put(f"/api/v1/knowledge/{kb}/access/user:{nobody}", json={"level": "read"}, headers=bearer(root))
        assert r.status_code == 404 and r.json()["error"]["code"] == "USER_NOT_FOUND", r.text
        r = await client.post("/api/v1/models/closed/grants", json={"user_id": nobody}, headers=bearer(root))
        assert r.status_code == 404 and r.json()["error"]["code"] == "USER_NOT_FOUND", r.text
    r = await client.put(f"/api/v1/knowledge/{kb}/access/user:{mine}", json={"level": "read"}, headers=bearer(root))
    assert r.status_code == 200 and r.json()["access"] == {f"user:{mine}": "read"}, r.text
    r = await client.post("/api/v1/models/closed/grants", json={"user_id": mine}, headers=bearer(root))
    assert r.status_code == 200 and r.json()["granted_users"] == [mine], r.text


async def test_a_changed_knowledge_base_counts_its_documents_as_a_read_does(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    await client.post("/api/v1/auths/register", json={"email": "root@example.com", "password": PASSWORD, "name": "Root"})
    root = await signed_in(client, "root@example.com")
    kb = (await client.post("/api/v1/knowledge", json={"name": "Handbook"}, headers=bearer(root))).json()["id"]
    r = await client.post(
        f"/api/v1/knowledge/{kb}/documents", files={"file": ("a.txt", b"Holidays: 27 days a year.", "text/plain")},
        headers=bearer(root),
    )  # fmt: skip
    assert r.status_code == 202, r.text
    await wait_projected(container)
    read = (await client.get(f"/api/v1/knowledge/{kb}", headers=bearer(root))).json()
    changed = (await client.patch(f"/api/v1/knowledge/{kb}", json={"name": "Staff handbook"}, headers=bearer(root))).json()
    assert read["document_count"] == changed["document_count"] == 1
