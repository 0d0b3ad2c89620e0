"""The folders read model: each user's folder tree, one row a folder, and the queries the API serves from
it. Rows name their tree (``domain.folders.folder_tree_id_for`` of the tenant and owner), so a query for a
caller's folders cannot reach another user's. A deleted folder's row goes with its subfolders' (the event
names them all); an erased user's folders go with them. Times come from the events, so a rebuild equals
the incremental read model."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.folders import folder_tree_id_for
from projections.runtime import HandlesTypes
from schema.contract import FolderCreated, FolderDeleted, FolderMoved, FolderRenamed, UserErased, decode_data
from schema.events import EventEnvelope
from schema.tables import chats, folders

__all__ = ["FoldersProjector", "folder_paths", "list_folders"]


def _uuid(value: Any) -> str | None:
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        return None


def _name(value: str) -> str:
    return value[: folders.c.name.type.length]


class FoldersProjector(HandlesTypes):
    name = "folders"
    tables: Sequence[Table] = (folders,)
    _types = frozenset({"FolderCreated", "FolderRenamed", "FolderMoved", "FolderDeleted", "UserErased"})

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        this = folders.c.folder_id
        match data := decode_data(e.type, e.data):
            case FolderCreated():
                folder_id = _uuid(data.folder_id)
                if folder_id is None:
                    return
                await conn.execute(
                    folders.insert().values(
                        folder_id=folder_id,
                        tenant_id=e.tenant_id,
                        tree_id=str(e.aggregate_id),
                        name=_name(data.name),
                        parent_id=_uuid(data.parent_id) if data.parent_id is not None else None,
                        created_at=e.occurred_at,
                        updated_at=e.occurred_at,
                    )
                )
            case FolderRenamed():
                await conn.execute(
                    folders.update()
                    .where(this == _uuid(data.folder_id))
                    .values(name=_name(data.name), updated_at=e.occurred_at)
                )
            case FolderMoved():
                parent = _uuid(data.parent_id) if data.parent_id is not None else None
                await conn.execute(
                    folders.update().where(this == _uuid(data.folder_id)).values(parent_id=parent, updated_at=e.occurred_at)
                )
            case FolderDeleted():
                doomed = [f for f in (_uuid(i) for i in data.folder_ids) if f is not None]
                await conn.execute(folders.delete().where(this.in_(doomed)))
            case UserErased():
                tree = str(folder_tree_id_for(e.tenant_id, e.aggregate_id))
                await conn.execute(folders.delete().where(folders.c.tree_id == tree))


async def list_folders(engine: AsyncEngine, tenant_id: str, owner_id: str | uuid.UUID) -> list[dict[str, Any]]:
    """The caller's folders, each with its path of names and how many (undeleted) chats it holds, by path."""
    tenant, owner = _uuid(tenant_id), _uuid(owner_id)
    if tenant is None or owner is None:
        return []
    tree = str(folder_tree_id_for(tenant, uuid.UUID(owner)))
    held = (
        select(chats.c.folder_id, func.count().label("n"))
        .where(chats.c.tenant_id == tenant, chats.c.owner_id == owner, chats.c.deleted.is_(False))
        .group_by(chats.c.folder_id)
        .subquery()
    )
    stmt = (
        select(folders, func.coalesce(held.c.n, 0).label("chat_count"))
        .select_from(folders.outerjoin(held, and_(held.c.folder_id == folders.c.folder_id)))
        .where(folders.c.tenant_id == tenant, folders.c.tree_id == tree)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    by_id = {r.folder_id: r for r in rows}
    out = []
    for r in rows:
        out.append(
            {
                "id": r.folder_id,
                "name": r.name,
                "parent_id": r.parent_id,
                "path": _path(by_id, r.folder_id),
                "chat_count": int(r.chat_count),
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
        )
    return sorted(out, key=lambda f: [n.casefold() for n in f["path"]])


def _path(by_id: dict[str, Any], folder_id: str) -> list[str]:
    names: list[str] = []
    at: str | None = folder_id
    while at is not None and at in by_id and len(names) <= len(by_id):
        names.append(by_id[at].name)
        at = by_id[at].parent_id
    return list(reversed(names))


async def folder_paths(engine: AsyncEngine, tenant_id: str, owner_id: str | uuid.UUID) -> dict[str, list[str]]:
    """folder id -> its path of names, for the caller's folders."""
    return {f["id"]: f["path"] for f in await list_folders(engine, tenant_id, owner_id)}
