"""Search in the caller's own messages: full text over their questions and answers (not only titles),
ranked, each hit with its chat and an excerpt around the matched words."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.params import QueryParameter

from api import dto
from api.deps import App, Caller
from projections.message_search import MAX_QUERY_CHARS, search_messages_of

__all__ = ["MessageSearchController"]


class MessageHit(msgspec.Struct, kw_only=True):
    chat_id: str
    chat_title: str
    message_id: str
    role: str
    archived: bool
    created_at: datetime
    rank: float
    excerpt: str
    """Plain text around the matches (fragments joined by " … "); escape it before rendering as HTML."""
    highlights: list[list[int]]
    """[start, end) character offsets of the matched words in ``excerpt``."""


class MessageHits(msgspec.Struct, kw_only=True):
    q: str
    items: list[MessageHit]
    limit: int
    offset: int


class MessageSearchController(Controller):
    path = "/api/v1/chats/search"
    tags = ["chats"]

    @get("/", operation_id="SearchMessages")
    async def search(
        self,
        c: App,
        caller: Caller,
        q: Annotated[str, QueryParameter(min_length=1, max_length=MAX_QUERY_CHARS, pattern=dto.NO_CONTROL_CHARS)],
        limit: Annotated[int, QueryParameter(ge=1, le=50)] = 20,
        offset: Annotated[int, QueryParameter(ge=0, le=950)] = 0,
        archived: Annotated[bool, QueryParameter(description="include archived chats")] = False,
    ) -> MessageHits:
        """The caller's messages matching ``q`` (words, "a phrase", -word, or), best first. Deleted chats
        are not searched; archived ones only with ``archived=true``."""
        rows = await search_messages_of(
            c.engine, caller.tenant_id, str(caller.user_id), q, limit=limit, offset=offset, include_archived=archived
        )
        items = [
            MessageHit(
                chat_id=str(r["chat_id"]),
                chat_title=r["title"],
                message_id=r["message_id"],
                role=r["role"],
                archived=r["archived"],
                created_at=r["created_at"],
                rank=float(r["rank"]),
                excerpt=r["excerpt"],
                highlights=r["highlights"],
            )
            for r in rows
        ]
        return MessageHits(q=q, items=items, limit=limit, offset=offset)
