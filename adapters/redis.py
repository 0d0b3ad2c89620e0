"""Redis: the hot-path caches and counters that every API process shares.

``connect`` takes either a plain URL or a Sentinel deployment (``redis+sentinel://...``, from
``PARLEY_REDIS_SENTINELS``): then the client asks the sentinels for the master, and after a failover
reconnects to the new one, retrying a command for up to ``FAILOVER_RIDE_THROUGH_S`` meanwhile.

What a failover may lose: replication is asynchronous, so the new master may lack the last writes the old
one acknowledged. Every promotion gives the new master a new replication id (``master_replid``; a restart
does too), which the Lua scripts read on the server as the *epoch*. What parley cannot afford to see
rolled back is tied to the epoch it was written in: the quota ledger's counters are trusted only when
built in the current epoch (``adapters.quota_ledger``), and token versions and ended sessions are kept
per epoch, so after a failover every one of them is a miss that is refilled from the event store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import EqualJitterBackoff

from adapters.settings import SENTINEL_SCHEME, parse_sentinel_url

__all__ = ["FAILOVER_RIDE_THROUGH_S", "connect", "epoch", "with_epoch", "RedisTokenVersions"]

T = TypeVar("T")

FAILOVER_RIDE_THROUGH_S = 12.0
"""How long a command through Sentinel keeps retrying while there is no master to reach (a failover takes
``down-after-milliseconds`` plus a second or two): longer, and the caller gets the connection error."""

_EPOCH_LUA = "local epoch = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')\n"


def with_epoch(script: str) -> str:
    """The Lua ``script`` with ``epoch`` set first to the serving master's replication id, which is new after
    every failover and restart."""
    return _EPOCH_LUA + script


def connect(url: str, *, max_connections: int = 100) -> aioredis.Redis:
    """A pool that waits for a free connection instead of failing: every authenticated request touches
    Redis, and a burst of more requests than connections must queue, not answer 500."""
    if url.startswith(f"{SENTINEL_SCHEME}://"):
        return _sentinel_master(url, max_connections)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, health_check_interval=30, max_connections=max_connections, timeout=20
    )
    return aioredis.Redis(connection_pool=pool)


class _RideThrough(Retry):
    """Retries connection errors with jittered backoff until ``budget_s`` have passed since the call began
    (not a number of attempts: the connect inside a command retries too, and attempts would multiply)."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(EqualJitterBackoff(cap=0.5, base=0.05), retries=-1)
        self.budget_s = budget_s

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        deadline = time.monotonic() + self.budget_s
        failures = 0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                await (fail(error, failures) if with_failure_count else fail(error))
                delay = self._backoff.compute(failures)
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)


class _MasterConnection(SentinelManagedConnection):
    """A connection to the master that asks the sentinels where it is each time it connects. redis-py's
    own does only in ``connect()``; a command sent on a dropped connection reconnects through
    ``connect_check_health`` instead, to the address it had: the dead master, until its retries ran out."""

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self.is_connected:
            return
        if retry_socket_connect:  # a reconnect, not the sentinel-guided connect itself (``connect_to``)
            await self.connect()  # type: ignore[no-untyped-call]
            return
        await super().connect_check_health(check_health=check_health, retry_socket_connect=False)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The master's connections, found through Sentinel, waiting for a free one as the plain pool does;
    closing it closes the connections to the sentinels too."""

    async def aclose(self) -> None:
        await super().aclose()
        await self.sentinel_manager.aclose()


def _sentinel_master(url: str, max_connections: int) -> aioredis.Redis:
    sentinels, master = parse_sentinel_url(url)
    manager = Sentinel(
        sentinels,
        # Asking the sentinels must be quick: a dead one is skipped for the next.
        sentinel_kwargs={"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "decode_responses": True},
    )
    client: aioredis.Redis = manager.master_for(
        master,
        connection_pool_class=_BlockingSentinelPool,
        connection_class=_MasterConnection,
        decode_responses=True,
        health_check_interval=30,
        max_connections=max_connections,
        timeout=20,
        # A master that vanished without a word (its machine, not its process) is given up after this.
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        socket_keepalive=True,
        retry=_RideThrough(FAILOVER_RIDE_THROUGH_S),
    )
    return client


async def epoch(client: aioredis.Redis) -> str:
    """The serving master's replication id (see the module's docstring)."""
    return str(await client.eval(with_epoch("return epoch"), 0))


_STATE = with_epoch("""
-- ARGV: namespace, user, session ('' for none)
local version = redis.call('GET', ARGV[1] .. ':tokver:' .. epoch .. ':' .. ARGV[2])
local ended = 0
if ARGV[3] ~= '' then ended = redis.call('EXISTS', ARGV[1] .. ':ended:' .. epoch .. ':' .. ARGV[3]) end
return {version or false, ended}
""")

_RAISE_VERSION = with_epoch("""
-- ARGV: namespace, user, version, ttl. Only ever raised: a refill that read the event store before a
-- revocation committed must not write back the version the revocation replaced.
local key = ARGV[1] .. ':tokver:' .. epoch .. ':' .. ARGV[2]
local current = redis.call('GET', key)
if not current or tonumber(ARGV[3]) > tonumber(current) then
  redis.call('SET', key, ARGV[3], 'EX', ARGV[4])
else
  redis.call('EXPIRE', key, ARGV[4])
end
return 1
""")

_END_SESSION = with_epoch("""
-- ARGV: namespace, session, ttl
redis.call('SET', ARGV[1] .. ':ended:' .. epoch .. ':' .. ARGV[2], 1, 'EX', ARGV[3])
return 1
""")


class RedisTokenVersions:
    """Current token version per user, so a revoked access token fails on every API process at once.
    A miss is refilled from the event store by the service: after Redis was flushed or restarted, and
    after a failover, since entries are kept per epoch (the master's replication id): a revocation the
    old master acknowledged but never replicated cannot come back as an older version on the new one.
    The event store saw every revocation before Redis did."""

    def __init__(self, client: aioredis.Redis, namespace: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self._ns = namespace
        self._ttl = ttl_s
        self._state = client.register_script(_STATE)
        self._raise = client.register_script(_RAISE_VERSION)
        self._end = client.register_script(_END_SESSION)
        self._r = client

    async def get(self, user_id: str) -> int | None:
        return (await self.state(user_id, None))[0]

    async def state(self, user_id: str, session_id: str | None) -> tuple[int | None, bool]:
        """The user's token version and whether this session was ended, in one round trip."""
        version, ended = await self._state(args=[self._ns, user_id, session_id or ""])
        return (int(version) if version is not None else None), bool(ended)

    async def end_session(self, session_id: str, ttl_s: int) -> None:
        """Access tokens of an ended session die with it; they expire by themselves after ``ttl_s``."""
        await self._end(args=[self._ns, session_id, max(1, ttl_s)])

    async def set(self, user_id: str, version: int) -> None:
        """Raise the user's cached version to ``version`` (never lowers it)."""
        await self._raise(args=[self._ns, user_id, version, self._ttl])

    async def first_sighting(self, token_id: str, window_s: int = 60) -> bool:
        """True once per token per window: a replayed revoked token is recorded, not flooded."""
        return bool(await self._r.set(f"{self._ns}:misuse:{token_id}", 1, nx=True, ex=window_s))
