"""A tenant's retention policy and legal holds through HTTP (tenant admins).

``chat_days``: chats last active longer ago are deleted and their content shredded; ``audit_days``: audit
rows older than that are dropped from the oldest end of the chain, behind a signed checkpoint. Each is 1 to
36500 days, or null to keep for ever. A legal hold on a user keeps their chats and the audit rows about
them (and every later row); a hold on the tenant keeps everything. The sweep runs beside the projectors
(``PARLEY_RETENTION_SWEEP_INTERVAL``) and on demand (``parley retention sweep``). Every change is an event
on the tenant's ``RetentionPolicy``.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from msgspec import Meta

from api.deps import App, Caller, command_context
from api.openapi import refusals
from domain.retention import RetentionPolicy
from workers.retention import retention_service

__all__ = ["RetentionController", "RetentionPolicyOut", "RetentionBody", "HoldBody", "HoldOut"]


class RetentionBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    chat_days: int | None
    """Days after a chat's last activity until it is deleted, 1 to 36500; null: chats are kept."""
    audit_days: int | None
    """Days an audit row is kept, 1 to 36500; null: every row is kept."""


class HoldBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Annotated[str, Meta(max_length=2000)]
    """Why (a matter reference, 1-500 characters); it is recorded in the audit log."""
    user_id: UUID | None = None
    """The user whose data is held; or give ``tenant: true`` to hold the whole tenant's."""
    tenant: bool = False


class HoldOut(msgspec.Struct, kw_only=True):
    id: str
    user_id: str | None
    tenant: bool
    """True: the hold covers the whole tenant."""
    reason: str


class RetentionPolicyOut(msgspec.Struct, kw_only=True):
    chat_days: int | None
    audit_days: int | None
    holds: list[HoldOut]
    audit_dropped_up_to: int
    """Every audit row up to this seq of the tenant's chain was dropped (0: none)."""


def hold_out(hold_id: str, hold: dict[str, str | None]) -> HoldOut:
    return HoldOut(id=hold_id, user_id=hold["user_id"], tenant=hold["user_id"] is None, reason=str(hold["reason"]))


def policy_out(p: RetentionPolicy) -> RetentionPolicyOut:
    return RetentionPolicyOut(
        chat_days=p.chat_days,
        audit_days=p.audit_days,
        holds=[hold_out(hold_id, hold) for hold_id, hold in p.holds.items()],
        audit_dropped_up_to=p.audit_dropped_up_to,
    )


class RetentionController(Controller):
    path = "/api/v1/retention"
    tags = ["retention"]

    @get("/", operation_id="GetRetentionPolicy")
    async def get_policy(self, c: App, caller: Caller) -> RetentionPolicyOut:
        return policy_out(await retention_service(c).get_policy(caller))

    @put("/", operation_id="SetRetentionPolicy")
    async def set_policy(
        self, request: Request[Any, Any, Any], data: JSONBody[RetentionBody], c: App, caller: Caller
    ) -> RetentionPolicyOut:
        policy = await retention_service(c).set_periods(
            command_context(request, caller), caller, chat_days=data.chat_days, audit_days=data.audit_days
        )
        return policy_out(policy)

    @post("/holds", operation_id="PlaceLegalHold", status_code=HTTP_201_CREATED, responses=refusals(404))
    async def place_hold(
        self, request: Request[Any, Any, Any], data: JSONBody[HoldBody], c: App, caller: Caller
    ) -> HoldOut:
        policy, hold_id = await retention_service(c).place_hold(
            command_context(request, caller), caller, user_id=data.user_id, tenant=data.tenant, reason=data.reason
        )
        return hold_out(hold_id, policy.holds[hold_id])

    @delete("/holds/{hold_id:uuid}", operation_id="LiftLegalHold", status_code=HTTP_200_OK)
    async def lift_hold(
        self, request: Request[Any, Any, Any], hold_id: FromPath[UUID], c: App, caller: Caller
    ) -> RetentionPolicyOut:
        """Lifts the hold; the policy as it now stands."""
        return policy_out(await retention_service(c).lift_hold(command_context(request, caller), caller, hold_id))
