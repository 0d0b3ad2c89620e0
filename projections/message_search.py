"""Search in one's own messages (projector ``message_search``): the full-text index of every user's
questions and answers, and the ranked search the API serves from it.

Each user and assistant message with text is a row with its chat's owner, its chat's archived state and
its text's lexemes (``english``, as the knowledge index). A deleted chat's messages and an erased user's
leave the index with the event that shreds them; archiving a chat marks its rows, which a search leaves
out unless asked. System prompts and tool results are not indexed.

The index narrows to the caller by itself: every row's ``tsv`` also holds one lexeme naming its owner
(``'~' || user_id``, which the text parser never makes), and a search ANDs it into the query, so the GIN
index reads the owner's posting list and the query words' together and skips what is not the caller's
(Postgres ranks a rare entry first). Ranking work is bounded as the knowledge index bounds it: at most
``CANDIDATES`` matches are ranked (``ts_rank_cd``), whichever the index yields first when a word is so
common that more match; only the page returned gets an excerpt (``ts_headline``, the costly part).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from projections.conversations import _fit, _uuid
from projections.runtime import HandlesTypes
from schema.contract import (
    AnswerRecorded,
    ChatArchived,
    ChatCreated,
    ChatDeleted,
    ChatRenamed,
    ChatUnarchived,
    MessagePosted,
    UserErased,
    decode_data,
)
from schema.events import EventEnvelope
from schema.tables import search_chats, search_messages

__all__ = ["CANDIDATES", "MAX_QUERY_CHARS", "MessageSearchProjector", "owner_lexeme", "search_messages_of"]

CANDIDATES = 1_000
"""The most matches one search ranks."""
MAX_QUERY_CHARS = 200
_MARK_START, _MARK_STOP = "\x01", "\x02"
"""What ts_headline wraps matched words in (the text's own are stripped first): turned into offsets."""

_INSERT_MESSAGE = text(
    "INSERT INTO rm_search_messages (message_id, tenant_id, user_id, chat_id, role, archived, created_at, content)"
    " SELECT :message_id, c.tenant_id, c.owner_id, c.chat_id, :role, c.archived, :created_at, :content"
    " FROM rm_search_chats c WHERE c.chat_id = :chat_id"
)
"""A message goes in with its chat's owner and state; not at all when its chat is gone (deleted)."""


def owner_lexeme(user_id: str) -> str:
    """The tsquery of the lexeme that names a row's owner."""
    return f"'~{uuid.UUID(str(user_id))}'"


class MessageSearchProjector(HandlesTypes):
    name = "message_search"
    tables: Sequence[Table] = (search_chats, search_messages)
    _types = frozenset(
        {
            "ChatCreated",
            "ChatRenamed",
            "ChatArchived",
            "ChatUnarchived",
            "ChatDeleted",
            "MessagePosted",
            "AnswerRecorded",
            "MessageImported",
            "UserErased",
        }
    )

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        if e.type not in _MESSAGES:
            await self._apply_other(conn, e)
        elif (row := _message(e)) is not None:
            await conn.execute(_INSERT_MESSAGE, [row])

    async def apply_many(self, conn: AsyncConnection, events: Sequence[EventEnvelope]) -> None:
        """As ``apply`` each in turn, with each run of messages inserted in one pipelined statement (they
        read chat rows only, which the run itself does not change)."""
        run: list[dict[str, Any]] = []
        for e in events:
            if e.type in _MESSAGES:
                if (row := _message(e)) is not None:
                    run.append(row)
                continue
            if run:
                await conn.execute(_INSERT_MESSAGE, run)
                run = []
            await self._apply_other(conn, e)
        if run:
            await conn.execute(_INSERT_MESSAGE, run)

    async def _apply_other(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        chat_id = str(e.aggregate_id)
        this_chat = search_chats.c.chat_id == chat_id
        its_messages = search_messages.c.chat_id == chat_id
        match data := decode_data(e.type, e.data):
            case ChatCreated():
                await conn.execute(
                    search_chats.insert().values(
                        chat_id=chat_id,
                        tenant_id=data.tenant_id,
                        owner_id=str(data.owner_id),
                        title=_fit(search_chats.c.title, data.title),
                        archived=False,
                    )
                )
            case ChatRenamed():
                await conn.execute(search_chats.update().where(this_chat).values(title=_fit(search_chats.c.title, data.title)))
            case ChatArchived() | ChatUnarchived():
                archived = isinstance(data, ChatArchived)
                await conn.execute(search_chats.update().where(this_chat).values(archived=archived))
                await conn.execute(search_messages.update().where(its_messages).values(archived=archived))
            case ChatDeleted():
                await conn.execute(search_messages.delete().where(its_messages))
                await conn.execute(search_chats.delete().where(this_chat))
            case UserErased():
                await conn.execute(search_messages.delete().where(search_messages.c.user_id == chat_id))
                await conn.execute(search_chats.delete().where(search_chats.c.owner_id == chat_id))


_MESSAGES = frozenset({"MessagePosted", "AnswerRecorded", "MessageImported"})


def _message(e: EventEnvelope) -> dict[str, Any] | None:
    """The parameters of ``_INSERT_MESSAGE`` for a message, or None where it is not indexed. An imported
    message (``MessageImported``: role, content and the time it was written where it came from) is read
    by its fields' names."""
    data: Any = decode_data(e.type, e.data)
    role = "assistant" if isinstance(data, AnswerRecorded) else data.role
    if role not in ("user", "assistant") or not data.content.strip():
        return None
    imported = not isinstance(data, MessagePosted | AnswerRecorded)
    return {
        "message_id": _fit(search_messages.c.message_id, data.message_id),
        "role": role,
        "created_at": data.created_at if imported else e.occurred_at,
        "content": _fit(search_messages.c.content, data.content),
        "chat_id": str(e.aggregate_id),
    }


_SEARCH = text(
    "WITH query AS (SELECT websearch_to_tsquery('english', :q) AS q),"
    " pool AS ("
    "  SELECT m.message_id, m.chat_id, m.role, m.archived, m.created_at, m.content, m.tsv FROM rm_search_messages m"
    "  WHERE m.tsv @@ (websearch_to_tsquery('english', :q) && CAST(:owner AS tsquery))"
    "  AND m.user_id = :user AND m.tenant_id = :tenant AND (:archived OR NOT m.archived)"
    "  AND numnode(websearch_to_tsquery('english', :q)) > 0"
    "  LIMIT :pool),"
    " page AS ("
    "  SELECT pool.*, ts_rank_cd(pool.tsv, query.q) AS rank FROM pool, query"
    "  ORDER BY rank DESC, pool.created_at DESC, pool.message_id LIMIT :limit OFFSET :offset)"
    " SELECT page.message_id, page.chat_id, c.title, page.role, page.archived, page.created_at, page.rank,"
    "  ts_headline('english', translate(page.content, :marks, ''), query.q,"
    "   'MaxFragments=2, MaxWords=24, MinWords=8, FragmentDelimiter=\" … \", StartSel=' || :start || ', StopSel=' || :stop)"
    "  AS excerpt"
    " FROM page JOIN rm_search_chats c ON c.chat_id = page.chat_id, query"
    " ORDER BY page.rank DESC, page.created_at DESC, page.message_id"
)


async def search_messages_of(
    engine: AsyncEngine,
    tenant_id: str,
    user_id: str,
    q: str,
    *,
    limit: int = 20,
    offset: int = 0,
    include_archived: bool = False,
) -> list[dict[str, Any]]:
    """The caller's messages matching ``q`` (web-search syntax: words, "a phrase", -not, or), best first,
    each with its chat, an excerpt and where the excerpt's matched words are (``highlights``: [start, end)
    character offsets into ``excerpt``)."""
    tenant, user = _uuid(tenant_id), _uuid(user_id)
    if tenant is None or user is None:
        return []
    params = {
        "q": q[:MAX_QUERY_CHARS],
        "owner": owner_lexeme(user),
        "user": user,
        "tenant": tenant,
        "archived": include_archived,
        "pool": CANDIDATES,
        "limit": limit,
        "offset": offset,
        "marks": _MARK_START + _MARK_STOP,
        "start": _MARK_START,
        "stop": _MARK_STOP,
    }
    async with engine.connect() as conn:
        rows = (await conn.execute(_SEARCH, params)).mappings().all()
    return [{**{k: v for k, v in r.items() if k != "excerpt"}, **_highlighted(r["excerpt"])} for r in rows]


def _highlighted(marked: str) -> dict[str, Any]:
    """ts_headline's marked excerpt as plain text and the [start, end) offsets of its matched words."""
    plain: list[str] = []
    spans: list[list[int]] = []
    at = 0
    start = 0
    for ch in marked:
        if ch == _MARK_START:
            start = at
        elif ch == _MARK_STOP:
            spans.append([start, at])
        else:
            plain.append(ch)
            at += 1
    return {"excerpt": "".join(plain), "highlights": spans}
