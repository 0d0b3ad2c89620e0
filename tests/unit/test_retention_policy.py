"""The retention policy's rules, without I/O: periods, legal holds, which chats are due, how far the audit
chain may be cut, and what the events carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import msgspec
import pytest

from domain.errors import Conflict, Invalid, NotFound
from domain.retention import MAX_DAYS, RetentionPolicy, audit_drop_end, retention_policy_id_for
from schema.contract import decode_data

NOW = datetime(2030, 6, 1, tzinfo=UTC)


def test_one_policy_per_tenant_that_keeps_everything_until_set() -> None:
    policy = RetentionPolicy(tenant_id="t1")
    assert policy.id == retention_policy_id_for("t1") != retention_policy_id_for("t2")
    assert policy.chat_cutoff(NOW) is None and policy.audit_cutoff(NOW) is None
    assert not policy.may_delete_chat(uuid4(), NOW - timedelta(days=10_000), NOW)


def test_periods_are_whole_days_from_1_to_36500_or_null() -> None:
    policy = RetentionPolicy(tenant_id="t")
    policy.set_periods(chat_days=30, audit_days=MAX_DAYS)
    assert (policy.chat_days, policy.audit_days) == (30, MAX_DAYS)
    assert policy.chat_cutoff(NOW) == NOW - timedelta(days=30)
    for bad in (0, -1, MAX_DAYS + 1, True, 1.5, "30"):
        with pytest.raises(Invalid) as wrong:
            policy.set_periods(chat_days=bad, audit_days=None)  # type: ignore[arg-type]
        assert wrong.value.code == "INVALID_RETENTION_DAYS" and wrong.value.detail == {"field": "chat_days"}
    with pytest.raises(Invalid):
        policy.set_periods(chat_days=None, audit_days=0)
    policy.set_periods(chat_days=None, audit_days=None)
    assert policy.chat_cutoff(NOW) is None


def test_setting_the_same_periods_again_records_nothing() -> None:
    policy = RetentionPolicy(tenant_id="t")
    policy.set_periods(chat_days=7, audit_days=None)
    before = policy.version
    policy.set_periods(chat_days=7, audit_days=None)
    assert policy.version == before


def test_a_chat_is_due_once_its_last_activity_is_older_than_the_period() -> None:
    policy = RetentionPolicy(tenant_id="t")
    policy.set_periods(chat_days=30, audit_days=None)
    owner = uuid4()
    assert policy.may_delete_chat(owner, NOW - timedelta(days=31), NOW)
    assert not policy.may_delete_chat(owner, NOW - timedelta(days=29), NOW)


def test_a_hold_on_a_user_keeps_their_chats_and_only_theirs() -> None:
    policy = RetentionPolicy(tenant_id="t")
    policy.set_periods(chat_days=1, audit_days=1)
    held, other = uuid4(), uuid4()
    hold_id = policy.place_hold(user_id=held, reason="Matter 2030-17")
    old = NOW - timedelta(days=400)
    assert not policy.may_delete_chat(held, old, NOW)
    assert policy.may_delete_chat(other, old, NOW)
    assert policy.held_users == {str(held)} and not policy.tenant_held
    assert policy.audit_cutoff(NOW) is not None  # the audit drop stops before the user's rows instead
    policy.lift_hold(hold_id)
    assert policy.may_delete_chat(held, old, NOW)


def test_a_hold_on_the_tenant_suspends_chat_deletion_and_audit_dropping() -> None:
    policy = RetentionPolicy(tenant_id="t")
    policy.set_periods(chat_days=1, audit_days=1)
    hold_id = policy.place_hold(user_id=None, reason="Litigation hold")
    assert policy.tenant_held
    assert policy.chat_cutoff(NOW) is None and policy.audit_cutoff(NOW) is None
    assert not policy.may_delete_chat(uuid4(), NOW - timedelta(days=400), NOW)
    with pytest.raises(Conflict) as held:
        policy.record_audit_drop(up_to_seq=5, count=5, checkpoint_seq=5, checkpoint_sha256="a" * 64)
    assert held.value.code == "LEGAL_HOLD"
    policy.lift_hold(hold_id)
    assert policy.chat_cutoff(NOW) == NOW - timedelta(days=1)


def test_holds_stack_each_lifted_by_its_own_id() -> None:
    policy = RetentionPolicy(tenant_id="t")
    user = uuid4()
    first = policy.place_hold(user_id=user, reason="Matter A")
    second = policy.place_hold(user_id=user, reason="Matter B")
    policy.lift_hold(first)
    assert policy.held_users == {str(user)}  # the other matter still holds them
    policy.lift_hold(second)
    assert policy.held_users == frozenset()
    with pytest.raises(NotFound) as missing:
        policy.lift_hold(second)
    assert missing.value.code == "HOLD_NOT_FOUND"


def test_a_hold_states_its_reason() -> None:
    policy = RetentionPolicy(tenant_id="t")
    for bad in ("", "   ", "x" * 501, "line\nbreak"):
        with pytest.raises(Invalid) as wrong:
            policy.place_hold(user_id=None, reason=bad)
        assert wrong.value.code == "INVALID_HOLD_REASON"
    hold_id = policy.place_hold(user_id=None, reason="  Matter 7  ")
    assert policy.holds[hold_id] == {"user_id": None, "reason": "Matter 7"}


@pytest.mark.parametrize(
    ("first", "head", "recent", "held", "end"),
    [
        (1, 10, None, None, 9),  # everything is old: all but the head
        (1, 10, 6, None, 5),  # rows from 6 on are recent
        (1, 10, 6, 3, 2),  # a held user's row at 3 stops the drop before it
        (1, 10, 1, None, None),  # nothing old
        (1, 10, None, 1, None),  # the first row is about a held user
        (5, 10, None, None, 9),  # rows up to 4 were dropped before
        (5, 10, 5, None, None),
        (10, 10, None, None, None),  # only the head is left
        (None, 10, None, None, None),  # no rows
    ],
)
def test_the_audit_drop_is_a_prefix_of_the_chain_and_never_the_head(
    first: int | None, head: int, recent: int | None, held: int | None, end: int | None
) -> None:
    assert audit_drop_end(first_seq=first, head_seq=head, first_recent_seq=recent, first_held_seq=held) == end


def test_an_audit_drop_only_moves_forward_and_names_its_checkpoint() -> None:
    policy = RetentionPolicy(tenant_id="t")
    assert policy.record_audit_drop(up_to_seq=5, count=5, checkpoint_seq=5, checkpoint_sha256="a" * 64)
    assert policy.audit_dropped_up_to == 5
    assert not policy.record_audit_drop(up_to_seq=5, count=0, checkpoint_seq=5, checkpoint_sha256="a" * 64)
    assert not policy.record_audit_drop(up_to_seq=3, count=0, checkpoint_seq=3, checkpoint_sha256="b" * 64)
    with pytest.raises(Invalid):
        policy.record_audit_drop(up_to_seq=9, count=4, checkpoint_seq=2, checkpoint_sha256="c" * 64)
    assert policy.record_audit_drop(up_to_seq=9, count=4, checkpoint_seq=9, checkpoint_sha256="c" * 64)
    assert policy.audit_dropped_up_to == 9


def test_the_events_fit_the_contract() -> None:
    policy = RetentionPolicy(tenant_id="t")
    policy.set_periods(chat_days=30, audit_days=365)
    user = uuid4()
    hold_id = policy.place_hold(user_id=user, reason="Matter 1")
    policy.lift_hold(hold_id)
    policy.record_audit_drop(up_to_seq=4, count=4, checkpoint_seq=4, checkpoint_sha256="d" * 64)
    events = policy.collect_events()
    assert [type(e).__name__ for e in events] == [
        "RetentionPolicyCreated", "RetentionPeriodsSet", "LegalHoldPlaced", "LegalHoldLifted", "AuditRowsDropped",
    ]  # fmt: skip
    skip = {"originator_id", "originator_version", "timestamp", "originator_topic"}
    for event in events:
        data = msgspec.to_builtins({k: v for k, v in vars(event).items() if k not in skip})
        decoded = decode_data(type(event).__name__, data)
        assert {k: v for k, v in msgspec.to_builtins(decoded).items() if k != "type"} == data
    assert vars(events[2])["user_id"] == str(user) and vars(events[3])["hold_id"] == hold_id
    assert vars(events[4])["tenant_id"] == "t"
