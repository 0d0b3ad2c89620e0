"""Signed checkpoints anchor the audit chain, on real Postgres (and S3 spoken to moto's server): written for
every head that moved, checked by ``verify_chain(anchors=...)`` and ``parley audit verify --checkpoints``,
and they catch what the chain alone cannot: a rewrite of every row and head."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.checkpoints import (
    Checkpoint,
    Checkpointer,
    CheckpointKey,
    DirectoryCheckpoints,
    S3Checkpoints,
    open_checkpoint_sink,
    read_checkpoints,
)
from adapters.database import create_engine, create_tables
from adapters.eventstore import CommandContext, EventStore
from domain.identity import EmailIndex, Tenant, User, tenant_id_for
from projections.audit import GENESIS_HASH, AuditProjector, chain_heads, row_hash, verify_chain
from projections.runtime import ProjectorRunner, rebuild
from schema.tables import audit_heads, audit_log
from workers.cli import main as parley

SECRET = "anchor-test-secret-" + "k" * 40
ACME = str(tenant_id_for("acme"))
GLOBEX = str(tenant_id_for("globex"))


# --- a database of its own (``database_url``: tests/integration/conftest.py) -------------------------------
@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[EventStore]:
    event_store = EventStore(database_url, secret_key=SECRET, pool_size=2, max_overflow=2)
    yield event_store
    event_store.close()


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    read_models = create_engine(database_url, pool_size=2)
    await create_tables(read_models)
    yield read_models
    await read_models.dispose()


# --- a history in two waves, checkpointed after each ------------------------------------------------------
@dataclass
class World:
    checkpoints: Path  # the directory both rounds wrote to (copy it before editing it)
    first: list[Checkpoint]  # written after wave 1
    second: list[Checkpoint]  # written after wave 2: only for the tenants whose head moved
    key: CheckpointKey


@pytest.fixture(scope="module")
async def world(store: EventStore, engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory) -> World:
    ids: dict[str, UUID] = {}

    async def act(tenant: str, fn: Callable[[], object]) -> None:
        await store.execute(CommandContext(tenant_id=tenant, actor="system", ip=None, user_agent="pytest"), fn)

    def register(tenant: str, email: str, name: str) -> Callable[[], None]:
        def fn() -> None:
            user = User(
                tenant_id=tenant, email=email, name=name, role="user", password_hash="$argon2id$x", created_by="self"
            )
            store.save(user, EmailIndex(tenant_id=tenant, email=email, user_id=user.id))
            ids[name] = user.id

        return fn

    def rename(name: str, to: str) -> Callable[[], None]:
        def fn() -> None:
            user = store.get(User, ids[name])
            user.rename(to)
            store.save(user)

        return fn

    def tenant(slug: str) -> Callable[[], object]:
        return lambda: store.save(
            Tenant(slug=slug, name=slug.title(), allow_signup=True, default_role="user", domains=[])
        )

    key = CheckpointKey.from_secret(SECRET)
    folder = tmp_path_factory.mktemp("checkpoints")
    checkpointer = Checkpointer(key, DirectoryCheckpoints(folder), partial(chain_heads, engine))

    for step in (tenant("acme"), register(ACME, "ada@acme.test", "Ada"), rename("Ada", "Ada L.")):
        await act(ACME, step)
    for step in (tenant("globex"), register(GLOBEX, "bob@globex.test", "Bob")):
        await act(GLOBEX, step)
    await ProjectorRunner(AuditProjector(), engine=engine, store=store).catch_up()
    first = await checkpointer.checkpoint_once()
    assert await checkpointer.checkpoint_once() == []  # nothing moved

    await act(ACME, rename("Ada", "Ada Lovelace"))
    await act(ACME, rename("Ada", "Countess"))
    await ProjectorRunner(AuditProjector(), engine=engine, store=store).catch_up()
    second = await checkpointer.checkpoint_once()
    return World(checkpoints=folder, first=first, second=second, key=key)


@pytest.fixture
async def fresh(world: World, store: EventStore, engine: AsyncEngine) -> World:
    """An untampered audit log, rebuilt from the event store, for a test that tampers with it."""
    await rebuild(AuditProjector(), engine=engine, store=store)
    return world


async def anchors_in(location: Path | str, key: CheckpointKey) -> list[Checkpoint]:
    trusted, rejected = await read_checkpoints(open_checkpoint_sink(str(location)), key.public_key)
    assert rejected == []
    return trusted


async def rewrite_every_row(engine: AsyncEngine, actor: str = "user:mallory") -> None:
    """What an attacker with the database can do: new content in every row, every hash recomputed in
    order, every head moved along; the chain is consistent again."""
    async with engine.begin() as conn:
        rows = (await conn.execute(audit_log.select().order_by(audit_log.c.tenant_id, audit_log.c.seq))).mappings()
        heads: dict[str, str] = {}
        for row in [dict(r) for r in rows]:
            row.update(actor=actor, prev_hash=heads.get(row["tenant_id"], GENESIS_HASH))
            row["hash"] = heads[row["tenant_id"]] = row_hash(row)
            key = (audit_log.c.tenant_id == row["tenant_id"]) & (audit_log.c.seq == row["seq"])
            await conn.execute(
                audit_log.update().where(key).values(actor=actor, prev_hash=row["prev_hash"], hash=row["hash"])
            )
        for tenant_id, head in heads.items():
            await conn.execute(audit_heads.update().where(audit_heads.c.tenant_id == tenant_id).values(hash=head))


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``parley`` as an operator runs it (in a thread: it runs its own event loop): exit status and output."""
    capsys.readouterr()
    try:
        await asyncio.to_thread(parley, list(argv))
        status = 0
    except SystemExit as exit:
        status = int(exit.code or 0)
    return status, capsys.readouterr().out


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Path:
    """The environment of ``parley audit ...`` against this database; returns PARLEY_HOME."""
    for name, value in {
        "PARLEY_HOME": str(tmp_path / "home"),
        "PARLEY_DATABASE_URL": database_url,
        "PARLEY_SECRET_KEY": SECRET,
        "PARLEY_LOG_LEVEL": "warning",
        "PARLEY_LOG_JSON": "false",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("PARLEY_NATS_URL", "PARLEY_REDIS_URL", "PARLEY_AUDIT_CHECKPOINTS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


# --- (a) written, and the chain verifies against them ------------------------------------------------------
async def test_a_checkpoint_is_written_for_each_head_and_again_only_when_it_moves(world: World) -> None:
    assert {(c.tenant_id, c.seq) for c in world.first} == {(ACME, 4), (GLOBEX, 3)}
    assert {(c.tenant_id, c.seq) for c in world.second} == {(ACME, 6)}  # globex did not move
    files = sorted(p.relative_to(world.checkpoints).as_posix() for p in world.checkpoints.rglob("*"))
    assert {f for f in files if f.endswith(".json")} == {
        f"{ACME}/{4:020d}.json",
        f"{ACME}/{6:020d}.json",
        f"{GLOBEX}/{3:020d}.json",
    }
    assert not [f for f in files if f.endswith(".tmp")]


async def test_an_untouched_log_verifies_against_its_checkpoints(fresh: World, engine: AsyncEngine) -> None:
    anchors = await anchors_in(fresh.checkpoints, fresh.key)
    assert len(anchors) == 3
    assert await verify_chain(engine, anchors=anchors) == []
    assert await verify_chain(engine, ACME, anchors=anchors) == []


async def test_the_cli_writes_checkpoints_and_verifies_with_them(
    fresh: World, operator_env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out = await cli(capsys, "audit", "checkpoint")
    assert status == 0 and "2 checkpoint(s) written" in out
    assert (operator_env / "checkpoints" / ACME / f"{6:020d}.json").is_file()  # the default sink
    status, out = await cli(capsys, "audit", "verify", "--checkpoints")
    assert status == 0 and "matches 2 checkpoint(s)" in out, out

    status, out = await cli(capsys, "audit", "public-key")
    (tmp_path / "audit.pub").write_text(out)
    status, out = await cli(
        capsys, "audit", "verify", "--checkpoints", str(fresh.checkpoints), "--public-key", str(tmp_path / "audit.pub")
    )
    assert status == 0 and "matches 3 checkpoint(s) signed by the given public key" in out, out


# --- (b) a rewrite of every row and head ---------------------------------------------------------------
async def test_rewriting_every_row_and_head_passes_the_chain_but_not_the_checkpoints(
    fresh: World, engine: AsyncEngine, operator_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await rewrite_every_row(engine)
    assert await verify_chain(engine) == []  # consistent: the chain alone cannot tell

    problems = await verify_chain(engine, anchors=await anchors_in(fresh.checkpoints, fresh.key))
    assert {(p.tenant_id, p.seq) for p in problems} == {(ACME, 4), (ACME, 6), (GLOBEX, 3)}
    assert all("signed checkpoint" in p.problem for p in problems)

    status, out = await cli(capsys, "audit", "verify")
    assert status == 0  # without checkpoints, as before
    status, out = await cli(capsys, "audit", "verify", "--checkpoints", str(fresh.checkpoints))
    assert status == 1
    assert f"BROKEN tenant={ACME} seq=6:" in out and f"BROKEN tenant={GLOBEX} seq=3:" in out
    assert "verification FAILED: 3 problem(s)" in out


async def test_rows_removed_from_the_end_with_the_head_moved_back_fail_the_newest_checkpoint(
    fresh: World, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM rm_audit_log WHERE tenant_id = :t AND seq > 4"), {"t": ACME})
        head = (
            await conn.execute(text("SELECT hash FROM rm_audit_log WHERE tenant_id = :t AND seq = 4"), {"t": ACME})
        ).scalar_one()
        await conn.execute(audit_heads.update().where(audit_heads.c.tenant_id == ACME).values(seq=4, hash=head))
    assert await verify_chain(engine) == []
    problems = await verify_chain(engine, anchors=await anchors_in(fresh.checkpoints, fresh.key))
    assert [(p.tenant_id, p.seq) for p in problems] == [(ACME, 6)]
    assert "chain ends at seq 4" in problems[0].problem


# --- (c) forged checkpoints ----------------------------------------------------------------------------
async def test_a_checkpoint_forged_with_another_key_or_edited_is_rejected(
    fresh: World, engine: AsyncEngine, tmp_path: Path, operator_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await rewrite_every_row(engine)
    heads = await chain_heads(engine)
    forged_folder = tmp_path / "forged"
    shutil.copytree(fresh.checkpoints, forged_folder)
    # The attacker re-signs acme's newest head with a key of their own, naming ours...
    mallory = CheckpointKey(Ed25519PrivateKey.generate())
    resigned = mallory.sign(ACME, 6, heads[ACME][1])
    (forged_folder / ACME / f"{6:020d}.json").write_bytes(
        Checkpoint(**{**_fields(resigned), "key_id": fresh.key.key_id}).document()
    )
    # ...and edits the hash in globex's genuine checkpoint to the rewritten one.
    signed = next(c.hash for c in fresh.first if c.tenant_id == GLOBEX)
    genuine = (forged_folder / GLOBEX / f"{3:020d}.json").read_bytes()
    (forged_folder / GLOBEX / f"{3:020d}.json").write_bytes(genuine.replace(signed.encode(), heads[GLOBEX][1].encode()))

    trusted, rejected = await read_checkpoints(DirectoryCheckpoints(forged_folder), fresh.key.public_key)
    assert {(r.tenant_id, r.seq) for r in rejected} == {(ACME, 6), (GLOBEX, 3)}
    assert all("does not verify" in r.problem for r in rejected)
    assert [(c.tenant_id, c.seq) for c in trusted] == [(ACME, 4)]

    status, out = await cli(capsys, "audit", "verify", "--checkpoints", f"file://{forged_folder}")
    assert status == 1
    assert f"BROKEN tenant={ACME} seq=6: checkpoint rejected" in out
    assert f"BROKEN tenant={GLOBEX} seq=3: checkpoint rejected" in out
    assert f"BROKEN tenant={ACME} seq=4:" in out  # the genuine one still catches the rewrite

    # Checked against the attacker's own public key, their checkpoint would pass: which key is trusted matters.
    (tmp_path / "mallory.pub").write_text(mallory.public_pem())
    status, out = await cli(
        capsys,
        "audit",
        "verify",
        "--checkpoints",
        str(fresh.checkpoints),
        "--public-key",
        str(tmp_path / "mallory.pub"),
    )
    assert status == 1 and out.count("signed by key") == 3


def _fields(checkpoint: Checkpoint) -> dict[str, Any]:
    return {name: getattr(checkpoint, name) for name in checkpoint.__struct_fields__}


async def test_a_checkpoint_stored_under_another_name_is_rejected(fresh: World, tmp_path: Path) -> None:
    folder = tmp_path / "moved"
    shutil.copytree(fresh.checkpoints, folder)
    (folder / ACME / f"{4:020d}.json").rename(folder / ACME / f"{5:020d}.json")
    _, rejected = await read_checkpoints(DirectoryCheckpoints(folder), fresh.key.public_key)
    assert [(r.tenant_id, r.seq) for r in rejected] == [(ACME, 5)]
    assert "names tenant" in rejected[0].problem


# --- (d) never overwritten ---------------------------------------------------------------------------------
async def test_the_directory_sink_never_overwrites_a_checkpoint(tmp_path: Path) -> None:
    sink = DirectoryCheckpoints(tmp_path / "sink")
    key = CheckpointKey.from_secret(SECRET)
    first = key.sign(ACME, 7, "a" * 64)
    assert await sink.put(first) is True
    assert await sink.put(key.sign(ACME, 7, "b" * 64)) is False
    # Racing writers of one (tenant, seq): exactly one wins, the rest leave nothing behind.
    racers = [key.sign(ACME, 8, f"{i:x}" * 64) for i in range(8)]
    results = await asyncio.gather(*(sink.put(c) for c in racers))
    assert sorted(results) == [False] * 7 + [True]
    stored = {(t, s): d for t, s, d in await sink.documents()}
    assert stored[(ACME, 7)] == first.document()
    assert stored[(ACME, 8)] == racers[results.index(True)].document()
    assert sorted(p.name for p in (tmp_path / "sink" / ACME).iterdir()) == [f"{7:020d}.json", f"{8:020d}.json"]


async def test_a_restarted_checkpointer_does_not_write_again_what_is_anchored(
    fresh: World, engine: AsyncEngine, tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(fresh.checkpoints, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*.json")}
    again = Checkpointer(fresh.key, DirectoryCheckpoints(folder), partial(chain_heads, engine))
    assert await again.checkpoint_once() == []
    assert {p: p.read_bytes() for p in folder.rglob("*.json")} == before


# --- retention: a kept suffix verifies from the checkpoint before it ----------------------------------------
async def test_a_chain_whose_oldest_rows_were_dropped_verifies_from_a_checkpoint_at_its_start(
    fresh: World, engine: AsyncEngine, store: EventStore
) -> None:
    anchors = await anchors_in(fresh.checkpoints, fresh.key)  # acme: seq 4 and 6

    async def drop_acme_rows_up_to(seq: int) -> list[tuple[str, int]]:
        await rebuild(AuditProjector(), engine=engine, store=store)
        async with engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM rm_audit_log WHERE tenant_id = :t AND seq <= :s"), {"t": ACME, "s": seq}
            )
        assert {(p.tenant_id, p.seq) for p in await verify_chain(engine)} == {(ACME, seq + 1)}  # no anchors: a gap
        return [(p.tenant_id, p.seq) for p in await verify_chain(engine, anchors=anchors)]

    assert await drop_acme_rows_up_to(4) == []  # the checkpoint at 4 vouches for the row before the first kept
    assert await drop_acme_rows_up_to(5) == []  # the checkpoint at 6 vouches for the first kept row itself
    assert set(await drop_acme_rows_up_to(2)) == {(ACME, 3)}  # nothing anchors 2 or 3: a gap, as before
    assert await verify_chain(engine, GLOBEX, anchors=anchors) == []


async def test_a_kept_suffix_whose_first_row_was_rewritten_fails_against_the_anchor(
    fresh: World, engine: AsyncEngine
) -> None:
    anchors = await anchors_in(fresh.checkpoints, fresh.key)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM rm_audit_log WHERE tenant_id = :t AND seq <= 4"), {"t": ACME})
    await rewrite_every_row(engine)  # prev_hash of row 5 now starts from genesis, not from the anchor
    problems = await verify_chain(engine, ACME, anchors=anchors)
    assert (ACME, 5) in {(p.tenant_id, p.seq) for p in problems}
    assert (ACME, 6) in {(p.tenant_id, p.seq) for p in problems}  # and the newest checkpoint disagrees


# --- S3 ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


async def test_the_s3_sink_keeps_checkpoints_once_and_the_chain_verifies_against_them(
    fresh: World, engine: AsyncEngine, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    url = f"s3://parley-anchors/audit-{uuid.uuid4().hex[:8]}?endpoint={s3_endpoint}&region=us-east-1"
    sink = open_checkpoint_sink(url)
    assert isinstance(sink, S3Checkpoints)
    try:
        sink.store.client.create_bucket(Bucket="parley-anchors")
    except sink.store.client.exceptions.BucketAlreadyOwnedByYou:
        pass
    checkpointer = Checkpointer(fresh.key, sink, partial(chain_heads, engine))
    assert {(c.tenant_id, c.seq) for c in await checkpointer.checkpoint_once()} == {(ACME, 6), (GLOBEX, 3)}
    restarted = Checkpointer(fresh.key, sink, partial(chain_heads, engine))
    assert await restarted.checkpoint_once() == []  # If-None-Match: the store refused to replace them
    assert await sink.put(fresh.key.sign(ACME, 6, "0" * 64)) is False
    anchors = await anchors_in(url, fresh.key)
    assert {(c.tenant_id, c.seq, c.hash) for c in anchors} == {
        (t, seq, h) for t, (seq, h) in (await chain_heads(engine)).items()
    }
    assert await verify_chain(engine, anchors=anchors) == []
    await rewrite_every_row(engine)
    assert {(p.tenant_id, p.seq) for p in await verify_chain(engine, anchors=anchors)} == {(ACME, 6), (GLOBEX, 3)}
