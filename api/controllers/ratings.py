"""Ratings of answers: thumbs up or down on an assistant message of one's own chat, with an optional
reason and comment, one per user per message, changeable and removable. A user sees only their own
ratings; tenant admins see them counted per model (``GET /api/v1/usage/satisfaction``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, put
from litestar.params import FromPath, JSONBody, PathParameter
from litestar.status_codes import HTTP_204_NO_CONTENT

from api.deps import App, Caller, command_context
from application.ratings import Ratings
from domain.ratings import MAX_COMMENT_CHARS, MAX_REASON_CHARS
from projections.ratings import my_ratings

__all__ = ["RatingController"]


class RatingSet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    rating: Literal["up", "down"]
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)] | None = None
    """A short label, e.g. Open WebUI's "Accurate information" or "Not helpful"."""
    comment: Annotated[str, msgspec.Meta(max_length=MAX_COMMENT_CHARS)] | None = None


class Rating(msgspec.Struct, kw_only=True):
    message_id: str
    model: str
    rating: str
    reason: str | None = None
    comment: str | None = None
    rated_at: datetime | None = None


class RatingController(Controller):
    path = "/api/v1/chats/{chat_id:uuid}"
    tags = ["ratings"]

    @put("/messages/{message_id:str}/rating", operation_id="RateMessage")
    async def rate(
        self,
        request: Request[Any, Any, Any],
        chat_id: FromPath[UUID],
        message_id: Annotated[str, PathParameter(max_length=64)],
        data: JSONBody[RatingSet],
        c: App,
        caller: Caller,
    ) -> Rating:
        """Rate an assistant answer of the caller's chat, or change the caller's rating of it."""
        rating = await Ratings(store=c.store).rate(
            command_context(request, caller),
            caller,
            chat_id,
            message_id,
            rating=data.rating,
            reason=data.reason,
            comment=data.comment,
        )
        assert rating.rating is not None
        return Rating(
            message_id=rating.message_id,
            model=rating.model,
            rating=rating.rating,
            reason=rating.reason,
            comment=rating.comment,
            rated_at=rating.modified_on,
        )

    @delete("/messages/{message_id:str}/rating", operation_id="RemoveRating", status_code=HTTP_204_NO_CONTENT)
    async def remove(
        self,
        request: Request[Any, Any, Any],
        chat_id: FromPath[UUID],
        message_id: Annotated[str, PathParameter(max_length=64)],
        c: App,
        caller: Caller,
    ) -> None:
        await Ratings(store=c.store).remove(command_context(request, caller), caller, chat_id, message_id)

    @get("/ratings", operation_id="ListMyRatings")
    async def mine(self, chat_id: FromPath[UUID], c: App, caller: Caller) -> list[Rating]:
        """The caller's own ratings in their chat (never anyone else's)."""
        await c.chats.get(caller, chat_id)  # the caller's chat, or 404
        rows = await my_ratings(c.engine, caller.tenant_id, str(caller.user_id), str(chat_id))
        return [Rating(**r) for r in rows]
