"""``parley migrate encrypt-personal-data`` on a history written in the clear (today's code with sealing
off, as every event before crypto-shredding was): afterwards no personal field is left in the clear in the
event store, a second run rewrites nothing, and every read model rebuilds to the same content."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from adapters.crypto import is_blank, is_sealed
from adapters.migrations import encrypt_personal_data
from domain.identity import ERASED
from domain.privacy import KeyScope
from projections.audit import verify_chain
from projections.runtime import rebuild
from schema.contract import personal_fields
from schema.tables import users
from tests.conftest import Pipeline
from tests.integration.test_rebuild_equality import snapshot, varied_history
from workers.bootstrap import Container, all_projectors

pytestmark = pytest.mark.timeout(300)


def in_the_clear(c: Container) -> list[tuple[int, str]]:
    """(notification id, field) of every personal field stored in the clear."""
    found = []
    for n in c.store.recorder.select_notifications(start=1, limit=1_000_000):
        fields = personal_fields(n.topic.rpartition(".")[2])
        if not fields:
            continue
        state: dict[str, Any] = c.store.mapper.transcoder.decode(n.state)
        for name in fields:
            value = state.get(name)
            if not (is_blank(value) or is_sealed(value) or value == ERASED):
                found.append((n.id, name))
    return found


def _identities(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["tenant_id"], r["seq"], r["notification_id"], r["event_id"], r["action"], r["actor"]) for r in rows]


async def test_the_migration_seals_a_history_written_in_the_clear_and_read_models_rebuild_the_same(
    container: Container, pipeline: Pipeline
) -> None:
    c = container
    keys = c.store.mapper.keys
    c.store.mapper.keys = None  # as before crypto-shredding: personal fields written in the clear
    try:
        await varied_history(c, erase=False)  # erasure needs sealing; what it does after is tested below
    finally:
        c.store.mapper.keys = keys
    await pipeline.settle(timeout=60)
    assert len(await c.store.call(in_the_clear, c)) > 50

    projectors = [p for p in all_projectors(c) if p.tables]
    before = {p.name: await snapshot(c, p.tables) for p in projectors}
    seen: list[tuple[int, int, int]] = []
    read, rewritten = await c.store.call(
        lambda: encrypt_personal_data(c.store, page=40, progress=lambda *a: seen.append(a))
    )
    assert rewritten > 50 and read == await c.store.call(c.store.max_id)
    assert len(seen) > 3 and seen[-1][0] == seen[-1][1]  # page by page, to the end
    assert await c.store.call(in_the_clear, c) == []
    assert (await c.store.call(encrypt_personal_data, c.store))[1] == 0  # done: a second run changes nothing

    for projector in projectors:
        await rebuild(projector, engine=c.engine, store=c.store)
        after = await snapshot(c, projector.tables)
        if projector.name == "audit":  # rows now hold the sealed form: same rows, new content hashes
            assert _identities(after["rm_audit_log"]) == _identities(before["audit"]["rm_audit_log"])
        else:
            assert after == before[projector.name], projector.name
    assert await verify_chain(c.engine) == []

    # What was migrated is shreddable: destroying a member's keys erases their old events' fields.
    async with c.engine.connect() as conn:
        member = (await conn.execute(select(users.c.user_id).where(users.c.email == "m1@acme.test"))).scalar_one()
    await c.store.call(c.store.keys.destroy, KeyScope(user_id=uuid.UUID(member)))
    registered = (await c.store.call(c.store.events_of, uuid.UUID(member)))[0]
    assert registered.email == ERASED and registered.name == ERASED
