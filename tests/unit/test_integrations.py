"""Webhook rules without I/O: event-type patterns, the endpoint aggregate's invariants, signing as the
Standard Webhooks reference implementation verifies it, retry delays and Retry-After."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook as Verifier
from standardwebhooks import WebhookVerificationError

from domain.errors import Conflict, Invalid
from domain.integrations import Webhook, check_type_patterns, type_matcher
from schema.contract import event_types
from workers.webhooks import DispatchConfig, retry_after_s, sign

KNOWN = frozenset(event_types())


def endpoint(**changes: object) -> Webhook:
    values: dict[str, object] = dict(
        tenant_id="t",
        url="https://example.com/hook",
        description="",
        event_types=["*"],
        user_ids=[],
        models=[],
        include_personal=False,
        secret_encrypted="sealed-1",
    )
    values.update(changes)
    return Webhook.make(**values)  # type: ignore[arg-type]


def test_patterns_match_exact_names_and_wildcards() -> None:
    assert type_matcher(["*"])("ChatCreated")
    assert type_matcher([])("Anything")
    generation = type_matcher(["Generation*"])
    assert generation("GenerationCompleted") and not generation("ChatCreated")
    deleted = type_matcher(["*Deleted", "UserRegistered"])
    assert deleted("ChatDeleted") and deleted("UserRegistered") and not deleted("UserRenamed")
    assert type_matcher(["Chat*Created"])("ChatCreated")


@pytest.mark.parametrize(
    "patterns",
    [[], ["NoSuchEvent"], ["Chat.*"], ["Chat Created"], ["Zzz*"], ["x" * 101], ["*"] * 101, [""]],
)
def test_bad_patterns_are_refused_with_one_code(patterns: list[str]) -> None:
    with pytest.raises(Invalid) as refused:
        check_type_patterns(patterns, KNOWN)
    assert refused.value.code == "INVALID_EVENT_TYPE_FILTER"


def test_patterns_are_kept_once_in_order() -> None:
    assert check_type_patterns(["Chat*", "ChatCreated", "Chat*"], KNOWN) == ["Chat*", "ChatCreated"]


@given(st.sampled_from(sorted(KNOWN)))
def test_every_event_type_matches_itself_and_star(name: str) -> None:
    assert type_matcher([name])(name) and type_matcher(["*"])(name) and type_matcher([name[:3] + "*"])(name)


def test_changes_record_only_what_differs_and_deleted_endpoints_refuse_commands() -> None:
    webhook = endpoint()
    webhook.change(url="https://example.com/hook", description="same url")
    [changed] = [e for e in webhook.collect_events() if type(e).__name__ == "WebhookChanged"]
    assert changed.changes == {"description": "same url"}  # type: ignore[attr-defined]
    with pytest.raises(Invalid):
        webhook.change(event_types=[])
    with pytest.raises(Invalid):
        webhook.change(secret_encrypted="x")
    webhook.delete()
    for command in (webhook.enable, webhook.delete, lambda: webhook.change(description="x")):
        with pytest.raises(Conflict):
            command()


def test_a_rotated_secret_signs_until_its_overlap_ends() -> None:
    webhook = endpoint()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    webhook.rotate_secret(secret_encrypted="sealed-2", now=now, overlap=timedelta(hours=1))
    assert webhook.secrets_encrypted(now) == ["sealed-2", "sealed-1"]
    assert webhook.secrets_encrypted(now + timedelta(hours=1)) == ["sealed-2"]
    with pytest.raises(Invalid):
        webhook.rotate_secret(secret_encrypted="x", now=now, overlap=timedelta(days=8))


def test_disabling_twice_records_once_and_a_replay_names_one_start() -> None:
    webhook = endpoint()
    assert webhook.disable(reason="failing", failing_since=None) is True
    assert webhook.disable(reason="failing", failing_since=None) is False
    with pytest.raises(Invalid):
        webhook.request_replay(since=None, after=None)
    with pytest.raises(Invalid):
        webhook.request_replay(since=datetime.now(UTC), after=3)
    assert uuid.UUID(webhook.request_replay(since=None, after=0))


def test_signatures_verify_with_the_reference_implementation_under_each_valid_secret() -> None:
    first, second = b"k" * 32, b"q" * 32
    now = int(datetime.now(UTC).timestamp())
    body = b'{"type":"ChatCreated"}'
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign([first, second], "evt_1", now, body),
    }
    for key in (first, second):
        Verifier(base64.b64encode(key).decode()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(base64.b64encode(b"z" * 32).decode()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(base64.b64encode(first).decode()).verify(body + b" ", headers)


def test_the_default_schedule_spans_more_than_a_day_then_gives_up() -> None:
    config = DispatchConfig()
    assert sum(config.retry_schedule_s) > 86_400
    delays = [config.delay_s(n) for n in range(1, len(config.retry_schedule_s) + 2)]
    assert all(d is not None and 0.8 * s <= d <= 1.2 * s for d, s in zip(delays, config.retry_schedule_s, strict=False))
    assert delays[-1] is None


def test_retry_after_takes_seconds_or_a_date_and_is_bounded() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_s("3", now) == 3.0
    assert retry_after_s("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert retry_after_s("999999999", now) == 86_400.0
    assert retry_after_s("-5", now) == 0.0
    assert retry_after_s("soon", now) is None and retry_after_s(None, now) is None
