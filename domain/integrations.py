"""Integrations: webhook endpoints, and the event-type filters they and the event feed share. No I/O here.

A ``Webhook`` is one endpoint of one tenant: where to send (``url``), what (event-type patterns, optional
user and model filters), whether personal fields go with it, and its signing secrets (Standard Webhooks:
``whsec_`` + base64 of 32 random bytes). The secret is kept only sealed (``secret_encrypted``: never on
the wire, never in the audit log) and shown once, when made. A rotation keeps the previous secret valid
until a stated instant, so receivers can switch without losing a message; deliveries are signed with every
secret valid at the time (the ``webhook-signature`` header carries one ``v1,<sig>`` per secret).

Event-type patterns: an exact event type (``GenerationCompleted``) or a pattern with ``*`` standing for any
run of characters (``Generation*``, ``*Deleted``, ``*``). An exact name must be an event type parley emits
and a pattern must match at least one, so that a typo is an error rather than silence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Invalid

__all__ = [
    "DEFAULT_ROTATION_OVERLAP",
    "DisabledReason",
    "MAX_DESCRIPTION_CHARS",
    "MAX_FILTER_ITEMS",
    "MAX_ROTATION_OVERLAP",
    "MAX_URL_CHARS",
    "Webhook",
    "check_type_patterns",
    "type_matcher",
]

MAX_URL_CHARS = 2048
MAX_DESCRIPTION_CHARS = 500
MAX_FILTER_ITEMS = 100
"""Event-type patterns, users or models one endpoint may name."""
MAX_ROTATION_OVERLAP = timedelta(days=7)
DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)
_PATTERN = re.compile(r"^[A-Za-z*]{1,100}$")

DisabledReason = Literal["manual", "failing"]


def check_type_patterns(patterns: Sequence[str], known: Collection[str], *, field: str = "event_types") -> list[str]:
    """``patterns`` checked against the ``known`` event types, de-duplicated in order; raises ``Invalid``
    (``INVALID_EVENT_TYPE_FILTER``) naming the first that is malformed, unknown or matches nothing."""
    if not isinstance(patterns, list | tuple) or not 1 <= len(patterns) <= MAX_FILTER_ITEMS:
        raise Invalid(
            "INVALID_EVENT_TYPE_FILTER",
            f'name 1 to {MAX_FILTER_ITEMS} event types or patterns ("*" for every event)',
            field=field,
        )
    checked: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise Invalid(
                "INVALID_EVENT_TYPE_FILTER",
                "an event-type filter is an event type's name, or a pattern of letters and '*'",
                field=field,
                pattern=str(pattern)[:100],
            )
        if not any(_compile(pattern)(name) for name in known):
            raise Invalid(
                "INVALID_EVENT_TYPE_FILTER",
                f"no event type is called or matches {pattern!r} (GET /api/v1/events/schema lists them)",
                field=field,
                pattern=pattern,
            )
        if pattern not in checked:
            checked.append(pattern)
    return checked


def _compile(pattern: str) -> Callable[[str], bool]:
    if "*" not in pattern:
        return pattern.__eq__
    if pattern.strip("*") == "":
        return lambda _name: True
    regex = re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$")
    return lambda name: regex.match(name) is not None


def type_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A test of an event type against any of ``patterns`` (an empty collection matches every type)."""
    patterns = list(patterns)
    if not patterns or any(p.strip("*") == "" for p in patterns):
        return lambda _name: True
    exact = frozenset(p for p in patterns if "*" not in p)
    wild = [_compile(p) for p in patterns if "*" in p]
    if not wild:
        return exact.__contains__
    return lambda name: name in exact or any(test(name) for test in wild)


def _check_url_shape(url: str) -> str:
    value = url.strip() if isinstance(url, str) else ""
    if not value or len(value) > MAX_URL_CHARS or any(ord(c) < 33 for c in value):
        raise Invalid("INVALID_WEBHOOK_URL", f"a webhook URL is 1-{MAX_URL_CHARS} characters, no spaces", field="url")
    return value


def _check_description(description: str) -> str:
    value = description.strip() if isinstance(description, str) else ""
    if len(value) > MAX_DESCRIPTION_CHARS or any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise Invalid(
            "INVALID_DESCRIPTION",
            f"a description is at most {MAX_DESCRIPTION_CHARS} characters without control characters",
            field="description",
        )
    return value


def _check_items(values: Sequence[str], field: str) -> list[str]:
    if not isinstance(values, list | tuple) or len(values) > MAX_FILTER_ITEMS:
        raise Invalid("INVALID_FILTER", f"{field} names at most {MAX_FILTER_ITEMS} items", field=field)
    checked: list[str] = []
    for value in values:
        if not isinstance(value, str) or not 1 <= len(value) <= 200:
            raise Invalid("INVALID_FILTER", f"each item of {field} is 1-200 characters", field=field)
        if value not in checked:
            checked.append(value)
    return checked


class Webhook(Aggregate):
    """One webhook endpoint of a tenant."""

    @event("WebhookCreated")
    def __init__(
        self,
        tenant_id: str,
        url: str,
        description: str,
        event_types: list[str],
        user_ids: list[str],
        models: list[str],
        include_personal: bool,
        secret_encrypted: str,
    ) -> None:
        self.tenant_id = tenant_id
        self.url = url
        self.description = description
        self.event_types = list(event_types)
        self.user_ids = list(user_ids)
        self.models = list(models)
        self.include_personal = include_personal
        self.secret_encrypted = secret_encrypted
        self.previous_secret_encrypted: str | None = None
        self.previous_valid_until: datetime | None = None
        self.enabled = True
        self.disabled_reason: DisabledReason | None = None
        self.deleted = False

    @classmethod
    def make(
        cls,
        *,
        tenant_id: str,
        url: str,
        description: str,
        event_types: list[str],
        user_ids: Sequence[UUID | str],
        models: Sequence[str],
        include_personal: bool,
        secret_encrypted: str,
    ) -> Webhook:
        """A new endpoint; ``event_types`` are checked already (``check_type_patterns``)."""
        return cls(
            tenant_id=tenant_id,
            url=_check_url_shape(url),
            description=_check_description(description),
            event_types=list(event_types),
            user_ids=_check_items([str(u) for u in user_ids], "user_ids"),
            models=_check_items(list(models), "models"),
            include_personal=bool(include_personal),
            secret_encrypted=secret_encrypted,
        )

    # --- what it is --------------------------------------------------------------------------------------
    def check_live(self) -> None:
        if self.deleted:
            raise Conflict("WEBHOOK_DELETED", "the webhook endpoint was deleted")

    def secrets_encrypted(self, now: datetime) -> list[str]:
        """The sealed secrets a delivery at ``now`` is signed with: the current one, and the previous one
        while its overlap lasts."""
        secrets = [self.secret_encrypted]
        if self.previous_secret_encrypted and self.previous_valid_until and now < self.previous_valid_until:
            secrets.append(self.previous_secret_encrypted)
        return secrets

    # --- commands ----------------------------------------------------------------------------------------
    def change(self, **changes: Any) -> None:
        """Change any of ``url``, ``description``, ``event_types`` (checked already), ``user_ids``,
        ``models``, ``include_personal``; records only what differs."""
        self.check_live()
        checks: dict[str, Callable[[Any], Any]] = {
            "url": _check_url_shape,
            "description": _check_description,
            "event_types": list,
            "user_ids": lambda v: _check_items([str(u) for u in v], "user_ids"),
            "models": lambda v: _check_items(list(v), "models"),
            "include_personal": bool,
        }
        unknown = set(changes) - set(checks)
        if unknown:
            raise Invalid("INVALID_CHANGE", f"cannot change {sorted(unknown)}")
        if "event_types" in changes and not changes["event_types"]:
            raise Invalid("INVALID_EVENT_TYPE_FILTER", "name at least one event type or pattern", field="event_types")
        checked = {name: checks[name](value) for name, value in changes.items()}
        differs = {name: value for name, value in checked.items() if getattr(self, name) != value}
        if differs:
            self._change(changes=differs)

    @event("WebhookChanged")
    def _change(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            setattr(self, name, value)

    def rotate_secret(self, *, secret_encrypted: str, now: datetime, overlap: timedelta) -> None:
        self.check_live()
        if not timedelta(0) <= overlap <= MAX_ROTATION_OVERLAP:
            raise Invalid(
                "INVALID_OVERLAP",
                f"the old secret stays valid 0 to {int(MAX_ROTATION_OVERLAP.total_seconds())} seconds",
                field="overlap_s",
            )
        self._rotate_secret(secret_encrypted=secret_encrypted, previous_valid_until=now + overlap)

    @event("WebhookSecretRotated")
    def _rotate_secret(self, secret_encrypted: str, previous_valid_until: datetime) -> None:
        self.previous_secret_encrypted = self.secret_encrypted
        self.previous_valid_until = previous_valid_until
        self.secret_encrypted = secret_encrypted

    def enable(self) -> None:
        self.check_live()
        if not self.enabled:
            self._enable()

    @event("WebhookEnabled")
    def _enable(self) -> None:
        self.enabled = True
        self.disabled_reason = None

    def disable(self, *, reason: DisabledReason, failing_since: datetime | None = None) -> bool:
        """Stop deliveries; False when it was disabled already (a dispatcher that finds the endpoint failing
        disables it once, however many notice)."""
        self.check_live()
        if not self.enabled:
            return False
        self._disable(reason=reason, failing_since=failing_since)
        return True

    @event("WebhookDisabled")
    def _disable(self, reason: DisabledReason, failing_since: datetime | None) -> None:
        self.enabled = False
        self.disabled_reason = reason

    def delete(self) -> None:
        self.check_live()
        self._delete()

    @event("WebhookDeleted")
    def _delete(self) -> None:
        self.deleted = True
        self.enabled = False

    def request_retry(self, message_id: UUID) -> None:
        """Send one message again now (whatever its state), recorded so the audit log shows who asked."""
        self.check_live()
        self._request_retry(message_id=str(message_id))

    @event("WebhookRetryRequested")
    def _request_retry(self, message_id: str) -> None:
        pass

    def request_replay(self, *, since: datetime | None, after: int | None) -> str:
        """Send again every matching event of the tenant after position ``after`` or since ``since`` (one of
        them), up to this request; returns the replay's id."""
        self.check_live()
        if (since is None) == (after is None):
            raise Invalid("INVALID_REPLAY", "name where the replay starts: either since (a time) or after (a position)")
        if after is not None and after < 0:
            raise Invalid("INVALID_REPLAY", "after is a position in the event log, 0 or more", field="after")
        replay_id = str(uuid4())
        self._request_replay(replay_id=replay_id, since=since, after=after)
        return replay_id

    @event("WebhookReplayRequested")
    def _request_replay(self, replay_id: str, since: datetime | None, after: int | None) -> None:
        pass
