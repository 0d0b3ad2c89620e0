"""The quota ledger on the real Redis: reservations are atomic across every limit, settle and release are
idempotent, the sweeper frees what was never settled, and no interleaving ever pushes a counter past its
limit."""

from __future__ import annotations

import asyncio
import random
import uuid

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from adapters import redis as redis_adapter
from adapters.quota_ledger import TENANT_SCOPE, NotReady, QuotaLedger, Refused, user_model_scope, user_scope
from adapters.settings import Settings

TENANT = str(uuid.uuid4())
DAY = "2025-03-01"


def scopes(user: str, user_limit: int | None, model_limit: int | None = None, cap: int | None = None) -> list[tuple[str, int | None]]:
    return [(user_scope(user), user_limit), (user_model_scope("m", user), model_limit), (TENANT_SCOPE, cap)]


async def ready_ledger(settings: Settings) -> QuotaLedger:
    ledger = QuotaLedger(redis_adapter.connect(settings.redis_url), f"{settings.namespace}{uuid.uuid4().hex[:6]}")
    await ledger.install(TENANT, DAY, {}, [])
    return ledger


async def test_reserve_counts_on_every_scope_and_refuses_the_first_limit_that_does_not_fit(settings: Settings) -> None:
    ledger = await ready_ledger(settings)
    assert await ledger.reserve(TENANT, DAY, scopes("u", 100, 60), 50, "g1") is None
    refused = await ledger.reserve(TENANT, DAY, scopes("u", 100, 60), 20, "g2")
    assert refused == Refused(scope=user_model_scope("m", "u"), used=50, limit=60)
    for scope in (user_scope("u"), user_model_scope("m", "u"), TENANT_SCOPE):
        assert await ledger.used(TENANT, DAY, scope) == 50  # the refused one counted nowhere


async def test_reserving_twice_counts_once_and_settling_twice_bills_once(settings: Settings) -> None:
    ledger = await ready_ledger(settings)
    assert await ledger.reserve(TENANT, DAY, scopes("u", 100), 40, "g") is None
    assert await ledger.reserve(TENANT, DAY, scopes("u", 100), 40, "g") is None
    assert await ledger.used(TENANT, DAY, user_scope("u")) == 40
    assert await ledger.settle("g", 12) is True
    assert await ledger.settle("g", 12) is False
    assert await ledger.used(TENANT, DAY, user_scope("u")) == 12
    assert await ledger.used(TENANT, DAY, TENANT_SCOPE) == 12


async def test_release_frees_without_billing(settings: Settings) -> None:
    ledger = await ready_ledger(settings)
    await ledger.reserve(TENANT, DAY, scopes("u", 100), 40, "g")
    assert await ledger.release("g") is True
    assert await ledger.release("g") is False
    assert await ledger.settle("g", 30) is False  # nothing to settle: the command never saved
    assert await ledger.used(TENANT, DAY, user_scope("u")) == 0


async def test_a_reservation_never_settled_is_swept_and_a_late_finish_is_still_billed(settings: Settings) -> None:
    ledger = await ready_ledger(settings)
    await ledger.reserve(TENANT, DAY, scopes("u", 100), 90, "old", now=1000.0)
    await ledger.reserve(TENANT, DAY, scopes("u", 100), 5, "new", now=1900.0)
    assert await ledger.sweep(600, now=2000.0) == ["old"]
    assert await ledger.used(TENANT, DAY, user_scope("u")) == 5
    assert await ledger.reserve(TENANT, DAY, scopes("u", 100), 90, "next") is None  # no longer blocked
    assert await ledger.settle("old", 7) is True  # it finished after all
    assert await ledger.settle("old", 7) is False
    assert await ledger.used(TENANT, DAY, user_scope("u")) == 102


async def test_counters_not_built_refuse_to_admit(settings: Settings) -> None:
    ledger = QuotaLedger(redis_adapter.connect(settings.redis_url), settings.namespace)
    try:
        await ledger.reserve(TENANT, "2025-03-02", scopes("u", 100), 1, "g")
    except NotReady:
        return
    raise AssertionError("admitted without counters")


async def test_100_concurrent_reservations_against_a_limit_that_fits_10(settings: Settings) -> None:
    ledger = await ready_ledger(settings)
    results = await asyncio.gather(
        *(ledger.reserve(TENANT, DAY, scopes("u", 1000), 100, f"g{i}") for i in range(100))
    )
    assert sum(r is None for r in results) == 10
    assert await ledger.used(TENANT, DAY, user_scope("u")) == 1000


# --- the property -------------------------------------------------------------------------------------
op = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 2), st.integers(0, 60)),  # user, amount
    st.tuples(st.just("settle"), st.integers(0, 30), st.integers(0, 80)),  # which open one, actual
    st.tuples(st.just("release"), st.integers(0, 30), st.just(0)),
    st.tuples(st.just("crash"), st.integers(0, 30), st.just(0)),  # its worker dies: never settled
    st.tuples(st.just("sweep"), st.just(0), st.just(0)),
)


@hsettings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batches=st.lists(st.lists(op, min_size=1, max_size=12), min_size=1, max_size=8),
    user_limit=st.integers(0, 150),
    model_limit=st.one_of(st.none(), st.integers(0, 120)),
    cap=st.one_of(st.none(), st.integers(0, 250)),
    seed=st.integers(0, 2**16),
)
def test_no_interleaving_exceeds_a_limit_and_settled_counters_equal_actual_usage(
    settings: Settings, batches: list[list[tuple[str, int, int]]], user_limit: int, model_limit: int | None,
    cap: int | None, seed: int,
) -> None:
    asyncio.run(_interleave(settings, batches, user_limit, model_limit, cap, random.Random(seed)))


async def _interleave(
    settings: Settings, batches: list[list[tuple[str, int, int]]], user_limit: int, model_limit: int | None,
    cap: int | None, rng: random.Random,
) -> None:
    ledger = await ready_ledger(settings)
    users = [f"u{i}" for i in range(3)]
    open_: list[str] = []  # reserved, not settled, released or crashed
    billed: dict[str, int] = {}  # generation -> actual usage, once settled
    owner: dict[str, str] = {}
    clock = 0.0

    async def check() -> None:
        tenant_used = await ledger.used(TENANT, DAY, TENANT_SCOPE)
        if cap is not None:
            assert tenant_used <= cap
        for u in users:
            assert await ledger.used(TENANT, DAY, user_scope(u)) <= user_limit
            if model_limit is not None:
                assert await ledger.used(TENANT, DAY, user_model_scope("m", u)) <= model_limit

    amounts: dict[str, int] = {}

    async def settle(gid: str, actual: int) -> None:
        # A generation never uses more than it reserved (max_tokens caps the completion); billing more
        # than the reservation is allowed, but then no ledger could keep usage under the limit.
        actual = min(actual, amounts[gid])
        if await ledger.settle(gid, actual):
            billed[gid] = actual  # a refused or released reservation has nothing to settle

    for batch in batches:
        calls = []
        for kind, a, b in batch:
            clock += 1
            if kind == "reserve":
                gid = uuid.uuid4().hex
                owner[gid] = users[a]
                amounts[gid] = b
                open_.append(gid)
                calls.append(ledger.reserve(TENANT, DAY, scopes(users[a], user_limit, model_limit, cap), b, gid, now=clock))
            elif kind in ("settle", "release", "crash") and open_:
                gid = open_.pop(a % len(open_))
                if kind == "settle":
                    calls.append(settle(gid, b))
                elif kind == "release":
                    calls.append(ledger.release(gid))
            elif kind == "sweep":
                calls.append(ledger.sweep(5, now=clock))
        rng.shuffle(calls)  # a settle may even overtake its own reserve
        await asyncio.gather(*calls)
        await check()

    # Everything still open finishes; the crashed ones (and any overtaken) are swept.
    for gid in open_:
        await settle(gid, rng.randint(0, 80))
    await ledger.sweep(0, now=clock + 10**6)
    assert await ledger.stale(0, now=clock + 10**6) == []
    assert await ledger.used(TENANT, DAY, TENANT_SCOPE) == sum(billed.values())
    for u in users:
        expected = sum(v for g, v in billed.items() if owner[g] == u)
        assert await ledger.used(TENANT, DAY, user_scope(u)) == expected
        assert await ledger.used(TENANT, DAY, user_model_scope("m", u)) == expected


async def test_an_open_size_reservation_takes_what_every_limit_leaves_down_to_its_minimum(settings: Settings) -> None:
    ledger = await ready_ledger(settings)
    assert await ledger.reserve(TENANT, DAY, scopes("u", 100, cap=1000), 70, "before") is None
    # 8,192 asked, at least 16: the user limit leaves 30, so 30 it is, counted on every scope.
    assert await ledger.reserve_up_to(TENANT, DAY, scopes("u", 100, cap=1000), 8192, "open", minimum=16) == 30
    for scope in (user_scope("u"), TENANT_SCOPE):
        assert await ledger.used(TENANT, DAY, scope) == 100
    # Asked again (a retried command): what the first reserved, counted once.
    assert await ledger.reserve_up_to(TENANT, DAY, scopes("u", 100, cap=1000), 8192, "open", minimum=16) == 30
    assert await ledger.used(TENANT, DAY, user_scope("u")) == 100
    # Nothing left: below the minimum is refused, and counts nowhere.
    refused = await ledger.reserve_up_to(TENANT, DAY, scopes("u", 100, cap=1000), 8192, "next", minimum=16)
    assert refused == Refused(scope=user_scope("u"), used=100, limit=100)
    # Unlimited scopes never bound it: another user gets all they asked for, up to the tenant cap.
    assert await ledger.reserve_up_to(TENANT, DAY, scopes("v", None, cap=1000), 8192, "other", minimum=16) == 900
