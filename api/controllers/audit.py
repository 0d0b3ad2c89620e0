"""The audit log (tenant admins and auditors): filtered, paged, newest first, its sealed detail opened for
a stated reason; replay of a chat, a user, the quota policy or any aggregate as of an instant; and the
public key that checks the signed checkpoints of the chain (any signed-in caller: the key is not secret,
but only sign-in and operations routes are open to anyone)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, get
from litestar.params import FromQuery, QueryParameter

from adapters.checkpoints import CHECKPOINT_FORMAT, checkpoint_key
from api import dto
from api.deps import App, Caller, command_context
from domain.errors import BadRequest, Invalid
from projections.audit import query_audit

ReplayKind = Literal["aggregate", "chat", "user", "quota_policy"]
REASON = QueryParameter(
    max_length=2000,
    pattern=dto.NO_CONTROL_CHARS,
    description="why you read someone else's content (3-500 characters); kept in the audit log",
)


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
        request: Request[Any, Any, Any],
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
        open: Annotated[  # noqa: A002 - the wire name
            bool,
            QueryParameter(
                description="open the sealed personal fields of each entry's `detail` (needs `reason`; recorded"
                " as a `ContentAccessed` event per aggregate opened, before the page is returned)"
            ),
        ] = False,
        reason: Annotated[str | None, REASON] = None,
    ) -> dto.AuditPage:
        """The tenant's audit log, newest first, for its admins and auditors. Personal fields in `detail`
        are sealed (`enc:v1:...`) unless `open=true` with a stated `reason` (else 400 `REASON_REQUIRED`)."""
        caller.require_auditor()
        since, until = dto.aware(since), dto.aware(until)
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
        items = [msgspec.to_builtins(r) for r in rows]
        if open:
            items = await c.audit.open_entries(command_context(request, caller), caller, items, reason)
        return dto.AuditPage(items=items, next_before=cursor)

    @get("/replay", operation_id="ReplayAggregate")
    async def replay(
        self,
        request: Request[Any, Any, Any],
        c: App,
        caller: Caller,
        aggregate_id: Annotated[
            UUID | None, QueryParameter(description="what to replay; not for `kind=quota_policy` (the tenant's)")
        ] = None,
        at: Annotated[datetime | None, QueryParameter(description="the instant (default: now)")] = None,
        kind: Annotated[
            ReplayKind,
            QueryParameter(
                description="`aggregate` (any, by id), `chat` (with its messages), `user`, `quota_policy` (the"
                " tenant's). A chat, a generation or a document of someone else needs `reason`."
            ),
        ] = "aggregate",
        reason: Annotated[str | None, REASON] = None,
    ) -> dict[str, Any]:
        """The state of one thing of the caller's tenant as of an instant, replayed from the event store
        (admins and auditors). Content (a chat, a generation, a document) needs a stated `reason` (else 400
        `REASON_REQUIRED`) and is recorded as a `ContentAccessed` event before it is returned."""
        if aggregate_id is None and kind != "quota_policy":
            raise BadRequest("VALIDATION_FAILED", f"a replay of kind '{kind}' names the aggregate_id", field="aggregate_id")
        return await c.audit.state_at(
            command_context(request, caller), caller, dto.aware(at) or datetime.now(UTC),
            kind=kind, aggregate_id=aggregate_id, reason=reason,
        )  # fmt: skip

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
