"""Quotas: daily token budgets enforced on every generation, and the admin commands on the policy.

The hot path is the ledger (Redis Lua, ``adapters.quota_ledger``): a command that requests a generation
reserves ``reserved_tokens`` against every applicable limit before it saves its events, and the worker
settles the reservation with the actual usage once the outcome is recorded. The durable truth is the
event store: ``GenerationRequested`` carries the reservation, the outcome events the actual usage.

When the counters of a tenant-day are missing or were built in another epoch (Redis flushed or restarted,
a Sentinel failover that may have lost the last writes, or the day just began; see
``adapters.quota_ledger``), one process rebuilds them under a Redis lock before any request of that tenant
is admitted: the actual usage of the day's finished generations plus the reservations of its open ones,
read from the chats read model (``rm_generations``) and, to cover projection lag, from the events the
projector has not applied yet, in one consistent snapshot. What it cannot see: reservations of commands
that are between their reserve and their commit when the snapshot is read (at most their reserved
tokens). After a flush that is milliseconds of requests; after a failover, only commands that reserved on
the old master and still had not committed when the new one was promoted, seconds later.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.quota_ledger import TENANT_SCOPE, NotReady, QuotaLedger, StalePolicy, user_model_scope, user_scope
from application.context import CommandContext
from application.identity import Principal
from application.ports import EventStorePort
from domain.chats import Generation
from domain.errors import NotFound, RateLimited, Unavailable
from domain.identity import User
from domain.models import Model, model_id_for
from domain.quotas import QuotaPolicy, day_of, next_midnight, policy_id_for
from schema.events import EventEnvelope
from schema.tables import generations, projector_positions

__all__ = ["Quotas", "SWEEP_AFTER_S"]

log = structlog.get_logger("parley.quotas")
_R = TypeVar("_R")

SWEEP_AFTER_S = 600.0
"""A reservation whose generation has not finished after this long is released (nothing stays blocked)."""
_OUTCOMES = {"GenerationCompleted", "GenerationFailed", "GenerationCancelled"}
_FINISHED = ("completed", "failed", "cancelled")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Usage:
    user_id: str
    model: str
    reserved: int
    finished: bool
    actual: int
    requested_at: datetime


class PolicyCache:
    """Each tenant's quota policy as last read, for the hot path (rate limits, reservations), dropped when
    the policy changes: at once in the process that changed it, and in every other process when the change
    reaches it on the bus (``forget``). It is used only while the bus is followed (``follow``): a process
    that cannot hear changes reads the event store every time. A read that raced a change is not kept."""

    MAX_TENANTS = 10_000

    def __init__(self) -> None:
        self._policies: dict[str, QuotaPolicy] = {}
        self._changes: dict[str, int] = {}
        self._following = False
        self._lock = threading.Lock()

    def get(self, tenant_id: str) -> QuotaPolicy | None:
        return self._policies.get(tenant_id) if self._following else None

    def changes(self, tenant_id: str) -> int:
        return self._changes.get(tenant_id, 0)

    def keep(self, tenant_id: str, policy: QuotaPolicy, changes_before_read: int) -> None:
        with self._lock:
            if self._following and self._changes.get(tenant_id, 0) == changes_before_read:
                if len(self._policies) >= self.MAX_TENANTS:  # many tenants: forget the lot, not grow
                    self._policies.clear()
                self._policies[tenant_id] = policy

    def forget(self, tenant_id: str) -> None:
        with self._lock:
            self._changes[tenant_id] = self._changes.get(tenant_id, 0) + 1
            self._policies.pop(tenant_id, None)

    def follow(self, following: bool) -> None:
        """Start (the bus is heard) or stop (it is not) using the cache; either way, forget everything:
        changes may have passed unheard."""
        with self._lock:
            self._following = following
            for tenant_id in self._policies:
                self._changes[tenant_id] = self._changes.get(tenant_id, 0) + 1
            self._policies.clear()


class Quotas:
    def __init__(
        self,
        *,
        store: EventStorePort,
        ledger: QuotaLedger,
        engine: AsyncEngine,
        read_events: Callable[[int, int], list[EventEnvelope]] | None = None,
        clock: Callable[[], datetime] = _utcnow,
        policy_changed: Callable[[str], Awaitable[None]] | None = None,
        refused: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.engine = engine
        self._read_events = read_events
        self.clock = clock
        self.policies = PolicyCache()
        self.policy_changed = policy_changed
        self.refused = refused
        """Told the scope (user, user_model, tenant) of each reservation a limit refused (the metrics)."""

    # --- policy -------------------------------------------------------------------------------------------
    def policy(self, tenant_id: str) -> QuotaPolicy:
        """The tenant's policy from the event store; the defaults (unsaved) until an admin changes it. Sync:
        inside a command. For a command that changes the policy."""
        return self.store.find(QuotaPolicy, policy_id_for(tenant_id)) or QuotaPolicy(tenant_id=tenant_id)

    def current_policy(self, tenant_id: str) -> QuotaPolicy:
        """The tenant's policy for a decision (a rate limit, a reservation): from the cache when it holds it.
        Sync: inside a command. Never change what it returns."""
        cached = self.policies.get(tenant_id)
        if cached is not None:
            return cached
        changes = self.policies.changes(tenant_id)
        policy = self.policy(tenant_id)
        self.policies.keep(tenant_id, policy, changes)
        return policy

    async def current_policy_async(self, tenant_id: str) -> QuotaPolicy:
        cached = self.policies.get(tenant_id)
        return cached if cached is not None else await _off_store_threads(self.current_policy, tenant_id)

    async def get_policy(self, principal: Principal) -> QuotaPolicy:
        principal.require_admin()
        return await self.store.call(self.policy, principal.tenant_id)

    async def _change(
        self, ctx: CommandContext, principal: Principal, change: Callable[[QuotaPolicy], None]
    ) -> QuotaPolicy:
        principal.require_admin()

        def command() -> QuotaPolicy:
            policy = self.policy(principal.tenant_id)
            change(policy)
            self.store.save(policy)
            return policy

        try:
            policy = await self.store.execute(ctx, command)
            # Before anyone is told: from now on a reservation on older limits is refused as stale.
            await self.ledger.policy_committed(principal.tenant_id, policy.version)
            return policy
        finally:  # committed or not, what this process holds may be older than the log now
            self.policies.forget(principal.tenant_id)
            if self.policy_changed is not None:
                await self.policy_changed(principal.tenant_id)

    async def set_role_limit(
        self, ctx: CommandContext, principal: Principal, role: str, limit: int | None
    ) -> QuotaPolicy:
        return await self._change(ctx, principal, lambda p: p.set_role_limit(role, limit))

    async def set_user_limit(
        self, ctx: CommandContext, principal: Principal, user_id: uuid.UUID, limit: int | None, *, clear: bool = False
    ) -> QuotaPolicy:
        def change(p: QuotaPolicy) -> None:
            user = self.store.find(User, user_id)
            if user is None or user.tenant_id != principal.tenant_id:
                raise NotFound("USER_NOT_FOUND", "no such user", field="user_id")
            p.set_user_limit(user_id, limit, clear=clear)

        return await self._change(ctx, principal, change)

    async def set_model_limit(
        self, ctx: CommandContext, principal: Principal, model: str, limit: int | None
    ) -> QuotaPolicy:
        def change(p: QuotaPolicy) -> None:
            m = self.store.find(Model, model_id_for(principal.tenant_id, model))
            if m is None or m.tenant_id != principal.tenant_id:
                raise NotFound("MODEL_NOT_FOUND", f"no model named '{model}'", field="model")
            p.set_model_limit(model, limit)

        return await self._change(ctx, principal, change)

    async def set_tenant_cap(self, ctx: CommandContext, principal: Principal, limit: int | None) -> QuotaPolicy:
        return await self._change(ctx, principal, lambda p: p.set_tenant_cap(limit))

    async def set_timezone(self, ctx: CommandContext, principal: Principal, timezone: str) -> QuotaPolicy:
        return await self._change(ctx, principal, lambda p: p.set_timezone(timezone))

    async def set_rate_limits(self, ctx: CommandContext, principal: Principal, **limits: int) -> QuotaPolicy:
        return await self._change(ctx, principal, lambda p: p.set_rate_limits(**limits))

    # --- enforcement --------------------------------------------------------------------------------------
    @staticmethod
    def scopes(policy: QuotaPolicy, user_id: str, role: str, model: str) -> list[tuple[str, int | None]]:
        """Every counter a request counts on, with its limit (``None``: counted, not limited)."""
        limits = dict(policy.limits_for(user_id, role, model))
        return [
            (user_scope(user_id), limits.get("user")),
            (user_model_scope(model, user_id), limits.get(f"user_model:{model}")),
            (TENANT_SCOPE, limits.get("tenant")),
        ]

    async def reserve_for(
        self,
        principal: Principal,
        model: str,
        amount: int,
        generation_id: uuid.UUID | str,
        *,
        minimum: int | None = None,
        policy: QuotaPolicy | None = None,
        now: datetime | None = None,
    ) -> int:
        """Reserve ``amount`` tokens for the generation against every applicable limit (or, with
        ``minimum``, as much of it as the limits leave, at least ``minimum``) and return what was reserved;
        or raise 429 ``QUOTA_EXCEEDED`` with the limit that refused and when it resets."""
        if policy is None:
            policy = await self.current_policy_async(principal.tenant_id)
        now = now or self.clock()
        tenant_id, user_id = principal.tenant_id, str(principal.user_id)
        needed = amount if minimum is None else minimum
        for _ in range(50):
            day = day_of(now, policy.timezone)
            scopes = self.scopes(policy, user_id, principal.role, model)
            try:
                granted = await self.ledger.reserve_up_to(
                    tenant_id, day.isoformat(), scopes, amount, str(generation_id), minimum=needed,
                    policy_version=policy.version,
                )  # fmt: skip
                break
            except NotReady:
                await self.rebuild(tenant_id, day, policy.timezone)
            except StalePolicy:  # changed by another process, and not heard of here yet
                self.policies.forget(tenant_id)
                policy = await self.current_policy_async(tenant_id)
        else:
            raise Unavailable("QUOTA_UNAVAILABLE", "quota counters are being rebuilt; retry shortly")
        if isinstance(granted, int):
            return granted
        scope = granted.scope.split(":", 1)[0]
        public_scope = f"user_model:{model}" if scope == "user_model" else scope
        if self.refused is not None:
            self.refused(scope)
        reset_at = next_midnight(now, policy.timezone)
        raise RateLimited(
            "QUOTA_EXCEEDED",
            f"this request needs {needed} tokens; the {public_scope} daily limit of {granted.limit} has "
            f"{max(0, granted.limit - granted.used)} left until {reset_at.isoformat()}",
            scope=public_scope,
            limit=granted.limit,
            used=granted.used,
            requested=needed,
            reset_at=reset_at.isoformat(),
        )

    async def settle(self, generation_id: uuid.UUID | str, actual: int) -> bool:
        return await self.ledger.settle(str(generation_id), actual)

    async def release(self, generation_id: uuid.UUID | str) -> bool:
        return await self.ledger.release(str(generation_id))

    async def settle_finished(self, generation_id: uuid.UUID | str) -> bool:
        """Settle with the usage the event store recorded, if the generation has finished."""
        g = await self.store.call(self.store.find, Generation, uuid.UUID(str(generation_id)))
        if g is None or not g.finished:
            return False
        return await self.ledger.settle(str(generation_id), g.prompt_tokens + g.completion_tokens)

    async def sweep(self, older_than_s: float = SWEEP_AFTER_S, *, now: float | None = None) -> int:
        """Reservations older than the timeout: settled with the actual usage if their generation finished
        (its worker died before settling), else released (a late finish is still billed). How many."""
        done = 0
        for generation_id in await self.ledger.stale(older_than_s, now=now):
            try:
                g = await self.store.call(self.store.find, Generation, uuid.UUID(generation_id))
            except ValueError:
                g = None
            if g is not None and g.finished:
                done += await self.ledger.settle(generation_id, g.prompt_tokens + g.completion_tokens)
            elif g is None:
                done += await self.ledger.release(generation_id)  # its command never saved
            else:
                done += await self.ledger.release_abandoned(generation_id)
        if done:
            log.info("quota_reservations_swept", count=done)
        return done

    # --- rebuild ------------------------------------------------------------------------------------------
    async def rebuild(self, tenant_id: str, day: date, timezone: str) -> None:
        """Build the tenant-day's counters from durable state, once (other processes wait for it)."""
        owner = uuid.uuid4().hex
        key_day = day.isoformat()
        if not await self.ledger.lock_rebuild(tenant_id, key_day, owner):
            for _ in range(200):  # another process is rebuilding: wait for it, up to ~10 s
                await asyncio.sleep(0.05)
                if await self.ledger.is_ready(tenant_id, key_day):
                    return
            return  # its lock expired; the caller tries again
        try:
            if await self.ledger.is_ready(tenant_id, key_day):
                return
            read_in = await self.ledger.epoch()  # before reading: a failover after it voids what was read
            policy = await _off_store_threads(self.policy, tenant_id)
            usage = await self._durable_usage(tenant_id, day, timezone)
            counters: dict[str, int] = {}
            opened: list[tuple[str, int, list[str], float]] = []
            for generation_id, u in usage.items():
                scopes = [user_scope(u.user_id), user_model_scope(u.model, u.user_id), TENANT_SCOPE]
                tokens = u.actual if u.finished else u.reserved
                for scope in scopes:
                    counters[scope] = counters.get(scope, 0) + tokens
                if not u.finished:
                    opened.append((generation_id, u.reserved, scopes, u.requested_at.timestamp()))
            if not await self.ledger.install(
                tenant_id, key_day, counters, opened, read_in=read_in, policy_version=policy.version
            ):
                log.warning("quota_rebuild_voided_by_failover", tenant_id=tenant_id, day=key_day)
                return  # the caller's next reserve finds it not ready and rebuilds again
            log.info("quota_counters_rebuilt", tenant_id=tenant_id, day=key_day, generations=len(usage))
        finally:
            await self.ledger.unlock_rebuild(tenant_id, key_day, owner)

    async def _durable_usage(self, tenant_id: str, day: date, timezone: str) -> dict[str, _Usage]:
        start = datetime.combine(day, datetime.min.time(), tzinfo=ZoneInfo(timezone))
        end = next_midnight(start, timezone)
        g = generations.c
        async with self.engine.connect() as conn:
            # One snapshot: the rows and the projector position they reflect.
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                position = (
                    await conn.execute(
                        select(projector_positions.c.position).where(projector_positions.c.name == "chats")
                    )
                ).scalar() or 0
                rows = await conn.execute(
                    select(
                        g.generation_id,
                        g.user_id,
                        g.model,
                        g.reserved_tokens,
                        g.status,
                        g.prompt_tokens,
                        g.completion_tokens,
                        g.requested_at,
                    ).where(g.tenant_id == tenant_id, g.requested_at >= start, g.requested_at < end)
                )
                usage = {
                    str(r.generation_id): _Usage(
                        user_id=str(r.user_id),
                        model=r.model,
                        reserved=int(r.reserved_tokens),
                        finished=r.status in _FINISHED,
                        actual=int(r.prompt_tokens or 0) + int(r.completion_tokens or 0),
                        requested_at=r.requested_at,
                    )
                    for r in rows
                }
        if self._read_events is not None:
            await self._apply_tail(usage, int(position), tenant_id, start, end)
        return usage

    async def _apply_tail(
        self, usage: dict[str, _Usage], position: int, tenant_id: str, start: datetime, end: datetime
    ) -> None:
        """The generation events the projector has not applied yet."""
        assert self._read_events is not None
        cursor = position + 1
        while True:
            page = await asyncio.to_thread(self._read_events, cursor, 1000)
            if not page:
                return
            for e in page:
                if e.aggregate_type != "Generation":
                    continue
                gid = str(e.aggregate_id)
                d: dict[str, Any] = e.data
                if e.type == "GenerationRequested":
                    if str(d.get("tenant_id")) == tenant_id and start <= e.occurred_at < end:
                        usage[gid] = _Usage(
                            user_id=str(d["user_id"]),
                            model=str(d["model"]),
                            reserved=int(d.get("reserved_tokens") or 0),
                            finished=False,
                            actual=0,
                            requested_at=e.occurred_at,
                        )
                elif e.type in _OUTCOMES and gid in usage:
                    u = usage[gid]
                    u.finished = True
                    u.actual = int(d.get("prompt_tokens") or 0) + int(d.get("completion_tokens") or 0)
            cursor = page[-1].id + 1


async def _off_store_threads(fn: Callable[..., _R], *args: Any) -> _R:
    """A read of the event store made on behalf of a reservation, on the event loop's own threads rather than
    the store's (``store.call``): a command reserves from a store thread and waits for the reservation (see
    ``Conversations._reserve``), so with every store thread so waiting, a reservation that needed one of
    them (a rebuild of the counters, a policy not cached) would wait for ever, and so would they."""
    return await asyncio.to_thread(fn, *args)
