"""The auditor role through HTTP: an auditor reads the audit log, usage reports and replays of metadata (a
user, the quota policy as of an instant), and is an admin of nothing else. Reading someone's content (a
chat replayed, the sealed detail of the audit log opened) needs a stated reason, from an auditor or an
admin alike, and each reading is a ``ContentAccessed`` event in the audit log, with the reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from tests.conftest import Pipeline
from tests.e2e.test_chat_api import PASSWORD, bearer, echo_tenant, error_code, finished, head, new_chat, send
from workers.bootstrap import Container

REASON = "Ticket 4711: complaint about an answer"


async def auditor_of(client: httpx.AsyncClient, admin: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/users",
        json={"email": "auditor@example.com", "password": PASSWORD, "name": "Audrey", "role": "auditor"},
        headers=bearer(admin),
    )
    assert r.status_code == 201 and r.json()["role"] == "auditor", r.text
    user_id = r.json()["id"]
    r = await client.post("/api/v1/auths/login", json={"email": "auditor@example.com", "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {**r.json(), "id": user_id}


async def audit_rows(client: httpx.AsyncClient, tokens: dict[str, Any], **params: Any) -> httpx.Response:
    return await client.get("/api/v1/audit", params={"limit": 500, **params}, headers=bearer(tokens))


async def test_an_auditor_reads_the_audit_trail_and_usage_and_content_only_for_a_stated_reason(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, user = await echo_tenant(client)
    r = await client.put("/api/v1/quotas/roles/user", json={"limit": 1000}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    chat = await new_chat(client, user, "Private talk")
    sent = await send(client, user, chat, "my secret plans")
    assert sent.status_code == 202, sent.text
    await finished(client, user, sent.json()["generation_id"])
    auditor = await auditor_of(client, admin)
    await pipeline.settle()
    then = datetime.now(UTC)
    r = await client.put("/api/v1/quotas/roles/user", json={"limit": 2000}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    await pipeline.settle()

    # The audit log, sealed: the message's content is ciphertext there.
    r = await audit_rows(client, auditor)
    assert r.status_code == 200, r.text
    posted = [row for row in r.json()["items"] if row["action"] == "MessagePosted" and row["target_id"] == chat]
    assert posted and posted[0]["detail"]["content"].startswith("enc:v1:")
    # Usage reports.
    for path in ("/api/v1/usage", "/api/v1/usage/tools"):
        r = await client.get(path, headers=bearer(auditor))
        assert r.status_code == 200, f"{path}: {r.text}"
    assert (await client.get("/api/v1/usage", headers=bearer(user))).status_code == 403
    # Replays of metadata: a user, the quota policy as it stood at the instant.
    r = await client.get(
        "/api/v1/audit/replay", params={"kind": "user", "aggregate_id": user["id"]}, headers=bearer(auditor)
    )
    assert r.status_code == 200 and r.json()["state"]["role"] == "user", r.text
    r = await client.get(
        "/api/v1/audit/replay", params={"kind": "quota_policy", "at": then.isoformat()}, headers=bearer(auditor)
    )
    assert r.status_code == 200 and r.json()["state"]["role_limits"]["user"] == 1000, r.text
    r = await client.get("/api/v1/audit/replay", params={"kind": "user", "aggregate_id": chat}, headers=bearer(auditor))
    assert r.status_code == 404 and error_code(r) == "AGGREGATE_NOT_FOUND"  # a chat is not a user

    # An admin of nothing else: every admin action is refused and writes nothing.
    before = await head(container)
    for method, path, body in (
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", {"email": "x@example.com", "password": PASSWORD, "name": "X", "role": "user"}),
        ("PATCH", f"/api/v1/users/{user['id']}", {"role": "premium"}),
        ("PATCH", f"/api/v1/users/{auditor['id']}", {"role": "admin"}),
        ("POST", "/api/v1/providers", {"name": "p", "kind": "echo"}),
        ("PUT", "/api/v1/quotas/roles/user", {"limit": 1}),
        ("GET", f"/api/v1/users/{user['id']}/export", None),
    ):
        r = await client.request(method, path, json=body, headers=bearer(auditor))
        assert r.status_code == 403, f"{method} {path}: {r.text}"
    assert await head(container) == before

    # Content needs a reason: a chat replayed...
    replay = {"kind": "chat", "aggregate_id": chat}
    for reason in (None, "", "  x ", "y" * 501):
        params = replay if reason is None else {**replay, "reason": reason}
        r = await client.get("/api/v1/audit/replay", params=params, headers=bearer(auditor))
        assert r.status_code == 400 and error_code(r) == "REASON_REQUIRED", f"{reason!r}: {r.text}"
    r = await client.get("/api/v1/audit/replay", params={"aggregate_id": chat}, headers=bearer(admin))
    assert r.status_code == 400 and error_code(r) == "REASON_REQUIRED"  # an admin too, by any kind
    assert await head(container) == before
    r = await client.get("/api/v1/audit/replay", params={**replay, "reason": REASON}, headers=bearer(auditor))
    assert r.status_code == 200, r.text
    messages = r.json()["state"]["messages"]
    assert [m["content"] for m in messages.values() if m["role"] == "user"] == ["my secret plans"]
    assert r.json()["state"]["title"] == "Private talk"

    # ...and the audit log's sealed detail opened.
    r = await audit_rows(client, auditor, open="true", target_id=chat)
    assert r.status_code == 400 and error_code(r) == "REASON_REQUIRED"
    r = await audit_rows(client, auditor, open="true", target_id=chat, reason=REASON)
    assert r.status_code == 200, r.text
    opened = [row for row in r.json()["items"] if row["action"] == "MessagePosted"]
    assert opened and opened[0]["detail"]["content"] == "my secret plans"
    assert opened[0]["hash"] == posted[0]["hash"]  # the row is as it was; only its reading is opened

    # Each reading is in the audit log: who, what, how and why.
    await pipeline.settle()
    r = await audit_rows(client, admin, action="ContentAccessed")
    assert r.status_code == 200, r.text
    accessed = sorted(
        (row["actor"], row["detail"]["subject"], row["detail"]["kind"], row["detail"]["reason"])
        for row in r.json()["items"]
    )
    assert accessed == [
        (f"user:{auditor['id']}", chat, "audit_detail", REASON),
        (f"user:{auditor['id']}", chat, "chat", REASON),
    ]


async def test_no_one_is_made_an_auditor_through_a_gateway_or_by_signing_up(client: httpx.AsyncClient) -> None:
    admin, _ = await echo_tenant(client)
    r = await client.post(
        "/api/v1/auths/api-keys",
        json={"name": "gw", "scopes": ["gateway"], "role_map": {"staff": "auditor"}},
        headers=bearer(admin),
    )
    assert r.status_code == 422 and error_code(r) == "INVALID_ROLE_MAP", r.text
    r = await client.post(
        "/api/v1/tenants",
        json={"slug": "auditing", "name": "Auditing", "admin_email": "a@auditing.test", "default_role": "auditor"},
        headers=bearer(admin),
    )
    assert r.status_code == 422 and error_code(r) == "INVALID_ROLE", r.text


async def test_the_openapi_document_names_the_replay_kinds_and_the_reason(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    replay = {p["name"]: p for p in paths["/api/v1/audit/replay"]["get"]["parameters"]}
    assert set(replay["kind"]["schema"]["enum"]) == {"aggregate", "chat", "user", "quota_policy"}
    assert "3-500 characters" in replay["reason"]["description"] and not replay["aggregate_id"]["required"]
    listing = {p["name"]: p for p in paths["/api/v1/audit"]["get"]["parameters"]}
    assert {"open", "reason"} <= set(listing)
