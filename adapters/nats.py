"""NATS JetStream: connections and the streams parley owns, created or updated idempotently.

``PARLEY_NATS_URL`` may list the servers of a cluster, comma-separated; the client moves to another when
the one it is on is lost. While a stream's leader is re-elected (4 to 9 s after its node is lost: Raft's
election timeout) publishing to it is refused ("no responders"): ``publish_acked`` waits that out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.errors import ConnectionReconnectingError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from schema.subjects import Subjects

__all__ = ["BUS_UNAVAILABLE", "StreamsError", "connect", "ensure_streams", "publish_acked", "servers"]

log = structlog.get_logger("parley.nats")

EVENTS_MAX_AGE_S = 7 * 24 * 3600
TOKENS_MAX_AGE_S = 3600  # token chunks are for live streams; finished generations replay from read models
DEDUP_WINDOW_S = 120

BUS_UNAVAILABLE: tuple[type[Exception], ...] = (
    NoStreamResponseError,  # no stream leader (an election), or no server at all
    ServiceUnavailableError,  # 503: JetStream not ready
    NatsTimeout,  # the ack was lost with the node the request went through
    ConnectionReconnectingError,
)
"""What JetStream answers while a node is lost and its streams elect new leaders: worth trying again."""


_CANNOT_PLACE = (
    10005,  # no suitable peers for placement
    10023,  # insufficient resources: fewer servers than replicas
    10074,  # replicas > 1 not supported in non-clustered mode
)


class StreamsError(RuntimeError):
    """The streams cannot be created as configured (e.g. more replicas than the cluster has servers)."""


def servers(url: str) -> list[str]:
    """The servers a ``PARLEY_NATS_URL`` names: one URL, or a cluster's, comma-separated."""
    return [part.strip() for part in url.split(",") if part.strip()]


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
        servers=servers(url),
        name=name,
        max_reconnect_attempts=-1,
        # A lost server is noticed at once when its process dies (the socket closes), within 10 s when it
        # hangs (two unanswered pings); the next server of the pool is tried at once, each again after 0.5 s.
        reconnect_time_wait=0.5,
        ping_interval=5,
        max_outstanding_pings=2,
        connect_timeout=2,
        drain_timeout=5,
        **options,
    )
    return nc, nc.jetstream(timeout=10)


async def publish_acked(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    within_s: float = 30.0,
    traceparent: str | None = None,
) -> PubAck:
    """Publish and wait for the ack, trying again while JetStream is unavailable (a node lost, a leader
    being elected) for up to ``within_s``. The same ``Nats-Msg-Id`` each time: JetStream keeps one copy.
    ``traceparent``: the trace the message belongs to, as a header."""
    deadline = time.monotonic() + within_s
    delay = 0.1
    headers = {"Nats-Msg-Id": msg_id}
    if traceparent:
        headers["traceparent"] = traceparent
    while True:
        try:
            return await js.publish(subject, payload, headers=headers)
        except BUS_UNAVAILABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.info("publish_retried", subject=subject, error_type=type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        try:
            info = await js.stream_info(config.name or "")
        except NotFoundError:
            await js.add_stream(config)
            log.info("stream_created", stream=config.name, replicas=config.num_replicas)
            return
        current: Any = info.config
        if (
            list(current.subjects or []) != list(config.subjects or [])
            or current.max_age != config.max_age
            or current.num_replicas != config.num_replicas
        ):
            await js.update_stream(config)
            log.info("stream_updated", stream=config.name, replicas=config.num_replicas)
    except APIError as exc:
        if exc.err_code not in _CANNOT_PLACE:
            raise
        raise StreamsError(
            f"cannot keep {config.num_replicas} replicas of stream {config.name}: NATS answered "
            f"{exc.description or exc} (PARLEY_NATS_REPLICAS={config.num_replicas} needs a JetStream "
            "cluster of at least that many servers; set it to 1 for a single server)"
        ) from None


async def ensure_streams(js: JetStreamContext, subjects: Subjects, *, replicas: int = 1) -> None:
    """Create parley's streams, or update them where their configuration changed (subjects, age, replica
    count: JetStream moves the data to the new peers itself)."""
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
