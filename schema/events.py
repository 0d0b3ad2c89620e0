"""The event wire format: what every event looks like on NATS and to integrations.

Version 1. Evolve only by adding fields with defaults; never rename or retype a field.
Fields of domain events whose names end in ``_hash`` (password, API key and refresh-token hashes) or
``_encrypted`` (provider API keys) never leave the event store: they are dropped from ``data``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

__all__ = ["EventEnvelope", "SCHEMA_VERSION", "encode", "decode", "json_schema", "SECRET_SUFFIXES"]

SCHEMA_VERSION = 1
SECRET_SUFFIXES = ("_hash", "_encrypted")


class EventEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    """Notification id: the event's position in the one ordered log (gapless in commit order, bar
    ids burnt by rolled-back transactions)."""
    event_id: UUID
    type: str
    aggregate_type: str
    aggregate_id: UUID
    aggregate_version: int
    occurred_at: datetime
    tenant_id: str
    actor: str
    """``user:<uuid>``, ``apikey:<uuid>``, ``system`` or ``anonymous``."""
    via: str | None = None
    """``apikey:<uuid>`` when ``actor`` is an end user a gateway key named."""
    correlation_id: str
    causation_id: str | None = None
    traceparent: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    data: dict[str, Any] = {}
    schema_version: int = SCHEMA_VERSION


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EventEnvelope)


def encode(envelope: EventEnvelope) -> bytes:
    return _encoder.encode(envelope)


def decode(payload: bytes) -> EventEnvelope:
    return _decoder.decode(payload)


def json_schema() -> dict[str, Any]:
    return msgspec.json.schema(EventEnvelope)
