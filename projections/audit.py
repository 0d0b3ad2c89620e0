"""The audit trail: one row per event, hash-chained per tenant, and the queries the audit API serves.

Why a chain: the audit log is what an admin shows an auditor, so a quietly edited, deleted or inserted
row must be detectable. Each row's hash covers its content and the previous row's hash; ``audit_heads``
anchors each tenant's newest (seq, hash), so even dropping or appending a row at the end shows. Anyone who
can rewrite every row *and* the head can still forge a consistent chain; signed checkpoints of the heads
kept outside the database (``adapters/checkpoints.py``) close that: ``verify_chain(..., anchors=...)``
holds the chain to them. The event store stays the truth from which ``rebuild`` recreates the log exactly.

The hash is computed by one function, ``row_hash``, from values normalised so that what Postgres hands
back (timestamps in the session's time zone, JSONB numbers) hashes the same as what was written.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol
from uuid import UUID

import msgspec
from sqlalchemy import Table, delete, select, union
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from projections.runtime import copy_rows
from schema.events import EventEnvelope
from schema.tables import audit_heads, audit_log

__all__ = [
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "PLATFORM_TENANT",
    "Anchor",
    "AuditProjector",
    "ChainProblem",
    "audit_row",
    "canonical_json",
    "chain_heads",
    "open_details",
    "query_audit",
    "redact",
    "row_hash",
    "verify_chain",
]

GENESIS_HASH = "0" * 64
PLATFORM_TENANT = "platform"
"""Where events without a tenant (platform administration) are chained."""

HASHED_FIELDS = (
    "tenant_id",
    "seq",
    "notification_id",
    "event_id",
    "occurred_at",
    "actor",
    "action",
    "target_type",
    "target_id",
    "ip",
    "user_agent",
    "correlation_id",
    "detail",
    "prev_hash",
)
"""Every column but ``hash`` (and ``via``, hashed only where set, so rows from before it hash as they did).
Part of the hash format: changing it means rebuilding the audit log."""

MAX_PAGE = 500

# Keys that name a secret. Counts of tokens ("prompt_tokens", "max_tokens") are not secrets and stay.
_SENSITIVE_KEY = re.compile(r"password|secret|hash|token(?!s)")
_KEPT_KEYS = frozenset({"token_kind"})
# Keys whose value is bulk content (a document's chunks): the audit row records how many, not the text.
_BULK_KEYS = frozenset({"chunks"})


# --- the row and its hash ------------------------------------------------------------------------------
def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _clean_text(value: str) -> str:
    # Postgres rejects NUL and lone surrogates; one bad event must not stall the projection.
    if value.isascii():  # the common case, and the same result: ASCII has no surrogates to replace
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


@lru_cache(maxsize=4096, typed=True)
def _kept_key(key: Any) -> str | None:
    """The key as ``redact`` writes it, or None for a key that names a secret."""
    if key in _KEPT_KEYS or not _SENSITIVE_KEY.search(str(key).lower()):
        return _clean_text(str(key))
    return None


_UNCHANGED = frozenset({str, int, bool, type(None)})
"""Types ``_canonical`` leaves as they are (``redact`` too, but for cleaning text)."""


def redact(value: Any) -> Any:
    """``value`` without keys that name a secret (at any depth), with text Postgres can store, integral
    floats as integers: the form ``row_hash`` hashes, so a row's detail needs no canonicalising."""
    return _redact(value, [])


def _redact(value: Any, floats: list[float]) -> Any:
    """``redact``, noting in ``floats`` the (non-integral) floats it keeps."""
    kind = type(value)
    if kind is str:
        return _clean_text(value)
    if kind is int or kind is bool or value is None:
        return value
    if isinstance(value, Mapping):
        kept: dict[str, Any] = {}
        for key, item in value.items():  # the common items inline: this runs for every audited event
            name = _kept_key(key)
            if name is None:
                continue
            item_kind = type(item)
            if item_kind is str:
                kept[name] = _clean_text(item)
            elif item_kind is int or item_kind is bool or item is None:
                kept[name] = item
            elif key in _BULK_KEYS and isinstance(item, list):
                kept[name] = {"count": len(item)}
            else:
                kept[name] = _redact(item, floats)
        return kept
    if isinstance(value, list | tuple):
        return [_redact(item, floats) for item in value]
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)  # JSON has no NaN or infinity
        if value.is_integer():
            return int(value)  # as JSONB gives it back (1e20 comes back an integer): already canonical
        floats.append(value)
    return value


def _canonical(value: Any) -> Any:
    # JSONB gives 1e20 back as the integer 100000000000000000000: hash integral floats as integers.
    kind = type(value)
    if kind in _UNCHANGED:  # most values: nothing to do
        return value
    if kind is dict:
        return {key: item if type(item) in _UNCHANGED else _canonical(item) for key, item in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def row_hash(row: Mapping[Any, Any], *, plain: bool = False) -> str:
    """sha256 hex of ``prev_hash`` + the canonical JSON of the row's ``HASHED_FIELDS``. ``plain``: the row's
    detail came from ``redact`` holding no float, so it is canonical as it is (a row read back is walked)."""
    content = {name: row[name] for name in HASHED_FIELDS}
    if row.get("via") is not None:
        content["via"] = row["via"]
    content["event_id"] = str(content["event_id"])
    content["occurred_at"] = _utc(content["occurred_at"]).isoformat(timespec="microseconds")
    text = canonical_json(content) if plain else _CANONICAL_JSON.encode(_canonical(content))
    return hashlib.sha256((row["prev_hash"] + text).encode()).hexdigest()


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
"""What ``json.dumps(..., sort_keys=True, separators=(",", ":"), allow_nan=False)`` builds on every call:
the canonical form every chain is hashed over."""
_SORTED_JSON = msgspec.json.Encoder(order="sorted")


def canonical_json(content: Mapping[str, Any]) -> str:
    """``_CANONICAL_JSON.encode(content)`` for float-free content, three times faster where it can be:
    msgspec writes the same text wherever its output is printable ASCII without an escape (it writes
    floats, escapes and other characters differently, so for those the stdlib's encoder does it)."""
    fast = _SORTED_JSON.encode(content)
    if fast.isascii() and b"\\" not in fast and b"\x7f" not in fast:
        return fast.decode()
    return _CANONICAL_JSON.encode(content)


_LENGTH: dict[str, int | None] = {column.name: getattr(column.type, "length", None) for column in audit_log.columns}


def _fit(column: str, value: str | None) -> str | None:
    """``value`` as ``audit_log``'s ``column`` can hold it."""
    if value is None:
        return None
    length = _LENGTH[column]
    text = _clean_text(value)
    return text[:length] if length else text


def audit_row(event: EventEnvelope, *, seq: int, prev_hash: str) -> dict[str, Any]:
    """The audit row recording ``event`` as number ``seq`` of its tenant's chain, hash included."""
    floats: list[float] = []
    row: dict[str, Any] = {
        "tenant_id": _fit("tenant_id", event.tenant_id or PLATFORM_TENANT),
        "seq": seq,
        "notification_id": event.id,
        "event_id": str(event.event_id),
        "occurred_at": _utc(event.occurred_at),
        "actor": _fit("actor", event.actor),
        "via": _fit("via", event.via),
        "action": _fit("action", event.type),
        "target_type": _fit("target_type", event.aggregate_type),
        "target_id": _fit("target_id", str(event.aggregate_id)),
        "ip": _fit("ip", event.ip),
        "user_agent": _fit("user_agent", event.user_agent),
        "correlation_id": _fit("correlation_id", event.correlation_id),
        "detail": _redact(event.data, floats),
        "prev_hash": prev_hash,
    }
    row["hash"] = row_hash(row, plain=not floats)
    return row


# --- the projector -------------------------------------------------------------------------------------
class AuditProjector:
    name: str = "audit"
    tables: Sequence[Table] = (audit_log, audit_heads)
    sealed = True
    """Rows keep personal fields sealed: the chain is over ciphertext, so it still verifies after a key is
    destroyed, and reading the content needs the key (and a stated reason)."""

    def handles(self, event_type: str) -> bool:
        return True

    async def apply(self, conn: AsyncConnection, event: EventEnvelope) -> None:
        await self.apply_many(conn, [event])

    async def apply_many(self, conn: AsyncConnection, events: Sequence[EventEnvelope]) -> None:
        """A batch at once: the heads of its tenants read (and locked) in one query inside the batch's
        transaction, rows chained in memory, one ``COPY`` of the rows, one upsert of the heads."""
        if not events:
            return
        tenant_of = [_fit("tenant_id", e.tenant_id or PLATFORM_TENANT) or PLATFORM_TENANT for e in events]
        rows = await conn.execute(
            select(audit_heads.c.tenant_id, audit_heads.c.seq, audit_heads.c.hash)
            .where(audit_heads.c.tenant_id.in_(set(tenant_of)))
            .with_for_update()
        )
        heads: dict[str, tuple[int, str]] = {r.tenant_id: (r.seq, r.hash) for r in rows}
        new_rows = []
        for tenant_id, event in zip(tenant_of, events, strict=True):
            seq, prev_hash = heads.get(tenant_id, (0, GENESIS_HASH))
            row = audit_row(event, seq=seq + 1, prev_hash=prev_hash)
            heads[tenant_id] = (row["seq"], row["hash"])
            new_rows.append(row)
        await copy_rows(conn, audit_log, new_rows)
        upsert = insert(audit_heads)
        await conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[audit_heads.c.tenant_id],
                set_={"seq": upsert.excluded.seq, "hash": upsert.excluded.hash},
            ),
            [{"tenant_id": t, "seq": seq, "hash": h} for t, (seq, h) in heads.items()],
        )
        # Retention dropped a tenant's oldest rows (domain/retention.py): a rebuild drops them again.
        for tenant_id, event in zip(tenant_of, events, strict=True):
            if event.type == "AuditRowsDropped":
                up_to = int(event.data["up_to_seq"])
                await conn.execute(delete(audit_log).where(audit_log.c.tenant_id == tenant_id, audit_log.c.seq <= up_to))


# --- queries -------------------------------------------------------------------------------------------
def _public(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "notification_id": row["notification_id"],
        "event_id": str(row["event_id"]),
        "occurred_at": _utc(row["occurred_at"]).isoformat(),
        "actor": row["actor"],
        "via": row.get("via"),
        "action": row["action"],
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "ip": row["ip"],
        "user_agent": row["user_agent"],
        "correlation_id": row["correlation_id"],
        "detail": row["detail"],
        "hash": row["hash"],
    }


async def query_audit(
    engine: AsyncEngine,
    tenant_id: str,
    *,
    actor: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    before_seq: int | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of ``tenant_id``'s audit rows, newest first, and the cursor for the next page (pass it
    as ``before_seq``), or None when there is no more. ``since`` is inclusive, ``until`` exclusive;
    ``limit`` is clamped to 1..``MAX_PAGE``."""
    c = audit_log.c
    limit = max(1, min(limit, MAX_PAGE))
    stmt = select(audit_log).where(c.tenant_id == tenant_id)
    for column, wanted in (
        (c.actor, actor),
        (c.action, action),
        (c.target_type, target_type),
        (c.target_id, target_id),
    ):
        if wanted is not None:
            stmt = stmt.where(column == wanted)
    if since is not None:
        stmt = stmt.where(c.occurred_at >= since)
    if until is not None:
        stmt = stmt.where(c.occurred_at < until)
    if before_seq is not None:
        stmt = stmt.where(c.seq < before_seq)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt.order_by(c.seq.desc()).limit(limit + 1))).mappings().all()
    page = [_public(row) for row in rows[:limit]]
    return page, (page[-1]["seq"] if len(rows) > limit else None)


_SEALED_PREFIX = "enc:v1:"


def open_details(
    open_envelopes: Callable[[Sequence[EventEnvelope]], list[EventEnvelope]], entries: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """``entries`` (as ``query_audit`` gives them) with the sealed personal fields of their ``detail``
    opened by ``open_envelopes`` (the event store's, which holds the keys; an erased one reads as its
    marker), and redacted as the row would have been had it not been sealed; and the target ids whose
    detail was opened. Runs on the event store's thread: opening may read keys."""
    out = [dict(entry) for entry in entries]
    sealed = [
        entry for entry in out
        if isinstance(entry["detail"], Mapping)
        and any(type(v) is str and v.startswith(_SEALED_PREFIX) for v in entry["detail"].values())
    ]  # fmt: skip
    if not sealed:
        return out, []
    envelopes = [
        EventEnvelope(
            id=entry["notification_id"], event_id=UUID(entry["event_id"]), type=entry["action"],
            aggregate_type=entry["target_type"], aggregate_id=UUID(entry["target_id"]), aggregate_version=0,
            occurred_at=datetime.fromisoformat(entry["occurred_at"]), tenant_id="", actor=entry["actor"],
            correlation_id=entry["correlation_id"] or "", data=dict(entry["detail"]),
        )
        for entry in sealed
    ]  # fmt: skip
    for entry, opened in zip(sealed, open_envelopes(envelopes), strict=True):
        entry["detail"] = redact(opened.data)
    return out, sorted({entry["target_id"] for entry in sealed})


async def chain_heads(engine: AsyncEngine) -> dict[str, tuple[int, str]]:
    """Every tenant's chain head: (seq, hash) by tenant id. The projector writes a head in the same
    transaction as its rows, so a head always names a committed row."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(audit_heads.c.tenant_id, audit_heads.c.seq, audit_heads.c.hash))
        return {r.tenant_id: (r.seq, r.hash) for r in rows}


# --- verification --------------------------------------------------------------------------------------
class ChainProblem(msgspec.Struct, frozen=True):
    tenant_id: str
    seq: int
    problem: str


class Anchor(Protocol):
    """A (tenant, seq, hash) of a chain vouched for outside the database: a checkpoint whose signature
    was verified (``adapters.checkpoints.read_checkpoints``)."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def hash(self) -> str: ...


async def verify_chain(
    engine: AsyncEngine,
    tenant_id: str | None = None,
    *,
    anchors: Iterable[Anchor] = (),
    max_problems: int = 1_000,
    chunk_size: int = 5_000,
) -> list[ChainProblem]:
    """Recompute the chain of ``tenant_id`` (or of every tenant) from one snapshot, ``chunk_size`` rows
    at a time; empty means intact. Stops after ``max_problems``: a rewritten log need not fill memory.

    ``anchors`` (trusted checkpoints) hold the chain to hashes kept outside the database, which a
    rewrite of every row and head cannot match: the row at each anchor's seq must have the anchor's hash,
    and the chain must still reach the newest anchor. They also let a chain whose oldest rows were
    dropped (retention) verify from what is kept: when a tenant's first row is seq k > 1 and an anchor
    vouches for seq k-1, the chain is checked from row k with the anchor's hash as the one before it;
    when an anchor vouches for seq k itself, from row k, whose hash (which covers its ``prev_hash``)
    must be the anchor's. Anchors below that are of dropped rows and not compared; without such an
    anchor a missing start is a problem, as before."""
    expected: dict[str, dict[int, str]] = {}
    problems: list[ChainProblem] = []
    for anchor in anchors:
        if tenant_id is not None and anchor.tenant_id != tenant_id:
            continue
        known = expected.setdefault(anchor.tenant_id, {}).setdefault(anchor.seq, anchor.hash)
        if known != anchor.hash:
            problems.append(ChainProblem(anchor.tenant_id, anchor.seq, "two signed checkpoints disagree on the hash"))
    async with engine.connect() as conn:
        # One snapshot: rows the projector commits meanwhile cannot disagree with the head we read.
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            if tenant_id is None:
                tenants = union(select(audit_log.c.tenant_id), select(audit_heads.c.tenant_id))
                names = sorted(set((await conn.execute(tenants)).scalars()) | set(expected))
            else:
                names = [tenant_id]
            for name in names:
                if len(problems) >= max_problems:
                    break
                budget = max_problems - len(problems)
                problems += await _verify_tenant(conn, name, budget, chunk_size, expected.get(name, {}))
    return problems[:max_problems]


async def _verify_tenant(
    conn: AsyncConnection, tenant_id: str, budget: int, chunk_size: int, anchors: Mapping[int, str]
) -> list[ChainProblem]:
    c = audit_log.c
    problems: list[ChainProblem] = []

    def report(seq: int, problem: str) -> None:
        problems.append(ChainProblem(tenant_id, seq, problem))

    expected_seq, expected_prev = 1, GENESIS_HASH
    dropped_up_to = 0  # rows at or below it were dropped, and an anchor vouches for the last of them
    anchors_met: set[int] = set()
    last: tuple[int, str] | None = None
    while True:
        stmt = select(audit_log).where(c.tenant_id == tenant_id)
        if last is not None:
            stmt = stmt.where(c.seq > last[0])
        rows = (await conn.execute(stmt.order_by(c.seq).limit(chunk_size))).mappings().all()
        for row in rows:
            seq = row["seq"]
            if last is None and seq > 1 and seq - 1 in anchors:  # a retained suffix, anchored before it
                dropped_up_to, expected_seq, expected_prev = seq - 1, seq, anchors[seq - 1]
            elif last is None and seq > 1 and seq in anchors:  # a retained suffix whose first row is anchored
                dropped_up_to, expected_seq, expected_prev = seq - 1, seq, row["prev_hash"]
            if seq != expected_seq:
                report(seq, f"expected seq {expected_seq}: rows deleted or inserted")
            if row["prev_hash"] != expected_prev:
                report(seq, "prev_hash does not match the row before")
            if row_hash(row) != row["hash"]:
                report(seq, "hash does not match the row's content")
            if seq in anchors:
                anchors_met.add(seq)
                if row["hash"] != anchors[seq]:
                    report(seq, "hash differs from the one the signed checkpoint holds: the log was rewritten")
            expected_seq, expected_prev = seq + 1, row["hash"]
            last = (seq, row["hash"])
        if len(problems) >= budget:
            return problems  # the caller stops here; the head check would only add noise
        if len(rows) < chunk_size:
            break

    for seq in sorted(anchors):
        if seq <= dropped_up_to or seq in anchors_met:
            continue
        if last is None:
            report(seq, f"the tenant has no rows, but a signed checkpoint anchors seq {seq}")
        elif seq > last[0]:
            report(seq, f"the chain ends at seq {last[0]}, before the signed checkpoint at seq {seq}: rows removed")
        else:
            report(seq, f"no row at seq {seq}, which a signed checkpoint anchors")

    head = (
        await conn.execute(
            select(audit_heads.c.seq, audit_heads.c.hash).where(audit_heads.c.tenant_id == tenant_id)
        )
    ).first()
    if head is None and last is not None:
        report(last[0], "the tenant has rows but no head")
    elif head is not None and last is None:
        report(head.seq, f"head is at seq {head.seq} but the tenant has no rows")
    elif head is not None and last is not None and (head.seq, head.hash) != last:
        report(last[0], f"head (seq {head.seq}) does not match the last row (seq {last[0]})")
    return problems
