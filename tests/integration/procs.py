"""Real ``parley`` processes for tests: spawned with the test's settings, killed the way production
kills them (SIGKILL mid-work, SIGTERM on shutdown), their logs kept under ``tmp_path`` for debugging.
Also the traffic those processes carry in the crash tests, and the check that it all arrived once."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from adapters.settings import Settings
from application.context import CommandContext
from application.identity import Principal
from domain.errors import Unauthenticated
from domain.identity import User, tenant_id_for
from projections.audit import verify_chain
from projections.runtime import read_position
from schema.tables import api_keys, audit_log, relay_positions, tenants, users
from workers.bootstrap import PROJECTOR_NAMES, Container

__all__ = [
    "Part",
    "Traffic",
    "assert_projected_exactly_once",
    "relay_position",
    "run_cli",
    "stream_message_ids",
    "wait_relayed",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings, log_level: str) -> dict[str, str]:
    # info, not the tests' warning: "relay_active" / "relay_standby" / "projector_started" say who does what.
    return {**os.environ, **settings.child_env(), "PARLEY_LOG_LEVEL": log_level, "PARLEY_LOG_JSON": "false"}


class Part:
    """One ``parley <command>`` process, restartable; each incarnation logs to its own file."""

    _count = itertools.count(1)

    def __init__(self, settings: Settings, logs: Path, *args: str, log_level: str = "info") -> None:
        self.settings = settings
        self.args = args
        self.number = next(self._count)  # two parts running the same command keep separate logs
        self.logs = logs
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnation = 0
        self.log_path: Path | None = None

    @property
    def name(self) -> str:
        return "-".join((*self.args, str(self.number)))

    def start(self) -> Part:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is already running"
        self.incarnation += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log_path = self.logs / f"{self.name}.{self.incarnation}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", *self.args],
                env=_env(self.settings, self.log_level),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    async def wait_for_log(self, needle: str, timeout: float = 30, count: int = 1) -> None:
        """Until this incarnation has logged ``needle`` ``count`` times; fails early if it died."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.log().count(needle) < count:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited ({self.returncode}) before logging {needle!r}:\n{self.log()}"
                )
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.name} did not log {needle!r} within {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.05)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill9(self) -> None:
        """SIGKILL: no handler runs, no transaction commits, no ack is sent."""
        assert self.proc is not None and self.alive(), f"{self.name} is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait; a part that does not stop in time is killed and reported as -9."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return -9
        return self.proc.returncode


def run_cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a one-shot ``parley`` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        check=False,
        env=_env(settings, "warning"),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- traffic -------------------------------------------------------------------------------------------
PASSWORD = "correct horse 9"


class Traffic:
    """Identity commands through the application service, in a fixed mix, remembering what it did so
    the read models can be checked against it. The first user registers and becomes the admin."""

    MIX = (
        "create_user",
        "create_api_key",
        "change_role",
        "create_user",
        "rename",
        "failed_sign_in",
        "revoke_api_key",
        "create_user",
        "toggle_active",
        "change_password",
    )

    def __init__(self, c: Container) -> None:
        self.c = c
        self.tenant_id = str(tenant_id_for(c.settings.default_tenant))
        self.admin: Principal | None = None
        self.users: list[uuid.UUID] = []
        self.keys: list[uuid.UUID] = []
        self.revoked: set[uuid.UUID] = set()
        self.commands = 0

    def _ctx(self, actor: str = "system") -> CommandContext:
        return CommandContext(
            tenant_id=self.tenant_id, actor=actor, ip="203.0.113.7", user_agent="crash-test"
        )

    async def start(self) -> Traffic:
        admin = await self.c.identity.register(
            self._ctx("anonymous"),
            tenant=self.tenant_id,
            email="admin@example.test",
            password=PASSWORD,
            name="Admin",
        )
        self.admin = Principal(tenant_id=self.tenant_id, user_id=admin.id, role="admin", via="token")
        self.users.append(admin.id)
        self.commands += 1
        return self

    async def create_user(self) -> None:
        assert self.admin is not None
        n = len(self.users)
        user = await self.c.identity.create_user(
            self._ctx(self.admin.actor),
            self.admin,
            email=f"user{n:04d}-{uuid.uuid4().hex[:6]}@example.test",
            password=PASSWORD,
            name=f"User {n}",
            role="user",
        )
        self.users.append(user.id)

    def _someone(self) -> uuid.UUID:
        # Never the admin: an admin cannot demote or deactivate themselves.
        return self.users[1 + self.commands % (len(self.users) - 1)] if len(self.users) > 1 else self.users[0]

    async def step(self) -> None:
        """One command of the mix."""
        assert self.admin is not None
        op = self.MIX[self.commands % len(self.MIX)]
        self.commands += 1
        identity, admin, ctx = self.c.identity, self.admin, self._ctx(self.admin.actor)
        if op == "create_user" or len(self.users) < 2:
            await self.create_user()
        elif op == "create_api_key":
            key = await identity.create_api_key(ctx, admin, name=f"key {len(self.keys)}")
            self.keys.append(key.id)
        elif op == "revoke_api_key" and self.keys:
            key_id = self.keys[self.commands % len(self.keys)]
            await identity.revoke_api_key(ctx, admin, key_id)
            self.revoked.add(key_id)
        elif op == "change_role":
            user = await identity.get_user(admin, self._someone())
            await identity.update_user(ctx, admin, user.id, role="premium" if user.role == "user" else "user")
        elif op == "rename":
            await identity.update_user(ctx, admin, self._someone(), name=f"Renamed {self.commands}")
        elif op == "toggle_active":
            user = await identity.get_user(admin, self._someone())
            await identity.update_user(ctx, admin, user.id, active=not user.active)
        elif op == "change_password":
            # Reactivated first if need be: a deactivated account cannot change its password.
            await identity.update_user(
                ctx, admin, self._someone(), active=True, password=f"{PASSWORD} {self.commands}"
            )
        else:  # failed_sign_in, or revoke_api_key before there is a key
            try:
                await identity.login(
                    self._ctx("anonymous"),
                    tenant=self.tenant_id,
                    email="admin@example.test",
                    password="wrong password 1",
                )
            except Unauthenticated:
                pass
            else:
                raise AssertionError("a wrong password signed in")

    async def steps(self, n: int) -> None:
        for _ in range(n):
            await self.step()

    async def burst(self, n: int) -> None:
        """``n`` sign-ups at once: concurrent appends, a backlog for the relay and the projectors."""
        await asyncio.gather(*(self.create_user() for _ in range(n)))
        self.commands += n


# --- checks ----------------------------------------------------------------------------------------------
async def relay_position(c: Container) -> int:
    """How far the relay has got: everything up to here is acked by JetStream."""
    async with c.engine.connect() as conn:
        return int((await conn.execute(select(relay_positions.c.position))).scalar() or 0)


async def wait_relayed(c: Container, timeout: float = 30) -> None:
    """Until the relay's position reaches the end of the event store."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        target = await c.store.call(c.store.max_id)
        position = await relay_position(c)
        if position >= target:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"relay at {position}, event store at {target}")
        await asyncio.sleep(0.1)


async def stream_message_ids(c: Container) -> list[int]:
    """The ``Nats-Msg-Id`` of every message in the events stream, in stream order."""
    js = await c.connect_nats("test-inspector")
    state = (await js.stream_info(c.subjects.events_stream)).state
    if not state.messages:
        return []
    ids = []
    for seq in range(state.first_seq, state.last_seq + 1):
        msg = await js.get_msg(c.subjects.events_stream, seq)
        ids.append(int((msg.headers or {})["Nats-Msg-Id"]))
    assert len(ids) == state.messages
    return ids


async def assert_projected_exactly_once(c: Container, traffic: Traffic) -> None:
    """Every event in the event store took effect once in every read model: none missing, none twice."""
    events = await c.store.call(c.store.read, 1, 1_000_000)
    ids = [e.id for e in events]
    max_id = await c.store.call(c.store.max_id)
    assert ids and ids[-1] == max_id
    for name in PROJECTOR_NAMES:
        assert await read_position(c.engine, name) == max_id, name

    async with c.engine.connect() as conn:
        audit_ids = sorted((await conn.execute(select(audit_log.c.notification_id))).scalars())
        user_rows = {r.user_id: r for r in (await conn.execute(select(users)))}
        key_rows = {r.key_id: r for r in (await conn.execute(select(api_keys)))}
        user_count = (
            await conn.execute(select(tenants.c.user_count).where(tenants.c.tenant_id == traffic.tenant_id))
        ).scalar_one()
        registered = (await conn.execute(select(func.count()).select_from(users))).scalar_one()

    # The audit log: one row per event, exactly the event store's ids, an intact chain.
    assert len(audit_ids) == len(ids)
    assert audit_ids == ids
    assert await verify_chain(c.engine) == []

    # Users: each once, and counters that a replayed event would have bumped twice are right.
    assert registered == len(traffic.users) == len(set(traffic.users))
    assert set(user_rows) == {str(u) for u in traffic.users}
    assert user_count == len(traffic.users)
    assert [e.type for e in events].count("UserRegistered") == len(traffic.users)
    for user_id in traffic.users:
        user: Any = await c.store.call(c.store.get, User, user_id)
        row = user_rows[str(user_id)]
        assert (row.email, row.name, row.role, row.active, row.token_version) == (
            user.email,
            user.name,
            user.role,
            user.active,
            user.token_version,
        ), f"rm_users row of {user_id} disagrees with the aggregate"

    # API keys: each once, revoked exactly when revoked.
    assert set(key_rows) == {str(k) for k in traffic.keys}
    assert {k for k, r in key_rows.items() if r.revoked_at is not None} == {str(k) for k in traffic.revoked}
