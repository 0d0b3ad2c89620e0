"""What retention reads and trims in the read models: chats past their period, and the oldest rows of a
tenant's audit chain (``application.ports.RetentionData``).

The audit rows are dropped from the oldest end only, so what is kept is a suffix of the chain that verifies
from the signed checkpoint of the last dropped row (``projections.audit.verify_chain(..., anchors=...)``).
Rows "about" a user, which a hold on that user keeps (and every row after them), are those the user did
(``actor``), those of the user's own aggregate (``target_id``), and those whose detail names the user as
``user_id``, ``owner_id`` or ``subject_id``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.retention import audit_drop_end
from projections.audit import row_hash
from schema.locks import advisory_key
from schema.tables import audit_heads, audit_log, chats, tenants

__all__ = ["AuditDropPlan", "ChainBroken", "ReadModelRetention"]

_USER_FIELDS = ("user_id", "owner_id", "subject_id")


@dataclass(frozen=True)
class AuditDropPlan:
    up_to_seq: int
    count: int
    hash: str


class ReadModelRetention:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def tenant_ids(self) -> list[str]:
        async with self.engine.connect() as conn:
            return [str(t) for t in (await conn.execute(select(tenants.c.tenant_id).order_by(tenants.c.slug))).scalars()]

    async def expired_chats(
        self, tenant_id: str, before: datetime, *, spare_owners: Collection[str], limit: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        c = chats.c
        stmt = select(c.chat_id, c.owner_id).where(c.tenant_id == tenant_id, ~c.deleted, c.updated_at < before)
        if spare_owners:
            stmt = stmt.where(c.owner_id.not_in(list(spare_owners)))
        async with self.engine.connect() as conn:
            rows = await conn.execute(stmt.order_by(c.updated_at, c.chat_id).limit(limit))
            return [(uuid.UUID(str(r.chat_id)), uuid.UUID(str(r.owner_id))) for r in rows]

    async def plan_audit_drop(
        self, tenant_id: str, before: datetime, *, spare_users: Collection[str]
    ) -> AuditDropPlan | None:
        c = audit_log.c
        async with self.engine.connect() as conn:
            head = (await conn.execute(select(audit_heads.c.seq).where(audit_heads.c.tenant_id == tenant_id))).scalar()
            if head is None:
                return None
            of_tenant = c.tenant_id == tenant_id
            first = (await conn.execute(select(func.min(c.seq)).where(of_tenant))).scalar()
            first_recent = (await conn.execute(select(func.min(c.seq)).where(of_tenant, c.occurred_at >= before))).scalar()
            first_held = None
            if spare_users:
                users = list(spare_users)
                about = or_(
                    false(),
                    c.actor.in_([f"user:{u}" for u in users]),
                    c.target_id.in_(users),
                    *(c.detail[name].astext.in_(users) for name in _USER_FIELDS),
                )
                first_held = (await conn.execute(select(func.min(c.seq)).where(of_tenant, about))).scalar()
            end = audit_drop_end(first_seq=first, head_seq=head, first_recent_seq=first_recent, first_held_seq=first_held)
            if end is None:
                return None
            count = (await conn.execute(select(func.count()).select_from(audit_log).where(of_tenant, c.seq <= end))).scalar_one()
            edge = (await conn.execute(select(audit_log).where(of_tenant, c.seq.in_([end, end + 1])))).mappings().all()
        rows = {row["seq"]: row for row in edge}
        last, kept = rows.get(end), rows.get(end + 1)
        # Sign only a link that holds: the last row to drop hashes to its hash, and the first kept row names it.
        if last is None or kept is None or row_hash(last) != last["hash"] or kept["prev_hash"] != last["hash"]:
            raise ChainBroken(tenant_id, end)
        return AuditDropPlan(up_to_seq=end, count=int(count), hash=str(last["hash"]))

    async def drop_audit_rows(self, tenant_id: str, up_to_seq: int) -> int:
        async with self.engine.begin() as conn:
            # One dropper per tenant at a time (a sweep from the CLI beside the periodic one).
            await conn.execute(select(func.pg_advisory_xact_lock(advisory_key(f"audit-retention:{tenant_id}"))))
            result = await conn.execute(
                delete(audit_log).where(audit_log.c.tenant_id == tenant_id, audit_log.c.seq <= up_to_seq)
            )
            return int(result.rowcount or 0)


class ChainBroken(Exception):
    """The chain does not link where retention would cut it: nothing is signed or dropped (run
    ``parley audit verify``)."""

    def __init__(self, tenant_id: str, seq: int) -> None:
        super().__init__(f"the audit chain of tenant {tenant_id} does not link at seq {seq}: not dropping")
        self.tenant_id = tenant_id
        self.seq = seq
