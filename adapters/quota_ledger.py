"""The quota ledger: daily token counters in Redis, reserved and settled by Lua scripts so that concurrent
requests on any number of API processes can never push a counter past its limit.

Keys (``{ns}`` is the deployment namespace, ``{day}`` the tenant-local date):
- ``{ns}:quota:{tenant}:{day}:{scope}`` - tokens counted on one scope: ``user:{user}``,
  ``user_model:{model}:{user}`` or ``tenant``. Every reservation counts on all three, limited or not, so a
  limit set mid-day starts from the day's real usage.
- ``{ns}:quota:{tenant}:{day}:ready`` - the epoch (the master's replication id, ``adapters.redis``) in which
  the counters of that tenant-day were built from durable state. A reserve that finds it missing (Redis
  flushed, or the day just began) or from another epoch (Redis restarted, or a failover that may have lost
  the last reservations) answers ``not_ready``, and the service rebuilds first. The check is inside the
  reserve script: the hot path stays one round trip.
- ``{ns}:quota:res:{generation}`` - an open reservation: ``amount`` and the counter ``keys`` it holds;
  ``{ns}:quota:open`` orders them by creation time for the sweeper.
- ``{ns}:quota:swept:{generation}`` - the counter keys of a reservation the sweeper released; a
  generation that finishes after all is still billed to them.
- ``{ns}:quota:{tenant}:policy`` - the version of the tenant's quota policy last committed (raised by the
  process that changed it). A reservation names the version its limits came from; an older one answers
  ``stale``, and the service reads the policy again: no process reserves on limits it has not caught up with.

The scripts touch keys they read from a reservation (not only their ``KEYS``): fine on one Redis or a
primary with replicas, not on Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from adapters.redis import epoch as current_epoch
from adapters.redis import with_epoch

__all__ = [
    "QuotaLedger",
    "Refused",
    "Reservation",
    "StalePolicy",
    "COUNTER_TTL_S",
    "user_scope",
    "user_model_scope",
    "TENANT_SCOPE",
]

COUNTER_TTL_S = 2 * 24 * 3600
TENANT_SCOPE = "tenant"


def user_scope(user_id: str) -> str:
    return f"user:{user_id}"


def user_model_scope(model: str, user_id: str) -> str:
    return f"user_model:{model}:{user_id}"


@dataclass(frozen=True)
class Refused:
    """The first limit a reservation did not fit: ``scope`` as the caller named it."""

    scope: str
    used: int
    limit: int


@dataclass(frozen=True)
class Reservation:
    generation_id: str
    amount: int
    created_at: float


class NotReady(Exception):
    """The counters of this tenant-day are not built (Redis lost them, or the day just began)."""


class StalePolicy(Exception):
    """The limits given come from an older quota policy than the one last committed."""


_RESERVE = with_epoch("""
-- KEYS: ready, reservation, open set, policy version, counters...
-- ARGV: amount, generation, now, ttl, minimum, policy version, limits...
-- Reserves ``amount``, or as much of it as every limit has room for, down to ``minimum``.
if redis.call('GET', KEYS[1]) ~= epoch then return {'not_ready'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'ok', redis.call('HGET', KEYS[2], 'amount')} end
local committed = tonumber(redis.call('GET', KEYS[4]) or '0')
if committed > tonumber(ARGV[6]) then return {'stale', tostring(committed)} end
local amount = tonumber(ARGV[1])
local minimum = tonumber(ARGV[5])
local n = #KEYS - 4
for i = 1, n do
  local limit = ARGV[6 + i]
  if limit ~= '' then
    local used = tonumber(redis.call('GET', KEYS[4 + i]) or '0')
    local room = tonumber(limit) - used
    if room < minimum then return {'refused', tostring(i), tostring(used), limit} end
    if room < amount then amount = room end
  end
end
local keys = {}
for i = 1, n do
  redis.call('INCRBY', KEYS[4 + i], amount)
  redis.call('EXPIRE', KEYS[4 + i], ARGV[4])
  keys[i] = KEYS[4 + i]
end
redis.call('HSET', KEYS[2], 'amount', amount, 'keys', table.concat(keys, ' '), 'created_at', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return {'ok', tostring(amount)}
""")

_RAISE_POLICY_VERSION = """
-- KEYS: policy version   ARGV: version
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

_IS_READY = with_epoch("""
-- KEYS: ready
if redis.call('GET', KEYS[1]) == epoch then return 1 end
return 0
""")

_INSTALL = with_epoch("""
-- KEYS: ready, open set, policy version
-- ARGV: the epoch the durable state was read in, ttl, policy version, then three counted lists:
--   stale keys; counters as (key, value); open reservations as (key, generation, amount, counter keys, created at).
-- Installs nothing if a failover came between the read and now: what was read may miss what the old
-- master admitted after it, and the next reserve rebuilds again.
if epoch ~= ARGV[1] then return 0 end
local ttl = ARGV[2]
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[3]) then redis.call('SET', KEYS[3], ARGV[3]) end
local i = 4
local n = tonumber(ARGV[i])
for j = 1, n do redis.call('DEL', ARGV[i + j]) end
i = i + n + 1
n = tonumber(ARGV[i])
for j = 0, n - 1 do redis.call('SET', ARGV[i + 1 + 2 * j], ARGV[i + 2 + 2 * j], 'EX', ttl) end
i = i + 2 * n + 1
n = tonumber(ARGV[i])
for j = 0, n - 1 do
  local at = i + 1 + 5 * j
  redis.call('HSET', ARGV[at], 'amount', ARGV[at + 2], 'keys', ARGV[at + 3], 'created_at', ARGV[at + 4])
  redis.call('EXPIRE', ARGV[at], ttl)
  redis.call('ZADD', KEYS[2], ARGV[at + 4], ARGV[at + 1])
end
redis.call('SET', KEYS[1], epoch, 'EX', ttl)
return 1
""")

_SETTLE = """
-- KEYS: reservation, open set, swept   ARGV: generation, actual, ttl, bill (1: add actual, 0: release)
local function split(s)
  local out = {}
  for k in string.gmatch(s, '%S+') do out[#out + 1] = k end
  return out
end
local actual = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  local amount = tonumber(redis.call('HGET', KEYS[1], 'amount'))
  local keys = redis.call('HGET', KEYS[1], 'keys')
  local delta = 0 - amount  -- never -0: INCRBY refuses it
  if ARGV[4] == '1' then delta = actual - amount end
  for _, k in ipairs(split(keys)) do
    if redis.call('EXISTS', k) == 1 then
      local left = redis.call('INCRBY', k, delta)
      if left < 0 then redis.call('SET', k, 0, 'KEEPTTL') end
    elseif delta > 0 then
      redis.call('SET', k, delta, 'EX', ARGV[3])
    end
  end
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  if ARGV[4] == '2' then
    redis.call('SET', KEYS[3], keys, 'EX', ARGV[3])
  end
  return 1
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  for _, k in ipairs(split(redis.call('GET', KEYS[3]))) do
    redis.call('INCRBY', k, actual)
    redis.call('EXPIRE', k, ARGV[3])
  end
  redis.call('DEL', KEYS[3])
  return 2
end
return 0
"""


class QuotaLedger:
    """The Redis side of quotas. Amounts are tokens; limits are per tenant-day, ``None`` for unlimited."""

    def __init__(self, client: aioredis.Redis, namespace: str, *, ttl_s: int = COUNTER_TTL_S) -> None:
        self._r = client
        self._ns = namespace
        self.ttl_s = ttl_s
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._raise_policy_version = client.register_script(_RAISE_POLICY_VERSION)
        self._is_ready = client.register_script(_IS_READY)
        self._install = client.register_script(_INSTALL)

    # --- keys ---------------------------------------------------------------------------------------------
    def day_prefix(self, tenant_id: str, day: str) -> str:
        return f"{self._ns}:quota:{tenant_id}:{day}"

    def counter_key(self, tenant_id: str, day: str, scope: str) -> str:
        return f"{self.day_prefix(tenant_id, day)}:{scope}"

    def _ready_key(self, tenant_id: str, day: str) -> str:
        return f"{self.day_prefix(tenant_id, day)}:ready"

    def _policy_key(self, tenant_id: str) -> str:
        return f"{self._ns}:quota:{tenant_id}:policy"

    async def policy_committed(self, tenant_id: str, version: int) -> None:
        """The tenant's quota policy reached ``version``: reservations on older limits are refused."""
        await self._raise_policy_version(keys=[self._policy_key(tenant_id)], args=[version])

    def _res_key(self, generation_id: str) -> str:
        return f"{self._ns}:quota:res:{generation_id}"

    def _swept_key(self, generation_id: str) -> str:
        return f"{self._ns}:quota:swept:{generation_id}"

    @property
    def _open_key(self) -> str:
        return f"{self._ns}:quota:open"

    # --- hot path -----------------------------------------------------------------------------------------
    async def reserve(
        self,
        tenant_id: str,
        day: str,
        scopes: Sequence[tuple[str, int | None]],
        amount: int,
        generation_id: str,
        *,
        now: float | None = None,
        policy_version: int = 0,
    ) -> Refused | None:
        """Count ``amount`` on every scope if it fits every limit, else count nothing and say which limit
        refused. Reserving the same generation twice counts it once. Raises ``NotReady``, ``StalePolicy``."""
        granted = await self.reserve_up_to(
            tenant_id, day, scopes, amount, generation_id, minimum=amount, now=now, policy_version=policy_version
        )
        return granted if isinstance(granted, Refused) else None

    async def reserve_up_to(
        self,
        tenant_id: str,
        day: str,
        scopes: Sequence[tuple[str, int | None]],
        amount: int,
        generation_id: str,
        *,
        minimum: int,
        now: float | None = None,
        policy_version: int = 0,
    ) -> Refused | int:
        """Count as much of ``amount`` as every limit has room for, at least ``minimum``, and return it;
        else count nothing and say which limit refused. Reserving the same generation twice counts it
        once (and returns what the first reserved). ``scopes`` carry the limits of the tenant's quota
        policy at ``policy_version``. Raises ``NotReady``, and ``StalePolicy`` when a later version of the
        policy has been committed."""
        if amount < 0 or not 0 <= minimum <= amount:
            raise ValueError("0 <= minimum <= amount")
        keys = [
            self._ready_key(tenant_id, day),
            self._res_key(generation_id),
            self._open_key,
            self._policy_key(tenant_id),
        ]
        keys += [self.counter_key(tenant_id, day, scope) for scope, _ in scopes]
        now_s = now if now is not None else time.time()
        args: list[str | int | float] = [amount, generation_id, now_s, self.ttl_s, minimum, policy_version]
        args += ["" if limit is None else limit for _, limit in scopes]
        result = await self._reserve(keys=keys, args=args)
        match result[0]:
            case "ok":
                return int(result[1])
            case "not_ready":
                raise NotReady(f"quota counters of {tenant_id}/{day} are not built")
            case "stale":
                raise StalePolicy(f"the quota policy of {tenant_id} is at version {int(result[1])}")
            case _:
                scope = scopes[int(result[1]) - 1][0]
                return Refused(scope=scope, used=int(result[2]), limit=int(result[3]))

    async def settle(self, generation_id: str, actual: int) -> bool:
        """Replace the reservation by the actual usage (billed even when the generation failed or was
        cancelled). Idempotent: False when there was nothing (left) to settle."""
        return await self._finish(generation_id, max(0, actual), "1") != 0

    async def release(self, generation_id: str) -> bool:
        """Drop the reservation without billing: the command that reserved never saved its events."""
        return await self._finish(generation_id, 0, "0") != 0

    async def release_abandoned(self, generation_id: str) -> bool:
        """Drop the reservation of a generation that has not finished in time; if it finishes after all,
        ``settle`` still bills its actual usage to the same counters."""
        return await self._finish(generation_id, 0, "2") != 0

    async def _finish(self, generation_id: str, actual: int, mode: str) -> int:
        keys = [self._res_key(generation_id), self._open_key, self._swept_key(generation_id)]
        return int(await self._settle(keys=keys, args=[generation_id, actual, self.ttl_s, mode]))

    async def stale(self, older_than_s: float, *, now: float | None = None, limit: int = 500) -> list[str]:
        """Generations whose reservations are older than ``older_than_s`` (the sweeper's candidates)."""
        cutoff = (now if now is not None else time.time()) - older_than_s
        return [str(g) for g in await self._r.zrangebyscore(self._open_key, "-inf", cutoff, start=0, num=limit)]

    async def sweep(self, older_than_s: float, *, now: float | None = None) -> list[str]:
        """Release every reservation older than the timeout, without asking whether it finished (the
        service's sweeper asks the event store first and settles those that did)."""
        released = []
        for generation_id in await self.stale(older_than_s, now=now):
            if await self.release_abandoned(generation_id):
                released.append(generation_id)
        return released

    async def reservation(self, generation_id: str) -> Reservation | None:
        fields = await self._r.hgetall(self._res_key(generation_id))
        if not fields:
            return None
        return Reservation(generation_id, int(fields["amount"]), float(fields["created_at"]))

    async def used(self, tenant_id: str, day: str, scope: str) -> int:
        value = await self._r.get(self.counter_key(tenant_id, day, scope))
        return int(value or 0)

    # --- rebuild ------------------------------------------------------------------------------------------
    async def epoch(self) -> str:
        """The epoch now: read it before the durable state a rebuild installs (``install``)."""
        return await current_epoch(self._r)

    async def is_ready(self, tenant_id: str, day: str) -> bool:
        """The tenant-day's counters were built in the current epoch."""
        return bool(await self._is_ready(keys=[self._ready_key(tenant_id, day)]))

    async def lock_rebuild(self, tenant_id: str, day: str, owner: str, ttl_s: int = 30) -> bool:
        return bool(await self._r.set(f"{self.day_prefix(tenant_id, day)}:rebuilding", owner, nx=True, ex=ttl_s))

    async def unlock_rebuild(self, tenant_id: str, day: str, owner: str) -> None:
        key = f"{self.day_prefix(tenant_id, day)}:rebuilding"
        if await self._r.get(key) == owner:
            await self._r.delete(key)

    async def install(
        self,
        tenant_id: str,
        day: str,
        counters: dict[str, int],
        open_reservations: Iterable[tuple[str, int, list[str], float]],
        *,
        read_in: str | None = None,
        policy_version: int = 0,
    ) -> bool:
        """Replace the tenant-day's counters by ones rebuilt from durable state, recreate its open
        reservations (generation, amount, scopes, created at), raise the tenant's policy version to
        ``policy_version`` (a failover may have lost the last raise) and mark it ready, atomically. False,
        with nothing changed, when the epoch is no longer ``read_in``, the one the durable state was read
        in (None: the current one)."""
        prefix = self.day_prefix(tenant_id, day)
        stale = [k async for k in self._r.scan_iter(match=f"{prefix}:*", count=1000) if not k.endswith(":rebuilding")]
        args: list[str | int | float] = [read_in or await self.epoch(), self.ttl_s, policy_version, len(stale), *stale]
        args.append(len(counters))
        for scope, value in counters.items():
            args += [self.counter_key(tenant_id, day, scope), value]
        opened = list(open_reservations)
        args.append(len(opened))
        for generation_id, amount, scopes, created_at in opened:
            held = " ".join(self.counter_key(tenant_id, day, s) for s in scopes)
            args += [self._res_key(generation_id), generation_id, amount, held, created_at]
        keys = [self._ready_key(tenant_id, day), self._open_key, self._policy_key(tenant_id)]
        return bool(await self._install(keys=keys, args=args))
