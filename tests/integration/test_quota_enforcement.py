"""Quotas enforced by the chats service on the real event store, Redis and Postgres: a refused request
writes no event, concurrent requests never overshoot, counters survive a Redis flush, the sweeper frees
what never finished, days roll over in the tenant's time zone, and the policy's rules apply."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from adapters.quota_ledger import user_scope
from application.context import CommandContext
from application.conversations import LOCAL_MODEL, Outcome, Sent
from application.identity import Principal
from domain.errors import Forbidden, Invalid, NotFound, RateLimited
from domain.quotas import day_of
from workers.bootstrap import Container

PARAMS = {"max_tokens": 100}
CONTENT = "x" * 30  # reserves 30 // 3 + 100 = 110 tokens
AMOUNT = 110
STORE_THREADS = 20  # the event store's executor: pool_size + max_overflow (adapters/eventstore.py)


async def tenant_of(c: Container) -> str:
    tenant = await c.identity.ensure_tenant(c.settings.default_tenant, "Default")
    return str(tenant.id)


def person(tenant_id: str, role: str = "user") -> Principal:
    return Principal(tenant_id=tenant_id, user_id=uuid.uuid4(), role=role, via="token")


def ctx_of(p: Principal) -> CommandContext:
    return CommandContext(tenant_id=p.tenant_id, actor=p.actor)


async def send(c: Container, p: Principal, chat_id: uuid.UUID | None = None, model: str = LOCAL_MODEL) -> Sent:
    if chat_id is None:
        chat_id = (await c.chats.create(ctx_of(p), p)).id
    return await c.chats.send_message(ctx_of(p), p, chat_id, content=CONTENT, model=model, params=PARAMS)


async def used(c: Container, p: Principal) -> int:
    policy = await c.store.call(c.quotas.policy, p.tenant_id)
    day = day_of(c.quotas.clock(), policy.timezone).isoformat()
    return await c.quotas.ledger.used(p.tenant_id, day, user_scope(str(p.user_id)))


async def refused(c: Container, p: Principal, **kw: Any) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await send(c, p, **kw)
    assert caught.value.code == "QUOTA_EXCEEDED"
    return caught.value


# --- enforcement --------------------------------------------------------------------------------------
async def test_quota_rejects_message_when_day_is_spent_and_writes_no_event(container: Container) -> None:
    c = container
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    await c.quotas.set_role_limit(ctx_of(admin), admin, "user", 2 * AMOUNT + 5)
    alice = person(tenant)
    await send(c, alice)
    await send(c, alice)
    chat = (await c.chats.create(ctx_of(alice), alice)).id
    before = await c.store.call(c.store.max_id)
    error = await refused(c, alice, chat_id=chat)
    assert error.detail["scope"] == "user" and error.detail["limit"] == 2 * AMOUNT + 5
    assert error.detail["used"] == 2 * AMOUNT and error.detail["reset_at"]
    assert await c.store.call(c.store.max_id) == before
    assert await used(c, alice) == 2 * AMOUNT


async def test_100_concurrent_requests_from_one_user_admit_exactly_the_10_that_fit(container: Container) -> None:
    c = container
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    bob = person(tenant)
    first = await send(c, bob)
    await c.quotas.set_role_limit(ctx_of(admin), admin, "user", 11 * AMOUNT)

    async def regenerate() -> bool:
        try:
            await c.chats.regenerate(ctx_of(bob), bob, first.chat_id, first.message_id, model=LOCAL_MODEL, params=PARAMS)
            return True
        except RateLimited:
            return False

    results = await asyncio.gather(*(regenerate() for _ in range(100)))
    assert sum(results) == 10
    assert await used(c, bob) == 11 * AMOUNT


async def test_more_concurrent_first_sends_than_store_threads_all_go_through(container: Container) -> None:
    # Each send reserves from a store thread and waits for the reservation on the event loop; the first of
    # the day also rebuilds the counters and reads the policy. With every store thread so waiting, a
    # rebuild that needed one deadlocked every request (32 concurrent first sends timed out).
    c = container
    tenant = await tenant_of(c)
    people = [person(tenant) for _ in range(3 * STORE_THREADS)]
    chats = [(await c.chats.create(ctx_of(p), p)).id for p in people]
    keys = [k async for k in c.redis.scan_iter(match=f"{c.settings.namespace}:*")]
    if keys:
        await c.redis.delete(*keys)  # counters not ready: the first reservation rebuilds them
    c.quotas.policies.forget(tenant)  # and the policy is not cached
    sent = await asyncio.wait_for(
        asyncio.gather(*(send(c, p, chat_id) for p, chat_id in zip(people, chats, strict=True))), timeout=60
    )
    assert len({s.generation_id for s in sent}) == len(people)


async def test_counters_are_rebuilt_after_redis_is_flushed_and_still_refuse_overshoot(container: Container) -> None:
    c = container
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    await c.quotas.set_role_limit(ctx_of(admin), admin, "user", 3 * AMOUNT)
    carol = person(tenant)
    sent = [await send(c, carol) for _ in range(2)]
    outcome = Outcome(status="completed", text="hi", prompt_tokens=10, completion_tokens=20, attempt=1)
    await c.generations.finish(ctx_of(carol), sent[0].generation_id, outcome)
    assert await c.quotas.settle(sent[0].generation_id, 30)
    assert await used(c, carol) == 30 + AMOUNT

    keys = [k async for k in c.redis.scan_iter(match=f"{c.settings.namespace}:*")]
    await c.redis.delete(*keys)  # this deployment's Redis state is gone (restart, failover)

    await send(c, carol)  # rebuilt first: 30 actual + 110 open + 110 = 250 of 330
    assert await used(c, carol) == 30 + 2 * AMOUNT
    await refused(c, carol)
    # The open reservation was recreated: settling it bills the actual usage, once.
    assert await c.quotas.settle(sent[1].generation_id, 5)
    assert await used(c, carol) == 30 + 5 + AMOUNT


async def test_the_sweeper_releases_what_never_finished_and_settles_what_did(container: Container) -> None:
    c = container
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    await c.quotas.set_role_limit(ctx_of(admin), admin, "user", 2 * AMOUNT)
    dave = person(tenant)
    lost = await send(c, dave)  # its job is lost: never finishes
    died = await send(c, dave)  # its worker died after recording the outcome, before settling
    outcome = Outcome(status="cancelled", text="par", prompt_tokens=10, completion_tokens=3, attempt=1)
    await c.generations.finish(ctx_of(dave), died.generation_id, outcome)
    await refused(c, dave)

    assert await c.quotas.sweep(600, now=time.time()) == 0  # nothing old enough yet
    assert await c.quotas.sweep(600, now=time.time() + 601) == 2
    assert await used(c, dave) == 13  # the cancelled one billed for what it generated
    await send(c, dave)
    # The lost one finishes after all: billed then, to the day it was reserved on.
    await c.generations.finish(ctx_of(dave), lost.generation_id, outcome)
    assert await c.quotas.settle_finished(lost.generation_id)
    assert await used(c, dave) == 13 + AMOUNT + 13


async def test_days_roll_over_at_midnight_in_the_tenant_time_zone(container: Container) -> None:
    c = container
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    await c.quotas.set_timezone(ctx_of(admin), admin, "Asia/Tokyo")
    await c.quotas.set_role_limit(ctx_of(admin), admin, "user", AMOUNT)
    erin = person(tenant)
    c.quotas.clock = lambda: datetime(2031, 5, 1, 14, 59, tzinfo=UTC)  # 23:59 in Tokyo
    await send(c, erin)
    error = await refused(c, erin)
    assert error.detail["reset_at"] == "2031-05-02T00:00:00+09:00"
    c.quotas.clock = lambda: datetime(2031, 5, 1, 15, 1, tzinfo=UTC)  # 00:01 the next day in Tokyo (UTC: same day)
    await send(c, erin)
    await refused(c, erin)


async def test_a_role_change_applies_to_the_next_request(container: Container) -> None:
    c = container
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    await c.quotas.set_role_limit(ctx_of(admin), admin, "user", AMOUNT)
    await c.quotas.set_role_limit(ctx_of(admin), admin, "premium", 3 * AMOUNT)
    frank = person(tenant)
    await send(c, frank)
    await refused(c, frank)
    promoted = Principal(tenant_id=tenant, user_id=frank.user_id, role="premium", via="token")  # new token
    await send(c, promoted)
    await send(c, promoted)
    await refused(c, promoted)


async def test_a_per_model_limit_applies_on_top_of_the_user_limit(container: Container) -> None:
    c = container
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    await c.models.register_provider(ctx_of(admin), admin, name="echoes", kind="echo")
    await c.models.register_model(ctx_of(admin), admin, name="echo", provider="echoes", upstream_model="echo")
    await c.quotas.set_model_limit(ctx_of(admin), admin, LOCAL_MODEL, AMOUNT)
    grace = person(tenant)
    await send(c, grace)
    error = await refused(c, grace)
    assert error.detail["scope"] == f"user_model:{LOCAL_MODEL}"
    await send(c, grace, model="echo")  # other models are only under the user's daily limit


async def test_the_tenant_cap_applies_to_all_users_together(container: Container) -> None:
    c = container
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    await c.quotas.set_tenant_cap(ctx_of(admin), admin, 2 * AMOUNT)
    await send(c, person(tenant))
    await send(c, person(tenant))
    error = await refused(c, person(tenant))
    assert error.detail["scope"] == "tenant"


# --- the policy's admin commands ----------------------------------------------------------------------
async def test_policy_changes_are_admin_only_and_checked(container: Container) -> None:
    c = container
    tenant = await tenant_of(c)
    admin, user = person(tenant, "admin"), person(tenant)
    with pytest.raises(Forbidden):
        await c.quotas.set_role_limit(ctx_of(user), user, "user", 10)
    for bad in (-1, 10**13, True):
        with pytest.raises(Invalid):
            await c.quotas.set_role_limit(ctx_of(admin), admin, "user", bad)  # type: ignore[arg-type]
    with pytest.raises(Invalid):
        await c.quotas.set_role_limit(ctx_of(admin), admin, "wizard", 10)
    with pytest.raises(NotFound):
        await c.quotas.set_user_limit(ctx_of(admin), admin, uuid.uuid4(), 10)
    with pytest.raises(NotFound):
        await c.quotas.set_model_limit(ctx_of(admin), admin, "no-such-model", 10)
    with pytest.raises(Invalid):
        await c.quotas.set_timezone(ctx_of(admin), admin, "Mars/Olympus")
    policy = await c.quotas.set_role_limit(ctx_of(admin), admin, "user", 10)
    assert policy.role_limits["user"] == 10
    events = await c.store.call(c.store.events_of, policy.id)
    assert [type(e).__name__ for e in events] == ["QuotaPolicyCreated", "RoleQuotaSet"]
    assert events[-1].meta["actor"] == admin.actor  # audited: who changed it


async def test_a_user_override_beats_the_role_default(container: Container, client: httpx.AsyncClient) -> None:
    from tests.e2e.test_chat_api import bearer, sign_up

    c = container
    await sign_up(client, "boss@example.com")  # the first user is the admin
    worker = await sign_up(client, "worker@example.com")
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    await c.quotas.set_role_limit(ctx_of(admin), admin, "user", 0)
    await c.quotas.set_user_limit(ctx_of(admin), admin, uuid.UUID(worker["id"]), AMOUNT)
    r = await client.post("/api/v1/chats", json={"title": "t"}, headers=bearer(worker))
    chat_id = r.json()["id"]
    body = {"content": CONTENT, "model": LOCAL_MODEL, "params": PARAMS}
    r = await client.post(f"/api/v1/chats/{chat_id}/messages", json=body, headers=bearer(worker))
    assert r.status_code == 202, r.text


# --- through HTTP -------------------------------------------------------------------------------------
async def test_send_message_over_quota_answers_429_with_the_reset_time(container: Container, client: httpx.AsyncClient) -> None:
    from tests.e2e.test_chat_api import bearer, sign_up

    c = container
    await sign_up(client, "admin@example.com")
    user = await sign_up(client, "user@example.com")
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    await c.quotas.set_role_limit(ctx_of(admin), admin, "user", AMOUNT)
    r = await client.post("/api/v1/chats", json={"title": "t"}, headers=bearer(user))
    chat_id = r.json()["id"]
    body = {"content": CONTENT, "model": LOCAL_MODEL, "params": PARAMS}
    r = await client.post(f"/api/v1/chats/{chat_id}/messages", json=body, headers=bearer(user))
    assert r.status_code == 202, r.text
    before = await c.store.call(c.store.max_id)
    r = await client.post(f"/api/v1/chats/{chat_id}/messages", json=body, headers=bearer(user))
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "QUOTA_EXCEEDED"
    assert error["detail"]["scope"] == "user" and error["detail"]["limit"] == AMOUNT
    assert datetime.fromisoformat(error["detail"]["reset_at"]) > datetime.now(UTC)
    assert await c.store.call(c.store.max_id) == before


# --- the worker settles ---------------------------------------------------------------------------------
async def test_the_worker_settles_the_reservation_with_the_actual_usage(container: Container, pipeline: Any) -> None:
    from domain.chats import Generation

    c = container
    tenant = await tenant_of(c)
    admin = person(tenant, "admin")
    await c.models.register_provider(ctx_of(admin), admin, name="echoes", kind="echo")
    await c.models.register_model(ctx_of(admin), admin, name="echo", provider="echoes", upstream_model="echo")
    henry = person(tenant)
    sent = await send(c, henry, model="echo")
    assert await used(c, henry) == AMOUNT
    for _ in range(200):
        g = await c.store.call(c.store.find, Generation, sent.generation_id)
        if g is not None and g.finished and await c.quotas.ledger.reservation(str(sent.generation_id)) is None:
            break
        await asyncio.sleep(0.05)
    assert g is not None and g.finished
    assert await c.quotas.ledger.reservation(str(sent.generation_id)) is None
    assert await used(c, henry) == g.prompt_tokens + g.completion_tokens
