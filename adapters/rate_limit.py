"""Rate limits: a sliding-window request counter in Redis, shared by every API process.

One sorted set per key holds the times of the requests admitted in the last window. A Lua script drops
what fell out of the window, counts, and admits (recording the request) or refuses, atomically, with the
Redis server's clock, so API processes with skewed clocks still share one window. A refused request is not
recorded: a client that keeps hammering is let in again as soon as its oldest request leaves the window,
which is what ``Retry-After`` tells it.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

__all__ = ["Decision", "SlidingWindowLimiter"]

_SCRIPT = """
local key = KEYS[1]
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, math.ceil(window / 1000))
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local wait = window
if oldest[2] then wait = tonumber(oldest[2]) + window - now end
return {0, 0, wait}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int
    """Whole seconds until a request would be admitted (0 when this one was)."""


class SlidingWindowLimiter:
    def __init__(self, client: aioredis.Redis, namespace: str, *, window_s: float = 60.0) -> None:
        self._r = client
        self._ns = namespace
        self._window_us = int(window_s * 1_000_000)
        self._script = client.register_script(_SCRIPT)

    async def hit(self, key: str, limit: int) -> Decision:
        """Count one request against ``key`` (e.g. ``user:<id>``) if it fits ``limit`` per window."""
        member = uuid.uuid4().hex  # unique even when two requests share a microsecond
        allowed, remaining, wait_us = await self._script(
            keys=[f"{self._ns}:rl:{key}"], args=[self._window_us, int(limit), member]
        )
        retry = 0 if allowed else max(1, math.ceil(int(wait_us) / 1_000_000))
        return Decision(bool(allowed), int(limit), int(remaining), retry)
