"""The prompt library's read model: one row per prompt with who may use it (``readers``, as knowledge
bases keep them), and the queries the API serves from it: a listing searched by command, one prompt."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.access import Reader, access_level
from domain.prompts import variables_of
from projections.access import readable_by
from projections.conversations import MAX_PAGE, _fit, _uuid
from projections.runtime import HandlesTypes
from schema.contract import (
    PromptAccessGranted,
    PromptAccessRevoked,
    PromptCreated,
    PromptDeleted,
    PromptUpdated,
    UserErased,
    decode_data,
)
from schema.events import EventEnvelope
from schema.tables import prompts

__all__ = ["PromptsProjector", "get_prompt", "list_prompts"]


class PromptsProjector(HandlesTypes):
    name = "prompts"
    tables: Sequence[Table] = (prompts,)
    _types = frozenset(
        {"PromptCreated", "PromptUpdated", "PromptAccessGranted", "PromptAccessRevoked", "PromptDeleted", "UserErased"}
    )

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        p = prompts.c
        this = p.prompt_id == str(e.aggregate_id)
        match data := decode_data(e.type, e.data):
            case PromptCreated():
                access = {"tenant": "read"} if data.scope == "tenant" else {}
                await conn.execute(
                    prompts.insert().values(
                        prompt_id=str(e.aggregate_id),
                        tenant_id=data.tenant_id,
                        owner_id=str(data.owner_id),
                        scope=data.scope,
                        command=_fit(p.command, data.command),
                        title=_fit(p.title, data.title),
                        content=_fit(p.content, data.content),
                        variables=variables_of(data.content),
                        access=access,
                        readers=sorted(access),
                        created_at=e.occurred_at,
                        updated_at=e.occurred_at,
                    )
                )
            case PromptUpdated():
                values: dict[str, Any] = {"updated_at": e.occurred_at}
                if data.command is not None:
                    values["command"] = _fit(p.command, data.command)
                if data.title is not None:
                    values["title"] = _fit(p.title, data.title)
                if data.content is not None:
                    values["content"] = _fit(p.content, data.content)
                    values["variables"] = variables_of(data.content)
                await conn.execute(prompts.update().where(this).values(**values))
            case PromptAccessGranted() | PromptAccessRevoked():
                row = await conn.execute(select(p.access).where(this).with_for_update())
                access = dict(row.scalar() or {})
                if isinstance(data, PromptAccessGranted):
                    access[data.grantee] = data.level
                else:
                    access.pop(data.grantee, None)
                await conn.execute(
                    prompts.update().where(this).values(access=access, readers=sorted(access), updated_at=e.occurred_at)
                )
            case PromptDeleted():
                await conn.execute(prompts.delete().where(this))
            case UserErased():  # their own prompts were sealed with their key: nothing of them is left to show
                await conn.execute(prompts.delete().where(p.owner_id == str(e.aggregate_id), p.scope == "user"))


def _row(reader: Reader, row: Any) -> dict[str, Any]:
    return {
        "id": row.prompt_id,
        "owner_id": row.owner_id,
        "scope": row.scope,
        "command": row.command,
        "title": row.title,
        "content": row.content,
        "variables": list(row.variables),
        "access": dict(row.access) if access_level(row.owner_id, row.access, reader) == "write" else None,
        "level": access_level(row.owner_id, row.access, reader) or "read",
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def list_prompts(
    engine: AsyncEngine, reader: Reader, *, command: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """The prompts ``reader`` may use, (page, total): those whose command starts with ``command`` when it
    is given (with or without its ``/``), by command, the reader's own before the tenant's before others'."""
    where = [readable_by(prompts, reader)]
    if command:
        prefix = "/" + command.strip().lower().lstrip("/")
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(prompts.c.command.like(f"{escaped}%", escape="\\"))
    rank = case((prompts.c.owner_id == str(reader.user_id), 0), (prompts.c.scope == "tenant", 1), else_=2)
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(prompts).where(and_(*where)))).scalar_one()
        rows = (
            await conn.execute(
                select(prompts)
                .where(and_(*where))
                .order_by(prompts.c.command, rank, prompts.c.created_at, prompts.c.prompt_id)
                .limit(min(limit, MAX_PAGE))
                .offset(offset)
            )
        ).all()
    return [_row(reader, r) for r in rows], int(total)


async def get_prompt(engine: AsyncEngine, reader: Reader, prompt_id: uuid.UUID | str) -> dict[str, Any] | None:
    pid = _uuid(prompt_id)
    if pid is None:
        return None
    async with engine.connect() as conn:
        row = (await conn.execute(select(prompts).where(readable_by(prompts, reader), prompts.c.prompt_id == pid))).first()
    return None if row is None else _row(reader, row)
