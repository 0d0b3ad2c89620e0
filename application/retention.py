"""Retention and legal hold: the admin commands on a tenant's ``RetentionPolicy``, and the sweep that
applies it.

A sweep of one tenant, as the system actor ``system:retention``:
- chats last active before the policy's cutoff whose owner is not held are deleted through
  ``Chats.delete`` (so a ``ChatDeleted`` event each, and their content shredded at once), at most
  ``CHATS_PER_SWEEP`` a run; the policy is read again before each deletion, so a hold placed meanwhile
  protects what is left;
- the oldest audit rows older than the cutoff go: a signed checkpoint of the last one to drop is kept
  outside the database first (``AuditAnchor``), then the drop is recorded (``AuditRowsDropped``), then the
  rows are deleted in one transaction. The event comes before the delete because it is the decision: the
  audit projector applies it too (a crash between the two, or a rebuild, drops the same rows).
A legal hold on the tenant suspends both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from application.context import CommandContext
from application.conversations import Chats
from application.identity import Principal, check_user_of_tenant
from application.ports import AuditAnchor, EventStorePort, RetentionData
from domain.chats import Chat
from domain.errors import Conflict, Invalid, NotFound
from domain.retention import RetentionPolicy, retention_policy_id_for

__all__ = ["RETENTION_ACTOR", "CHATS_PER_SWEEP", "AuditDrop", "Retention", "SweepReport"]

log = structlog.get_logger("parley.retention")

RETENTION_ACTOR = "system:retention"
"""The actor of every event a sweep records."""
CHATS_PER_SWEEP = 500
"""Chats one sweep deletes in a tenant at most; the next sweep goes on."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AuditDrop:
    up_to_seq: int
    count: int
    checkpoint_seq: int
    checkpoint_sha256: str


@dataclass
class SweepReport:
    """What one sweep did in one tenant."""

    tenant_id: str
    chats_deleted: list[uuid.UUID] = field(default_factory=list)
    audit_drop: AuditDrop | None = None
    held: bool = False
    """The whole tenant is under a legal hold: nothing was deleted."""


class Retention:
    def __init__(
        self,
        *,
        store: EventStorePort,
        chats: Chats,
        data: RetentionData,
        anchor: AuditAnchor | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.chats = chats
        self.data = data
        self.anchor = anchor
        """Where checkpoints are signed and kept; without one, no audit row is dropped."""
        self.clock = clock

    # --- the policy --------------------------------------------------------------------------------------
    def policy(self, tenant_id: str) -> RetentionPolicy:
        """The tenant's policy; keep everything, no holds (unsaved) until an admin changes it. Sync."""
        return self.saved_policy(tenant_id) or RetentionPolicy(tenant_id=tenant_id)

    def saved_policy(self, tenant_id: str) -> RetentionPolicy | None:
        return self.store.find(RetentionPolicy, retention_policy_id_for(tenant_id))

    async def get_policy(self, principal: Principal) -> RetentionPolicy:
        principal.require_admin()
        return await self.store.call(self.policy, principal.tenant_id)

    async def set_periods(
        self, ctx: CommandContext, principal: Principal, *, chat_days: int | None, audit_days: int | None
    ) -> RetentionPolicy:
        principal.require_admin()

        def command() -> RetentionPolicy:
            policy = self.policy(principal.tenant_id)
            policy.set_periods(chat_days=chat_days, audit_days=audit_days)
            self.store.save(policy)
            return policy

        return await self.store.execute(ctx, command)

    async def place_hold(
        self, ctx: CommandContext, principal: Principal, *, user_id: uuid.UUID | None, tenant: bool, reason: str
    ) -> tuple[RetentionPolicy, str]:
        """Hold one user's data, or (``tenant``) the whole tenant's: (the policy, the new hold's id)."""
        principal.require_admin()
        if (user_id is None) == (not tenant):
            raise Invalid("INVALID_HOLD_SCOPE", "name either a user_id or tenant: true, not both", field="user_id")

        def command() -> tuple[RetentionPolicy, str]:
            if user_id is not None:
                check_user_of_tenant(self.store, principal.tenant_id, user_id)
            policy = self.policy(principal.tenant_id)
            hold_id = policy.place_hold(user_id=user_id, reason=reason)
            self.store.save(policy)
            return policy, hold_id

        return await self.store.execute(ctx, command)

    async def lift_hold(self, ctx: CommandContext, principal: Principal, hold_id: uuid.UUID) -> RetentionPolicy:
        principal.require_admin()

        def command() -> RetentionPolicy:
            policy = self.policy(principal.tenant_id)
            policy.lift_hold(hold_id)
            self.store.save(policy)
            return policy

        return await self.store.execute(ctx, command)

    # --- the sweep ---------------------------------------------------------------------------------------
    async def sweep_all(self, *, now: datetime | None = None) -> list[SweepReport]:
        """Sweep every tenant that has a policy; one tenant's failure is logged and does not stop the rest."""
        reports = []
        for tenant_id in await self.data.tenant_ids():
            try:
                report = await self.sweep(tenant_id, now=now)
            except Exception as exc:  # noqa: BLE001 - the next tenant, and the next run, go on
                log.warning("retention_sweep_failed", tenant_id=tenant_id, error=str(exc), error_type=type(exc).__name__)
                continue
            if report is not None:
                reports.append(report)
        return reports

    async def sweep(self, tenant_id: str, *, now: datetime | None = None) -> SweepReport | None:
        """Apply the tenant's policy as of ``now`` (default: the clock); None when it has none."""
        policy = await self.store.call(self.saved_policy, tenant_id)
        if policy is None:
            return None
        now = now or self.clock()
        ctx = CommandContext(tenant_id=tenant_id, actor=RETENTION_ACTOR)  # one correlation id per sweep
        report = SweepReport(tenant_id, held=policy.tenant_held)
        report.chats_deleted = await self._delete_chats(ctx, policy, now)
        report.audit_drop = await self._drop_audit_rows(ctx, policy, now)
        if report.chats_deleted or report.audit_drop:
            log.info(
                "retention_swept",
                tenant_id=tenant_id,
                chats_deleted=len(report.chats_deleted),
                audit_rows_dropped=report.audit_drop.count if report.audit_drop else 0,
            )
        return report

    async def _delete_chats(self, ctx: CommandContext, policy: RetentionPolicy, now: datetime) -> list[uuid.UUID]:
        tenant_id = policy.tenant_id
        cutoff = policy.chat_cutoff(now)
        if cutoff is None:
            return []
        due = await self.data.expired_chats(tenant_id, cutoff, spare_owners=policy.held_users, limit=CHATS_PER_SWEEP)
        deleted = []
        for chat_id, owner_id in due:
            # The policy and the chat as they are now: a hold placed, or a message posted, since the query.
            current = await self.store.call(self.policy, tenant_id)
            chat = await self.store.call(self.store.find, Chat, chat_id)
            if chat is None or chat.deleted or chat.tenant_id != tenant_id:
                continue
            if chat.modified_on is None or not current.may_delete_chat(chat.owner_id, chat.modified_on, now):
                continue
            owner = Principal(tenant_id=tenant_id, user_id=owner_id, role="user", via="system")
            try:
                await self.chats.delete(ctx, owner, chat_id)
            except NotFound:  # deleted meanwhile
                continue
            deleted.append(chat_id)
        return deleted

    async def _drop_audit_rows(self, ctx: CommandContext, policy: RetentionPolicy, now: datetime) -> AuditDrop | None:
        tenant_id = policy.tenant_id
        cutoff = policy.audit_cutoff(now)
        if cutoff is None or self.anchor is None:
            return None
        drop = None
        plan = await self.data.plan_audit_drop(tenant_id, cutoff, spare_users=policy.held_users)
        if plan is not None and plan.up_to_seq > policy.audit_dropped_up_to:
            await self.anchor(tenant_id, plan.up_to_seq, plan.hash)  # before anything goes
            candidate = AuditDrop(plan.up_to_seq, plan.count, plan.up_to_seq, plan.hash)

            def command() -> tuple[RetentionPolicy, bool]:
                current = self.policy(tenant_id)
                if current.held_users != policy.held_users:
                    raise Conflict("LEGAL_HOLD", "the legal holds changed during the sweep")
                recorded = current.record_audit_drop(
                    up_to_seq=candidate.up_to_seq,
                    count=candidate.count,
                    checkpoint_seq=candidate.checkpoint_seq,
                    checkpoint_sha256=candidate.checkpoint_sha256,
                )
                if recorded:
                    self.store.save(current)
                return current, recorded

            try:
                policy, recorded = await self.store.execute(ctx, command)
                drop = candidate if recorded else None
            except Conflict as exc:  # a hold placed meanwhile: the next sweep decides again
                log.info("retention_audit_drop_deferred", tenant_id=tenant_id, reason=exc.code)
                return None
        if policy.audit_dropped_up_to:  # what is recorded goes (and a drop a crash interrupted is finished)
            await self.data.drop_audit_rows(tenant_id, policy.audit_dropped_up_to)
        return drop
