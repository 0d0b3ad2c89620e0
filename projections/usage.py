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
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, func, literal_column, over, select, union_all
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.errors import Invalid
from domain.quotas import day_of
from projections.runtime import HandlesTypes
from schema.contract import (
    EventData,
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    QuotaPolicyCreated,
    QuotaTimezoneSet,
    RoleChanged,
    ToolResultPosted,
    UserRegistered,
    decode_data,
)
from schema.events import EventEnvelope
from schema.tables import (
    models,
    usage_daily,
    usage_generations,
    usage_monthly,
    usage_roles,
    usage_timezones,
    usage_tools,
    users,
)

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
_Finished = GenerationCompleted | GenerationFailed | GenerationCancelled
"""The events that bill a generation."""


def _uuid(value: Any) -> str | None:
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        return None


async def _day(conn: AsyncConnection, tenant: str, e: EventEnvelope) -> date:
    """The tenant-local day of the event."""
    timezone = (
        await conn.execute(select(usage_timezones.c.timezone).where(usage_timezones.c.tenant_id == tenant))
    ).scalar() or "UTC"
    try:
        return day_of(e.occurred_at, timezone)
    except (ValueError, KeyError):  # a zone this machine lacks: UTC rather than a stalled projector
        return day_of(e.occurred_at, "UTC")


def _tools_called(data: _Finished) -> list[str]:
    """The names of the tools a finished generation called: ``tool_names`` where recorded (so that an
    erasure, which empties the sealed ``tool_calls``, leaves the count), else from the calls."""
    if not isinstance(data, GenerationCompleted):
        return []
    if data.tool_names is not None:
        return data.tool_names
    return [call.name or "unknown" for call in data.tool_calls or ()]


async def _close_generation(conn: AsyncConnection, e: EventEnvelope) -> Any:
    """The finished generation leaves the open set as it is billed (a generation finishes once): its
    tenant, user, model and day, or None when it was already billed or never opened."""
    return (
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


async def _count_tool(conn: AsyncConnection, tenant: str, day: date, user: str, tool: str, **counts: float) -> None:
    t = usage_tools.c
    stmt = insert(usage_tools).values(tenant_id=tenant, day=day, user_id=user, tool=tool[:100], **counts)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "day", "user_id", "tool"],
            set_={name: t[name] + stmt.excluded[name] for name in counts},
        )
    )


# --- projector -----------------------------------------------------------------------------------------
class UsageProjector(HandlesTypes):
    name = "usage"
    tables: Sequence[Table] = (usage_daily, usage_monthly, usage_generations, usage_roles, usage_timezones, usage_tools)
    _types = frozenset(
        {
            "UserRegistered",
            "RoleChanged",
            "QuotaPolicyCreated",
            "QuotaTimezoneSet",
            "GenerationRequested",
            "ToolResultPosted",
            *_OUTCOMES,
        }
    )

    async def apply_many(self, conn: AsyncConnection, events: Sequence[EventEnvelope]) -> None:
        """The events in order, in few statements: sign-ups, requests and outcomes (most of a rebuild)
        are gathered in a ``_Batch`` and written together; any other event first writes what was
        gathered, then runs on its own (and what the batch had read may have changed)."""
        batch = _Batch(conn)
        for e in events:
            match data := decode_data(e.type, e.data):
                case UserRegistered():
                    batch.join(e, data)
                case RoleChanged() if str(e.aggregate_id) in batch.joined:
                    batch.joined[str(e.aggregate_id)]["role"] = data.role
                case GenerationRequested():
                    await batch.request(e, data)
                case GenerationCompleted() | GenerationFailed() | GenerationCancelled():
                    await batch.finish(e, data)
                case _:
                    await batch.write()
                    await self._apply(conn, e, data)
        await batch.write()

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        """One event (``apply_many`` does the same to a batch in fewer statements)."""
        await self._apply(conn, e, decode_data(e.type, e.data))

    async def _apply(self, conn: AsyncConnection, e: EventEnvelope, data: EventData) -> None:
        aggregate_id = str(e.aggregate_id)
        match data:
            case UserRegistered():
                tenant = _uuid(data.tenant_id)
                if tenant is not None:
                    await conn.execute(
                        insert(usage_roles)
                        .values(user_id=aggregate_id, tenant_id=tenant, role=data.role)
                        .on_conflict_do_nothing()
                    )
            case RoleChanged():
                await conn.execute(
                    usage_roles.update().where(usage_roles.c.user_id == aggregate_id).values(role=data.role)
                )
            case QuotaPolicyCreated():
                tenant = _uuid(data.tenant_id)
                if tenant is not None:
                    timezone = data.timezone[:64]
                    await conn.execute(
                        insert(usage_timezones)
                        .values(tenant_id=tenant, policy_id=aggregate_id, timezone=timezone)
                        .on_conflict_do_update(index_elements=["tenant_id"], set_={"timezone": timezone})
                    )
            case QuotaTimezoneSet():
                await conn.execute(
                    usage_timezones.update()
                    .where(usage_timezones.c.policy_id == aggregate_id)
                    .values(timezone=data.timezone[:64])
                )
            case GenerationRequested():
                await self._requested(conn, e, data)
            case ToolResultPosted():
                await self._tool_result(conn, e, data)
            case GenerationCompleted() | GenerationFailed() | GenerationCancelled():
                await self._finished(conn, e, data)

    async def _requested(self, conn: AsyncConnection, e: EventEnvelope, data: GenerationRequested) -> None:
        tenant, user = _uuid(data.tenant_id), str(data.user_id)
        if tenant is None:
            return
        model = data.model[:100]
        day = await _day(conn, tenant, e)
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
                reserved_tokens=data.reserved_tokens,
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
        # The monthly rollup takes the same delta in the same transaction (role: the latest, as daily's).
        monthly = insert(usage_monthly).values(
            tenant_id=tenant, month=day.replace(day=1), user_id=user, model=model, role=role, requests=1
        )
        await conn.execute(
            monthly.on_conflict_do_update(
                index_elements=["tenant_id", "month", "user_id", "model"],
                set_={"requests": usage_monthly.c.requests + 1, "role": monthly.excluded.role},
            )
        )

    async def _tool_result(self, conn: AsyncConnection, e: EventEnvelope, data: ToolResultPosted) -> None:
        """A tool's result handed back: counted for the user who handed it back, on the tool's name."""
        tenant = _uuid(e.tenant_id)
        if tenant is None:
            return
        await _count_tool(
            conn,
            tenant,
            await _day(conn, tenant, e),
            str(data.user_id),
            data.name or "unknown",
            results=1,
            result_bytes=data.size,
            result_latency_ms=data.latency_ms if data.latency_ms is not None else 0.0,
        )

    async def _finished(self, conn: AsyncConnection, e: EventEnvelope, data: _Finished) -> None:
        # The generation leaves the open set as it is billed: a generation finishes once.
        row = await _close_generation(conn, e)
        if row is None:
            return
        for name in _tools_called(data):
            await _count_tool(conn, row.tenant_id, row.day, row.user_id, name, calls=1)
        prompt, completion = data.prompt_tokens, data.completion_tokens
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
        mo = usage_monthly.c
        monthly_outcome = mo[_OUTCOMES[e.type]]
        await conn.execute(
            usage_monthly.update()
            .where(
                mo.tenant_id == row.tenant_id,
                mo.month == row.day.replace(day=1),
                mo.user_id == row.user_id,
                mo.model == row.model,
            )
            .values(
                {
                    mo.prompt_tokens: mo.prompt_tokens + prompt,
                    mo.completion_tokens: mo.completion_tokens + completion,
                    mo.total_tokens: mo.total_tokens + prompt + completion,
                    monthly_outcome: monthly_outcome + 1,
                }
            )
        )


_METRICS = ("prompt_tokens", "completion_tokens", "total_tokens", "requests", "completed", "failed", "cancelled")


class _Batch:
    """What ``UsageProjector.apply`` would write for a run of sign-ups, requests and outcomes, gathered in
    memory and written by ``write`` in one statement per table: a generation requested and finished in
    the run never enters ``usage_generations``; each (day or month, user, model) gets its requests and
    tokens added once, its role set to that of its latest request; rows only counted on (their requests
    were in an earlier run) are updated, never inserted, as ``_finished`` does. The tenants' time zones
    and users' roles are read once per run; only other events change them, and they end a run."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.joined: dict[str, dict[str, str]] = {}
        self.open: dict[str, dict[str, Any]] = {}
        self.daily: dict[tuple[str, date, str, str], dict[str, Any]] = {}
        self.monthly: dict[tuple[str, date, str, str], dict[str, Any]] = {}
        self.tool_calls: dict[tuple[str, date, str, str], int] = {}
        self.timezones: dict[str, str] = {}
        self.roles: dict[str, str] = {}

    def join(self, e: EventEnvelope, data: UserRegistered) -> None:
        tenant = _uuid(data.tenant_id)
        user = str(e.aggregate_id)
        if tenant is not None and user not in self.joined:  # the first insert wins, as on conflict
            self.joined[user] = {"user_id": user, "tenant_id": tenant, "role": data.role}

    async def _day(self, tenant: str, e: EventEnvelope) -> date:
        if tenant not in self.timezones:
            self.timezones[tenant] = (
                await self.conn.execute(select(usage_timezones.c.timezone).where(usage_timezones.c.tenant_id == tenant))
            ).scalar() or "UTC"
        try:
            return day_of(e.occurred_at, self.timezones[tenant])
        except (ValueError, KeyError):  # as ``_day``
            return day_of(e.occurred_at, "UTC")

    async def _role(self, user: str) -> str:
        if user in self.joined:
            return self.joined[user]["role"]
        if user not in self.roles:
            self.roles[user] = (
                await self.conn.execute(select(usage_roles.c.role).where(usage_roles.c.user_id == user))
            ).scalar() or "unknown"
        return self.roles[user]

    async def request(self, e: EventEnvelope, data: GenerationRequested) -> None:
        tenant, user = _uuid(data.tenant_id), str(data.user_id)
        if tenant is None:
            return
        model = data.model[:100]
        day = await self._day(tenant, e)
        role = await self._role(user)
        self.open.setdefault(
            str(e.aggregate_id),
            {
                "generation_id": str(e.aggregate_id),
                "tenant_id": tenant,
                "user_id": user,
                "model": model,
                "day": day,
                "reserved_tokens": data.reserved_tokens,
                "requested_at": e.occurred_at,
            },
        )
        for totals, period in ((self.daily, day), (self.monthly, day.replace(day=1))):
            counts = totals.setdefault((tenant, period, user, model), dict.fromkeys(_METRICS, 0))
            counts["requests"] += 1
            counts["role"] = role

    async def finish(self, e: EventEnvelope, data: _Finished) -> None:
        opened = self.open.pop(str(e.aggregate_id), None)
        if opened is None:
            row = await _close_generation(self.conn, e)
            if row is None:
                return
            tenant, user, model, day = row.tenant_id, row.user_id, row.model, row.day
        else:
            tenant, user, model, day = opened["tenant_id"], opened["user_id"], opened["model"], opened["day"]
        for name in _tools_called(data):
            key = (tenant, day, user, name[:100])
            self.tool_calls[key] = self.tool_calls.get(key, 0) + 1
        prompt, completion = data.prompt_tokens, data.completion_tokens
        for totals, period in ((self.daily, day), (self.monthly, day.replace(day=1))):
            counts = totals.setdefault((tenant, period, user, model), dict.fromkeys(_METRICS, 0))
            counts["prompt_tokens"] += prompt
            counts["completion_tokens"] += completion
            counts["total_tokens"] += prompt + completion
            counts[_OUTCOMES[e.type]] += 1

    async def write(self) -> None:
        conn = self.conn
        if self.joined:
            await conn.execute(insert(usage_roles).on_conflict_do_nothing(), list(self.joined.values()))
        if self.open:
            await conn.execute(insert(usage_generations).on_conflict_do_nothing(), list(self.open.values()))
        await _add_totals(conn, usage_daily, "day", self.daily)
        await _add_totals(conn, usage_monthly, "month", self.monthly)
        if self.tool_calls:
            stmt = insert(usage_tools)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["tenant_id", "day", "user_id", "tool"],
                    set_={"calls": usage_tools.c.calls + stmt.excluded.calls},
                ),
                [
                    {"tenant_id": t, "day": d, "user_id": u, "tool": tool, "calls": n}
                    for (t, d, u, tool), n in self.tool_calls.items()
                ],
            )
        for gathered in (self.joined, self.open, self.daily, self.monthly, self.tool_calls, self.timezones, self.roles):
            gathered.clear()


async def _add_totals(
    conn: AsyncConnection, table: Table, period: str, totals: dict[tuple[str, date, str, str], dict[str, Any]]
) -> None:
    """Add the gathered counts to ``table`` (``usage_daily`` or ``usage_monthly``): rows with requests are
    upserted (and take the role of the latest); rows with outcomes only are updated, never inserted."""
    c = table.c
    requested, counted = [], []
    for (tenant, when, user, model), counts in totals.items():
        row = {"tenant_id": tenant, period: when, "user_id": user, "model": model, **counts}
        (requested if counts["requests"] else counted).append(row)
    if requested:
        stmt = insert(table)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", period, "user_id", "model"],
                set_={"role": stmt.excluded.role, **{m: c[m] + stmt.excluded[m] for m in _METRICS}},
            ),
            requested,
        )
    if counted:
        key = {name: bindparam(f"k_{name}") for name in ("tenant_id", period, "user_id", "model")}
        await conn.execute(
            table.update()
            .where(*(c[name] == param for name, param in key.items()))
            .values({c[m]: c[m] + bindparam(f"d_{m}", type_=c[m].type) for m in _METRICS}),
            [
                {**{f"k_{name}": row[name] for name in key}, **{f"d_{m}": row[m] for m in _METRICS}}
                for row in counted
            ],
        )


# --- queries -------------------------------------------------------------------------------------------
EARLIEST_DAY = date(1970, 1, 1)
LATEST_DAY = date(9999, 10, 31)
"""Reports cover days in this range: month arithmetic on the calendar's last months would overflow."""


def report_range(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """The days a report covers: ``from``..``to`` as given, ``to`` defaulting to today and ``from`` to the
    30 days up to ``to``; each checked before any arithmetic on it."""
    end = end or today
    _check_day("to", end)
    start = start or max(EARLIEST_DAY, end - timedelta(days=29))
    check_report(start, end)
    return start, end


def _check_day(name: str, day: date) -> None:
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise Invalid("INVALID_DATE", f"'{name}' lies between {EARLIEST_DAY} and {LATEST_DAY}", field=name)


def check_report(start: date, end: date, group_by: str | None = None) -> None:
    """The rules a report's arguments follow, for the API and the CLI alike."""
    _check_day("from", start)
    _check_day("to", end)
    if group_by is not None and group_by not in GROUPINGS:
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


def _whole_months(start: date, end: date) -> tuple[date, date] | None:
    """The first day of the first and of the last calendar month lying wholly inside [start, end], if any."""
    first = start if start.day == 1 else (start.replace(day=1) + timedelta(days=32)).replace(day=1)
    after_end = end + timedelta(days=1)
    last_end = after_end.replace(day=1) - timedelta(days=1)  # the last day of the last whole month
    if first > last_end:
        return None
    return first, last_end.replace(day=1)


def _rows(table: Table, period: Any, group_by: str, where: list[Any], ranges: list[Any]) -> Any:
    """The report's key and metrics of the rows of ``table`` that the filters and ``ranges`` select."""
    c = table.c
    key = {"user": c.user_id, "model": c.model, "role": c.role, "day": period}[group_by]
    return select(key.label("key"), *[c[m] for m in METRICS]).where(*[w(c) for w in where], *ranges)


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
    (oldest first). ``limit`` None gives every group (exports).

    Whole months inside the range are read from the monthly rollup, the partial months at its edges from
    the daily rows. By day and by role read daily rows only: a day needs its own row, and a role is the
    user's at their latest request of the *day* (the monthly row keeps only the month's latest). The page
    and the totals (window functions over the grouped rows) come from one query."""
    check_report(start, end, group_by)
    tenant = _uuid(tenant_id)
    if tenant is None:
        return UsageReport([], 0, dict.fromkeys(METRICS, 0))
    where: list[Any] = [lambda c: c.tenant_id == tenant]
    if user_id is not None:
        wanted = _uuid(user_id)
        if wanted is None:
            return UsageReport([], 0, dict.fromkeys(METRICS, 0))
        where.append(lambda c: c.user_id == wanted)
    if model is not None:
        where.append(lambda c: c.model == model)
    d, mo = usage_daily.c, usage_monthly.c
    months = _whole_months(start, end) if group_by in ("user", "model") else None
    if months is None:
        rows: Any = _rows(usage_daily, d.day, group_by, where, [d.day >= start, d.day <= end]).subquery("r")
    else:
        first, last = months
        after = (last + timedelta(days=32)).replace(day=1)  # the day after the last whole month
        parts = [_rows(usage_monthly, mo.month, group_by, where, [mo.month >= first, mo.month <= last])]
        if start < first:
            parts.append(_rows(usage_daily, d.day, group_by, where, [d.day >= start, d.day < first]))
        if after <= end:
            parts.append(_rows(usage_daily, d.day, group_by, where, [d.day >= after, d.day <= end]))
        rows = (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("r")
    sums = [func.coalesce(func.sum(rows.c[m]), 0).label(m) for m in METRICS]
    # Materialized: the groups are computed in full (the window needs them all anyway), so that the planner
    # does not pick an ordered index scan for the page's ORDER BY ... LIMIT and aggregate the year in order.
    grouped = select(rows.c.key.label("key"), *sums).group_by(rows.c.key).cte("g").prefix_with("MATERIALIZED")
    order = [grouped.c.key] if group_by in ("day", "role") else [grouped.c.total_tokens.desc(), grouped.c.key]
    window = [over(func.count(literal_column("*"))).label("_groups")] + [
        over(func.sum(grouped.c[m])).label(f"_total_{m}") for m in METRICS
    ]
    columns: list[Any] = [grouped, *window]
    source: Any = grouped
    if group_by == "user":
        source = grouped.outerjoin(users, (users.c.user_id == grouped.c.key) & (users.c.tenant_id == tenant))
        columns += [users.c.email, users.c.name]
    page = select(*columns).select_from(source).order_by(*order).offset(max(0, offset))
    if limit is not None:
        page = page.limit(limit)
    async with engine.connect() as conn:
        result = (await conn.execute(page)).all()
        if result:
            first_row = result[0]
            total = int(first_row._groups)
            totals = {m: int(getattr(first_row, f"_total_{m}")) for m in METRICS}
        elif offset > 0 or limit == 0:  # an empty page, but groups may exist: count them apart
            totals_stmt = select(
                func.count(literal_column("*")).label("groups"),
                *[func.coalesce(func.sum(grouped.c[m]), 0).label(m) for m in METRICS],
            ).select_from(grouped)
            summary = (await conn.execute(totals_stmt)).one()
            total = int(summary.groups)
            totals = {m: int(getattr(summary, m)) for m in METRICS}
        else:
            total, totals = 0, dict.fromkeys(METRICS, 0)
    items = []
    for r in result:
        item: dict[str, Any] = {group_by if group_by != "user" else "user_id": r.key}
        if group_by == "user":
            item.update(email=r.email, name=r.name)
        item.update({m: int(getattr(r, m)) for m in METRICS})
        items.append(item)
    return UsageReport(items, total, totals)


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


async def tool_usage(
    engine: AsyncEngine, tenant_id: str, *, start: date, end: date, user_id: str | uuid.UUID | None = None
) -> list[dict[str, Any]]:
    """Per tool over tenant-local days ``start``..``end``: the calls answers made, the results handed back,
    their bytes and mean time from call to result; most called first."""
    tenant = _uuid(tenant_id)
    if tenant is None:
        return []
    t = usage_tools.c
    where = [t.tenant_id == tenant, t.day >= start, t.day <= end]
    if user_id is not None:
        where.append(t.user_id == _uuid(user_id))
    stmt = (
        select(
            t.tool,
            func.sum(t.calls).label("calls"),
            func.sum(t.results).label("results"),
            func.sum(t.result_bytes).label("result_bytes"),
            func.sum(t.result_latency_ms).label("latency"),
        )
        .where(*where)
        .group_by(t.tool)
        .order_by(func.sum(t.calls).desc(), t.tool)
    )
    async with engine.connect() as conn:
        rows = await conn.execute(stmt)
        return [
            {
                "tool": r.tool,
                "calls": int(r.calls),
                "results": int(r.results),
                "result_bytes": int(r.result_bytes),
                "mean_result_latency_ms": round(float(r.latency) / int(r.results), 1) if r.results else None,
            }
            for r in rows
        ]


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
