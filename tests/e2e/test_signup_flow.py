"""A user registers, signs in, reads /me, creates an API key and uses it; the audit log shows each step."""

from __future__ import annotations

from tests.conftest import Pipeline


async def test_user_registers_signs_in_and_uses_an_api_key(client, pipeline: Pipeline) -> None:
    r = await client.post(
        "/api/v1/auths/register", json={"email": "Ann@Example.com", "password": "correct horse 9", "name": "Ann"}
    )
    assert r.status_code == 201, r.text
    user = r.json()
    assert user["email"] == "ann@example.com" and user["role"] == "admin"

    r = await client.post("/api/v1/auths/login", json={"email": "ann@example.com", "password": "correct horse 9"})
    assert r.status_code == 200, r.text
    tokens = r.json()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}

    r = await client.get("/api/v1/auths/me", headers=auth)
    assert r.status_code == 200 and r.json()["id"] == user["id"]

    r = await client.post("/api/v1/auths/api-keys", json={"name": "laptop"}, headers=auth)
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert key.startswith("pk_")

    r = await client.get("/api/v1/auths/me", headers={"X-API-Key": key})
    assert r.status_code == 200 and r.json()["id"] == user["id"]

    await pipeline.settle()
    r = await client.get("/api/v1/audit", params={"limit": 100}, headers=auth)
    assert r.status_code == 200, r.text
    actions = [row["action"] for row in r.json()["items"]]
    for expected in ("UserRegistered", "SessionStarted", "ApiKeyCreated"):
        assert expected in actions
    registered = next(row for row in r.json()["items"] if row["action"] == "UserRegistered")
    assert registered["ip"] == "203.0.113.7"
