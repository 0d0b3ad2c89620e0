"""Redis is shared by every request: a burst larger than the connection pool queues, it does not fail."""

from __future__ import annotations

import asyncio

from adapters.redis import connect


async def test_more_concurrent_redis_calls_than_pool_connections_wait_instead_of_failing(settings) -> None:
    client = connect(settings.redis_url or "", max_connections=4)
    try:
        results = await asyncio.gather(*(client.blpop([f"{settings.namespace}:none:{i}"], timeout=0.2) for i in range(12)))
        assert results == [None] * 12
    finally:
        await client.aclose()
