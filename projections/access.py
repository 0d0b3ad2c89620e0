"""``domain.access.access_level`` in SQL, for the read models of things shared as knowledge bases are: a
listing filters on the owner and ``readers`` (the grantees of the row's ``access``), so it never loads
what the caller may not see."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_, or_

from domain.access import Reader

__all__ = ["readable_by"]


def readable_by(table: Table, reader: Reader) -> Any:
    """The WHERE clause of the rows of ``table`` (with ``tenant_id``, ``owner_id`` and ``readers``) that
    ``reader`` may read."""
    c = table.c
    if reader.is_admin:
        return c.tenant_id == reader.tenant_id
    return and_(c.tenant_id == reader.tenant_id, or_(c.owner_id == str(reader.user_id), c.readers.overlap(reader.grantees)))
