"""Export and import of chats: Open WebUI's chat JSON and parley's own.

Both formats carry the whole message tree (every branch a regeneration or an edit left), each message's
role, model and time, and the chat's title, tags, folder, pinned and archived state.

- Open WebUI (``openwebui``): what its export produces and its import accepts (``GET /api/v1/chats/all``,
  a chat menu's "Export chat (.json)", ``POST /api/v1/chats/import``): a JSON list of
  ``{"id", "title", "chat": {"title", "models", "history": {"messages": {id: {"id", "parentId",
  "childrenIds", "role", "content", "model", "timestamp", ...}}, "currentId"}, "messages": [...]},
  "meta": {"tags": [...]}, "pinned", "archived", "folder_id", "created_at", "updated_at"}``; its import's
  own body ``{"chats": [...]}`` and its legacy items (the chat object alone) are read too. Times are whole
  seconds there. A ``folder_id`` files the chat only where it names one of the importing user's folders
  (as Open WebUI clears one that does not).
- parley (``parley``): ``{"format": "parley.chats", "version": 1, "chats": [{"id", "title", "created_at",
  "updated_at", "archived", "pinned", "tags", "folder": [names from the top level] | null, "head_id",
  "messages": [{"id", "parent_id", "role", "content", "model", "created_at", "thinking", "tool_calls",
  "tool_call_id", "tool_name"}]}]}`` with ISO 8601 times to the microsecond; a folder path is created
  where the user has none by that path.

Importing is idempotent: an imported chat's id follows from the tenant, the user and its id in the export
(``domain.chats.import_chat_id_for``), and its messages' ids from the chat and theirs, so the same export
imported twice adds nothing the second time (nor does a chat imported and since deleted come back). Each
chat is imported in one transaction (with any folders its path needs). What is refused: a body over
``MAX_IMPORT_BYTES`` or more than ``MAX_IMPORT_CHATS`` chats or ``MAX_IMPORT_MESSAGES`` messages (413
``IMPORT_TOO_LARGE``), a message over the message size (413 ``MESSAGE_TOO_LARGE``), anything not of
either shape, a message whose parent is missing or a tree with a loop (422 ``INVALID_IMPORT``, naming the
chat and the field).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from application.context import CommandContext
from application.identity import Principal
from application.ports import EventStorePort
from domain.chats import MAX_TITLE_CHARS, ROLES, Chat, import_chat_id_for, normalise_tags
from domain.errors import Invalid, TooLarge
from domain.folders import FolderTree, check_folder_name, folder_tree_id_for

__all__ = [
    "FORMATS",
    "MAX_IMPORT_BYTES",
    "MAX_IMPORT_CHATS",
    "MAX_IMPORT_MESSAGES",
    "ChatExchange",
    "ExchangedChat",
    "ExchangedMessage",
    "ImportReport",
    "parse_export",
    "render_openwebui",
    "render_parley",
    "exchanged",
    "imported_chat",
    "imported_message_id",
]

FORMATS = ("openwebui", "parley")
PARLEY_FORMAT = "parley.chats"
MAX_IMPORT_BYTES = 16 * 1024 * 1024
MAX_IMPORT_CHATS = 1_000
MAX_IMPORT_MESSAGES = 20_000
MAX_ID_CHARS = 200


@dataclass(frozen=True)
class ExchangedMessage:
    id: str
    parent_id: str | None
    role: str
    content: str
    created_at: datetime
    model: str | None = None
    thinking: str | None = None
    tool_calls: tuple[Mapping[str, str], ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None


@dataclass(frozen=True)
class ExchangedChat:
    """A chat as both formats carry it; ``messages`` parents first."""

    id: str
    title: str
    messages: list[ExchangedMessage]
    head_id: str | None
    created_at: datetime
    updated_at: datetime
    tags: list[str] = field(default_factory=list)
    folder: list[str] | None = None
    """The folder's path of names (parley's format)."""
    folder_id: str | None = None
    """The folder's id where the export came from (Open WebUI's format)."""
    pinned: bool = False
    archived: bool = False


@dataclass(frozen=True)
class ImportReport:
    format: str
    imported: list[str]
    """parley's ids of the chats imported now."""
    skipped: list[str]
    """parley's ids of chats the export holds that were imported before."""
    messages: int


# --- reading an export ---------------------------------------------------------------------------------
def _invalid(message: str, **detail: Any) -> Invalid:
    return Invalid("INVALID_IMPORT", message, **detail)


def _time(value: Any, default: datetime, where: str) -> datetime:
    """Epoch seconds (or milliseconds, as Open WebUI's chat ``timestamp``), or ISO 8601."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise _invalid("a time is epoch seconds or ISO 8601", field=where)
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 100_000_000_000 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise _invalid("a time is out of range", field=where) from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _invalid("a time is epoch seconds or ISO 8601", field=where) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise _invalid("a time is epoch seconds or ISO 8601", field=where)


def _text(value: Any, where: str) -> str:
    """A message's content: text, or Open WebUI's list of parts (their text joined)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(p.get("text", "")) for p in value if isinstance(p, dict) and p.get("type") in ("text", "output_text"))
    raise _invalid("a message's content is text", field=where)


def _str_or_none(value: Any, where: str, limit: int = MAX_ID_CHARS) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool) or len(str(value)) > limit:
        raise _invalid(f"expected text of at most {limit} characters", field=where)
    return str(value)


def _title(value: Any) -> str:
    text = " ".join(str(value or "").split()) if isinstance(value, str) else ""
    text = "".join(c for c in text if ord(c) >= 32)
    return text[:MAX_TITLE_CHARS].strip() or "Imported chat"


def _tool_calls(value: Any, where: str) -> tuple[Mapping[str, str], ...]:
    if not value:
        return ()
    if not isinstance(value, list):
        raise _invalid("tool_calls is a list", field=where)
    calls = []
    for call in value:
        if not isinstance(call, dict):
            raise _invalid("a tool call is an object", field=where)
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else call
        calls.append(
            {
                "id": str(call.get("id") or ""),
                "name": str(function.get("name") or ""),
                "arguments": str(function.get("arguments") or ""),
            }
        )
    return tuple(calls)


def _in_tree_order(chat_ref: str, messages: list[ExchangedMessage]) -> list[ExchangedMessage]:
    """Parents before children; among those ready, oldest first (then as the export lists them). A message
    whose parent is missing, or a loop, is refused."""
    by_id: dict[str, int] = {}
    for i, m in enumerate(messages):
        if m.id in by_id:
            raise _invalid("two messages have one id", chat=chat_ref, message_id=m.id)
        by_id[m.id] = i
    children: dict[str | None, list[int]] = {}
    for i, m in enumerate(messages):
        if m.parent_id is not None and m.parent_id not in by_id:
            raise _invalid("a message's parent is not in the chat", chat=chat_ref, message_id=m.id)
        children.setdefault(m.parent_id, []).append(i)
    ready = [(messages[i].created_at, i) for i in children.get(None, [])]
    heapq.heapify(ready)
    out: list[ExchangedMessage] = []
    while ready:
        _, i = heapq.heappop(ready)
        out.append(messages[i])
        for c in children.get(messages[i].id, []):
            heapq.heappush(ready, (messages[c].created_at, c))
    if len(out) != len(messages):
        raise _invalid("the messages' parents form a loop", chat=chat_ref)
    return out


def _openwebui_chat(item: Any, n: int, now: datetime) -> ExchangedChat:
    ref = f"chats[{n}]"
    if not isinstance(item, dict):
        raise _invalid("each chat is an object", chat=ref)
    chat: dict[str, Any] = item["chat"] if isinstance(item.get("chat"), dict) else item  # legacy: the chat alone
    history: dict[str, Any] = chat["history"] if isinstance(chat.get("history"), dict) else {}
    raw = history.get("messages")
    if isinstance(raw, dict):
        listed = [dict(m, id=m.get("id") or k) if isinstance(m, dict) else m for k, m in raw.items()]
    elif isinstance(chat.get("messages"), list):  # no tree: a list, each after the one before
        listed = []
        for i, m in enumerate(chat["messages"]):
            if isinstance(m, dict):
                previous = listed[-1]["id"] if listed else None
                listed.append({"parentId": previous, **m, "id": m.get("id") or f"m{i}"})
            else:
                listed.append(m)
    else:
        raise _invalid("a chat has chat.history.messages (or chat.messages)", chat=ref)
    created = _time(item.get("created_at"), _time(chat.get("timestamp"), now, f"{ref}.chat.timestamp"), f"{ref}.created_at")
    updated = _time(item.get("updated_at"), created, f"{ref}.updated_at")
    messages = []
    for m in listed:
        if not isinstance(m, dict):
            raise _invalid("each message is an object", chat=ref)
        where = f"{ref}.message {m.get('id')}"
        role = m.get("role")
        if role not in ROLES:
            raise _invalid("a message's role is system, user, assistant or tool", chat=ref, field=where)
        messages.append(
            ExchangedMessage(
                id=str(_str_or_none(m.get("id"), where)),
                parent_id=_str_or_none(m.get("parentId"), where),
                role=role,
                content=_text(m.get("content"), where),
                created_at=_time(m.get("timestamp"), created, where),
                model=_str_or_none(m.get("model"), where, 100) if role == "assistant" else None,
                thinking=_str_or_none(m.get("thinking"), where, 10**6),
                tool_calls=_tool_calls(m.get("tool_calls"), where),
                tool_call_id=_str_or_none(m.get("tool_call_id"), where),
                tool_name=_str_or_none(m.get("tool_name") or m.get("name"), where, 100) if role == "tool" else None,
            )
        )
    source_id = _str_or_none(item.get("id") or chat.get("id"), f"{ref}.id") or _content_id(item)
    meta: dict[str, Any] = item["meta"] if isinstance(item.get("meta"), dict) else {}
    tags = [t for t in [*(meta.get("tags") or []), *(chat.get("tags") or [])] if isinstance(t, str)]
    head = _str_or_none(history.get("currentId") or item.get("current_message_id"), f"{ref}.currentId")
    return ExchangedChat(
        id=source_id,
        title=_title(item.get("title") or chat.get("title")),
        messages=_in_tree_order(ref, messages),
        head_id=head,
        created_at=created,
        updated_at=updated,
        tags=_tags(tags, ref),
        folder_id=_str_or_none(item.get("folder_id"), f"{ref}.folder_id"),
        pinned=bool(item.get("pinned")),
        archived=bool(item.get("archived")),
    )


def _parley_chat(item: Any, n: int, now: datetime) -> ExchangedChat:
    ref = f"chats[{n}]"
    if not isinstance(item, dict) or not isinstance(item.get("messages"), list):
        raise _invalid("each chat is an object with messages", chat=ref)
    created = _time(item.get("created_at"), now, f"{ref}.created_at")
    messages = []
    for m in item["messages"]:
        if not isinstance(m, dict):
            raise _invalid("each message is an object", chat=ref)
        where = f"{ref}.message {m.get('id')}"
        if m.get("role") not in ROLES or not isinstance(m.get("id"), str):
            raise _invalid("a message has an id and a role (system, user, assistant or tool)", chat=ref, field=where)
        messages.append(
            ExchangedMessage(
                id=str(_str_or_none(m["id"], where)),
                parent_id=_str_or_none(m.get("parent_id"), where),
                role=m["role"],
                content=_text(m.get("content"), where),
                created_at=_time(m.get("created_at"), created, where),
                model=_str_or_none(m.get("model"), where, 100),
                thinking=_str_or_none(m.get("thinking"), where, 10**6),
                tool_calls=_tool_calls(m.get("tool_calls"), where),
                tool_call_id=_str_or_none(m.get("tool_call_id"), where),
                tool_name=_str_or_none(m.get("tool_name"), where, 100),
            )
        )
    folder = item.get("folder")
    if folder is not None and (not isinstance(folder, list) or not all(isinstance(f, str) for f in folder)):
        raise _invalid("a chat's folder is a list of names", chat=ref, field="folder")
    tags = item.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _invalid("a chat's tags are a list of names", chat=ref, field="tags")
    source_id = _str_or_none(item.get("id"), f"{ref}.id")
    if not source_id:
        raise _invalid("a chat has an id", chat=ref, field="id")
    return ExchangedChat(
        id=source_id,
        title=_title(item.get("title")),
        messages=_in_tree_order(ref, messages),
        head_id=_str_or_none(item.get("head_id"), f"{ref}.head_id"),
        created_at=created,
        updated_at=_time(item.get("updated_at"), created, f"{ref}.updated_at"),
        tags=_tags(tags, ref),
        folder=[check_folder_name(f) for f in folder] if folder else None,
        pinned=bool(item.get("pinned")),
        archived=bool(item.get("archived")),
    )


def _tags(tags: list[str], ref: str) -> list[str]:
    try:
        return normalise_tags(tags)
    except Invalid as e:
        raise _invalid(e.message, chat=ref, field="tags") from None


def _content_id(item: Any) -> str:
    """An id for a chat the export gives none: its content's hash (the same export, the same id)."""
    return "sha256:" + hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()


def parse_export(body: Any, *, now: datetime | None = None) -> tuple[str, list[ExchangedChat]]:
    """(format, chats) of an export in either format, bounded by ``MAX_IMPORT_CHATS`` and
    ``MAX_IMPORT_MESSAGES``."""
    now = now or datetime.now(UTC)
    if isinstance(body, dict) and body.get("format") == PARLEY_FORMAT:
        if body.get("version") != 1:
            raise _invalid("this parley export's version is not 1", field="version")
        kind, items, read = "parley", body.get("chats"), _parley_chat
    elif isinstance(body, dict) and isinstance(body.get("chats"), list):  # Open WebUI's import body
        kind, items, read = "openwebui", body["chats"], _openwebui_chat
    elif isinstance(body, list):
        kind, items, read = "openwebui", body, _openwebui_chat
    elif isinstance(body, dict) and ("chat" in body or "history" in body):  # one chat, not in a list
        kind, items, read = "openwebui", [body], _openwebui_chat
    else:
        raise _invalid("not an export: expected Open WebUI's list of chats or parley's {\"format\": \"parley.chats\"}")
    if not isinstance(items, list):
        raise _invalid("chats is a list", field="chats")
    if len(items) > MAX_IMPORT_CHATS:
        raise TooLarge("IMPORT_TOO_LARGE", f"an import holds at most {MAX_IMPORT_CHATS} chats", chats=len(items))
    total = sum(_count(i) for i in items)
    if total > MAX_IMPORT_MESSAGES:
        raise TooLarge("IMPORT_TOO_LARGE", f"an import holds at most {MAX_IMPORT_MESSAGES} messages", messages=total)
    return kind, [read(item, n, now) for n, item in enumerate(items)]


def _count(item: Any) -> int:
    if not isinstance(item, dict):
        return 0
    chat: dict[str, Any] = item["chat"] if isinstance(item.get("chat"), dict) else item
    history = chat.get("history")
    for held in (history.get("messages") if isinstance(history, dict) else None, chat.get("messages")):
        if isinstance(held, dict | list):
            return len(held)
    return 0


# --- writing an export ---------------------------------------------------------------------------------
def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _seconds(value: datetime) -> int:
    return int(value.timestamp())


def render_parley(chats: Sequence[ExchangedChat], *, exported_at: datetime | None = None) -> dict[str, Any]:
    def message(m: ExchangedMessage) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": m.id,
            "parent_id": m.parent_id,
            "role": m.role,
            "content": m.content,
            "model": m.model,
            "created_at": _iso(m.created_at),
        }
        if m.thinking:
            out["thinking"] = m.thinking
        if m.tool_calls:
            out["tool_calls"] = [dict(c) for c in m.tool_calls]
        if m.role == "tool":
            out.update(tool_call_id=m.tool_call_id, tool_name=m.tool_name)
        return out

    return {
        "format": PARLEY_FORMAT,
        "version": 1,
        "exported_at": _iso(exported_at or datetime.now(UTC)),
        "chats": [
            {
                "id": c.id,
                "title": c.title,
                "created_at": _iso(c.created_at),
                "updated_at": _iso(c.updated_at),
                "archived": c.archived,
                "pinned": c.pinned,
                "tags": list(c.tags),
                "folder": list(c.folder) if c.folder else None,
                "head_id": c.head_id,
                "messages": [message(m) for m in c.messages],
            }
            for c in chats
        ],
    }


def render_openwebui(chats: Sequence[ExchangedChat], *, user_id: str) -> list[dict[str, Any]]:
    """The chats as Open WebUI's export writes them (its ``ChatResponse``, one per chat)."""
    out = []
    for c in chats:
        children: dict[str | None, list[str]] = {}
        for m in c.messages:
            children.setdefault(m.parent_id, []).append(m.id)
        models = list(dict.fromkeys(m.model for m in c.messages if m.model))
        history: dict[str, dict[str, Any]] = {}
        for m in c.messages:
            entry: dict[str, Any] = {
                "id": m.id,
                "parentId": m.parent_id,
                "childrenIds": children.get(m.id, []),
                "role": m.role,
                "content": m.content,
                "timestamp": _seconds(m.created_at),
            }
            if m.role == "user":
                entry["models"] = models
            if m.role == "assistant":
                entry.update(model=m.model, done=True)
            if m.thinking:
                entry["thinking"] = m.thinking
            if m.tool_calls:
                entry["tool_calls"] = [dict(t) for t in m.tool_calls]
            if m.role == "tool":
                entry.update(tool_call_id=m.tool_call_id, tool_name=m.tool_name)
            history[m.id] = entry
        current = c.head_id if c.head_id in history else (c.messages[-1].id if c.messages else None)
        branch: list[dict[str, Any]] = []
        at = current
        while at is not None:
            branch.append(history[at])
            at = history[at]["parentId"]
        out.append(
            {
                "id": c.id,
                "user_id": user_id,
                "title": c.title,
                "chat": {
                    "id": c.id,
                    "title": c.title,
                    "models": models,
                    "params": {},
                    "history": {"messages": history, "currentId": current},
                    "messages": list(reversed(branch)),
                    "tags": [],
                    "files": [],
                    "timestamp": _seconds(c.created_at) * 1000,
                },
                "updated_at": _seconds(c.updated_at),
                "created_at": _seconds(c.created_at),
                "share_id": None,
                "archived": c.archived,
                "pinned": c.pinned,
                "meta": {"tags": list(c.tags)},
                "folder_id": c.folder_id,
                "current_message_id": current,
            }
        )
    return out


def exchanged(chat: Mapping[str, Any], folder: list[str] | None) -> ExchangedChat:
    """A chat of the read model (``projections.conversations.get_chats``) as the formats carry it."""
    return ExchangedChat(
        id=str(chat["id"]),
        title=chat["title"],
        messages=[
            ExchangedMessage(
                id=m["id"],
                parent_id=m["parent_id"],
                role=m["role"],
                content=m["content"],
                created_at=m["created_at"],
                model=m.get("model"),
                thinking=m.get("thinking") or None,
                tool_calls=tuple(m.get("tool_calls") or ()),
                tool_call_id=m.get("tool_call_id"),
                tool_name=m.get("tool_name"),
            )
            for m in chat["messages"]
        ],
        head_id=chat["head_id"],
        created_at=chat["created_at"],
        updated_at=chat["updated_at"],
        tags=list(chat.get("tags") or []),
        folder=folder,
        folder_id=str(chat["folder_id"]) if chat.get("folder_id") else None,
        pinned=bool(chat.get("pinned")),
        archived=bool(chat.get("archived")),
    )


# --- importing -----------------------------------------------------------------------------------------
def imported_message_id(chat_id: uuid.UUID, source_message_id: str) -> str:
    """parley's id of an imported message: one per chat and message of the export (message ids are unique
    across parley; the same export imported by two users must not collide)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"/chats/{chat_id}/imported/{source_message_id}").hex


class ChatExchange:
    def __init__(self, *, store: EventStorePort) -> None:
        self.store = store

    async def import_chats(self, ctx: CommandContext, principal: Principal, body: Any) -> ImportReport:
        kind, chats = parse_export(body)
        imported: list[str] = []
        skipped: list[str] = []
        messages = 0
        for chat in chats:
            chat_id, done = await self.store.execute(ctx, partial(self._import_one, principal, kind, chat))
            (imported if done else skipped).append(str(chat_id))
            messages += len(chat.messages) if done else 0
        return ImportReport(kind, imported, skipped, messages)

    def _import_one(self, principal: Principal, kind: str, source: ExchangedChat) -> tuple[uuid.UUID, bool]:
        """One chat, in one transaction (with the folders its path needs): (its id, whether it is new)."""
        chat_id = import_chat_id_for(principal.tenant_id, principal.user_id, source.id)
        if self.store.find(Chat, chat_id) is not None:
            return chat_id, False
        tree = self.store.find(FolderTree, folder_tree_id_for(principal.tenant_id, principal.user_id))
        chat, tree = imported_chat(principal.tenant_id, principal.user_id, kind, source, tree)
        self.store.save(tree if tree is not None and tree.pending_events else None, chat)
        return chat_id, True


def imported_chat(
    tenant_id: str, owner_id: uuid.UUID, kind: str, source: ExchangedChat, tree: FolderTree | None
) -> tuple[Chat, FolderTree | None]:
    """The chat an export's chat becomes (new, unsaved), and the owner's folder tree with any folders its
    path needed (made if the owner had none)."""
    chat = Chat(
        tenant_id=tenant_id, owner_id=owner_id, title=source.title, source="import", client_chat_id=f"import:{source.id}"
    )
    ids = {m.id: imported_message_id(chat.id, m.id) for m in source.messages}
    for m in source.messages:
        chat.import_message(
            ids[m.id],
            ids[m.parent_id] if m.parent_id is not None else None,
            m.role,
            m.content,
            created_at=m.created_at,
            model=m.model,
            thinking=m.thinking,
            tool_calls=[dict(c) for c in m.tool_calls],
            tool_call_id=m.tool_call_id,
            tool_name=m.tool_name,
        )
    chat.set_tags(source.tags)
    chat.set_pinned(source.pinned)
    chat.set_archived(source.archived)
    if source.folder:
        tree = tree or FolderTree(tenant_id=tenant_id, owner_id=owner_id)
        chat.file_in(_ensure_path(tree, source.folder))
    elif source.folder_id is not None and tree is not None:
        chat.file_in(tree.effective(source.folder_id))
    chat.record_import(
        source_format=kind,
        source_chat_id=source.id,
        head_id=ids.get(source.head_id) if source.head_id is not None else None,
        created_at=source.created_at,
        updated_at=source.updated_at,
    )
    return chat, tree


def _ensure_path(tree: FolderTree, path: list[str]) -> str:
    """The folder at ``path`` (names from the top level), made where missing."""
    parent: str | None = None
    for name in path:
        found = tree.child_named(parent, name)
        if found is None:
            found = str(uuid.uuid4())
            tree.create_folder(found, name, parent)
        parent = found
    assert parent is not None
    return parent
