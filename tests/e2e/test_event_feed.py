"""The tenant's event feed through HTTP, on the whole stack (relay, projectors, workers): a tenant's admin
pages exactly its tenant's events in log order, as the audit log holds them, personal fields withheld,
filtered by type; the live stream (uvicorn on a local port, so events arrive as they are sent) brings new
events within seconds, woken by the bus, and a client that reconnects with ``Last-Event-ID`` loses and
repeats nothing; nothing of another tenant ever shows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

import api.controllers.events
import projections.feed
from domain.identity import tenant_id_for
from schema.contract import WITHHELD
from schema.tables import audit_log
from tests.conftest import Pipeline
from tests.e2e.test_chat_api import PASSWORD, add_echo_model, bearer, error_code, finished, new_chat, send, sign_up
from tests.e2e.test_generation_stream import Event, events_of
from tests.tenants import tenant_with_admin
from workers.bootstrap import Container


# --- helpers -------------------------------------------------------------------------------------------
@dataclass
class World:
    a_admin: dict[str, Any]
    a_user: dict[str, Any]
    b_admin: dict[str, Any]
    b_user: dict[str, Any]
    a: str = str(tenant_id_for("acme"))
    b: str = str(tenant_id_for("beta"))


async def member(http: httpx.AsyncClient, admin: dict[str, Any], slug: str, email: str) -> dict[str, Any]:
    """A plain user the tenant's admin adds: their tokens."""
    r = await http.post(
        "/api/v1/users", json={"email": email, "password": PASSWORD, "name": "Member"}, headers=bearer(admin)
    )
    assert r.status_code == 201 and r.json()["role"] == "user", r.text
    r = await http.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD}, headers={"X-Tenant": slug})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def two_tenants(http: httpx.AsyncClient) -> World:
    """Tenants ``acme`` (A) and ``beta`` (B), each with an admin, a plain user and an open echo model."""
    root = await sign_up(http, "root@example.com")  # the default tenant's first user: the platform admin
    _, a_admin = await tenant_with_admin(http, bearer(root), "acme", "boss@acme.test")
    _, b_admin = await tenant_with_admin(http, bearer(root), "beta", "boss@beta.test")
    await add_echo_model(http, a_admin)
    await add_echo_model(http, b_admin)
    return World(
        a_admin=a_admin,
        a_user=await member(http, a_admin, "acme", "ann@acme.test"),
        b_admin=b_admin,
        b_user=await member(http, b_admin, "beta", "bob@beta.test"),
    )


async def talk(http: httpx.AsyncClient, user: dict[str, Any], content: str) -> str:
    """A chat with one message, answered: the chat's id."""
    chat = await new_chat(http, user, f"About {content}")
    r = await send(http, user, chat, content)
    assert r.status_code == 202, r.text
    await finished(http, user, r.json()["generation_id"])
    return chat


async def page_all(
    http: httpx.AsyncClient, tokens: dict[str, Any], *, after: int = 0, limit: int = 3, **params: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every page of the feed from ``after``: (the events, the pages' bodies)."""
    events: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    while True:
        r = await http.get("/api/v1/events", params={"after": after, "limit": limit, **params}, headers=bearer(tokens))
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["events"]) <= limit and page["next_after"] >= after, page
        pages.append(page)
        events += page["events"]
        after = page["next_after"]
        if not page["has_more"]:
            return events, pages


async def audit_ids(container: Container, tenant_id: str) -> list[int]:
    """The notification ids the audit log holds for the tenant, in order."""
    c = audit_log.c
    async with container.engine.connect() as conn:
        rows = await conn.scalars(select(c.notification_id).where(c.tenant_id == tenant_id).order_by(c.notification_id))
        return list(rows)


@contextlib.asynccontextmanager
async def open_feed(
    http: httpx.AsyncClient, tokens: dict[str, Any], *, last_event_id: int | None = None, **params: Any
) -> AsyncIterator[asyncio.Queue[Event]]:
    """An open stream: its events (comments included) as they come, once it says it is following."""
    headers = bearer(tokens) | ({"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {})
    async with http.stream("GET", "/api/v1/events/stream", params=params, headers=headers) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
        queue: asyncio.Queue[Event] = asyncio.Queue()

        async def pump() -> None:
            async for e in events_of(r):
                await queue.put(e)

        task = asyncio.create_task(pump())
        try:
            first = await asyncio.wait_for(queue.get(), 15)
            assert first.comment, first  # following from here
            yield queue
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task


async def read_until(
    queue: asyncio.Queue[Event], done: Callable[[list[Event]], bool], within_s: float = 20
) -> list[Event]:
    """The stream's events (not its comments) until ``done`` says so."""
    got: list[Event] = []
    async with asyncio.timeout(within_s):
        while not done(got):
            e = await queue.get()
            if not e.comment:
                got.append(e)
    return got


async def subscriptions_back_to(container: Container, count: int) -> None:
    """Waits (a little) for the API's bus subscriptions to be ``count`` again."""
    deadline = time.monotonic() + 5
    while len(container.nc._subs) != count:  # nats-py has no public count of them
        assert time.monotonic() < deadline, (len(container.nc._subs), count)
        await asyncio.sleep(0.05)


def ids(events: list[Any]) -> list[int]:
    return [int(e.id) if isinstance(e, Event) else e["id"] for e in events]


# --- paging --------------------------------------------------------------------------------------------
async def test_an_admin_pages_exactly_the_tenants_events_in_order_with_personal_fields_withheld(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    w = await two_tenants(client)
    await talk(client, w.a_user, "my secret plans")
    await talk(client, w.b_user, "beta's own business")
    await talk(client, w.a_user, "more secret plans")
    await pipeline.settle()

    events, pages = await page_all(client, w.a_admin, limit=3)
    assert ids(events) == await audit_ids(container, w.a)  # every one, in order, no gaps
    assert len(pages) > 3 and all(len(p["events"]) == 3 for p in pages[:-1])
    assert {e["tenant_id"] for e in events} == {w.a}
    assert not set(ids(events)) & set(await audit_ids(container, w.b))
    b_events, _ = await page_all(client, w.b_admin, limit=50)
    assert ids(b_events) == await audit_ids(container, w.b) and {e["tenant_id"] for e in b_events} == {w.b}

    # Envelopes as on NATS, personal fields withheld.
    assert set(events[0]) >= {"id", "event_id", "type", "aggregate_type", "aggregate_id", "occurred_at", "data"}
    posted = [e for e in events if e["type"] == "MessagePosted" and e["data"]["role"] == "user"]
    assert len(posted) == 2 and all(e["data"]["content"] == WITHHELD for e in posted)
    registered = [e for e in events if e["type"] == "UserRegistered"]
    assert {e["data"]["email"] for e in registered} == {WITHHELD} and len(registered) == 2
    assert all(e["data"]["title"] == WITHHELD for e in events if e["type"] == "ChatCreated")
    assert "secret plans" not in str(events) and "ann@acme.test" not in str(events)

    # Starting anywhere: after an event, the rest; after the end, nothing.
    middle = events[len(events) // 2]["id"]
    rest, _ = await page_all(client, w.a_admin, after=middle, limit=1000)
    assert ids(rest) == [i for i in ids(events) if i > middle]
    r = await client.get("/api/v1/events", params={"after": events[-1]["id"]}, headers=bearer(w.a_admin))
    assert r.json() == {"events": [], "next_after": events[-1]["id"], "has_more": False}


async def test_the_feed_filters_by_event_type(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = await two_tenants(client)
    await talk(client, w.a_user, "first")
    await talk(client, w.b_user, "second")
    await talk(client, w.a_user, "third")
    await pipeline.settle()
    everything, _ = await page_all(client, w.a_admin, limit=1000)

    chats, _ = await page_all(client, w.a_admin, type="Chat*")
    assert chats and chats == [e for e in everything if e["type"].startswith("Chat")]
    wanted = {"ChatCreated", "MessagePosted"}
    expected = [e for e in everything if e["type"] in wanted]
    assert {e["type"] for e in expected} == wanted
    for params in ({"type": "ChatCreated,MessagePosted"}, {"type": ["ChatCreated", "MessagePosted"]}):
        assert (await page_all(client, w.a_admin, **params))[0] == expected
    mixed, _ = await page_all(client, w.a_admin, type=["*Completed", "UserRegistered"])
    assert mixed == [e for e in everything if e["type"].endswith("Completed") or e["type"] == "UserRegistered"]
    assert (await page_all(client, w.a_admin, type="*"))[0] == everything

    # A filter that matches little reads a bounded stretch of the log per request, and says where it stopped.
    monkeypatch.setattr(projections.feed, "SCAN_LIMIT", 4)
    sparse, pages = await page_all(client, w.a_admin, limit=2, type="MessagePosted")
    assert sparse == [e for e in everything if e["type"] == "MessagePosted"]
    assert any(p["has_more"] and len(p["events"]) < 2 for p in pages)


async def test_bad_filters_and_parameters_are_refused_and_only_admins_and_auditors_read_the_feed(
    client: httpx.AsyncClient, container: Container, pipeline: Pipeline
) -> None:
    w = await two_tenants(client)
    await pipeline.settle()
    admin = bearer(w.a_admin)
    for bad in ("NoSuchEvent", "Chat-", "Zzz*", "", "ChatCreated,", "x" * 101):
        for path in ("/api/v1/events", "/api/v1/events/stream"):
            r = await client.get(path, params={"type": bad}, headers=admin)
            assert r.status_code == 422 and error_code(r) == "INVALID_EVENT_TYPE_FILTER", (bad, r.text)
            assert r.json()["error"]["detail"]["field"] == "type"
    for params in ({"limit": 0}, {"limit": 1001}, {"after": -1}, {"after": "x"}):
        r = await client.get("/api/v1/events", params=params, headers=admin)
        assert r.status_code == 400 and error_code(r) == "VALIDATION_FAILED", (params, r.text)
    r = await client.get("/api/v1/events", params={"limit": 1, "after": 0}, headers=admin)
    assert r.status_code == 200 and len(r.json()["events"]) == 1 and r.json()["has_more"] is True

    for path in ("/api/v1/events", "/api/v1/events/stream"):
        r = await client.get(path, headers=bearer(w.a_user))
        assert r.status_code == 403 and error_code(r) == "ADMIN_REQUIRED", r.text
        assert (await client.get(path)).status_code == 401
    # An auditor reads it.
    r = await client.post(
        "/api/v1/users",
        json={"email": "audrey@acme.test", "password": PASSWORD, "name": "Audrey", "role": "auditor"},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/auths/login",
        json={"email": "audrey@acme.test", "password": PASSWORD},
        headers={"X-Tenant": "acme"},
    )
    r = await client.get("/api/v1/events", headers=bearer(r.json()))
    assert r.status_code == 200 and {e["tenant_id"] for e in r.json()["events"]} <= {w.a}, r.text


# --- the stream ----------------------------------------------------------------------------------------
async def test_a_stream_resumed_with_last_event_id_loses_and_repeats_nothing(
    live: str, container: Container, pipeline: Pipeline
) -> None:
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        w = await two_tenants(http)
        await pipeline.settle()
        subscriptions = len(container.nc._subs)
        async with open_feed(http, w.a_admin) as feed:
            assert len(container.nc._subs) == subscriptions + 1  # the tenant's, while a stream is open
            chat = await new_chat(http, w.a_user, "Plans")
            await new_chat(http, w.b_user, "Beta's")
            r = await send(http, w.a_user, chat, "some words to answer")
            assert r.status_code == 202, r.text
            # Leave mid-way: the answer is still being written.
            first = await read_until(feed, lambda got: any(e.event == "MessagePosted" for e in got))
            assert first[0].event == "ChatCreated" and first[0].data["aggregate_id"] == chat
        await subscriptions_back_to(container, subscriptions)  # it went with the stream

        await finished(http, w.a_user, r.json()["generation_id"])
        await talk(http, w.a_user, "more words")
        await talk(http, w.b_user, "beta words")
        await pipeline.settle()
        history, _ = await page_all(http, w.a_admin, after=int(first[0].id) - 1, limit=1000)
        assert ids(history)[: len(first)] == ids(first)
        assert len(history) > len(first) + 5

        async with open_feed(http, w.a_admin, last_event_id=first[-1].id, after=0) as feed:
            second = await read_until(feed, lambda got: bool(got) and got[-1].id == str(history[-1]["id"]))
        # Every event after the last one seen, exactly once, in order; as the pages give them; none of B's.
        assert ids(first + second) == ids(history)
        assert [e.data for e in first + second] == history
        assert [e.event for e in first + second] == [e["type"] for e in history]
        assert not set(ids(history)) & set(await audit_ids(container, w.b))
        await subscriptions_back_to(container, subscriptions)


async def test_a_new_event_reaches_an_open_stream_within_seconds_woken_by_the_bus(
    live: str, container: Container, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No poll or heartbeat comes in time: only a wake-up brings the event this soon.
    monkeypatch.setattr(projections.feed, "POLL_S", 60.0)
    monkeypatch.setattr(projections.feed, "HEARTBEAT_S", 60.0)
    monkeypatch.setattr(projections.feed, "RETRY_FOR_S", 30.0)  # a slow projector on a busy machine
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        w = await two_tenants(http)
        await pipeline.settle()
        async with open_feed(http, w.a_admin) as a_feed, open_feed(http, w.b_admin) as b_feed:
            for _ in range(2):
                started = time.monotonic()
                chat = await new_chat(http, w.a_user, "Quick")
                [created] = await read_until(a_feed, lambda got: bool(got), within_s=30)
                elapsed = time.monotonic() - started
                assert (created.event, created.data["aggregate_id"], created.data["tenant_id"]) == (
                    "ChatCreated",
                    chat,
                    w.a,
                )
                assert elapsed < 10, elapsed
            # The other tenant's stream has its own events, and heard nothing of A's; A's hears nothing of B's.
            chat = await new_chat(http, w.b_user, "Beta's")
            [created] = await read_until(b_feed, lambda got: bool(got), within_s=30)
            assert (created.data["aggregate_id"], created.data["tenant_id"]) == (chat, w.b)
            await asyncio.sleep(0.5)
            assert all(a_feed.get_nowait().comment for _ in range(a_feed.qsize()))


async def test_an_idle_stream_sends_keep_alives_filters_by_type_and_ends_after_its_lifetime(
    live: str, container: Container, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(projections.feed, "HEARTBEAT_S", 0.2)
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        w = await two_tenants(http)
        await pipeline.settle()
        async with open_feed(http, w.a_admin, type="MessagePosted") as feed:
            comments = 0
            async with asyncio.timeout(10):
                while comments < 3:
                    comments += (await feed.get()).comment
            chat = await talk(http, w.a_user, "filtered words")
            [posted] = await read_until(feed, lambda got: bool(got))
            assert (posted.event, posted.data["aggregate_id"]) == ("MessagePosted", chat)
            assert posted.data["data"]["content"] == WITHHELD

        # Resuming with `after` (no Last-Event-ID) starts there; a stream ends after its lifetime.
        monkeypatch.setattr(api.controllers.events, "STREAM_LIFETIME_S", 1.0)
        started = time.monotonic()
        r = await http.get(
            "/api/v1/events/stream",
            params={"after": int(posted.id) - 1, "type": "MessagePosted"},
            headers=bearer(w.a_admin),
        )
        assert r.status_code == 200 and time.monotonic() - started < 10
        events = [e for e in await collect(r) if not e.comment]
        assert [(e.event, e.id) for e in events] == [("MessagePosted", posted.id)]


async def collect(response: httpx.Response) -> list[Event]:
    return [e async for e in events_of(response)]
