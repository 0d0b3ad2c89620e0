"""Compliance replay: every read model of one tenant as it stood at an instant, rebuilt from the event
store into a Postgres schema of its own (``parley replay --tenant SLUG --at T --into SCHEMA``), for an
auditor to query beside the live read models without touching them.

The schema gets every table of ``schema.tables.metadata`` (read models, ``projector_positions``); the
connections that fill it put it first on their ``search_path`` (so the projectors' own SQL, ``COPY``
included, lands there) with the deployment's schema after it (the subject keys, the ``vector`` type).
The log is read once, in pages; each page's events of the tenant that occurred at or before the instant
go to every projector that owns tables, each page one transaction per projector with its position, as a
rebuild does. The shredder is never among them: it destroys keys.

Which events are the tenant's: those whose envelope names it, those whose data names it, those of its own
``Tenant`` aggregate, and every later event of an aggregate whose data named it (an invitation accepted
before sign-in carries no tenant in its envelope). A projector keys its rows by the tenant the event
concerns, so a platform-level event may still leave a row of another tenant (the audit chain of the
platform); those are deleted at the end: the schema holds the tenant's rows only.

When to stop: the log is in commit order, ``occurred_at`` is when the command made the event, a moment
before its commit, so an event made just before the instant may be committed after one made just after
it. The scan goes on ``SETTLE`` past the instant, taking only what occurred at or before it, and stops
at the first event made later than that. Content whose key was destroyed since reads as erased: a replay
cannot bring back what was shredded.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import String, cast, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from domain.errors import Conflict, Invalid
from projections.runtime import PAGE, EventSource, Projector, apply_batch
from schema.events import EventEnvelope
from schema.tables import embedding_cache, metadata

__all__ = ["SETTLE", "Replayed", "replay_tenant"]

SETTLE = timedelta(seconds=60)
"""How far past the instant the log is read for events made before it and committed after: far more than a
command takes between making its events and committing them (lock timeout 10 s)."""

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_RESERVED = ("public", "information_schema")


@dataclass(frozen=True)
class Replayed:
    schema: str
    events: int
    """The tenant's events replayed."""
    through: int
    """The last notification id read."""


def _check_schema_name(schema: str, source: str) -> None:
    if not _SCHEMA_NAME.match(schema) or schema in _RESERVED or schema.startswith("pg_") or schema == source:
        raise Invalid(
            "INVALID_SCHEMA",
            "the target schema is a new name: lowercase letters, digits and '_', not the deployment's own",
            field="schema",
        )


async def _create_schema(engine: AsyncEngine, schema: str, tenant_id: str, *, replace: bool) -> str:
    """Create ``schema`` with every table; returns the deployment's schema (where the source tables are)."""
    async with engine.begin() as conn:
        source = str(await conn.scalar(text("SELECT current_schema()")))
        _check_schema_name(schema, source)
        exists = await conn.scalar(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema})
        if exists and not replace:
            raise Conflict("SCHEMA_EXISTS", f"schema {schema} exists; pass --replace to replay over it", schema=schema)
        if exists:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        translated = await conn.execution_options(schema_translate_map={None: schema})
        await translated.run_sync(metadata.create_all)
        # Embeddings are content-addressed: what the deployment has already computed for the tenant need not
        # be computed again (it is a cache, not a read model).
        columns = ", ".join(f'"{c.name}"' for c in embedding_cache.columns)
        await conn.execute(
            text(
                f'INSERT INTO "{schema}".embedding_cache ({columns})'
                f' SELECT {columns} FROM "{source}".embedding_cache WHERE tenant_id = CAST(:t AS uuid)'
            ),
            {"t": tenant_id},
        )
    return source


class _Tenancy:
    """Tells the tenant's events from the rest (see the module docstring)."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.aggregates: set[uuid.UUID] = set()

    def __call__(self, event: EventEnvelope) -> bool:
        named = str(event.data.get("tenant_id") or "") == self.tenant_id or str(event.aggregate_id) == self.tenant_id
        if named:
            self.aggregates.add(event.aggregate_id)
        return named or event.tenant_id == self.tenant_id or event.aggregate_id in self.aggregates


async def _keep_only_tenant(conn: AsyncConnection, tenant_id: str) -> None:
    for table in reversed(metadata.sorted_tables):
        if "tenant_id" in table.c:
            await conn.execute(table.delete().where(cast(table.c.tenant_id, String) != tenant_id))


async def replay_tenant(
    projectors: Sequence[Projector],
    *,
    engine: AsyncEngine,
    store: EventSource,
    tenant_id: str,
    at: datetime,
    schema: str,
    replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Replayed:
    """Rebuild the read models of ``projectors`` (those that own tables) for ``tenant_id`` as of ``at`` into
    the new ``schema`` (``SCHEMA_EXISTS`` if it exists, unless ``replace``). ``progress(id read, last id)``
    after each page."""
    if at.tzinfo is None:
        raise Invalid("INVALID_INSTANT", "the instant needs a time zone", field="at")
    chosen = [p for p in projectors if p.tables]
    source = await _create_schema(engine, schema, tenant_id, replace=replace)
    target = create_async_engine(
        engine.url,
        pool_size=2,
        max_overflow=0,
        connect_args={"options": f"-c search_path={schema},{source}"},  # the projectors' own SQL, COPY
        execution_options={"schema_translate_map": {None: schema}},  # every statement over a Table
    )
    ours = _Tenancy(tenant_id)
    replayed, through = 0, 0
    try:
        last = int(await store.call(store.max_id))
        start, done = 1, False
        while start <= last and not done:
            page: list[EventEnvelope] = await store.call(store.read, start, PAGE, last)
            if not page:
                break
            kept = []
            for event in page:
                if event.occurred_at > at + SETTLE:
                    done = True
                    break
                through = event.id
                if event.occurred_at <= at and ours(event):
                    kept.append(event)
            if through >= start:
                for projector in chosen:  # the page is the truth of its range; other tenants' events its gaps
                    await apply_batch(target, projector, store, kept, read_from=start, through=through)
                replayed += len(kept)
            start = page[-1].id + 1
            if progress is not None:
                progress(through, last)
        async with target.begin() as conn:
            await _keep_only_tenant(conn, tenant_id)
    finally:
        await target.dispose()
    return Replayed(schema=schema, events=replayed, through=through)
