"""Compliance replay: one tenant's read models as of an instant, rebuilt from the event store into a schema
of their own, equal the tenant's rows as they stood at that instant, however the history went on after
it (in the tenant and beside it); the schema holds no other tenant's rows; an existing schema is refused
unless replaced; and ``parley replay`` does the same from the command line, showing progress."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Table, text

from adapters.settings import Settings
from application.context import CommandContext
from domain.errors import Conflict
from domain.identity import tenant_id_for
from projections.replay import replay_tenant
from projections.runtime import Projector
from tests.conftest import Pipeline
from tests.integration.procs import run_cli
from tests.integration.test_rebuild_equality import PASSWORD, Snapshot, snapshot, varied_history
from workers.bootstrap import Container, all_projectors

pytestmark = pytest.mark.timeout(240)


def read_models(c: Container) -> tuple[list[Projector], list[Table]]:
    projectors = [p for p in all_projectors(c) if p.tables]  # not the shredder
    return projectors, [t for p in projectors for t in p.tables]


def rows_of(state: Snapshot, tenant_id: str) -> Snapshot:
    return {name: [r for r in rows if str(r["tenant_id"]) == tenant_id] for name, rows in state.items()}


async def in_schema(c: Container, schema: str, tables: list[Table]) -> Snapshot:
    return await snapshot(
        SimpleNamespace(engine=c.engine.execution_options(schema_translate_map={None: schema})),  # type: ignore[arg-type]
        tables,
    )


async def history_goes_on(c: Container) -> None:
    """After the instant: in the tenant a user joins and becomes an auditor, a chat is created and renamed;
    beside it another tenant gains a user."""
    acme = str(tenant_id_for("acme"))
    pair = await c.identity.login(
        CommandContext(tenant_id=acme, actor="anonymous"), tenant="acme", email="boss@acme.test", password=PASSWORD
    )
    admin = await c.identity.authenticate(CommandContext(tenant_id=acme, actor="anonymous"), pair.access_token)
    ctx = CommandContext(tenant_id=acme, actor=admin.actor)
    late = await c.identity.create_user(ctx, admin, email="late@acme.test", password=PASSWORD, name="Late", role="user")
    await c.identity.update_user(ctx, admin, late.id, role="auditor")
    chat = await c.chats.create(ctx, admin, title="After the instant")
    await c.chats.update(ctx, admin, chat.id, title="Long after the instant")

    globex = str(tenant_id_for("globex"))
    pair = await c.identity.login(
        CommandContext(tenant_id=globex, actor="anonymous"),
        tenant="globex",
        email="boss@globex.test",
        password=PASSWORD,
    )
    other = await c.identity.authenticate(CommandContext(tenant_id=globex, actor="anonymous"), pair.access_token)
    await c.identity.create_user(
        CommandContext(tenant_id=globex, actor=other.actor), other, email="late@globex.test", password=PASSWORD, name="Late", role="user"
    )  # fmt: skip


async def test_a_tenant_replayed_at_an_instant_equals_its_read_models_at_that_instant(
    container: Container, pipeline: Pipeline, settings: Settings
) -> None:
    c = container
    await varied_history(c)
    await pipeline.settle(timeout=60)
    at = datetime.now(UTC)
    projectors, tables = read_models(c)
    acme = str(tenant_id_for("acme"))
    then = rows_of(await snapshot(c, tables), acme)
    last = (await c.store.call(c.store.read, await c.store.call(c.store.max_id), 1))[0]
    assert last.occurred_at <= at  # nothing had happened after the instant when it was captured
    assert all(then[t] for t in ("rm_users", "rm_chats", "rm_messages", "rm_audit_log", "rm_chunks", "rm_usage_daily"))

    await history_goes_on(c)
    await pipeline.settle(timeout=60)
    assert rows_of(await snapshot(c, tables), acme) != then  # the tenant's history went on

    progress: list[tuple[int, int]] = []
    done = await replay_tenant(
        projectors, engine=c.engine, store=c.store, tenant_id=acme, at=at, schema="replay_acme",
        progress=lambda position, target: progress.append((position, target)),
    )  # fmt: skip

    replayed = await in_schema(c, "replay_acme", tables)
    for table, rows in then.items():
        assert replayed[table] == rows, f"{table} differs from the tenant's rows at the instant"
    assert done.events > 0 and progress and progress[-1][1] == await c.store.call(c.store.max_id)
    async with c.engine.connect() as conn:  # the tenant's rows only, and its own positions
        for table in tables:
            others = await conn.scalar(
                text(f'SELECT count(*) FROM replay_acme."{table.name}" WHERE CAST(tenant_id AS text) <> :t'),
                {"t": acme},
            )
            assert others == 0, table.name
        positions = dict((await conn.execute(text("SELECT name, position FROM replay_acme.projector_positions"))).all())
    assert set(positions) == {p.name for p in projectors} and set(positions.values()) == {done.through}
    assert rows_of(await snapshot(c, tables), acme) != then  # the live read models were not touched

    with pytest.raises(Conflict) as exists:
        await replay_tenant(projectors, engine=c.engine, store=c.store, tenant_id=acme, at=at, schema="replay_acme")
    assert exists.value.code == "SCHEMA_EXISTS"

    # From the command line, over the schema it replaces.
    cli = run_cli(settings, "replay", "--tenant", "acme", "--at", at.isoformat(), "--into", "replay_acme")
    assert cli.returncode != 0 and "SCHEMA_EXISTS" in cli.stderr
    cli = run_cli(settings, "replay", "--tenant", "acme", "--at", at.isoformat(), "--into", "replay_acme", "--replace")
    assert cli.returncode == 0, cli.stderr
    assert "replay acme" in cli.stderr and f"into schema replay_acme: {done.events} events" in cli.stdout
    again: dict[str, Any] = await in_schema(c, "replay_acme", tables)
    assert again == replayed
