"""Redis: the hot-path caches and counters that every API process shares."""

from __future__ import annotations

import redis.asyncio as aioredis

__all__ = ["connect", "RedisTokenVersions"]


def connect(url: str, *, max_connections: int = 100) -> aioredis.Redis:
    """A pool that waits for a free connection instead of failing: every authenticated request touches
    Redis, and a burst of more requests than connections must queue, not answer 500."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, health_check_interval=30, max_connections=max_connections, timeout=20
    )
    return aioredis.Redis(connection_pool=pool)


class RedisTokenVersions:
    """Current token version per user, so a revoked access token fails on every API process at once.
    A miss (Redis flushed or restarted) is refilled from the event store by the service."""

    def __init__(self, client: aioredis.Redis, namespace: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self._r = client
        self._ns = namespace
        self._ttl = ttl_s

    def _key(self, user_id: str) -> str:
        return f"{self._ns}:tokver:{user_id}"

    async def get(self, user_id: str) -> int | None:
        value = await self._r.get(self._key(user_id))
        return int(value) if value is not None else None

    async def state(self, user_id: str, session_id: str | None) -> tuple[int | None, bool]:
        """The user's token version and whether this session was ended, in one round trip."""
        version, ended = await self._r.mget(self._key(user_id), f"{self._ns}:ended:{session_id}")
        return (int(version) if version is not None else None), ended is not None

    async def end_session(self, session_id: str, ttl_s: int) -> None:
        """Access tokens of an ended session die with it; they expire by themselves after ``ttl_s``."""
        await self._r.set(f"{self._ns}:ended:{session_id}", 1, ex=max(1, ttl_s))

    async def set(self, user_id: str, version: int) -> None:
        await self._r.set(self._key(user_id), version, ex=self._ttl)

    async def first_sighting(self, token_id: str, window_s: int = 60) -> bool:
        """True once per token per window: a replayed revoked token is recorded, not flooded."""
        return bool(await self._r.set(f"{self._ns}:misuse:{token_id}", 1, nx=True, ex=window_s))
