"""The usage read model: tokens and requests per tenant, tenant-local day, user and model, pre-aggregated
by the projector so that reports never scan raw events; and the report queries the API and CLI serve.

Attribution: a generation's usage belongs to the tenant-local day on which it was *requested* (so one that
runs over midnight does not move), in the time zone the tenant's quota policy had then (UTC without one).
Its request is counted when requested; its tokens when it finishes: completed, failed or cancelled, since a
failed or cancelled generation is billed for what it produced. ``role`` is the user's role at their latest
request of that day. Times come from the events, never from the clock, so a rebuild equals the live model.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Table, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.errors import Invalid
from domain.quotas import day_of
from schema.events import EventEnvelope
from schema.tables import models, usage_daily, usage_generations, usage_roles, usage_timezones, users

__all__ = [
    "GROUPINGS",
    "MAX_RANGE_DAYS",
    "UsageProjector",
    "UsageReport",
    "check_report",
    "report_csv",
    "usage_of_day",
    "usage_report",
    "model_exists",
]

GROUPINGS = ("user", "model", "role", "day")
MAX_RANGE_DAYS = 366
METRICS = ("prompt_tokens", "completion_tokens", "total_tokens", "requests", "completed", "failed", "cancelled")
_OUTCOMES = {"GenerationCompleted": "completed", "GenerationFailed": "failed", "GenerationCancelled": "cancelled"}


def _uuid(value: Any) -> str | None:
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        return None


def _tokens(value: Any) -> int:
    """A token count from an event: a non-negative int, whatever an odd event holds."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


# --- projector -----------------------------------------------------------------------------------------
class UsageProjector:
    name = "usage"
    tables: Sequence[Table] = (usage_daily, usage_generations, usage_roles, usage_timezones)
    _types = frozenset(
        {
            "UserRegistered",
            "RoleChanged",
            "QuotaPolicyCreated",
            "QuotaTimezoneSet",
            "GenerationRequested",
            *_OUTCOMES,
        }
    )

    def handles(self, event_type: str) -> bool:
        return event_type in self._types

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        d = e.data
        aggregate_id = str(e.aggregate_id)
        match e.type:
            case "UserRegistered":
                tenant = _uuid(d.get("tenant_id"))
                if tenant is not None:
                    await conn.execute(
                        insert(usage_roles)
                        .values(user_id=aggregate_id, tenant_id=tenant, role=str(d.get("role") or "user")[:20])
                        .on_conflict_do_nothing()
                    )
            case "RoleChanged":
                await conn.execute(
                    usage_roles.update()
                    .where(usage_roles.c.user_id == aggregate_id)
                    .values(role=str(d.get("role") or "user")[:20])
                )
            case "QuotaPolicyCreated":
                tenant = _uuid(d.get("tenant_id"))
                if tenant is not None:
                    timezone = str(d.get("timezone") or "UTC")[:64]
                    await conn.execute(
                        insert(usage_timezones)
                        .values(tenant_id=tenant, policy_id=aggregate_id, timezone=timezone)
                        .on_conflict_do_update(index_elements=["tenant_id"], set_={"timezone": timezone})
                    )
            case "QuotaTimezoneSet":
                await conn.execute(
                    usage_timezones.update()
                    .where(usage_timezones.c.policy_id == aggregate_id)
                    .values(timezone=str(d.get("timezone") or "UTC")[:64])
                )
            case "GenerationRequested":
                await self._requested(conn, e)
            case _:
                await self._finished(conn, e)

    async def _requested(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        d = e.data
        tenant, user = _uuid(d.get("tenant_id")), _uuid(d.get("user_id"))
        if tenant is None or user is None:
            return
        model = str(d.get("model") or "")[:100]
        timezone = (
            await conn.execute(select(usage_timezones.c.timezone).where(usage_timezones.c.tenant_id == tenant))
        ).scalar() or "UTC"
        try:
            day = day_of(e.occurred_at, timezone)
        except (ValueError, KeyError):  # a zone this machine lacks: UTC rather than a stalled projector
            day = day_of(e.occurred_at, "UTC")
        role = (
            await conn.execute(select(usage_roles.c.role).where(usage_roles.c.user_id == user))
        ).scalar() or "unknown"
        await conn.execute(
            insert(usage_generations)
            .values(
                generation_id=str(e.aggregate_id),
                tenant_id=tenant,
                user_id=user,
                model=model,
                day=day,
                reserved_tokens=_tokens(d.get("reserved_tokens")),
                requested_at=e.occurred_at,
            )
            .on_conflict_do_nothing()
        )
        stmt = insert(usage_daily).values(tenant_id=tenant, day=day, user_id=user, model=model, role=role, requests=1)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", "day", "user_id", "model"],
                set_={"requests": usage_daily.c.requests + 1, "role": stmt.excluded.role},
            )
        )

    async def _finished(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        # The generation leaves the open set as it is billed: a generation finishes once.
        row = (
            await conn.execute(
                usage_generations.delete()
                .where(usage_generations.c.generation_id == str(e.aggregate_id))
                .returning(
                    usage_generations.c.tenant_id,
                    usage_generations.c.user_id,
                    usage_generations.c.model,
                    usage_generations.c.day,
                )
            )
        ).first()
        if row is None:
            return
        prompt, completion = _tokens(e.data.get("prompt_tokens")), _tokens(e.data.get("completion_tokens"))
        outcome = usage_daily.c[_OUTCOMES[e.type]]
        u = usage_daily.c
        await conn.execute(
            usage_daily.update()
            .where(u.tenant_id == row.tenant_id, u.day == row.day, u.user_id == row.user_id, u.model == row.model)
            .values(
                {
                    u.prompt_tokens: u.prompt_tokens + prompt,
                    u.completion_tokens: u.completion_tokens + completion,
                    u.total_tokens: u.total_tokens + prompt + completion,
                    outcome: outcome + 1,
                }
            )
        )


# --- queries -------------------------------------------------------------------------------------------
def check_report(start: date, end: date, group_by: str) -> None:
    """The rules a report's arguments follow, for the API and the CLI alike."""
    if group_by not in GROUPINGS:
        raise Invalid("INVALID_GROUP_BY", f"group_by must be one of {', '.join(GROUPINGS)}", field="group_by")
    if end < start:
        raise Invalid("INVALID_RANGE", "'from' must not be after 'to'", field="from")
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise Invalid("RANGE_TOO_LONG", f"a report covers at most {MAX_RANGE_DAYS} days", field="to")


@dataclass(frozen=True)
class UsageReport:
    items: list[dict[str, Any]]
    total: int
    """How many groups match (for paging)."""
    totals: dict[str, int]
    """Sums over every matching group, not just this page."""


def _sums() -> list[Any]:
    return [func.coalesce(func.sum(usage_daily.c[m]), 0).label(m) for m in METRICS]


async def usage_report(
    engine: AsyncEngine,
    tenant_id: str,
    *,
    start: date,
    end: date,
    group_by: str,
    user_id: str | uuid.UUID | None = None,
    model: str | None = None,
    limit: int | None = 50,
    offset: int = 0,
) -> UsageReport:
    """Usage of the tenant from ``start`` to ``end`` (tenant-local days, inclusive), one item per group:
    by user (most tokens first, with email and name), by model (most tokens first), by role, or by day
    (oldest first). ``limit`` None gives every group (exports)."""
    check_report(start, end, group_by)
    tenant = _uuid(tenant_id)
    if tenant is None:
        return UsageReport([], 0, dict.fromkeys(METRICS, 0))
    u = usage_daily.c
    where = [u.tenant_id == tenant, u.day >= start, u.day <= end]
    if user_id is not None:
        wanted = _uuid(user_id)
        if wanted is None:
            return UsageReport([], 0, dict.fromkeys(METRICS, 0))
        where.append(u.user_id == wanted)
    if model is not None:
        where.append(u.model == model)
    key = {"user": u.user_id, "model": u.model, "role": u.role, "day": u.day}[group_by]
    grouped = select(key.label("key"), *_sums()).where(*where).group_by(key).subquery("g")
    order = [grouped.c.key] if group_by in ("day", "role") else [grouped.c.total_tokens.desc(), grouped.c.key]
    columns: list[Any] = [grouped]
    source: Any = grouped
    if group_by == "user":
        source = grouped.outerjoin(users, (users.c.user_id == grouped.c.key) & (users.c.tenant_id == tenant))
        columns += [users.c.email, users.c.name]
    page = select(*columns).select_from(source).order_by(*order).offset(max(0, offset))
    if limit is not None:
        page = page.limit(limit)
    totals_stmt = select(
        func.count(literal_column("*")).label("groups"),
        *[func.coalesce(func.sum(grouped.c[m]), 0).label(m) for m in METRICS],
    ).select_from(grouped)
    async with engine.connect() as conn:
        summary = (await conn.execute(totals_stmt)).one()
        rows = (await conn.execute(page)).all()
    items = []
    for r in rows:
        item: dict[str, Any] = {group_by if group_by != "user" else "user_id": r.key}
        if group_by == "user":
            item.update(email=r.email, name=r.name)
        item.update({m: int(getattr(r, m)) for m in METRICS})
        items.append(item)
    return UsageReport(items, int(summary.groups), {m: int(getattr(summary, m)) for m in METRICS})


def report_csv(report: UsageReport, group_by: str) -> str:
    """The report's items as CSV (RFC 4180 quoting, a header row)."""
    keys = ["user_id", "email", "name"] if group_by == "user" else [group_by]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*keys, *METRICS])
    for item in report.items:
        writer.writerow([_csv_cell(item[k]) for k in keys] + [item[m] for m in METRICS])
    return out.getvalue()


def _csv_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A cell that a spreadsheet would run as a formula is quoted as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def usage_of_day(engine: AsyncEngine, tenant_id: str, user_id: str | uuid.UUID, day: date) -> dict[str, Any]:
    """One user's usage on one day per model, and the tenant's total that day (for its daily cap)."""
    tenant, user = _uuid(tenant_id), _uuid(user_id)
    if tenant is None or user is None:
        return {"models": {}, "tenant_total": 0}
    u = usage_daily.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(u.model, *[u[m] for m in METRICS]).where(u.tenant_id == tenant, u.day == day, u.user_id == user)
        )
        per_model = {r.model: {m: int(getattr(r, m)) for m in METRICS} for r in rows}
        tenant_total = (
            await conn.execute(
                select(func.coalesce(func.sum(u.total_tokens), 0)).where(u.tenant_id == tenant, u.day == day)
            )
        ).scalar_one()
    return {"models": per_model, "tenant_total": int(tenant_total)}


async def model_exists(engine: AsyncEngine, tenant_id: str, name: str) -> bool:
    """Whether the tenant has (or had) a model by that name: registered, or seen in its usage."""
    tenant = _uuid(tenant_id)
    if tenant is None:
        return False
    async with engine.connect() as conn:
        registered = await conn.execute(
            select(models.c.model_id).where(models.c.tenant_id == tenant, models.c.name == name).limit(1)
        )
        if registered.first() is not None:
            return True
        used = await conn.execute(
            select(usage_daily.c.model).where(usage_daily.c.tenant_id == tenant, usage_daily.c.model == name).limit(1)
        )
        return used.first() is not None
