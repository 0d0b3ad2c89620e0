"""A tenant's quota policy through HTTP (tenant admins): daily token limits per role, per user, per model
and for the whole tenant, the time zone days roll over in, and the per-minute rate limits.

Every change is a command on the ``QuotaPolicy`` aggregate (``application.quotas.Quotas``): admin-checked,
validated by the domain, recorded as an event (so it shows in the audit log), and answered with the policy
as it now stands. Limits are integers from 0 to 10^12, or null for unlimited.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, put
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK
from msgspec import UNSET, Meta, UnsetType

from api.deps import App, Caller, command_context
from domain.errors import Invalid
from domain.quotas import QuotaPolicy

__all__ = ["QuotaController", "QuotaPolicyOut", "LimitBody", "CapBody", "TimezoneBody", "RateLimitsBody"]

RoleName = Annotated[str, Meta(min_length=1, max_length=20)]
ModelName = Annotated[str, Meta(min_length=1, max_length=100)]


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class LimitBody(_Body):
    limit: int | None
    """Daily tokens, 0 to 10^12; null: unlimited (for a model: no per-model limit)."""


class CapBody(_Body):
    cap: int | None
    """The tenant's daily tokens over all its users, 0 to 10^12; null: no cap."""


class TimezoneBody(_Body):
    timezone: Annotated[str, Meta(min_length=1, max_length=64)]
    """IANA name (e.g. Europe/Paris): daily limits reset at its midnight."""


class RateLimitsBody(_Body):
    user_per_minute: int | UnsetType = UNSET
    api_key_per_minute: int | UnsetType = UNSET
    sign_in_per_ip_per_minute: int | UnsetType = UNSET
    refresh_per_ip_per_minute: int | UnsetType = UNSET
    refresh_per_session_per_minute: int | UnsetType = UNSET


class QuotaPolicyOut(msgspec.Struct, kw_only=True):
    timezone: str
    role_limits: dict[str, int | None]
    user_limits: dict[str, int | None]
    """Per-user overrides by user id; a user without one gets their role's limit."""
    model_limits: dict[str, int]
    """Per user per day on each model, on top of the user's limit."""
    tenant_cap: int | None
    rate_limits: dict[str, int]


def policy_out(p: QuotaPolicy) -> QuotaPolicyOut:
    return QuotaPolicyOut(
        timezone=p.timezone,
        role_limits=dict(p.role_limits),
        user_limits=dict(p.user_limits),
        model_limits=dict(p.model_limits),
        tenant_cap=p.tenant_cap,
        rate_limits=dict(p.rate_limits),
    )


class QuotaController(Controller):
    path = "/api/v1/quotas"
    tags = ["quotas"]

    @get("/", operation_id="GetQuotaPolicy")
    async def get_policy(self, c: App, caller: Caller) -> QuotaPolicyOut:
        return policy_out(await c.quotas.get_policy(caller))

    @put("/roles/{role:str}", operation_id="SetRoleQuota")
    async def set_role(
        self,
        request: Request[Any, Any, Any],
        role: FromPath[RoleName],
        data: JSONBody[LimitBody],
        c: App,
        caller: Caller,
    ) -> QuotaPolicyOut:
        return policy_out(await c.quotas.set_role_limit(command_context(request, caller), caller, role, data.limit))

    @put("/users/{user_id:uuid}", operation_id="SetUserQuota")
    async def set_user(
        self,
        request: Request[Any, Any, Any],
        user_id: FromPath[UUID],
        data: JSONBody[LimitBody],
        c: App,
        caller: Caller,
    ) -> QuotaPolicyOut:
        return policy_out(await c.quotas.set_user_limit(command_context(request, caller), caller, user_id, data.limit))

    @delete("/users/{user_id:uuid}", operation_id="ClearUserQuota", status_code=HTTP_200_OK)
    async def clear_user(
        self, request: Request[Any, Any, Any], user_id: FromPath[UUID], c: App, caller: Caller
    ) -> QuotaPolicyOut:
        """Removes the user's override: their role's limit applies again."""
        return policy_out(
            await c.quotas.set_user_limit(command_context(request, caller), caller, user_id, None, clear=True)
        )

    @put("/models/{model:str}", operation_id="SetModelQuota")
    async def set_model(
        self,
        request: Request[Any, Any, Any],
        model: FromPath[ModelName],
        data: JSONBody[LimitBody],
        c: App,
        caller: Caller,
    ) -> QuotaPolicyOut:
        return policy_out(await c.quotas.set_model_limit(command_context(request, caller), caller, model, data.limit))

    @put("/tenant", operation_id="SetTenantQuotaCap")
    async def set_tenant_cap(
        self, request: Request[Any, Any, Any], data: JSONBody[CapBody], c: App, caller: Caller
    ) -> QuotaPolicyOut:
        return policy_out(await c.quotas.set_tenant_cap(command_context(request, caller), caller, data.cap))

    @put("/timezone", operation_id="SetQuotaTimezone")
    async def set_timezone(
        self, request: Request[Any, Any, Any], data: JSONBody[TimezoneBody], c: App, caller: Caller
    ) -> QuotaPolicyOut:
        return policy_out(await c.quotas.set_timezone(command_context(request, caller), caller, data.timezone))

    @put("/rate-limits", operation_id="SetRateLimits")
    async def set_rate_limits(
        self, request: Request[Any, Any, Any], data: JSONBody[RateLimitsBody], c: App, caller: Caller
    ) -> QuotaPolicyOut:
        caller.require_admin()
        limits = {f: getattr(data, f) for f in data.__struct_fields__ if getattr(data, f) is not UNSET}
        if not limits:
            raise Invalid("INVALID_RATE_LIMIT", "give at least one of: " + ", ".join(data.__struct_fields__))
        return policy_out(await c.quotas.set_rate_limits(command_context(request, caller), caller, **limits))
