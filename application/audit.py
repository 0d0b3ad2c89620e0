"""Auditors replay history: the state of any aggregate of their tenant as of an instant, straight from
the event store."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from application.identity import Principal
from application.ports import EventStorePort
from domain.errors import NotFound

__all__ = ["Audit"]

_HIDDEN = ("_hash", "used_hashes", "_pending_events")


class Audit:
    def __init__(self, *, store: EventStorePort, events_of: Any) -> None:
        self.store = store
        self._events_of = events_of  # (aggregate_id, until) -> list of domain events

    def _state_at(self, tenant_id: str, aggregate_id: uuid.UUID, at: datetime) -> dict[str, Any]:
        events = self._events_of(aggregate_id, until=at)
        if not events:
            raise NotFound("AGGREGATE_NOT_FOUND", "nothing existed with this id at that instant")
        aggregate: Any = None
        for e in events:
            aggregate = e.mutate(aggregate)
        owner = str(getattr(aggregate, "tenant_id", ""))
        if owner != tenant_id:  # another tenant's history does not exist for you
            raise NotFound("AGGREGATE_NOT_FOUND", "nothing existed with this id at that instant")
        state = {
            k.lstrip("_"): v
            for k, v in vars(aggregate).items()
            if not any(k.endswith(h) for h in _HIDDEN) and k not in ("_pending_events",)
        }
        return {
            "aggregate_type": type(aggregate).__name__,
            "aggregate_id": str(aggregate_id),
            "version": aggregate.version,
            "as_of": at.isoformat(),
            "state": state,
        }

    async def state_at(self, principal: Principal, aggregate_id: uuid.UUID, at: datetime) -> dict[str, Any]:
        principal.require_admin()
        return await self.store.call(self._state_at, principal.tenant_id, aggregate_id, at)
