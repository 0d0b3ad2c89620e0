"""Token usage: the caller's own today (with limits and what remains), and the tenant's reports (for its
admins and auditors).

Answers come from the usage read model, which follows the event store within moments; the quota ledger
(Redis) is what admits requests, so ``remaining`` here is informational and may lag a running generation.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, MediaType, Response, get
from litestar.params import QueryParameter

from api.deps import App, Caller
from api.openapi import alternative
from domain.errors import NotFound
from domain.quotas import QuotaPolicy, day_of, next_midnight, policy_id_for
from projections.conversations import list_models
from projections.identity import get_user_row
from projections.ratings import satisfaction_by_model
from projections.usage import (
    check_report,
    model_exists,
    report_csv,
    report_range,
    tool_usage,
    usage_of_day,
    usage_report,
)

__all__ = ["UsageController"]


class ModelUsage(msgspec.Struct, kw_only=True):
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    requests: int
    limit: int | None
    """The limit that binds first on this model (per user, per user and model, or the tenant cap);
    null when none applies."""
    limit_kind: str | None
    remaining: int | None


class MyUsage(msgspec.Struct, kw_only=True):
    day: date
    timezone: str
    reset_at: datetime
    role: str
    total_tokens: int
    limit: int | None
    """The caller's daily limit over all models (their override, else their role's); null: unlimited."""
    remaining: int | None
    models: list[ModelUsage]


class UsageTotals(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    requests: int
    completed: int
    failed: int
    cancelled: int


class UsagePage(msgspec.Struct, kw_only=True):
    group_by: str
    start: date = msgspec.field(name="from")
    end: date = msgspec.field(name="to")
    timezone: str
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int
    totals: UsageTotals


async def _policy(c: Any, tenant_id: str) -> QuotaPolicy:
    """The tenant's quota policy; the defaults (in memory, never saved) when it has none."""
    policy = await c.store.call(c.store.find, QuotaPolicy, policy_id_for(tenant_id))
    return policy if policy is not None else QuotaPolicy(tenant_id=tenant_id)


def _remaining(limits: list[tuple[str, int]], used: dict[str, int]) -> tuple[int | None, str | None, int | None]:
    """(limit, kind, remaining) of the limit with the least left, or Nones when nothing limits."""
    best: tuple[int | None, str | None, int | None] = (None, None, None)
    for kind, limit in limits:
        left = max(0, limit - used.get(kind, 0))
        if best[2] is None or left < best[2]:
            best = (limit, kind.split(":", 1)[0], left)
    return best


class UsageController(Controller):
    path = "/api/v1/usage"
    tags = ["usage"]

    @get("/me", operation_id="GetMyUsage")
    async def me(self, c: App, caller: Caller) -> MyUsage:
        policy = await _policy(c, caller.tenant_id)
        now = datetime.now(UTC)
        today = day_of(now, policy.timezone)
        usage = await usage_of_day(c.engine, caller.tenant_id, caller.user_id, today)
        per_model: dict[str, dict[str, int]] = usage["models"]
        mine = sum(m["total_tokens"] for m in per_model.values())
        names = set(per_model) | {
            m["name"] for m in await list_models(c.engine, caller.tenant_id, caller.user_id, caller.role)
        }
        items = []
        for name in sorted(names):
            used = per_model.get(name, {})
            limit, kind, remaining = _remaining(
                policy.limits_for(caller.user_id, caller.role, name),
                {"user": mine, f"user_model:{name}": used.get("total_tokens", 0), "tenant": usage["tenant_total"]},
            )
            items.append(
                ModelUsage(
                    model=name,
                    prompt_tokens=used.get("prompt_tokens", 0),
                    completion_tokens=used.get("completion_tokens", 0),
                    total_tokens=used.get("total_tokens", 0),
                    requests=used.get("requests", 0),
                    limit=limit,
                    limit_kind=kind,
                    remaining=remaining,
                )
            )
        own = [(k, v) for k, v in policy.limits_for(caller.user_id, caller.role, "") if k == "user"]
        limit, _, remaining = _remaining(own, {"user": mine})
        return MyUsage(
            day=today,
            timezone=policy.timezone,
            reset_at=next_midnight(now, policy.timezone),
            role=caller.role,
            total_tokens=mine,
            limit=limit,
            remaining=remaining,
            models=items,
        )

    @get("/", operation_id="GetUsageReport", responses={200: alternative("text/csv", "with `format=csv`: every group")})
    async def report(
        self,
        c: App,
        caller: Caller,
        group_by: Annotated[str, QueryParameter(max_length=20)] = "user",
        start: Annotated[date | None, QueryParameter(name="from")] = None,
        end: Annotated[date | None, QueryParameter(name="to")] = None,
        user_id: Annotated[UUID | None, QueryParameter()] = None,
        model: Annotated[str | None, QueryParameter(min_length=1, max_length=100)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=10_000_000)] = 0,
        format: Annotated[str, QueryParameter(pattern="^(json|csv)$")] = "json",  # noqa: A002 - the wire name
    ) -> Response[UsagePage]:
        """Usage of the caller's tenant over tenant-local days ``from``..``to`` (default: the last 30),
        grouped by user, model, role or day, with totals over every group; ``format=csv`` exports every
        group (no paging)."""
        caller.require_auditor()
        policy = await _policy(c, caller.tenant_id)
        start, end = report_range(start, end, day_of(datetime.now(UTC), policy.timezone))
        check_report(start, end, group_by)
        if user_id is not None and await get_user_row(c.engine, caller.tenant_id, str(user_id)) is None:
            raise NotFound("USER_NOT_FOUND", "no such user in this tenant", user_id=str(user_id))
        if model is not None and not await model_exists(c.engine, caller.tenant_id, model):
            raise NotFound("MODEL_NOT_FOUND", f"no model named '{model}'", model=model)
        report = await usage_report(
            c.engine,
            caller.tenant_id,
            start=start,
            end=end,
            group_by=group_by,
            user_id=user_id,
            model=model,
            limit=None if format == "csv" else limit,
            offset=0 if format == "csv" else offset,
        )
        if format == "csv":
            filename = f"usage-{group_by}-{start.isoformat()}-{end.isoformat()}.csv"
            return Response(
                content=report_csv(report, group_by),
                media_type="text/csv",  # the response adds the charset
                headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            )
        page = UsagePage(
            group_by=group_by,
            start=start,
            end=end,
            timezone=policy.timezone,
            items=report.items,
            total=report.total,
            limit=limit,
            offset=offset,
            totals=UsageTotals(**report.totals),
        )
        return Response(content=page, media_type=MediaType.JSON)

    @get("/tools", operation_id="GetToolUsage")
    async def tools(
        self,
        c: App,
        caller: Caller,
        start: Annotated[date | None, QueryParameter(name="from")] = None,
        end: Annotated[date | None, QueryParameter(name="to")] = None,
        user_id: Annotated[UUID | None, QueryParameter()] = None,
    ) -> dict[str, Any]:
        """Tool calls of the caller's tenant over tenant-local days ``from``..``to`` (default: the last 30),
        per tool: the calls models made, the results clients handed back, their bytes and the mean time
        from call to result."""
        caller.require_auditor()
        policy = await _policy(c, caller.tenant_id)
        start, end = report_range(start, end, day_of(datetime.now(UTC), policy.timezone))
        items = await tool_usage(c.engine, caller.tenant_id, start=start, end=end, user_id=user_id)
        return {"from": start.isoformat(), "to": end.isoformat(), "timezone": policy.timezone, "items": items}

    @get("/satisfaction", operation_id="GetSatisfactionByModel")
    async def satisfaction(
        self,
        c: App,
        caller: Caller,
        start: Annotated[date | None, QueryParameter(name="from")] = None,
        end: Annotated[date | None, QueryParameter(name="to")] = None,
    ) -> dict[str, Any]:
        """Ratings of the caller's tenant's answers per model, by when each was last rated on tenant-local
        days ``from``..``to`` (default: the last 30): thumbs up, down, and the share of ups."""
        caller.require_auditor()
        policy = await _policy(c, caller.tenant_id)
        start, end = report_range(start, end, day_of(datetime.now(UTC), policy.timezone))
        check_report(start, end, "model")
        items = await satisfaction_by_model(c.engine, caller.tenant_id, start=start, end=end, timezone=policy.timezone)
        return {"from": start.isoformat(), "to": end.isoformat(), "timezone": policy.timezone, "items": items}
