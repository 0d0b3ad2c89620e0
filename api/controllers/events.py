"""The event contract: the JSON Schema of the events parley publishes (NATS ``PARLEY_EVENTS``, webhooks,
the event feed), for integrations to generate their types from or validate against."""

from __future__ import annotations

import functools
from typing import Any

from litestar import Controller, get

from api.deps import Caller
from schema.contract import contract_schema

__all__ = ["EventsController"]


@functools.cache
def _schema() -> dict[str, Any]:
    return contract_schema()  # the same for the life of the process: built once


class EventsController(Controller):
    path = "/api/v1/events"
    tags = ["events"]

    @get("/schema", operation_id="GetEventSchema")
    async def schema(self, caller: Caller) -> dict[str, Any]:
        """The JSON Schema (2020-12) of an event envelope and of each event type's ``data``; fields marked
        ``x-personal`` hold personal data (they may travel sealed, as ``enc:v1:...``), ``x-subject`` names
        whose data it is. Any signed-in caller may read it."""
        return _schema()
