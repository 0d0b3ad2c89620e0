"""The event contract: the JSON Schema of the events parley publishes (NATS ``PARLEY_EVENTS``, webhooks,
the event feed), for integrations to generate their types from or validate against; and the tenant's
event feed itself, paged (``GET /api/v1/events``) or live (``GET /api/v1/events/stream``, SSE), for its
admins and auditors. The feed's queries and its following are ``projections.feed``'s."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from api.deps import App, Caller
from api.sse import connect
from projections.feed import (
    MAX_PAGE,
    FeedWakeUps,
    NoWakeUps,
    ReadIds,
    WakeUps,
    follow_feed,
    read_feed,
    type_filter,
)
from schema.contract import contract_schema
from schema.events import EventEnvelope, encode
from workers.bootstrap import Container

__all__ = ["EventPage", "EventsController", "STREAM_LIFETIME_S"]

log = structlog.get_logger("parley.api")

STREAM_LIFETIME_S = 300.0
"""How long one stream connection lasts. The caller is checked when the stream opens; ending it now and
then makes the client come back (with ``Last-Event-ID``, losing nothing) and be checked again, so a revoked
key, an expired token or a lost role stops reading within this time."""

_POSITION = 2**63 - 1  # a Postgres bigint

TypeFilter = Annotated[
    list[str] | None,
    QueryParameter(
        name="type",
        description="Only events of these types: exact event types (`MessagePosted`) or patterns with `*` for any"
        " run of letters (`Chat*`, `*Deleted`); repeat the parameter or separate them with commas. An unknown or"
        " malformed one is 422 `INVALID_EVENT_TYPE_FILTER` (`GET /api/v1/events/schema` lists the types).",
    ),
]


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of the tenant's event feed."""

    events: list[EventEnvelope]
    """In log order (by ``id``), as on NATS, personal fields withheld."""
    next_after: int
    """The position the page's scan stopped at: pass it as ``after`` for the next page."""
    has_more: bool
    """The log goes on past ``next_after`` (a filtered page may be short, even empty, and still have more)."""


@functools.cache
def _schema() -> dict[str, Any]:
    return contract_schema()  # the same for the life of the process: built once


def _read_ids(c: Container) -> ReadIds:
    async def read_ids(ids: Any) -> list[EventEnvelope]:
        return await c.store.call(c.store.read_ids, list(ids))

    return read_ids


@asynccontextmanager
async def _wake_ups(c: Container, state: State, tenant_id: str) -> AsyncIterator[WakeUps]:
    """The tenant's wake-ups, from the process's one ``FeedWakeUps`` (made on first use); without the bus,
    none (the stream polls)."""
    hub: FeedWakeUps | None = getattr(state, "feed_wake_ups", None)
    if hub is None:
        try:
            await connect(c)
            hub = getattr(state, "feed_wake_ups", None) or FeedWakeUps(c.nc, c.subjects)
            state.feed_wake_ups = hub
        except Exception as exc:  # noqa: BLE001 - no bus: the stream still follows, by polling
            log.warning("feed_wake_ups_off", error=str(exc))
    if hub is None:
        yield NoWakeUps()
        return
    async with hub.listen(tenant_id) as wake_ups:
        yield wake_ups


async def _messages(
    c: Container, state: State, tenant_id: str, after: int, patterns: list[str]
) -> AsyncIterator[ServerSentEventMessage]:
    async with _wake_ups(c, state, tenant_id) as wake_ups:
        # Said at once: the stream is following (and a proxy has something to pass on).
        yield ServerSentEventMessage(comment="keep-alive", data=None)
        events = follow_feed(
            c.engine, _read_ids(c), tenant_id, wake_ups, after=after, patterns=patterns, lifetime_s=STREAM_LIFETIME_S
        )
        async for envelope in events:
            if envelope is None:
                yield ServerSentEventMessage(comment="keep-alive", data=None)
            else:
                yield ServerSentEventMessage(id=envelope.id, event=envelope.type, data=encode(envelope).decode())


class EventsController(Controller):
    path = "/api/v1/events"
    tags = ["events"]

    @get("/", operation_id="ListEvents")
    async def list_events(
        self,
        c: App,
        caller: Caller,
        types: TypeFilter = None,
        after: Annotated[
            int, QueryParameter(ge=0, le=_POSITION, description="start after this position (an event's `id`)")
        ] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="events per page at most")] = 100,
    ) -> EventPage:
        """The tenant's events in log order, after position `after`, for its admins and auditors: each one's
        envelope as parley publishes it (see `GET /api/v1/events/schema`), personal fields withheld
        (`"[withheld]"`, `[]`, `{}` or `null`). Page on with `after=next_after` while `has_more`. A filtered
        page looks at no more than 10,000 events of the log, so it may come back short, or empty, with
        `has_more` true. Events the tenant's retention policy dropped from the audit log are not in the feed."""
        caller.require_auditor()
        patterns = type_filter(types)
        page = await read_feed(c.engine, _read_ids(c), caller.tenant_id, after=after, patterns=patterns, limit=limit)
        return EventPage(events=page.events, next_after=page.next_after, has_more=page.has_more)

    @get("/stream", operation_id="StreamEvents")
    async def stream(
        self,
        c: App,
        caller: Caller,
        state: State,
        types: TypeFilter = None,
        after: Annotated[
            int | None,
            QueryParameter(ge=0, le=_POSITION, description="start after this position (default: now, only new events)"),
        ] = None,
        last_event_id: Annotated[
            int | None,
            HeaderParameter(
                name="Last-Event-ID",
                ge=0,
                le=_POSITION,
                description="resume after this event's `id` (what a reconnecting client sends; wins over `after`)",
            ),
        ] = None,
    ) -> ServerSentEvent:
        """The tenant's events as they happen, as server-sent events, for its admins and auditors: each one
        with `id` its position, `event` its type and `data` its envelope (JSON, as `GET /api/v1/events` gives
        it, personal fields withheld). Starts after `Last-Event-ID` or `after`; with neither, at the
        tenant's present (only new events). A comment (`: keep-alive`) once the stream is following, then
        every 15 s while nothing happens. The server ends a stream after 5 minutes; reconnect with
        `Last-Event-ID` (an `EventSource` does) to go on with nothing lost or repeated."""
        caller.require_auditor()
        patterns = type_filter(types)
        start = last_event_id if last_event_id is not None else after
        if start is None:
            # The log's end now, before the response starts: whatever the client does once it has the
            # headers comes after it.
            start = await c.store.call(c.store.max_id)
        return ServerSentEvent(_messages(c, state, caller.tenant_id, start, patterns))

    @get("/schema", operation_id="GetEventSchema")
    async def schema(self, caller: Caller) -> dict[str, Any]:
        """The JSON Schema (2020-12) of an event envelope and of each event type's ``data``; fields marked
        ``x-personal`` hold personal data (they may travel sealed, as ``enc:v1:...``), ``x-subject`` names
        whose data it is. Any signed-in caller may read it."""
        return _schema()
