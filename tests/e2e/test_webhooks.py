"""Webhooks end to end: endpoints through the API, the relay and projectors running, the dispatcher running,
and a real HTTP receiver that verifies every delivery with the ``standardwebhooks`` package.

- every matching event is delivered, none of the others; a receiver that fails, then answers 429 with
  Retry-After, sees each webhook-id until it accepts it, never after; the delivery log has every attempt;
- a slow (10 s) and a dead endpoint beside a healthy one do not delay the healthy one;
- a rotated secret: the old one keeps verifying during the overlap;
- retry and replay through the API; an endpoint failing for the stated period is disabled (audited);
- tenant isolation of endpoints, deliveries and replays;
- SSRF: loopback, private, link-local and metadata URLs refused at registration; at delivery, a refused
  address is never connected to; redirects are not followed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook, WebhookVerificationError

from adapters.settings import Settings
from projections.runtime import read_position, rebuild
from projections.webhooks import WebhooksProjector
from schema.tables import webhook_attempts, webhook_endpoints, webhook_messages
from tests.e2e.test_users_admin import PASSWORD, admin, bearer, create_user, login
from tests.tenants import tenant_with_admin
from tests.webhook_receiver import Answer, Receiver
from workers.bootstrap import Container
from workers.webhooks import DispatchConfig, Dispatcher


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The receivers listen on loopback: this deployment allows private addresses (one test turns it off).
    return msgspec.structs.replace(
        settings,
        webhooks_allow_private=True,
        webhook_retry_schedule_s=(0.2, 0.3, 0.4, 0.5, 0.5),
        webhook_lease_s=5.0,
        webhook_timeout_s=12.0,
    )


async def start_dispatcher(c: Container, **overrides: Any) -> tuple[Dispatcher, asyncio.Event, asyncio.Task[None]]:
    js = await c.connect_nats("test-webhooks")
    config = DispatchConfig.from_settings(c.settings, poll_s=0.1, **overrides)
    dispatcher = Dispatcher(engine=c.engine, store=c.store, webhooks=c.webhooks, config=config)
    stop = asyncio.Event()
    return dispatcher, stop, asyncio.create_task(dispatcher.run(js, c.subjects, stop))


@pytest.fixture
async def dispatcher(container: Container, pipeline: Any) -> AsyncIterator[Dispatcher]:
    d, stop, task = await start_dispatcher(container)
    yield d
    stop.set()
    await task


async def register_endpoint(client: httpx.AsyncClient, tokens: dict[str, Any], url: str, **body: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/webhooks", json={"url": url, **body}, headers=bearer(tokens))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_")
    return dict(created)


async def tenant_events(c: Container, tenant_id: str, prefix: str = "", after: int = 0) -> list[Any]:
    events = await c.store.call(c.store.read, after + 1, 100_000)
    return [e for e in events if e.tenant_id == tenant_id and e.type.startswith(prefix)]


async def make_chats(client: httpx.AsyncClient, tokens: dict[str, Any], n: int) -> None:
    for i in range(n):
        r = await client.post("/api/v1/chats", json={"title": f"chat {i}"}, headers=bearer(tokens))
        assert r.status_code == 201, r.text
        r = await client.patch(
            f"/api/v1/chats/{r.json()['id']}", json={"title": f"renamed {i}"}, headers=bearer(tokens)
        )
        assert r.status_code == 200, r.text


def scripted(webhook_id: str, attempt: int) -> Answer:
    """Fails twice, asks to wait a second, then accepts."""
    if attempt <= 2:
        return Answer(status=500, body=b"not now")
    if attempt == 3:
        return Answer(status=429, headers={"Retry-After": "1"})
    return Answer()


async def test_every_matching_event_is_delivered_verified_and_retried_until_accepted(
    client: httpx.AsyncClient, container: Container, dispatcher: Dispatcher
) -> None:
    user, tokens = await admin(client)
    receiver = Receiver(answer=scripted)
    async with receiver.serve() as url:
        endpoint = await register_endpoint(client, tokens, f"{url}/hook", event_types=["Chat*"])
        receiver.verifiers = [Webhook(endpoint["secret"])]
        await make_chats(client, tokens, 6)
        await create_user(client, tokens, "someone@example.com")  # events no Chat* pattern matches
        expected = {str(e.event_id): e for e in await tenant_events(container, user["tenant_id"], "Chat")}
        assert len(expected) == 12
        await receiver.wait_for(len(expected), timeout=60)
        await asyncio.sleep(1.0)  # nothing more comes once accepted

    assert set(receiver.accepted) == set(expected)
    assert all(d.verified for d in receiver.deliveries)
    for webhook_id, event in expected.items():
        seen = [d for d in receiver.deliveries if d.webhook_id == webhook_id]
        assert [d.status for d in seen] == [500, 500, 429, 200], webhook_id
        assert seen[3].at - seen[2].at >= 0.9, "Retry-After: 1 was not honoured"
        body = seen[3].payload
        assert body is not None and body["type"] == event.type and body["id"] == event.id
        assert body["data"].get("title") in (None, "[withheld]")  # personal fields are not for this endpoint

    r = await client.get(f"/api/v1/webhooks/{endpoint['id']}/messages", params={"limit": 100}, headers=bearer(tokens))
    assert r.status_code == 200, r.text
    messages = r.json()
    assert {m["event_id"] for m in messages} == set(expected)
    assert all(m["status"] == "delivered" and m["attempts"] == 4 for m in messages)
    r = await client.get(f"/api/v1/webhooks/{endpoint['id']}/messages/{messages[0]['id']}", headers=bearer(tokens))
    detail = r.json()
    assert [a["status_code"] for a in detail["attempt_log"]] == [500, 500, 429, 200]
    assert detail["attempt_log"][0]["response_excerpt"] == "not now"
    r = await client.get(
        "/api/v1/webhooks/messages", params={"event_id": messages[0]["event_id"]}, headers=bearer(tokens)
    )
    assert [m["id"] for m in r.json()] == [messages[0]["id"]]


async def test_personal_fields_go_only_where_allowed_and_secrets_never(
    client: httpx.AsyncClient, container: Container, dispatcher: Dispatcher
) -> None:
    _, tokens = await admin(client)
    plain, opened = Receiver(), Receiver()
    async with plain.serve() as plain_url, opened.serve() as opened_url:
        a = await register_endpoint(client, tokens, plain_url, event_types=["ChatCreated", "UserRegistered"])
        b = await register_endpoint(
            client, tokens, opened_url, event_types=["ChatCreated", "UserRegistered"], include_personal=True
        )
        plain.verifiers, opened.verifiers = [Webhook(a["secret"])], [Webhook(b["secret"])]
        await create_user(client, tokens, "mia@example.com", name="Mia Example")
        await make_chats(client, tokens, 1)
        await plain.wait_for(2, timeout=30)
        await opened.wait_for(2, timeout=30)

    def by_type(receiver: Receiver) -> dict[str, dict[str, Any]]:
        return {d.payload["type"]: d.payload for d in receiver.accepted.values() if d.payload}

    assert by_type(opened)["UserRegistered"]["data"]["email"] == "mia@example.com"
    assert by_type(opened)["ChatCreated"]["data"]["title"] == "chat 0"
    assert by_type(plain)["UserRegistered"]["data"]["email"] == "[withheld]"
    assert by_type(plain)["ChatCreated"]["data"]["title"] == "[withheld]"
    for receiver in (plain, opened):
        for payload in by_type(receiver).values():
            assert not any(k.endswith(("_hash", "_encrypted")) for k in payload["data"])


async def test_a_slow_and_a_dead_endpoint_do_not_delay_a_healthy_one(
    client: httpx.AsyncClient, container: Container, dispatcher: Dispatcher
) -> None:
    _, tokens = await admin(client)
    healthy, slow = Receiver(), Receiver(answer=lambda _i, _n: Answer(delay_s=10.0))
    async with healthy.serve() as healthy_url, slow.serve() as slow_url:
        good = await register_endpoint(client, tokens, healthy_url, event_types=["ChatCreated"])
        healthy.verifiers = [Webhook(good["secret"])]

        async def latencies(n: int) -> list[float]:
            before = len(healthy.accepted)
            for i in range(n):
                r = await client.post("/api/v1/chats", json={"title": f"t{i}"}, headers=bearer(tokens))
                assert r.status_code == 201
            await healthy.wait_for(before + n, timeout=30)
            events = {str(e.event_id): e for e in await tenant_events(container, good_tenant, "ChatCreated")}
            return [d.at - events[i].occurred_at.timestamp() for i, d in list(healthy.accepted.items())[before:]]

        good_tenant = (await client.get("/api/v1/auths/me", headers=bearer(tokens))).json()["tenant_id"]
        alone = await latencies(20)
        bad = await register_endpoint(client, tokens, slow_url, event_types=["ChatCreated"])
        slow.verifiers = [Webhook(bad["secret"])]
        dead = await register_endpoint(client, tokens, "http://127.0.0.1:9/dead", event_types=["ChatCreated"])
        beside = await latencies(60)  # 60 messages for the slow endpoint: 6 lanes' worth of 10 s requests
        del dead

    p95_alone, p95_beside = statistics.quantiles(alone, n=20)[18], statistics.quantiles(beside, n=20)[18]
    # Head-of-line blocking would put the healthy endpoint's deliveries behind 10 s requests.
    assert p95_beside < max(2.0, 3 * p95_alone), (p95_alone, p95_beside)
    assert max(beside) < 5.0, max(beside)


async def test_rotation_keeps_the_old_secret_valid_for_the_overlap(
    client: httpx.AsyncClient, container: Container, dispatcher: Dispatcher
) -> None:
    _, tokens = await admin(client)
    receiver = Receiver()
    async with receiver.serve() as url:
        endpoint = await register_endpoint(client, tokens, url, event_types=["ChatCreated"])
        first = endpoint["secret"]
        r = await client.post(
            f"/api/v1/webhooks/{endpoint['id']}/secret/rotate", json={"overlap_s": 3600}, headers=bearer(tokens)
        )
        assert r.status_code == 200, r.text
        second = r.json()["secret"]
        assert second != first and r.json()["previous_secret_valid_until"]
        receiver.verifiers = [Webhook(second)]
        await pipeline_settled(container)
        await make_chats(client, tokens, 1)
        await receiver.wait_for(1, timeout=30)
        during = receiver.deliveries[-1]
        # During the overlap a delivery verifies under either secret: a receiver may switch at leisure.
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        Webhook(first).verify(during.body, during.headers)
        Webhook(second).verify(during.body, during.headers)

        r = await client.post(
            f"/api/v1/webhooks/{endpoint['id']}/secret/rotate", json={"overlap_s": 0}, headers=bearer(tokens)
        )
        third = r.json()["secret"]
        receiver.verifiers = [Webhook(third)]
        await pipeline_settled(container)
        await asyncio.sleep(1.1)  # the dispatcher's view of the endpoint turns over within a second
        await make_chats(client, tokens, 1)
        await receiver.wait_for(2, timeout=30)
    after = receiver.deliveries[-1]
    assert after.verified and len(after.headers["webhook-signature"].split(" ")) == 1
    Webhook(third).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(second).verify(after.body, after.headers)


async def test_retry_and_replay_through_the_api(
    client: httpx.AsyncClient, container: Container, dispatcher: Dispatcher
) -> None:
    user, tokens = await admin(client)
    await make_chats(client, tokens, 3)  # history from before the endpoint existed
    history = await tenant_events(container, user["tenant_id"], "Chat")
    receiver = Receiver()
    async with receiver.serve() as url:
        endpoint = await register_endpoint(client, tokens, url, event_types=["Chat*"])
        receiver.verifiers = [Webhook(endpoint["secret"])]
        await make_chats(client, tokens, 1)
        await receiver.wait_for(2, timeout=30)
        assert not {str(e.event_id) for e in history} & set(receiver.accepted)

        r = await client.post(f"/api/v1/webhooks/{endpoint['id']}/replay", json={"after": 0}, headers=bearer(tokens))
        assert r.status_code == 202, r.text
        await receiver.wait_for(len(history) + 2, timeout=30)
        assert {str(e.event_id) for e in history} <= set(receiver.accepted)

        messages = (await client.get(f"/api/v1/webhooks/{endpoint['id']}/messages", headers=bearer(tokens))).json()
        target = messages[0]
        before = receiver.seen[target["event_id"]]
        r = await client.post(
            f"/api/v1/webhooks/{endpoint['id']}/messages/{target['id']}/retry", headers=bearer(tokens)
        )
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 15
        while receiver.seen[target["event_id"]] == before and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert receiver.seen[target["event_id"]] == before + 1

    bad = await client.post(
        f"/api/v1/webhooks/{endpoint['id']}/messages/{endpoint['id']}/retry", headers=bearer(tokens)
    )
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "WEBHOOK_MESSAGE_NOT_FOUND"
    both = await client.post(
        f"/api/v1/webhooks/{endpoint['id']}/replay",
        json={"after": 0, "since": "2026-01-01T00:00:00Z"},
        headers=bearer(tokens),
    )
    assert both.status_code == 422 and both.json()["error"]["code"] == "INVALID_REPLAY"
    audit = (await client.get("/api/v1/audit", params={"target_type": "Webhook"}, headers=bearer(tokens))).json()
    actions = {entry["action"] for entry in audit["items"]}
    assert {"WebhookCreated", "WebhookReplayRequested", "WebhookRetryRequested"} <= actions

    # A rebuild re-derives the endpoints as they were and adds no message: nothing delivered goes again.
    async def state() -> tuple[list[Any], int]:
        async with container.engine.connect() as conn:
            endpoints = (await conn.execute(select(webhook_endpoints).order_by(webhook_endpoints.c.endpoint_id))).all()
            return list(endpoints), int(await conn.scalar(select(func.count()).select_from(webhook_messages)) or 0)

    await pipeline_settled(container)
    before_rebuild = await state()
    await rebuild(WebhooksProjector(), engine=container.engine, store=container.store)
    assert await state() == before_rebuild


async def test_an_endpoint_failing_for_the_stated_period_is_disabled_and_audited(
    client: httpx.AsyncClient, container: Container, pipeline: Any
) -> None:
    d, stop, task = await start_dispatcher(container, disable_after_s=1.0, retry_schedule_s=(0.3,) * 20)
    try:
        _, tokens = await admin(client)
        endpoint = await register_endpoint(client, tokens, "http://127.0.0.1:9/dead", event_types=["ChatCreated"])
        await make_chats(client, tokens, 1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = await client.get(f"/api/v1/webhooks/{endpoint['id']}", headers=bearer(tokens))
            if not r.json()["enabled"]:
                break
            await asyncio.sleep(0.2)
        got = r.json()
        assert got["enabled"] is False and got["disabled_reason"] == "failing", got
        assert got["failing_since"] is not None
        await pipeline.settle()
        audit = (await client.get("/api/v1/audit", params={"action": "WebhookDisabled"}, headers=bearer(tokens))).json()
        [entry] = audit["items"]
        assert entry["actor"] == "system:webhooks" and entry["detail"]["reason"] == "failing"
        messages = (await client.get(f"/api/v1/webhooks/{endpoint['id']}/messages", headers=bearer(tokens))).json()
        assert messages and all(m["attempts"] >= 1 and m["last_error"].startswith("CONNECT_FAILED") for m in messages)
        # Enabling it again clears the failure and resumes.
        r = await client.patch(f"/api/v1/webhooks/{endpoint['id']}", json={"enabled": True}, headers=bearer(tokens))
        assert r.status_code == 200 and r.json()["enabled"] is True
    finally:
        stop.set()
        await task


async def test_tenants_never_see_each_others_endpoints_deliveries_or_replays(
    client: httpx.AsyncClient, container: Container, dispatcher: Dispatcher
) -> None:
    _, platform = await admin(client)
    _, acme = await tenant_with_admin(client, bearer(platform), "acme", "admin@acme.example")
    mine, theirs = Receiver(), Receiver()
    async with mine.serve() as mine_url, theirs.serve() as theirs_url:
        a = await register_endpoint(client, platform, mine_url, event_types=["*"])
        b = await register_endpoint(client, acme, theirs_url, event_types=["*"])
        mine.verifiers, theirs.verifiers = [Webhook(a["secret"])], [Webhook(b["secret"])]
        await make_chats(client, platform, 2)
        await make_chats(client, acme, 2)
        r = await client.post(f"/api/v1/webhooks/{b['id']}/replay", json={"after": 0}, headers=bearer(acme))
        assert r.status_code == 202
        await asyncio.sleep(3)
        await pipeline_settled(container)
        await asyncio.sleep(1)

    me = (await client.get("/api/v1/auths/me", headers=bearer(platform))).json()["tenant_id"]
    them = (await client.get("/api/v1/auths/me", headers=bearer(acme))).json()["tenant_id"]
    assert mine.accepted and theirs.accepted
    assert {d.payload["tenant_id"] for d in mine.accepted.values() if d.payload} == {me}
    assert {d.payload["tenant_id"] for d in theirs.accepted.values() if d.payload} == {them}
    for path in (f"/api/v1/webhooks/{b['id']}", f"/api/v1/webhooks/{b['id']}/messages"):
        r = await client.get(path, headers=bearer(platform))
        assert r.status_code == 404 and r.json()["error"]["code"] == "WEBHOOK_NOT_FOUND", path
    r = await client.post(f"/api/v1/webhooks/{b['id']}/replay", json={"after": 0}, headers=bearer(platform))
    assert r.status_code == 404
    assert [w["id"] for w in (await client.get("/api/v1/webhooks", headers=bearer(platform))).json()] == [a["id"]]
    some = next(iter(theirs.accepted))
    assert (
        await client.get("/api/v1/webhooks/messages", params={"event_id": some}, headers=bearer(platform))
    ).json() == []


async def pipeline_settled(c: Container) -> None:
    deadline = time.monotonic() + 15
    while await read_position(c.engine, "webhooks") < await c.store.call(c.store.max_id):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_only_admins_manage_webhooks_and_bad_input_is_refused(
    client: httpx.AsyncClient, container: Container
) -> None:
    _, tokens = await admin(client)
    await create_user(client, tokens, "plain@example.com")
    plain = await login(client, "plain@example.com", PASSWORD)
    r = await client.get("/api/v1/webhooks", headers=bearer(plain))
    assert r.status_code == 403
    r = await client.post("/api/v1/webhooks", json={"url": "https://93.184.215.14/x"}, headers=bearer(plain))
    assert r.status_code == 403
    cases = [
        ({"url": "https://93.184.215.14/x", "event_types": ["NoSuchEvent"]}, 422, "INVALID_EVENT_TYPE_FILTER"),
        ({"url": "https://93.184.215.14/x", "event_types": ["Chat.*"]}, 422, "INVALID_EVENT_TYPE_FILTER"),
        ({"url": "https://93.184.215.14/x", "event_types": []}, 400, None),
        ({"url": "ftp://93.184.215.14/x"}, 422, "INVALID_URL"),
        ({"url": "https://u:p@93.184.215.14/x"}, 422, "URL_CREDENTIALS"),
        (
            {"url": "https://93.184.215.14/x", "user_ids": ["00000000-0000-0000-0000-000000000001"]},
            404,
            "USER_NOT_FOUND",
        ),
        ({"url": "https://93.184.215.14/x", "surprise": 1}, 400, None),
    ]
    for body, status, code in cases:
        r = await client.post("/api/v1/webhooks", json=body, headers=bearer(tokens))
        assert r.status_code == status, (body, r.text)
        if code:
            assert r.json()["error"]["code"] == code, (body, r.text)
    r = await client.get("/api/v1/webhooks/00000000-0000-0000-0000-000000000001", headers=bearer(tokens))
    assert r.status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://[::1]/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://100.100.100.200/",
        "http://2130706433/",
        "http://0x7f000001/",
    ],
)
async def test_private_loopback_link_local_and_metadata_urls_are_refused(
    client: httpx.AsyncClient, container: Container, url: str
) -> None:
    container.webhooks.check_url = _strict_check  # this deployment does not allow private addresses
    _, tokens = await admin(client)
    r = await client.post("/api/v1/webhooks", json={"url": url}, headers=bearer(tokens))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "URL_FORBIDDEN"


async def _strict_check(url: str) -> str:
    from adapters.outbound import AddressPolicy, check_url

    return await check_url(url, policy=AddressPolicy(allow_private=False))


async def test_delivery_never_connects_to_a_refused_address_nor_follows_redirects(
    client: httpx.AsyncClient, container: Container, pipeline: Any
) -> None:
    _, tokens = await admin(client)
    inside = Receiver()
    redirecting = Receiver(answer=lambda _i, _n: Answer(status=307, headers={"Location": "http://169.254.169.254/"}))
    async with inside.serve() as inside_url, redirecting.serve() as redirect_url:
        # Registered while private addresses were allowed; the dispatcher runs where they are not (as after
        # a DNS change to a private address): the connect-time check refuses it.
        a = await register_endpoint(client, tokens, inside_url, event_types=["ChatCreated"])
        inside.verifiers = [Webhook(a["secret"])]
        strict, stop, task = await start_dispatcher(container, allow_private=False, retry_schedule_s=(60.0,))
        try:
            await make_chats(client, tokens, 1)
            await asyncio.sleep(3)
        finally:
            stop.set()
            await task
        assert inside.deliveries == []
        messages = (await client.get(f"/api/v1/webhooks/{a['id']}/messages", headers=bearer(tokens))).json()
        assert messages and messages[0]["last_error"].startswith("URL_FORBIDDEN"), messages
        assert "127.0.0.1" in messages[0]["last_error"]
        # Allowed again: the redirect is answered, not followed.
        b = await register_endpoint(client, tokens, redirect_url, event_types=["ChatCreated"])
        redirecting.verifiers = [Webhook(b["secret"])]
        r = await client.patch(f"/api/v1/webhooks/{a['id']}", json={"enabled": False}, headers=bearer(tokens))
        assert r.status_code == 200
        relaxed, stop, task = await start_dispatcher(container, retry_schedule_s=(60.0,))
        try:
            await make_chats(client, tokens, 1)
            deadline = time.monotonic() + 15
            while not redirecting.deliveries and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)
        finally:
            stop.set()
            await task
    assert redirecting.deliveries and redirecting.deliveries[0].status == 307
    messages = (await client.get(f"/api/v1/webhooks/{b['id']}/messages", headers=bearer(tokens))).json()
    assert messages[0]["status"] == "pending" and messages[0]["last_error"] == "REDIRECT_NOT_FOLLOWED"
    del strict, relaxed


async def test_the_delivery_log_keeps_finished_messages_for_its_retention_and_a_rebuild_resends_nothing_swept(
    client: httpx.AsyncClient, container: Container, dispatcher: Dispatcher
) -> None:
    _, tokens = await admin(client)
    receiver = Receiver()
    async with receiver.serve() as url:
        endpoint = await register_endpoint(client, tokens, url, event_types=["ChatCreated"])
        receiver.verifiers = [Webhook(endpoint["secret"])]
        await make_chats(client, tokens, 3)
        await receiver.wait_for(3, timeout=30)
        await pipeline_settled(container)
        messages = f"/api/v1/webhooks/{endpoint['id']}/messages"
        deadline = time.monotonic() + 10
        while not all(m["status"] == "delivered" for m in (await client.get(messages, headers=bearer(tokens))).json()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        assert await dispatcher.sweep_log() == 0  # within the retention: kept
        assert await dispatcher.sweep_log(now=datetime.now(UTC) + timedelta(days=31)) == 3
        assert (await client.get(messages, headers=bearer(tokens))).json() == []
        async with container.engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(webhook_attempts)) == 0

        await rebuild(WebhooksProjector(), engine=container.engine, store=container.store)
        assert (await client.get(messages, headers=bearer(tokens))).json() == []  # nothing to send again
        r = await client.post(f"{messages.rsplit('/', 1)[0]}/replay", json={"after": 0}, headers=bearer(tokens))
        assert r.status_code == 202  # an explicit replay still sends them again
        await asyncio.sleep(1.5)
    assert sorted(receiver.seen.values()) == [2, 2, 2]


async def test_one_tenants_slow_endpoints_cannot_take_every_slot(
    client: httpx.AsyncClient, container: Container, pipeline: Any
) -> None:
    # Three slots in all, two a tenant: without the tenant cap, acme's three slow endpoints would hold all three.
    d, stop, task = await start_dispatcher(container, concurrency=3, endpoint_concurrency=1, tenant_concurrency=2)
    try:
        _, platform = await admin(client)
        _, acme = await tenant_with_admin(client, bearer(platform), "acme", "admin@acme.example")
        slow, healthy = Receiver(answer=lambda _i, _n: Answer(delay_s=6.0)), Receiver()
        async with slow.serve() as slow_url, healthy.serve() as healthy_url:
            secrets = [
                (await register_endpoint(client, acme, f"{slow_url}/{i}", event_types=["ChatCreated"]))["secret"]
                for i in range(3)
            ]
            slow.verifiers = [Webhook(s) for s in secrets]
            good = await register_endpoint(client, platform, healthy_url, event_types=["ChatCreated"])
            healthy.verifiers = [Webhook(good["secret"])]
            await make_chats(client, acme, 2)
            await asyncio.sleep(1.0)  # acme's requests are under way
            started = time.monotonic()
            await make_chats(client, platform, 1)
            await healthy.wait_for(1, timeout=30)
            assert time.monotonic() - started < 4.0, "the other tenant waited for acme's slow endpoints"
    finally:
        stop.set()
        await task
    del d
