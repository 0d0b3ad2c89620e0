"""The audit row and its hash, without I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.audit import (
    GENESIS_HASH,
    HASHED_FIELDS,
    PLATFORM_TENANT,
    audit_row,
    canonical_json,
    redact,
    row_hash,
)
from schema.events import EventEnvelope
from schema.tables import audit_log


def envelope(**overrides: object) -> EventEnvelope:
    fields: dict[str, object] = {
        "id": 7,
        "event_id": uuid4(),
        "type": "UserRenamed",
        "aggregate_type": "User",
        "aggregate_id": uuid4(),
        "aggregate_version": 2,
        "occurred_at": datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC),
        "tenant_id": "t-1",
        "actor": "user:abc",
        "correlation_id": "corr-1",
        "ip": "203.0.113.7",
        "user_agent": "pytest",
        "data": {"name": "Ada"},
    }
    return EventEnvelope(**{**fields, **overrides})  # type: ignore[arg-type]


def test_hash_covers_every_column_but_itself() -> None:
    # ``via`` is hashed where it is set (see the test below), so rows from before it keep their hashes.
    assert set(HASHED_FIELDS) | {"via"} == {c.name for c in audit_log.columns} - {"hash"}


def test_a_gateway_row_names_the_key_and_its_hash_covers_it() -> None:
    plain = audit_row(envelope(), seq=1, prev_hash=GENESIS_HASH)
    assert plain["via"] is None
    event = envelope(via="apikey:k-1")
    row = audit_row(event, seq=1, prev_hash=GENESIS_HASH)
    assert (row["actor"], row["via"]) == ("user:abc", "apikey:k-1")
    assert row["hash"] == row_hash(row)
    assert row_hash({**row, "via": "apikey:k-2"}) != row["hash"]
    # Without ``via`` the row hashes exactly as rows did before the column existed.
    assert row_hash({k: v for k, v in plain.items() if k != "via"}) == plain["hash"]


def test_first_row_of_a_tenant_links_to_the_genesis_hash() -> None:
    row = audit_row(envelope(), seq=1, prev_hash=GENESIS_HASH)
    assert row["prev_hash"] == "0" * 64
    assert row["hash"] == row_hash(row)
    assert len(row["hash"]) == 64


def test_row_records_who_did_what_to_which_target() -> None:
    event = envelope()
    row = audit_row(event, seq=3, prev_hash="a" * 64)
    assert (row["actor"], row["action"], row["target_type"], row["target_id"]) == (
        "user:abc",
        "UserRenamed",
        "User",
        str(event.aggregate_id),
    )
    assert (row["ip"], row["user_agent"], row["notification_id"]) == ("203.0.113.7", "pytest", 7)


def test_events_without_a_tenant_are_chained_under_platform() -> None:
    assert audit_row(envelope(tenant_id=""), seq=1, prev_hash=GENESIS_HASH)["tenant_id"] == PLATFORM_TENANT


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("actor", "user:someone-else"),
        ("ip", "198.51.100.1"),
        ("detail", {"name": "Eve"}),
        ("seq", 4),
        ("occurred_at", datetime(2025, 3, 1, 12, 30, 16, tzinfo=UTC)),
        ("prev_hash", "b" * 64),
    ],
)
def test_changing_any_field_changes_the_hash(field: str, value: object) -> None:
    row = audit_row(envelope(), seq=3, prev_hash="a" * 64)
    assert row_hash({**row, field: value}) != row["hash"]


def test_hash_is_the_same_for_the_same_instant_in_another_time_zone() -> None:
    row = audit_row(envelope(), seq=1, prev_hash=GENESIS_HASH)
    elsewhere = row["occurred_at"].astimezone(timezone(timedelta(hours=-5)))
    assert row_hash({**row, "occurred_at": elsewhere}) == row["hash"]


def test_hash_survives_jsonb_turning_integral_floats_into_integers() -> None:
    row = audit_row(envelope(data={"big": 1e20, "one": 1.0, "half": 0.5}), seq=1, prev_hash=GENESIS_HASH)
    as_read_back = {**row, "detail": {"big": 10**20, "one": 1, "half": 0.5}}
    assert row_hash(as_read_back) == row["hash"]


def test_secrets_are_left_out_of_the_detail() -> None:
    detail = redact(
        {
            "password": "x",
            "new_password_hash": "x",
            "client_secret": "x",
            "refresh_token": "x",
            "accessToken": "x",
            "token_kind": "refresh",
            "prompt_tokens": 12,
            "email": "ada@example.com",
            "nested": [{"key_hash": "x", "name": "n"}],
        }
    )
    assert detail == {
        "token_kind": "refresh",
        "prompt_tokens": 12,
        "email": "ada@example.com",
        "nested": [{"name": "n"}],
    }


def test_text_postgres_cannot_store_is_replaced_not_fatal() -> None:
    row = audit_row(
        envelope(
            user_agent="bad\x00agent", data={"v": float("nan"), "s": "a\x00b"}, correlation_id="c" * 200
        ),
        seq=1,
        prev_hash=GENESIS_HASH,
    )
    assert "\x00" not in row["user_agent"]
    assert row["detail"] == {"v": "nan", "s": "a\ufffdb"}
    assert len(row["correlation_id"]) == 64


_JSON_LEAVES = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63) | st.text(max_size=12)
)
_JSON_VALUES = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=6))
@settings(max_examples=400, deadline=None)
def test_the_fast_canonical_json_is_the_stdlib_one_byte_for_byte(content: dict[str, object]) -> None:
    # msgspec writes the text where it can; any escape, non-ASCII text or DEL falls back to the stdlib.
    assert canonical_json(content) == json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)


@given(_JSON_VALUES | st.floats(allow_nan=True, allow_infinity=True) | st.lists(st.floats(), max_size=3))
@settings(max_examples=300, deadline=None)
def test_a_row_hashes_the_same_whichever_way_its_detail_took(detail: object) -> None:
    # audit_row hashes its own (redacted) detail without walking it again; verification reads the row back
    # and walks it: both must give one hash, integral floats being integers in both.
    row = audit_row(envelope(data={"value": detail, "score": 2.0}), seq=1, prev_hash=GENESIS_HASH)
    assert row["detail"]["score"] == 2 and type(row["detail"]["score"]) is int
    assert row["hash"] == row_hash(row)
    assert row["hash"] == row_hash(json.loads(json.dumps({**row, "occurred_at": None}, default=str)) | {
        "occurred_at": row["occurred_at"], "event_id": row["event_id"]
    })
