"""Retention and legal hold on the real engines, with the whole pipeline running: chats past their period
are deleted (``ChatDeleted`` by ``system:retention``) and shredded, a held user's chats and everything
under a tenant hold are kept; audit rows past their period are dropped from the oldest end behind a signed
checkpoint, the drop is an ``AuditRowsDropped`` event, and the kept suffix verifies with the checkpoints
(and not without them), before and after a rebuild of the audit log.

The sweep is given a ``now`` far in the future rather than events an old ``occurred_at``."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from adapters.checkpoints import checkpoint_key, open_checkpoint_sink, read_checkpoints
from application.retention import RETENTION_ACTOR
from domain.identity import ERASED
from domain.retention import retention_policy_id_for
from projections.audit import AuditProjector, verify_chain
from projections.runtime import rebuild
from schema.tables import audit_log
from tests.conftest import Pipeline
from tests.e2e.test_chat_api import bearer, echo_tenant, error_code, finished, new_chat, send, sign_up
from tests.e2e.test_erasure import database_holds
from workers.bootstrap import Container
from workers.cli import main as parley
from workers.retention import retention_service

pytestmark = pytest.mark.timeout(300)

LATER = timedelta(days=400)


async def tenant_of(c: Container) -> str:
    return str((await c.identity.tenant(c.settings.default_tenant)).id)


async def audit_rows(c: Container, tenant_id: str) -> list[dict[str, Any]]:
    async with c.engine.connect() as conn:
        stmt = select(audit_log).where(audit_log.c.tenant_id == tenant_id).order_by(audit_log.c.seq)
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def talk(client: httpx.AsyncClient, tokens: dict[str, Any], words: str) -> str:
    chat = await new_chat(client, tokens, title="Talk")
    r = await send(client, tokens, chat, words)
    assert r.status_code == 202, r.text
    await finished(client, tokens, r.json()["generation_id"])
    return chat


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        await asyncio.to_thread(parley, list(argv))
        status = 0
    except SystemExit as exit:
        status = int(exit.code or 0) if not isinstance(exit.code, str) else 1
    return status, capsys.readouterr().out


async def test_admins_set_the_policy_and_holds_with_stable_errors(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    admin, user = await echo_tenant(client)
    r = await client.get("/api/v1/retention", headers=bearer(admin))
    assert r.status_code == 200 and r.json() == {"chat_days": None, "audit_days": None, "holds": [], "audit_dropped_up_to": 0}
    r = await client.get("/api/v1/retention", headers=bearer(user))
    assert r.status_code == 403 and error_code(r) == "ADMIN_REQUIRED"
    for bad in ({"chat_days": 0, "audit_days": None}, {"chat_days": 36501, "audit_days": None}, {"chat_days": None, "audit_days": -3}):
        r = await client.put("/api/v1/retention", json=bad, headers=bearer(admin))
        assert r.status_code == 422 and error_code(r) == "INVALID_RETENTION_DAYS", r.text
    r = await client.put("/api/v1/retention", json={"chat_days": 30}, headers=bearer(admin))
    assert r.status_code == 400, r.text  # both are stated (null keeps)
    r = await client.put("/api/v1/retention", json={"chat_days": 30, "audit_days": 36500}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["chat_days"] == 30 and r.json()["audit_days"] == 36500, r.text

    r = await client.post("/api/v1/retention/holds", json={"reason": "Matter 1"}, headers=bearer(admin))
    assert r.status_code == 422 and error_code(r) == "INVALID_HOLD_SCOPE", r.text
    both = {"reason": "Matter 1", "user_id": user["id"], "tenant": True}
    r = await client.post("/api/v1/retention/holds", json=both, headers=bearer(admin))
    assert r.status_code == 422 and error_code(r) == "INVALID_HOLD_SCOPE", r.text
    r = await client.post("/api/v1/retention/holds", json={"reason": "Matter 1", "user_id": str(uuid.uuid4())}, headers=bearer(admin))
    assert r.status_code == 404 and error_code(r) == "USER_NOT_FOUND", r.text
    r = await client.post("/api/v1/retention/holds", json={"reason": "", "tenant": True}, headers=bearer(admin))
    assert r.status_code == 422 and error_code(r) == "INVALID_HOLD_REASON", r.text
    r = await client.post("/api/v1/retention/holds", json={"reason": "Matter 1", "user_id": user["id"]}, headers=bearer(user))
    assert r.status_code == 403, r.text

    r = await client.post("/api/v1/retention/holds", json={"reason": "Matter 1", "user_id": user["id"]}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    hold = r.json()
    assert hold["user_id"] == user["id"] and hold["tenant"] is False and hold["reason"] == "Matter 1"
    r = await client.get("/api/v1/retention", headers=bearer(admin))
    assert r.json()["holds"] == [hold]
    r = await client.delete(f"/api/v1/retention/holds/{hold['id']}", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["holds"] == [], r.text
    r = await client.delete(f"/api/v1/retention/holds/{hold['id']}", headers=bearer(admin))
    assert r.status_code == 404 and error_code(r) == "HOLD_NOT_FOUND", r.text


async def test_chats_past_their_period_are_deleted_and_shredded_unless_held(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    c = container
    tenant_id = await tenant_of(c)
    admin, alice = await echo_tenant(client)
    bob = await sign_up(client, "bob@example.com")
    alices = await talk(client, alice, "alice-secret-3141")
    bobs = await talk(client, bob, "bob-kept-2718")
    r = await client.put("/api/v1/retention", json={"chat_days": 30, "audit_days": None}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    r = await client.post("/api/v1/retention/holds", json={"user_id": bob["id"], "reason": "Matter 9"}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    bob_hold = r.json()["id"]
    await pipeline.settle(timeout=60)
    retention = retention_service(c, sweeping=True)

    report = await retention.sweep(tenant_id)  # today: nothing is 30 days old
    assert report is not None and report.chats_deleted == []
    report = await retention.sweep(tenant_id, now=datetime.now(UTC) + LATER)
    assert report is not None and report.chats_deleted == [uuid.UUID(alices)]
    await pipeline.settle(timeout=60)

    r = await client.get(f"/api/v1/chats/{alices}", headers=bearer(alice))
    assert r.status_code == 404, r.text
    events = await c.store.call(c.store.events_of, uuid.UUID(alices))
    assert type(events[-1]).__name__ == "ChatDeleted"
    assert all(getattr(e, "content", ERASED) == ERASED for e in events)  # its key is destroyed
    assert await database_holds(c, [b"alice-secret-3141"]) == {}
    deleted = [row for row in await audit_rows(c, tenant_id) if row["action"] == "ChatDeleted"]
    assert [(row["target_id"], row["actor"]) for row in deleted] == [(alices, RETENTION_ACTOR)]
    r = await client.get(f"/api/v1/chats/{bobs}", headers=bearer(bob))
    assert r.status_code == 200 and "bob-kept-2718" in r.text  # held

    # A hold on the whole tenant keeps everything, a user hold lifted or not.
    r = await client.post("/api/v1/retention/holds", json={"tenant": True, "reason": "Litigation"}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    tenant_hold = r.json()["id"]
    r = await client.delete(f"/api/v1/retention/holds/{bob_hold}", headers=bearer(admin))
    assert r.status_code == 200, r.text
    alices_second = await talk(client, alice, "alice-again-1618")
    await pipeline.settle(timeout=60)
    report = await retention.sweep(tenant_id, now=datetime.now(UTC) + LATER)
    assert report is not None and report.held and report.chats_deleted == []
    for tokens, chat in ((bob, bobs), (alice, alices_second)):
        r = await client.get(f"/api/v1/chats/{chat}", headers=bearer(tokens))
        assert r.status_code == 200, r.text

    r = await client.delete(f"/api/v1/retention/holds/{tenant_hold}", headers=bearer(admin))
    assert r.status_code == 200, r.text
    await pipeline.settle(timeout=60)
    reports = await retention.sweep_all(now=datetime.now(UTC) + LATER)
    assert [(r.tenant_id, set(r.chats_deleted)) for r in reports] == [
        (tenant_id, {uuid.UUID(bobs), uuid.UUID(alices_second)})
    ]
    await pipeline.settle(timeout=60)
    assert await database_holds(c, [b"bob-kept-2718", b"alice-again-1618"]) == {}


def _about(row: dict[str, Any], user_id: str) -> bool:
    detail = row["detail"] if isinstance(row["detail"], dict) else {}
    return user_id in (row["actor"].removeprefix("user:"), row["target_id"]) or user_id in {
        str(detail.get(k)) for k in ("user_id", "owner_id", "subject_id")
    }


async def test_old_audit_rows_are_dropped_behind_a_checkpoint_and_the_rest_verifies(
    client: httpx.AsyncClient,
    container: Container,
    pipeline: Pipeline,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = container
    tenant_id = await tenant_of(c)
    admin, alice = await echo_tenant(client)
    await talk(client, alice, "before carol")
    carol = await sign_up(client, "carol@example.com")
    await talk(client, carol, "carol speaks")
    await talk(client, alice, "after carol")
    r = await client.put("/api/v1/retention", json={"chat_days": None, "audit_days": 30}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    r = await client.post("/api/v1/retention/holds", json={"user_id": carol["id"], "reason": "Matter C"}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    carol_hold = r.json()["id"]
    await pipeline.settle(timeout=60)
    retention = retention_service(c, sweeping=True)
    sink = open_checkpoint_sink(c.settings.audit_checkpoint_sink)
    public_key = checkpoint_key(c.settings.secret_key).public_key

    # Nothing is 30 days old yet.
    report = await retention.sweep(tenant_id)
    assert report is not None and report.audit_drop is None

    # A hold on carol: the drop stops before the oldest row about her.
    before = await audit_rows(c, tenant_id)
    first_about_carol = next(row["seq"] for row in before if _about(row, carol["id"]))
    report = await retention.sweep(tenant_id, now=datetime.now(UTC) + LATER)
    assert report is not None and report.audit_drop is not None
    drop = report.audit_drop
    assert drop.up_to_seq == first_about_carol - 1 and drop.count == first_about_carol - 1
    kept = await audit_rows(c, tenant_id)
    assert kept[0]["seq"] == first_about_carol
    assert kept[: len(before) - drop.count] == before[drop.count :]  # (the drop's own row may follow)
    anchors, rejected = await read_checkpoints(sink, public_key, tenant_id)
    assert rejected == [] and (tenant_id, drop.up_to_seq) in {(a.tenant_id, a.seq) for a in anchors}
    assert {a.hash for a in anchors if a.seq == drop.up_to_seq} == {before[drop.up_to_seq - 1]["hash"]}

    # A hold on the tenant: nothing more goes. Lifted (carol's too): all but the newest row go.
    r = await client.post("/api/v1/retention/holds", json={"tenant": True, "reason": "Audit"}, headers=bearer(admin))
    tenant_hold = r.json()["id"]
    await pipeline.settle(timeout=60)
    report = await retention.sweep(tenant_id, now=datetime.now(UTC) + LATER)
    assert report is not None and report.held and report.audit_drop is None
    for hold_id in (tenant_hold, carol_hold):
        r = await client.delete(f"/api/v1/retention/holds/{hold_id}", headers=bearer(admin))
        assert r.status_code == 200, r.text
    await pipeline.settle(timeout=60)
    head = (await audit_rows(c, tenant_id))[-1]["seq"]
    report = await retention.sweep(tenant_id, now=datetime.now(UTC) + LATER)
    assert report is not None and report.audit_drop is not None
    assert report.audit_drop.up_to_seq == head - 1 and report.audit_drop.count == head - 1 - drop.up_to_seq
    await pipeline.settle(timeout=60)

    # Each drop is an event of the tenant's retention policy, by the system.
    events = await c.store.call(c.store.events_of, retention_policy_id_for(tenant_id))
    dropped = [vars(e) for e in events if type(e).__name__ == "AuditRowsDropped"]
    assert [(d["tenant_id"], d["up_to_seq"], d["checkpoint_seq"]) for d in dropped] == [
        (tenant_id, drop.up_to_seq, drop.up_to_seq),
        (tenant_id, head - 1, head - 1),
    ]
    audited = [row for row in await audit_rows(c, tenant_id) if row["action"] == "AuditRowsDropped"]
    assert [row["actor"] for row in audited] == [RETENTION_ACTOR]  # the first one's row went with the second drop
    assert audited[-1]["detail"]["checkpoint_sha256"] == report.audit_drop.checkpoint_sha256

    # The kept suffix verifies from the checkpoint before it, and only with it.
    anchors, rejected = await read_checkpoints(sink, public_key, tenant_id)
    assert rejected == [] and await verify_chain(c.engine, tenant_id, anchors=anchors) == []
    problems = await verify_chain(c.engine, tenant_id)
    assert [(p.seq, "rows deleted" in p.problem) for p in problems][:1] == [(head, True)]

    # As an operator checks it.
    env = {
        "PARLEY_HOME": str(c.settings.home),
        "PARLEY_DATABASE_URL": c.settings.database_url,
        "PARLEY_REDIS_URL": c.settings.redis_url,
        "PARLEY_NATS_URL": c.settings.nats_url,
        "PARLEY_NAMESPACE": c.settings.namespace,
        "PARLEY_SECRET_KEY": c.settings.secret_key,
        "PARLEY_LOG_LEVEL": "warning",
        "PARLEY_LOG_JSON": "false",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("PARLEY_AUDIT_CHECKPOINTS", raising=False)
    status, out = await cli(capsys, "audit", "verify", "--checkpoints")
    assert status == 0 and "intact" in out, out
    status, out = await cli(capsys, "audit", "verify")
    assert status == 1 and "FAILED" in out, out
    status, out = await cli(capsys, "retention", "sweep", "--tenant", c.settings.default_tenant)
    assert status == 0 and "retention sweep: 0 chat(s) deleted, 0 audit row(s) dropped, 1 tenant(s)" in out, out

    # A rebuilt audit log drops the same rows again, and still verifies.
    kept = await audit_rows(c, tenant_id)
    await rebuild(AuditProjector(), engine=c.engine, store=c.store)
    assert await audit_rows(c, tenant_id) == kept
    assert await verify_chain(c.engine, tenant_id, anchors=anchors) == []
