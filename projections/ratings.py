"""The ratings read model (projector ``ratings``): one row per user and rated answer, and the queries
served from it — a user's own ratings (nobody else's), and satisfaction per model for usage reports.

A removed rating keeps its row with ``rating`` NULL, so rating again updates it. Comments are personal:
deleting the chat or erasing the rater clears them; the thumbs stay counted (as usage keeps the numbers
of an erased user).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import Date, Table, and_, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from projections.conversations import _fit, _uuid
from projections.runtime import HandlesTypes
from schema.contract import ChatDeleted, MessageRated, RatingChanged, RatingRemoved, UserErased, decode_data
from schema.events import EventEnvelope
from schema.tables import ratings

__all__ = ["RatingsProjector", "my_ratings", "satisfaction_by_model"]


class RatingsProjector(HandlesTypes):
    name = "ratings"
    tables: Sequence[Table] = (ratings,)
    _types = frozenset({"MessageRated", "RatingChanged", "RatingRemoved", "ChatDeleted", "UserErased"})

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        aggregate_id = str(e.aggregate_id)
        this = ratings.c.rating_id == aggregate_id
        match data := decode_data(e.type, e.data):
            case MessageRated():
                await conn.execute(
                    ratings.insert().values(
                        rating_id=aggregate_id,
                        tenant_id=data.tenant_id,
                        user_id=str(data.user_id),
                        chat_id=str(data.chat_id),
                        message_id=_fit(ratings.c.message_id, data.message_id),
                        model=_fit(ratings.c.model, data.model),
                        rating=data.rating,
                        reason=_fit(ratings.c.reason, data.reason),
                        comment=_fit(ratings.c.comment, data.comment),
                        rated_at=e.occurred_at,
                    )
                )
            case RatingChanged():
                await conn.execute(
                    ratings.update()
                    .where(this)
                    .values(
                        rating=data.rating,
                        reason=_fit(ratings.c.reason, data.reason),
                        comment=_fit(ratings.c.comment, data.comment),
                        rated_at=e.occurred_at,
                    )
                )
            case RatingRemoved():
                await conn.execute(
                    ratings.update().where(this).values(rating=None, reason=None, comment=None, rated_at=e.occurred_at)
                )
            case ChatDeleted():
                await conn.execute(ratings.update().where(ratings.c.chat_id == aggregate_id).values(comment=None))
            case UserErased():
                await conn.execute(ratings.update().where(ratings.c.user_id == aggregate_id).values(comment=None))


async def my_ratings(engine: AsyncEngine, tenant_id: str, user_id: str, chat_id: str) -> list[dict[str, Any]]:
    """The caller's ratings in one of their chats (removed ones left out)."""
    r = ratings.c
    stmt = (
        select(r.message_id, r.model, r.rating, r.reason, r.comment, r.rated_at)
        .where(
            and_(
                r.tenant_id == _uuid(tenant_id),
                r.user_id == _uuid(user_id),
                r.chat_id == _uuid(chat_id),
                r.rating.is_not(None),
            )
        )
        .order_by(r.rated_at, r.message_id)
    )
    async with engine.connect() as conn:
        return [dict(row) for row in (await conn.execute(stmt)).mappings()]


async def satisfaction_by_model(
    engine: AsyncEngine, tenant_id: str, *, start: date, end: date, timezone: str
) -> list[dict[str, Any]]:
    """Per model, the answers rated up and down on tenant-local days ``start``..``end`` (by when each was
    last rated) and the share of ups; most rated first."""
    r = ratings.c
    day = cast(func.timezone(timezone, r.rated_at), Date)
    up = func.count().filter(r.rating == "up")
    down = func.count().filter(r.rating == "down")
    stmt = (
        select(r.model, up.label("up"), down.label("down"))
        .where(and_(r.tenant_id == _uuid(tenant_id), r.rating.is_not(None), day >= start, day <= end))
        .group_by(r.model)
        .order_by(func.count().desc(), r.model)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        {"model": m, "up": int(u), "down": int(d), "ratio": round(int(u) / (int(u) + int(d)), 4)}
        for m, u, d in rows
    ]
