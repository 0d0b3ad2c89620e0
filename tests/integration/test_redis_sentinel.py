"""Redis under Sentinel (the embedded trio: a master, a replica, three sentinels, real processes): the master
is killed -9 while reservations run, after writes that never reached the replica. parley's client finds the
new master by itself; the quota counters the failover rolled back are rebuilt from the event store before
anything more is admitted, so no limit is overshot; and the revocations the failover lost stay in force,
since token versions and ended sessions are kept per epoch and refilled from the event store."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from adapters.embedded_sentinel import EmbeddedSentinel
from adapters.quota_ledger import user_scope
from adapters.redis import connect, epoch
from adapters.settings import Settings
from application.context import CommandContext
from application.conversations import LOCAL_MODEL
from application.identity import Principal
from domain.errors import RateLimited, Unauthenticated
from domain.quotas import day_of
from tests.conftest import FAST_PASSWORDS
from workers.bootstrap import Container, bootstrap

pytestmark = pytest.mark.timeout(120)

PARAMS = {"max_tokens": 100}
CONTENT = "x" * 30  # reserves 30 // 3 + 100 = 110 tokens
AMOUNT = 110
LIMIT_SENDS = 40
"""The daily limit, in sends: 10 are admitted before the replica is cut off, 10 after, then the rest while
the master is killed."""
SENDERS = 8
PASSWORD = "correct horse 9"
PROGRESS_BOUND_S = 15.0


@pytest.fixture(scope="module")
def trio() -> Iterator[EmbeddedSentinel]:
    home = Path(tempfile.mkdtemp(prefix="parley-sentinel-", dir="/tmp"))
    with EmbeddedSentinel(home) as started:
        started.start()
        yield started
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def ha(settings: Settings, trio: EmbeddedSentinel) -> AsyncIterator[Container]:
    """The composition root on Redis found through the sentinels, as PARLEY_REDIS_SENTINELS makes it."""
    c = await bootstrap(msgspec.structs.replace(settings, redis_url=trio.url), passwords=FAST_PASSWORDS)
    tenant = await c.identity.ensure_tenant(settings.default_tenant, "Default")
    await c.models.ensure_local(str(tenant.id))
    yield c
    await c.close()


async def test_through_sentinel_a_burst_larger_than_the_pool_waits_instead_of_failing(trio: EmbeddedSentinel) -> None:
    client = connect(trio.url, max_connections=4)
    try:
        results = await asyncio.gather(*(client.blpop([f"none:{i}"], timeout=0.2) for i in range(12)))
        assert results == [None] * 12
        assert (await client.connection_pool.get_master_address())[1] == trio.master_port()
    finally:
        await client.aclose()


async def test_master_killed_mid_reservations_overshoots_no_limit_and_loses_no_revocation(
    ha: Container, trio: EmbeddedSentinel
) -> None:
    c, ns = ha, ha.settings.namespace
    tenant_id = str((await c.identity.tenant(c.settings.default_tenant)).id)
    ctx = CommandContext(tenant_id=tenant_id, actor="anonymous")
    admin = Principal(tenant_id=tenant_id, user_id=uuid.uuid4(), role="admin", via="token")
    await c.quotas.set_role_limit(ctx, admin, "user", LIMIT_SENDS * AMOUNT)
    spender = Principal(tenant_id=tenant_id, user_id=uuid.uuid4(), role="user", via="token")

    async def send() -> None:
        """One message in a new chat: every send reserves the same ``AMOUNT`` (no history in its prompt)."""
        chat = await c.chats.create(ctx, spender)
        await c.chats.send_message(ctx, spender, chat.id, content=CONTENT, model=LOCAL_MODEL, params=PARAMS)

    # Two users signed in; every token checked once, so the versions are cached in this epoch.
    tokens = {}
    for name in ("owner", "ann", "bob"):
        await c.identity.register(ctx, tenant=tenant_id, email=f"{name}@example.com", password=PASSWORD, name=name)
    for key, name in (("laptop", "ann"), ("phone", "ann"), ("bob", "bob")):
        pair = await c.identity.login(ctx, tenant=tenant_id, email=f"{name}@example.com", password=PASSWORD)
        tokens[key] = pair.access_token
    principals = {key: await c.identity.authenticate(ctx, token) for key, token in tokens.items()}

    await asyncio.gather(*(send() for _ in range(10)))
    old_epoch = await epoch(c.redis)
    assert await c.redis.execute_command("WAIT", 1, 5000) == 1  # all of the above is on the replica

    # From here on the master accepts what the replica will never have.
    await asyncio.to_thread(trio.detach_replicas)
    await c.identity.logout(ctx, principals["laptop"])  # ends one session of Ann's
    await c.identity.logout(ctx, principals["bob"], everywhere=True)  # raises Bob's token version
    await asyncio.gather(*(send() for _ in range(10)))
    await c.redis.set(f"{ns}:probe", "written before the failover")

    # Senders keep going until the limit refuses them; the master dies under them.
    outcomes: list[tuple[float, float]] = []
    errors: list[str] = []
    refused = 0
    mid_way = asyncio.Event()

    async def keep_sending() -> None:
        nonlocal refused
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                await send()
            except RateLimited as exc:
                assert exc.code == "QUOTA_EXCEEDED"
                refused += 1
                return
            except Exception as exc:  # noqa: BLE001 - counted: a request that failed outright
                errors.append(type(exc).__name__)
                continue
            outcomes.append((started, time.monotonic()))
            if len(outcomes) == 3:
                mid_way.set()

    senders = [asyncio.create_task(keep_sending()) for _ in range(SENDERS)]
    await asyncio.wait_for(mid_way.wait(), 10)
    killed = await asyncio.to_thread(trio.kill_master)
    killed_at = time.monotonic()
    promoted = asyncio.create_task(asyncio.to_thread(trio.wait_for_new_master, killed.port))
    await asyncio.gather(*senders)
    new_master = await promoted

    # The failover did lose the last writes.
    assert new_master.port != killed.port
    assert await c.redis.get(f"{ns}:probe") is None

    # No overshoot: what the event store says was admitted fits the limit, and the counters say the same.
    admitted = await reserved_by(c, spender.user_id)
    assert admitted <= LIMIT_SENDS * AMOUNT, f"{admitted} tokens admitted on a limit of {LIMIT_SENDS * AMOUNT}"
    assert admitted == (20 + len(outcomes)) * AMOUNT  # no send that failed left a reservation behind
    assert refused == SENDERS
    with pytest.raises(RateLimited):
        await send()
    policy = await c.store.call(c.quotas.policy, tenant_id)
    day = day_of(c.quotas.clock(), policy.timezone).isoformat()
    assert await c.quotas.ledger.used(tenant_id, day, user_scope(str(spender.user_id))) == admitted

    assert not errors, f"sends failed outright during the failover: {errors}"  # they waited for the new master
    # Progress: the first send begun after the kill that was admitted.
    after = sorted(done - killed_at for started, done in outcomes if started >= killed_at)
    assert after, "no send was admitted after the master was killed"
    print(
        f"\nRedis master killed: sends admitted again after {after[0]:.2f} s; {admitted // AMOUNT} sends "
        f"admitted of {LIMIT_SENDS}; {len(errors)} failed outright {sorted(set(errors))}"
    )
    assert after[0] < PROGRESS_BOUND_S

    # The revocations the failover lost are in force; the session nobody ended still works.
    for key in ("laptop", "bob"):
        with pytest.raises(Unauthenticated) as caught:
            await c.identity.authenticate(ctx, tokens[key])
        assert caught.value.code == "TOKEN_REVOKED", key
    assert (await c.identity.authenticate(ctx, tokens["phone"])).user_id == principals["phone"].user_id
    # ... though what the new master holds from the old epoch, now another, is the state before them.
    assert await epoch(c.redis) != old_epoch
    bob_id, laptop_session = principals["bob"].user_id, principals["laptop"].session_id
    assert await c.redis.get(f"{ns}:tokver:{old_epoch}:{bob_id}") == "1"
    assert not await c.redis.exists(f"{ns}:ended:{old_epoch}:{laptop_session}")


async def reserved_by(c: Container, user_id: uuid.UUID) -> int:
    """The tokens reserved for the user's generations, as the event store has them (the durable truth)."""
    total, cursor = 0, 1
    while page := await c.store.call(c.store.read, cursor, 1000):
        for e in page:
            if e.type == "GenerationRequested" and str(e.data.get("user_id")) == str(user_id):
                total += int(e.data["reserved_tokens"])
        cursor = page[-1].id + 1
    return total
