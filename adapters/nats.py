"""NATS JetStream: connections and the streams parley owns, created or updated idempotently."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from schema.subjects import Subjects

__all__ = ["connect", "ensure_streams"]

log = structlog.get_logger("parley.nats")

EVENTS_MAX_AGE_S = 7 * 24 * 3600
TOKENS_MAX_AGE_S = 3600  # token chunks are for live streams; finished generations replay from read models
DEDUP_WINDOW_S = 120


async def connect(
    url: str,
    name: str,
    *,
    disconnected: Callable[[], Awaitable[None]] | None = None,
    reconnected: Callable[[], Awaitable[None]] | None = None,
) -> tuple[Client, JetStreamContext]:
    """``disconnected`` / ``reconnected``: told when the connection is lost and when it is back (with its
    subscriptions renewed); what was published meanwhile was not heard."""
    options: dict[str, Any] = {}
    if disconnected is not None:
        options["disconnected_cb"] = disconnected
    if reconnected is not None:
        options["reconnected_cb"] = reconnected
    nc = await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        drain_timeout=5,
        **options,
    )
    return nc, nc.jetstream(timeout=10)


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        info = await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)
        log.info("stream_created", stream=config.name)
        return
    current: Any = info.config
    if list(current.subjects or []) != list(config.subjects or []) or current.max_age != config.max_age:
        await js.update_stream(config)
        log.info("stream_updated", stream=config.name)


async def ensure_streams(js: JetStreamContext, subjects: Subjects, *, replicas: int = 1) -> None:
    await _ensure(
        js,
        StreamConfig(
            name=subjects.events_stream,
            subjects=[subjects.events_all],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=EVENTS_MAX_AGE_S,
            duplicate_window=DEDUP_WINDOW_S,
            num_replicas=replicas,
        ),
    )
    # Work queue: each job is delivered to one worker; acked (removed) when the generation is finished.
    await _ensure(
        js,
        StreamConfig(
            name=subjects.jobs_stream,
            subjects=[subjects.jobs_stream_subjects],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=DEDUP_WINDOW_S,
            num_replicas=replicas,
        ),
    )
    await _ensure(
        js,
        StreamConfig(
            name=subjects.tokens_stream,
            subjects=[subjects.tokens_all],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=TOKENS_MAX_AGE_S,
            duplicate_window=DEDUP_WINDOW_S,
            num_replicas=replicas,
        ),
    )
