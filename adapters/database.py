"""Read-model database access: one SQLAlchemy async engine (psycopg 3) per process."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateColumn

from schema.tables import metadata

__all__ = ["create_engine", "create_tables", "sqlalchemy_url"]


def sqlalchemy_url(database_url: str) -> str:
    scheme, sep, rest = database_url.partition("://")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return database_url


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(database_url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


def _add_missing_columns(sync_conn: Any) -> None:
    """Columns added to a table after it was created (always nullable or defaulted, as events evolve), and
    columns that became optional (a NOT NULL dropped)."""
    inspector = inspect(sync_conn)
    for table in metadata.sorted_tables:
        present = {c["name"]: c for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                ddl = CreateColumn(column).compile(dialect=sync_conn.dialect)
                sync_conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN IF NOT EXISTS {ddl}'))
            elif column.nullable and not column.primary_key and not present[column.name]["nullable"]:
                sync_conn.execute(text(f'ALTER TABLE "{table.name}" ALTER COLUMN "{column.name}" DROP NOT NULL'))


def _add_missing_indexes(sync_conn: Any) -> None:
    """Indexes added to a table after it was created (``create_all`` makes a table's indexes only with it)."""
    # One catalog query for every table (each process runs this at start), not one per table.
    present = set(
        sync_conn.execute(text("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")).scalars()
    )
    for table in metadata.sorted_tables:
        for index in table.indexes:
            if index.name not in present:
                index.create(sync_conn, checkfirst=True)


async def create_tables(engine: AsyncEngine) -> None:
    """Create the pgvector extension and every read-model table or column that is missing. Serialised by
    an advisory lock so processes starting together do not race on CREATE TABLE."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(7261001)"))
        await conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(_add_missing_columns)
        await conn.run_sync(_add_missing_indexes)
