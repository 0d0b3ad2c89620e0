"""The audit trail on real Postgres: events written through the event store, projected, queried,
verified, tampered with and rebuilt."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.database import create_engine, create_tables
from adapters.eventstore import CommandContext, EventStore
from domain.identity import (
    ApiKey,
    EmailIndex,
    Session,
    SignInAttempt,
    Tenant,
    TokenMisuse,
    User,
    tenant_id_for,
)
from projections.audit import (
    GENESIS_HASH,
    PLATFORM_TENANT,
    AuditProjector,
    query_audit,
    row_hash,
    verify_chain,
)
from projections.runtime import ProjectorRunner, rebuild
from schema.tables import audit_heads, audit_log

ACME = str(tenant_id_for("acme"))
GLOBEX = str(tenant_id_for("globex"))
ACME_IP, GLOBEX_IP = "203.0.113.7", "198.51.100.9"


# --- engines and a database of our own -----------------------------------------------------------------
@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[EventStore]:
    event_store = EventStore(database_url, secret_key="audit-test-" + "x" * 32, pool_size=2, max_overflow=2)
    yield event_store
    event_store.close()


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    read_models = create_engine(database_url, pool_size=2)
    await create_tables(read_models)
    yield read_models
    await read_models.dispose()


# --- a small history: two tenants and the platform, projected in two waves ----------------------------
@dataclass
class World:
    rows: list[dict[str, Any]]
    heads: list[dict[str, Any]]
    events: list[Any]


async def snapshot(engine: AsyncEngine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(audit_log.select().order_by(audit_log.c.tenant_id, audit_log.c.seq))
        ).mappings()
        log_rows = [dict(r) for r in rows]
        heads = (await conn.execute(audit_heads.select().order_by(audit_heads.c.tenant_id))).mappings()
        return log_rows, [dict(h) for h in heads]


@pytest.fixture(scope="module")
async def world(store: EventStore, engine: AsyncEngine) -> World:
    async def act(tenant: str, actor: str, ip: str | None, fn: Callable[[], object]) -> None:
        ctx = CommandContext(
            tenant_id=tenant, actor=actor, ip=ip, user_agent=f"agent/{tenant[:8] or 'platform'}"
        )
        await store.execute(ctx, fn)

    def register(tenant: str, email: str, name: str) -> UUID:
        user = User(
            tenant_id=tenant,
            email=email,
            name=name,
            role="user",
            password_hash="$argon2id$x",
            created_by="self",
        )
        store.save(user, EmailIndex(tenant_id=tenant, email=email, user_id=user.id))
        return user.id

    def change(user_id: UUID, how: Callable[[User], None]) -> Callable[[], None]:
        def fn() -> None:
            user = store.get(User, user_id)
            how(user)
            store.save(user)

        return fn

    ids: dict[str, UUID] = {}

    def acme_signup() -> None:
        ids["ada"] = register(ACME, "ada@acme.test", "Ada")

    def globex_signup() -> None:
        ids["bob"] = register(GLOBEX, "bob@globex.test", "Bob")

    def ada_key_and_session() -> None:
        key = ApiKey(
            key_id=uuid.uuid4(),
            tenant_id=ACME,
            user_id=ids["ada"],
            name="ci",
            prefix="pk_1",
            key_hash="h",
            scopes=["read"],
            expires_at=None,
        )
        session = Session(
            session_id=uuid.uuid4(),
            tenant_id=ACME,
            user_id=ids["ada"],
            refresh_hash="r1",
            token_version=1,
            expires_at=key.created_on + timedelta(days=30),
        )
        ids["key"], ids["session"] = key.id, session.id
        store.save(key, session)

    def revoke_key() -> None:
        key = store.get(ApiKey, ids["key"])
        key.revoke()
        store.save(key)

    def rotate_session() -> None:
        session = store.get(Session, ids["session"])
        session.rotate(refresh_hash="r2", expires_at=session.expires_at)
        store.save(session)

    def tenant(slug: str) -> Callable[[], object]:
        return lambda: store.save(
            Tenant(slug=slug, name=slug.title(), allow_signup=True, default_role="user", domains=[])
        )

    # Wave 1
    await act(ACME, "system", None, tenant("acme"))
    await act(GLOBEX, "system", None, tenant("globex"))
    await act(ACME, "anonymous", ACME_IP, acme_signup)
    await act(GLOBEX, "anonymous", GLOBEX_IP, globex_signup)
    await act(ACME, f"user:{ids['ada']}", ACME_IP, change(ids["ada"], lambda u: u.rename("Ada L.")))
    await act(
        ACME, f"user:{ids['ada']}", ACME_IP, change(ids["ada"], lambda u: u.change_password("$argon2id$y"))
    )
    await act(ACME, f"user:{ids['ada']}", ACME_IP, ada_key_and_session)
    await act(
        GLOBEX,
        "anonymous",
        GLOBEX_IP,
        lambda: store.save(SignInAttempt(tenant_id=GLOBEX, email="bob@globex.test", reason="bad_password")),
    )
    await act(
        "",
        "system",
        "127.0.0.1",
        lambda: store.save(TokenMisuse(tenant_id="", user_id=None, token_kind="access", reason="unknown")),
    )
    await ProjectorRunner(AuditProjector(), engine=engine, store=store).catch_up()

    # Wave 2, projected incrementally on top of wave 1
    await act(ACME, "system", ACME_IP, change(ids["ada"], lambda u: u.change_role("premium")))
    await act(ACME, f"user:{ids['ada']}", ACME_IP, rotate_session)
    await act(ACME, f"user:{ids['ada']}", ACME_IP, revoke_key)
    await act(
        ACME,
        "anonymous",
        ACME_IP,
        lambda: store.save(
            TokenMisuse(tenant_id=ACME, user_id=ids["ada"], token_kind="refresh", reason="reused")
        ),
    )
    await act(GLOBEX, "system", GLOBEX_IP, change(ids["bob"], lambda u: u.deactivate()))
    await ProjectorRunner(AuditProjector(), engine=engine, store=store).catch_up()

    rows, heads = await snapshot(engine)
    return World(rows=rows, heads=heads, events=await store.call(store.read, 1, 10_000))


@pytest.fixture
async def fresh(world: World, store: EventStore, engine: AsyncEngine) -> World:
    """An untampered audit log, rebuilt from the event store for a test that tampers with it."""
    await rebuild(AuditProjector(), engine=engine, store=store)
    return world


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(statement), params)


def tenant_rows(world: World, tenant: str) -> list[dict[str, Any]]:
    return [r for r in world.rows if r["tenant_id"] == tenant]


# --- projection --------------------------------------------------------------------------------------
async def test_every_event_gets_one_audit_row_saying_who_did_what_from_where(world: World) -> None:
    by_event = {r["event_id"]: r for r in world.rows}
    assert len(world.rows) == len(world.events) == len(by_event)
    for event in world.events:
        row = by_event[str(event.event_id)]
        assert row["tenant_id"] == (event.tenant_id or PLATFORM_TENANT)
        assert (row["actor"], row["ip"], row["user_agent"]) == (event.actor, event.ip, event.user_agent)
        assert (row["action"], row["target_type"], row["target_id"]) == (
            event.type,
            event.aggregate_type,
            str(event.aggregate_id),
        )
        assert (row["notification_id"], row["occurred_at"]) == (event.id, event.occurred_at)
    assert {r["action"] for r in tenant_rows(world, ACME)} >= {
        "TenantCreated",
        "UserRegistered",
        "EmailClaimed",
        "PasswordChanged",
        "RoleChanged",
        "ApiKeyRevoked",
        "SessionRefreshed",
        "RevokedTokenUsed",
    }


async def test_each_tenant_has_its_own_gapless_chain_anchored_by_its_head(world: World) -> None:
    assert {r["tenant_id"] for r in world.rows} == {ACME, GLOBEX, PLATFORM_TENANT}
    heads = {h["tenant_id"]: h for h in world.heads}
    for tenant in (ACME, GLOBEX, PLATFORM_TENANT):
        rows = tenant_rows(world, tenant)
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
        assert [r["prev_hash"] for r in rows] == [GENESIS_HASH] + [r["hash"] for r in rows[:-1]]
        assert all(r["hash"] == row_hash(r) for r in rows)
        assert (heads[tenant]["seq"], heads[tenant]["hash"]) == (rows[-1]["seq"], rows[-1]["hash"])


async def test_secrets_never_reach_the_audit_detail(world: World) -> None:
    for row in world.rows:
        assert not [k for k in row["detail"] if "hash" in k or "password" in k or k == "token_version"]
    misuse = next(r for r in tenant_rows(world, ACME) if r["action"] == "RevokedTokenUsed")
    assert misuse["detail"]["token_kind"] == "refresh"
    registered = next(r for r in tenant_rows(world, ACME) if r["action"] == "UserRegistered")
    # Personal fields stay sealed in the audit log: the chain is over ciphertext (crypto-shredding).
    assert registered["detail"]["email"].startswith("enc:v1:s:") and "ada@acme.test" not in str(registered)


# --- queries -----------------------------------------------------------------------------------------
async def test_query_shows_only_the_callers_tenant_newest_first(world: World, engine: AsyncEngine) -> None:
    page, cursor = await query_audit(engine, GLOBEX, limit=100)
    assert cursor is None
    assert [r["event_id"] for r in page] == [r["event_id"] for r in reversed(tenant_rows(world, GLOBEX))]
    assert page[0]["ip"] == GLOBEX_IP and page[0]["hash"] == tenant_rows(world, GLOBEX)[-1]["hash"]


async def test_query_pages_through_the_log_without_gaps_or_overlaps(
    world: World, engine: AsyncEngine
) -> None:
    seen: list[int] = []
    cursor: int | None = None
    while True:
        page, cursor = await query_audit(engine, ACME, limit=3, before_seq=cursor)
        seen += [r["seq"] for r in page]
        assert len(page) <= 3
        if cursor is None:
            break
    assert seen == list(range(len(tenant_rows(world, ACME)), 0, -1))


async def test_query_filters_by_actor_action_target_and_time(world: World, engine: AsyncEngine) -> None:
    acme = tenant_rows(world, ACME)

    async def seqs(**filters: Any) -> list[int]:
        page, _ = await query_audit(engine, ACME, limit=100, **filters)
        return [r["seq"] for r in page]

    def expected(keep: Callable[[dict[str, Any]], bool]) -> list[int]:
        return [r["seq"] for r in reversed(acme) if keep(r)]

    ada = next(r["actor"] for r in acme if r["actor"].startswith("user:"))
    assert await seqs(actor=ada) == expected(lambda r: r["actor"] == ada)
    assert await seqs(action="UserRegistered") == expected(lambda r: r["action"] == "UserRegistered")
    assert await seqs(action="UserRegistered", actor="system") == []
    target = next(r["target_id"] for r in acme if r["action"] == "UserRegistered")
    assert await seqs(target_type="User", target_id=target) == expected(lambda r: r["target_id"] == target)
    middle = acme[len(acme) // 2]["occurred_at"]
    assert await seqs(since=middle) == expected(lambda r: r["occurred_at"] >= middle)
    assert await seqs(until=middle) == expected(lambda r: r["occurred_at"] < middle)
    assert await seqs(actor=ada, since=middle) == expected(
        lambda r: r["actor"] == ada and r["occurred_at"] >= middle
    )


# --- verification and tampering ----------------------------------------------------------------------
async def test_an_untouched_log_verifies(fresh: World, engine: AsyncEngine) -> None:
    assert await verify_chain(engine) == []
    for tenant in (ACME, GLOBEX, PLATFORM_TENANT):
        assert await verify_chain(engine, tenant) == []


@pytest.mark.parametrize(
    "edit",
    [
        'detail = detail || \'{"name": "Mallory"}\'::jsonb',
        "actor = 'user:mallory'",
        "ip = '192.0.2.66'",
        "occurred_at = occurred_at - interval '1 day'",
    ],
    ids=["detail", "actor", "ip", "occurred_at"],
)
async def test_editing_an_audit_row_breaks_the_chain(fresh: World, engine: AsyncEngine, edit: str) -> None:
    await sql(engine, f"UPDATE rm_audit_log SET {edit} WHERE tenant_id = :t AND seq = 3", t=ACME)
    problems = await verify_chain(engine)
    assert {(p.tenant_id, p.seq) for p in problems} == {(ACME, 3)}
    assert "content" in problems[0].problem
    assert await verify_chain(engine, GLOBEX) == []


async def test_editing_a_rows_hash_breaks_the_chain(fresh: World, engine: AsyncEngine) -> None:
    await sql(
        engine, "UPDATE rm_audit_log SET hash = :h WHERE tenant_id = :t AND seq = 2", t=GLOBEX, h="f" * 64
    )
    problems = await verify_chain(engine, GLOBEX)
    assert {p.seq for p in problems} == {2, 3}  # its own hash, and the link from the next row


async def test_deleting_a_middle_row_breaks_the_chain(fresh: World, engine: AsyncEngine) -> None:
    await sql(engine, "DELETE FROM rm_audit_log WHERE tenant_id = :t AND seq = 4", t=ACME)
    problems = await verify_chain(engine)
    assert {(p.tenant_id, p.seq) for p in problems} == {(ACME, 5)}
    assert any("expected seq 4" in p.problem for p in problems)


async def test_deleting_the_last_row_is_caught_by_the_head(fresh: World, engine: AsyncEngine) -> None:
    last = len(tenant_rows(fresh, ACME))
    await sql(engine, "DELETE FROM rm_audit_log WHERE tenant_id = :t AND seq = :s", t=ACME, s=last)
    problems = await verify_chain(engine)
    assert [(p.tenant_id, p.seq) for p in problems] == [(ACME, last - 1)]
    assert "head" in problems[0].problem


async def test_deleting_a_tenants_whole_log_is_caught_by_the_head(fresh: World, engine: AsyncEngine) -> None:
    await sql(engine, "DELETE FROM rm_audit_log WHERE tenant_id = :t", t=GLOBEX)
    problems = await verify_chain(engine)
    assert [p.tenant_id for p in problems] == [GLOBEX]


async def test_appending_a_well_hashed_forged_row_is_caught_by_the_head(
    fresh: World, engine: AsyncEngine
) -> None:
    last = tenant_rows(fresh, ACME)[-1]
    forged = {
        **last,
        "seq": last["seq"] + 1,
        "event_id": str(uuid.uuid4()),
        "actor": "user:mallory",
        "prev_hash": last["hash"],
    }
    forged["hash"] = row_hash(forged)
    async with engine.begin() as conn:
        await conn.execute(audit_log.insert().values(forged))
    problems = await verify_chain(engine)
    assert [(p.tenant_id, p.seq) for p in problems] == [(ACME, forged["seq"])]
    assert "head" in problems[0].problem


async def test_inserting_a_forged_row_in_the_middle_breaks_the_chain(
    fresh: World, engine: AsyncEngine
) -> None:
    rows = tenant_rows(fresh, ACME)
    # A careful forger: renumbers what follows, hashes the forgery onto row 2, moves the head along.
    await sql(engine, "UPDATE rm_audit_log SET seq = -seq WHERE tenant_id = :t AND seq >= 3", t=ACME)
    await sql(engine, "UPDATE rm_audit_log SET seq = 1 - seq WHERE tenant_id = :t AND seq < 0", t=ACME)
    await sql(engine, "UPDATE rm_audit_heads SET seq = seq + 1 WHERE tenant_id = :t", t=ACME)
    forged = {
        **rows[1],
        "seq": 3,
        "event_id": str(uuid.uuid4()),
        "action": "RoleChanged",
        "detail": {"role": "admin"},
        "prev_hash": rows[1]["hash"],
    }
    forged["hash"] = row_hash(forged)
    async with engine.begin() as conn:
        await conn.execute(audit_log.insert().values(forged))
    problems = await verify_chain(engine)
    assert {(p.tenant_id, p.seq) for p in problems} >= {(ACME, 4)}
    assert {p.tenant_id for p in problems} == {ACME}


async def test_verification_reads_long_chains_in_chunks(fresh: World, engine: AsyncEngine) -> None:
    assert await verify_chain(engine, chunk_size=2) == []
    await sql(engine, "DELETE FROM rm_audit_log WHERE tenant_id = :t AND seq = 4", t=ACME)
    problems = await verify_chain(engine, chunk_size=2)
    assert {(p.tenant_id, p.seq) for p in problems} == {(ACME, 5)}


async def test_verification_stops_after_max_problems(fresh: World, engine: AsyncEngine) -> None:
    await sql(engine, "UPDATE rm_audit_log SET actor = 'user:mallory'")
    assert len(await verify_chain(engine)) == len(fresh.rows)
    assert len(await verify_chain(engine, max_problems=3, chunk_size=2)) == 3


# --- rebuild -----------------------------------------------------------------------------------------
async def test_rebuilding_gives_the_same_log_as_incremental_projection(
    world: World, store: EventStore, engine: AsyncEngine
) -> None:
    await rebuild(AuditProjector(), engine=engine, store=store)
    rows, heads = await snapshot(engine)
    assert rows == world.rows
    assert heads == world.heads
    assert await verify_chain(engine) == []
