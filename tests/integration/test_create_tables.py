"""``create_tables`` brings an existing database up to the current read-model schema at start: an index
added to a table after the table was created is created too (``create_all`` makes indexes only with their
table)."""

from __future__ import annotations

from sqlalchemy import text

from adapters.database import create_engine, create_tables
from adapters.embedded import EngineUrls
from tests.conftest import create_database


async def test_an_index_missing_from_an_existing_table_is_created_at_start(engines: EngineUrls) -> None:
    engine = create_engine(create_database(engines))
    try:
        await create_tables(engine)
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX ix_rm_audit_tenant_notification"))
        await create_tables(engine)
        await create_tables(engine)  # and nothing more when nothing is missing
        async with engine.connect() as conn:
            found = await conn.scalar(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_rm_audit_tenant_notification'")
            )
        assert found is not None and "(tenant_id, notification_id)" in found
    finally:
        await engine.dispose()
