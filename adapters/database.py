"""Read-model database access: one SQLAlchemy async engine (psycopg 3) per process."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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


async def create_tables(engine: AsyncEngine) -> None:
    """Create every read-model table that is missing. Serialised by an advisory lock so processes
    starting together do not race on CREATE TABLE."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(7261001)"))
        await conn.run_sync(metadata.create_all)
