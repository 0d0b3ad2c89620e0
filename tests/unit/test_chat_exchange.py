"""Export and import formats as pure functions and domain rules (no I/O): a hypothesis round trip through
each format (export -> JSON text -> import into a chat -> export again) keeps the message tree exactly;
the Open WebUI fixture's chats read with their branches; bad exports are refused with their codes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from application.chat_exchange import (
    MAX_IMPORT_CHATS,
    ExchangedChat,
    ExchangedMessage,
    imported_chat,
    parse_export,
    render_openwebui,
    render_parley,
)
from domain.chats import Chat
from domain.errors import Invalid, TooLarge
from domain.folders import FolderTree
from tests.openwebui_chats import CHECKED_IN, FIXTURE_DB, export_from_db, fixture_export

OWNER = uuid.UUID(int=42)
BASE = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@st.composite
def chats(draw: Any, whole_seconds: bool) -> ExchangedChat:
    """A chat with a random tree: each message follows an earlier one (or starts a new root), so a
    question may have several answers and an answer several follow-ups, in time order."""
    n = draw(st.integers(1, 14))
    step = st.integers(0, 90) if whole_seconds else st.integers(0, 90_000_000)
    messages: list[ExchangedMessage] = []
    at = BASE
    for i in range(n):
        at += timedelta(seconds=draw(step)) if whole_seconds else timedelta(microseconds=draw(step))
        parent = draw(st.none() | st.sampled_from([m.id for m in messages])) if messages and draw(st.booleans()) else (
            messages[-1].id if messages else None
        )
        role = draw(st.sampled_from(["user", "assistant", "system", "tool"]))
        messages.append(
            ExchangedMessage(
                id=f"src-{i}-{draw(st.uuids()).hex[:6]}",
                parent_id=parent,
                role=role,
                content=draw(TEXT),
                created_at=at,
                model=draw(st.sampled_from(["smollm2", "gpt-4o", "local/llama3"])) if role == "assistant" else None,
                thinking=draw(st.none() | TEXT.filter(bool)) if role == "assistant" else None,
                tool_calls=(
                    tuple(draw(st.lists(st.builds(lambda a, b: {"id": a, "name": "lookup", "arguments": b},
                                                  st.text("abc", min_size=1, max_size=5), TEXT), max_size=2)))
                    if role == "assistant" else ()
                ),  # fmt: skip
                tool_call_id=draw(st.text("xyz0", min_size=1, max_size=8)) if role == "tool" else None,
                tool_name=draw(st.none() | st.just("lookup")) if role == "tool" else None,
            )
        )
    created = BASE - timedelta(seconds=draw(st.integers(0, 10**6)))
    return ExchangedChat(
        id=str(draw(st.uuids())),
        title=draw(st.sampled_from(["Plans", "Q3 — launch", "日本語のチャット"])),
        messages=messages,
        head_id=draw(st.sampled_from([m.id for m in messages])),
        created_at=created,
        updated_at=at,
        tags=draw(st.lists(st.sampled_from(["python", "work", "q3 plans"]), unique=True, max_size=3)),
        folder=draw(st.none() | st.just(["Work", "Q3"])),
        pinned=draw(st.booleans()),
        archived=draw(st.booleans()),
    )


def from_aggregate(chat: Chat, tree: FolderTree | None) -> ExchangedChat:
    """What the export reads back of an imported chat (the read model holds the same, from its events)."""
    [imported] = [e for e in chat.collect_events() if type(e).__name__ == "ChatImported"]
    folder = tree.path(chat.folder_id) if tree is not None and tree.effective(chat.folder_id) else None
    return ExchangedChat(
        id=str(chat.id),
        title=chat.title,
        messages=[
            ExchangedMessage(
                id=m["id"],
                parent_id=m["parent_id"],
                role=m["role"],
                content=m["content"],
                created_at=m["created_at"],
                model=m.get("model"),
                thinking=m.get("thinking"),
                tool_calls=tuple(m.get("tool_calls") or ()),
                tool_call_id=m.get("tool_call_id"),
                tool_name=m.get("name"),
            )
            for m in chat.messages.values()
        ],
        head_id=chat.head,
        created_at=imported.created_at,
        updated_at=imported.updated_at,
        tags=list(chat.tags),
        folder=folder,
        pinned=chat.pinned,
        archived=chat.archived,
    )


def tree_of(chat: ExchangedChat) -> Any:
    """The message tree without ids: each node its content and its children, in order; and where the
    chat's current branch ends, as a path of child positions."""
    fields = ("role", "content", "created_at", "model", "thinking", "tool_calls", "tool_call_id", "tool_name")
    children: dict[str | None, list[ExchangedMessage]] = {}
    for m in chat.messages:
        children.setdefault(m.parent_id, []).append(m)

    def node(m: ExchangedMessage) -> Any:
        values = tuple(tuple(map(dict, v)) if k == "tool_calls" else v for k, v in ((f, getattr(m, f)) for f in fields))
        return (values, tuple(node(c) for c in children.get(m.id, [])))

    by_id = {m.id: m for m in chat.messages}
    head_path: list[int] = []
    at = chat.head_id
    while at is not None:
        parent = by_id[at].parent_id
        head_path.insert(0, [c.id for c in children[parent]].index(at))
        at = parent
    return tuple(node(m) for m in children.get(None, [])), head_path


def round_trip(source: ExchangedChat, kind: str) -> tuple[ExchangedChat, Chat]:
    rendered = render_parley([source]) if kind == "parley" else render_openwebui([source], user_id=str(OWNER))
    read_kind, [parsed] = parse_export(json.loads(json.dumps(rendered)))
    assert read_kind == kind
    chat, tree = imported_chat("t", OWNER, kind, parsed, None)
    return from_aggregate(chat, tree), chat


@settings(max_examples=120, deadline=None)
@given(source=chats(whole_seconds=False))
def test_parley_format_round_trip_keeps_the_tree_exactly(source: ExchangedChat) -> None:
    back, chat = round_trip(source, "parley")
    assert tree_of(back) == tree_of(source)
    assert (back.title, back.tags, back.folder, back.pinned, back.archived) == (
        source.title, source.tags, source.folder, source.pinned, source.archived,
    )  # fmt: skip
    assert (back.created_at, back.updated_at) == (source.created_at, source.updated_at)
    # and again, from what was imported: nothing drifts on a second trip
    again, _ = round_trip(back, "parley")
    assert tree_of(again) == tree_of(source)


@settings(max_examples=120, deadline=None)
@given(source=chats(whole_seconds=True))
def test_open_webui_format_round_trip_keeps_the_tree_exactly(source: ExchangedChat) -> None:
    """Open WebUI keeps times in whole seconds: with those, nothing is lost (a folder travels by id there)."""
    back, _ = round_trip(source, "openwebui")
    assert tree_of(back) == tree_of(source)
    assert (back.title, back.tags, back.pinned, back.archived) == (source.title, source.tags, source.pinned, source.archived)
    assert (back.created_at, back.updated_at) == (source.created_at.replace(microsecond=0), source.updated_at)


def test_the_fixture_chats_read_with_their_branches() -> None:
    export = fixture_export()
    kind, parsed = parse_export(export)
    assert kind == "openwebui" and len(parsed) == len(export) >= 10
    by_title = {c.title: c for c in parsed}
    welcome = by_title["Welcome email for new hires"]  # a regenerated answer: one question, two answers
    chat, _ = imported_chat("t", OWNER, kind, welcome, None)
    questions = [m for m in chat.messages.values() if m["role"] == "user"]
    answers = [m for m in chat.messages.values() if m["parent_id"] == questions[0]["id"]]
    assert len(questions) == 1 and len(answers) == 2 and {a["model"] for a in answers} == {"smollm2"}
    assert chat.head == answers[1]["id"]  # Open WebUI's currentId: the second answer
    python = by_title["Python list comprehensions"]  # an edited follow-up: an answer with two questions after it
    children: dict[str | None, int] = {}
    for m in python.messages:
        children[m.parent_id] = children.get(m.parent_id, 0) + 1
    assert sorted(children.values())[-1] == 2 and len(python.messages) == 6
    assert python.tags == ["python", "learning"]
    assert by_title["Q3 launch planning"].pinned and by_title["Weekly sync agenda"].archived
    assert by_title["Team offsite ideas"].folder_id == "eec11aac-c727-422f-a0f6-ad4e98cb493d"
    for source in parsed:  # every chat's tree survives a trip through parley's format too
        back, _ = round_trip(source, "parley")
        assert tree_of(back) == tree_of(source)


@pytest.mark.skipif(not FIXTURE_DB.exists(), reason=f"the shared fixture is not at {FIXTURE_DB}")
def test_the_checked_in_export_is_the_fixtures() -> None:
    assert json.loads(CHECKED_IN.read_text()) == export_from_db()


def test_bad_exports_are_refused_with_their_codes() -> None:
    def refused(body: Any) -> Invalid:
        with pytest.raises(Invalid) as e:
            parse_export(body)
        assert e.value.code == "INVALID_IMPORT"
        return e.value

    refused({"what": "ever"})
    refused({"format": "parley.chats", "version": 2, "chats": []})
    refused([{"chat": {"history": {"messages": {"a": {"id": "a", "parentId": "ghost", "role": "user", "content": "x"}}}}}])
    loop = {"a": {"id": "a", "parentId": "b", "role": "user"}, "b": {"id": "b", "parentId": "a", "role": "assistant"}}
    assert "loop" in refused([{"chat": {"history": {"messages": loop}}}]).message
    refused([{"chat": {"history": {"messages": {"a": {"id": "a", "role": "wizard", "content": "x"}}}}}])
    refused([{"id": "x", "chat": {"history": {"messages": {}}}, "created_at": "yesterday"}])
    with pytest.raises(TooLarge) as big:
        parse_export([{"chat": {"history": {"messages": {}}}}] * (MAX_IMPORT_CHATS + 1))
    assert big.value.code == "IMPORT_TOO_LARGE"
    with pytest.raises(TooLarge, match="messages"):
        parse_export([{"chat": {"history": {"messages": {str(i): {} for i in range(20_001)}}}}])


def test_a_legacy_list_of_messages_is_a_chain() -> None:
    kind, [chat] = parse_export(
        [{"title": "Old", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    )
    assert [(m.role, m.parent_id) for m in chat.messages] == [("user", None), ("assistant", "m0")]
    assert chat.id.startswith("sha256:")  # no id in the export: its content's hash, the same each time
    assert parse_export([{"title": "Old", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}])[1][0].id == chat.id
