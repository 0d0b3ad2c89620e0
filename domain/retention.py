"""Retention and legal hold: how long a tenant keeps chats and audit rows, and what a hold keeps beyond that.
No I/O here.

The rules (the README states the same):
- ``chat_days``: a chat whose last activity is older than that many days is deleted, its content shredded;
  ``None`` keeps chats for ever.
- ``audit_days``: audit rows older than that many days are dropped from the oldest end of the tenant's
  chain (never from its middle, so what is kept still verifies from a signed checkpoint); ``None`` keeps
  every row. The newest row always stays: it is the chain's head.
- A legal hold on the whole tenant suspends both. A hold on a user keeps that user's chats, and stops the
  audit drop before the oldest row about that user (the drop is a prefix of the chain: rows after a held
  one stay too).
- A drop of audit rows is recorded (``AuditRowsDropped``) with the checkpoint that vouches for the last
  dropped row, and only ever moves forward.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Invalid, NotFound

__all__ = [
    "MAX_DAYS",
    "MAX_HOLDS",
    "MAX_REASON_CHARS",
    "RetentionPolicy",
    "audit_drop_end",
    "check_days",
    "check_reason",
    "retention_policy_id_for",
]

MAX_DAYS = 36_500
"""A hundred years: the longest period a policy may name."""
MAX_HOLDS = 1_000
MAX_REASON_CHARS = 500


def retention_policy_id_for(tenant_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/retention-policy")


def check_days(value: int | None, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAYS:
        raise Invalid(
            "INVALID_RETENTION_DAYS", f"{field} must be an integer from 1 to {MAX_DAYS}, or null to keep", field=field
        )
    return value


def check_reason(reason: str) -> str:
    value = reason.strip() if isinstance(reason, str) else ""
    if not 1 <= len(value) <= MAX_REASON_CHARS or any(ord(c) < 32 for c in value):
        raise Invalid(
            "INVALID_HOLD_REASON",
            f"a hold's reason is 1-{MAX_REASON_CHARS} characters without control characters (a matter reference)",
            field="reason",
        )
    return value


def audit_drop_end(
    *, first_seq: int | None, head_seq: int, first_recent_seq: int | None, first_held_seq: int | None
) -> int | None:
    """The last seq to drop from a chain whose rows run from ``first_seq`` to ``head_seq``, or None when
    nothing goes: every row before the first one recent enough to keep (``first_recent_seq``) and before
    the first one about a held user (``first_held_seq``), never the head."""
    if first_seq is None:
        return None
    end = head_seq - 1
    if first_recent_seq is not None:
        end = min(end, first_recent_seq - 1)
    if first_held_seq is not None:
        end = min(end, first_held_seq - 1)
    return end if end >= first_seq else None


class RetentionPolicy(Aggregate):
    """One tenant's retention periods and legal holds; one per tenant (its id comes from the tenant's)."""

    @staticmethod
    def create_id(tenant_id: str, **_: Any) -> UUID:
        return retention_policy_id_for(tenant_id)

    @event("RetentionPolicyCreated")
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.chat_days: int | None = None
        self.audit_days: int | None = None
        self.holds: dict[str, dict[str, str | None]] = {}
        """Hold id -> {"user_id": the held user, or None for the whole tenant; "reason": ...}."""
        self.audit_dropped_up_to = 0
        """Every audit row of the tenant up to this seq was dropped."""

    # --- what the rules say ------------------------------------------------------------------------------
    @property
    def tenant_held(self) -> bool:
        return any(hold["user_id"] is None for hold in self.holds.values())

    @property
    def held_users(self) -> frozenset[str]:
        return frozenset(str(hold["user_id"]) for hold in self.holds.values() if hold["user_id"] is not None)

    def chat_cutoff(self, now: datetime) -> datetime | None:
        """Chats last active before this are due for deletion; None: none are (no period, or held)."""
        if self.chat_days is None or self.tenant_held:
            return None
        return now - timedelta(days=self.chat_days)

    def audit_cutoff(self, now: datetime) -> datetime | None:
        """Audit rows that occurred before this are due to be dropped; None: none are."""
        if self.audit_days is None or self.tenant_held:
            return None
        return now - timedelta(days=self.audit_days)

    def may_delete_chat(self, owner_id: UUID | str, last_activity: datetime, now: datetime) -> bool:
        cutoff = self.chat_cutoff(now)
        return cutoff is not None and last_activity < cutoff and str(owner_id) not in self.held_users

    # --- commands ----------------------------------------------------------------------------------------
    def set_periods(self, *, chat_days: int | None, audit_days: int | None) -> None:
        chat_days, audit_days = check_days(chat_days, "chat_days"), check_days(audit_days, "audit_days")
        if (chat_days, audit_days) != (self.chat_days, self.audit_days):
            self._set_periods(chat_days=chat_days, audit_days=audit_days)

    @event("RetentionPeriodsSet")
    def _set_periods(self, chat_days: int | None, audit_days: int | None) -> None:
        self.chat_days = chat_days
        self.audit_days = audit_days

    def place_hold(self, *, user_id: UUID | str | None, reason: str) -> str:
        """Hold the user's data (or, with ``user_id=None``, the whole tenant's); the new hold's id."""
        reason = check_reason(reason)
        if len(self.holds) >= MAX_HOLDS:
            raise Conflict("TOO_MANY_HOLDS", f"a tenant has at most {MAX_HOLDS} legal holds; lift one first")
        hold_id = str(uuid4())
        self._place_hold(hold_id=hold_id, user_id=None if user_id is None else str(user_id), reason=reason)
        return hold_id

    @event("LegalHoldPlaced")
    def _place_hold(self, hold_id: str, user_id: str | None, reason: str) -> None:
        self.holds[hold_id] = {"user_id": user_id, "reason": reason}

    def lift_hold(self, hold_id: UUID | str) -> None:
        hold = self.holds.get(str(hold_id))
        if hold is None:
            raise NotFound("HOLD_NOT_FOUND", "no such legal hold in this tenant")
        self._lift_hold(hold_id=str(hold_id), user_id=hold["user_id"])

    @event("LegalHoldLifted")
    def _lift_hold(self, hold_id: str, user_id: str | None) -> None:
        del self.holds[hold_id]

    def record_audit_drop(self, *, up_to_seq: int, count: int, checkpoint_seq: int, checkpoint_sha256: str) -> bool:
        """Record that the audit rows up to ``up_to_seq`` were dropped, vouched for by the signed checkpoint
        at ``checkpoint_seq``; False (nothing recorded) when a drop as far or further is recorded already."""
        if up_to_seq <= self.audit_dropped_up_to:
            return False
        if self.tenant_held:
            raise Conflict("LEGAL_HOLD", "the tenant is under a legal hold: no audit row may be dropped")
        if count < 0 or checkpoint_seq not in (up_to_seq, up_to_seq + 1):
            raise Invalid("INVALID_AUDIT_DROP", "a drop counts its rows and names the checkpoint at its edge")
        self._record_audit_drop(
            tenant_id=self.tenant_id,
            up_to_seq=up_to_seq,
            count=count,
            checkpoint_seq=checkpoint_seq,
            checkpoint_sha256=checkpoint_sha256,
        )
        return True

    @event("AuditRowsDropped")
    def _record_audit_drop(
        self, tenant_id: str, up_to_seq: int, count: int, checkpoint_seq: int, checkpoint_sha256: str
    ) -> None:
        self.audit_dropped_up_to = up_to_seq
