"""The audit log (tenant admins): filtered, paged, newest first; replay of any aggregate's state; and the
public key that checks the signed checkpoints of the chain (any signed-in caller: the key is not secret,
but only sign-in and operations routes are open to anyone)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery, QueryParameter

from adapters.checkpoints import CHECKPOINT_FORMAT, checkpoint_key
from api import dto
from api.deps import App, Caller
from domain.errors import Invalid
from projections.audit import query_audit


def _aware(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


class AuditPublicKey(msgspec.Struct, frozen=True, kw_only=True):
    """The Ed25519 key that signs audit checkpoints (``parley audit public-key`` prints the same)."""

    algorithm: str
    key_id: str
    public_key_pem: str
    public_key_base64: str  # the raw 32 bytes
    checkpoint_format: str


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]

    @get("/", operation_id="ListAuditEntries")
    async def list(
        self,
        c: App,
        caller: Caller,
        actor: Annotated[str | None, QueryParameter(max_length=100, pattern=dto.NO_CONTROL_CHARS)] = None,
        action: Annotated[str | None, QueryParameter(max_length=100, pattern=dto.NO_CONTROL_CHARS)] = None,
        target_type: Annotated[str | None, QueryParameter(max_length=50, pattern=dto.NO_CONTROL_CHARS)] = None,
        target_id: Annotated[str | None, QueryParameter(max_length=64, pattern=dto.NO_CONTROL_CHARS)] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        before: Annotated[int | None, QueryParameter(ge=1, le=2**63 - 1)] = None,  # a Postgres bigint
    ) -> dto.AuditPage:
        caller.require_admin()
        since, until = _aware(since), _aware(until)
        if since and until and since > until:
            raise Invalid("INVALID_RANGE", "since must not be after until")
        rows, cursor = await query_audit(
            c.engine,
            caller.tenant_id,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            since=since,
            until=until,
            limit=limit,
            before_seq=before,
        )
        return dto.AuditPage(items=[msgspec.to_builtins(r) for r in rows], next_before=cursor)

    @get("/replay", operation_id="ReplayAggregate")
    async def replay(self, c: App, caller: Caller, aggregate_id: FromQuery[UUID], at: FromQuery[datetime | None] = None) -> dict[str, Any]:
        return await c.audit.state_at(caller, aggregate_id, _aware(at) or datetime.now(UTC))

    @get("/public-key", operation_id="GetAuditPublicKey")
    async def public_key(self, c: App, caller: Caller) -> AuditPublicKey:
        key = checkpoint_key(c.settings.secret_key)
        return AuditPublicKey(
            algorithm="Ed25519",
            key_id=key.key_id,
            public_key_pem=key.public_pem(),
            public_key_base64=key.public_base64(),
            checkpoint_format=CHECKPOINT_FORMAT,
        )
