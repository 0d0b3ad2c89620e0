"""Ratings of answers: a user rates (and re-rates, or takes back) an assistant message of a chat they can
see, which is a chat of their own. Reading ratings and satisfaction per model are queries
(``projections.ratings``)."""

from __future__ import annotations

import uuid
from typing import Any

from application.context import CommandContext
from application.identity import Principal
from application.ports import EventStorePort
from domain.chats import Chat
from domain.errors import Invalid, NotFound
from domain.ratings import Rating, check_rating, rating_id_for

__all__ = ["Ratings"]

UNKNOWN_MODEL = "unknown"
"""The model of an assistant turn a client handed in (parley did not write it)."""


class Ratings:
    def __init__(self, *, store: EventStorePort) -> None:
        self.store = store

    def _answer(self, principal: Principal, chat_id: uuid.UUID, message_id: str) -> tuple[Chat, dict[str, Any]]:
        chat = self.store.find(Chat, chat_id)
        if chat is None or chat.tenant_id != principal.tenant_id:
            raise NotFound("CHAT_NOT_FOUND", "no such chat")
        chat.check_owner(principal.user_id)
        message = chat.messages.get(message_id)
        if message is None:
            raise NotFound("MESSAGE_NOT_FOUND", "no such message in this chat")
        if message["role"] != "assistant":
            raise Invalid("NOT_AN_ANSWER", "only assistant answers are rated", field="message_id")
        return chat, message

    async def rate(
        self,
        ctx: CommandContext,
        principal: Principal,
        chat_id: uuid.UUID,
        message_id: str,
        *,
        rating: str,
        reason: str | None = None,
        comment: str | None = None,
    ) -> Rating:
        """Rate an answer, or change one's rating of it (the same rating again records nothing)."""
        rating, reason, comment = check_rating(rating, reason, comment)

        def command() -> Rating:
            chat, message = self._answer(principal, chat_id, message_id)
            existing = self.store.find(Rating, rating_id_for(principal.tenant_id, principal.user_id, message_id))
            if existing is None:
                existing = Rating(
                    tenant_id=principal.tenant_id,
                    user_id=principal.user_id,
                    chat_id=chat.id,
                    message_id=message_id,
                    model=str(message.get("model") or UNKNOWN_MODEL),
                    rating=rating,
                    reason=reason,
                    comment=comment,
                )
            elif not existing.change(rating, reason, comment):
                return existing
            self.store.save(existing)
            return existing

        return await self.store.execute(ctx, command)

    async def remove(self, ctx: CommandContext, principal: Principal, chat_id: uuid.UUID, message_id: str) -> None:
        def command() -> None:
            self._answer(principal, chat_id, message_id)
            existing = self.store.find(Rating, rating_id_for(principal.tenant_id, principal.user_id, message_id))
            if existing is None:
                raise NotFound("RATING_NOT_FOUND", "this message has no rating of yours")
            existing.remove()
            self.store.save(existing)

        await self.store.execute(ctx, command)
