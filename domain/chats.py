"""Chats and generations.

A chat is a tree of messages: each message names its parent, so regenerating an answer or editing and
resending a question starts a branch and keeps the old one, as Open WebUI users expect. ``head`` is the
newest message, where the next one attaches by default.

A message may carry more than text: an assistant answer the tool calls it made (``tool_calls``: id, name,
arguments), a tool result the call it answers (``tool_call_id``, a message of its own recorded by
``ToolResultPosted`` with its size and the time since the call), a user message the images that came with
it (``images``: their SHA-256 and type; the bytes are in the blob store, never in an event).

A chat fed by a client that keeps its own chat (Open WebUI, any front end sending a chat id) has an id
derived from the client's (``client_chat_id_for``): each request hands in the whole conversation, and
``match`` finds how much of it the chat already holds, so only what is new is posted.

A generation is one request for an assistant answer: requested with its model and parameters, started by
a worker (once per delivery attempt), then completed, failed or cancelled, always with the text and the
usage so far (a cancelled or abandoned stream is still billed for what was generated). Its ``purpose`` is
"chat" for an answer in a chat; a front end's housekeeping (a title, tags, follow-up suggestions, search
queries) is a generation with its own purpose and its ``prompt`` on the generation itself, outside any
chat's messages, billed and audited like any other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge

__all__ = [
    "Chat",
    "Generation",
    "MAX_MESSAGE_CHARS",
    "MAX_TITLE_CHARS",
    "check_content",
    "check_title",
    "import_chat_id_for",
    "normalise_tags",
    "check_can_generate",
    "client_chat_id_for",
    "generation_id_for",
    "housekeeping_purpose",
    "comparable_text",
    "tool_call_id_for",
    "generation_of_tool_call",
]

MAX_MESSAGE_CHARS = 100_000
MAX_TITLE_CHARS = 200
MAX_CHAT_KNOWLEDGE = 10
MAX_TAGS = 20
MAX_TAG_CHARS = 50
ROLES = ("system", "user", "assistant", "tool")


def check_content(content: str, field: str = "content") -> str:
    if len(content) > MAX_MESSAGE_CHARS:
        raise TooLarge("MESSAGE_TOO_LARGE", f"a message holds at most {MAX_MESSAGE_CHARS} characters", field=field)
    if not content.strip():
        raise Invalid("EMPTY_MESSAGE", "the message is empty", field=field)
    if "\x00" in content:
        raise Invalid("INVALID_CONTENT", "the message contains a NUL character", field=field)
    return content


def client_chat_id_for(tenant_id: str, owner_id: UUID, client_chat_id: str) -> UUID:
    """The parley chat that holds a client's chat: one per (tenant, user, client chat id), so that a
    client's id can never reach another user's chat."""
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/users/{owner_id}/client-chats/{client_chat_id}")


def import_chat_id_for(tenant_id: str, owner_id: UUID, source_chat_id: str) -> UUID:
    """The chat an imported chat becomes: one per (tenant, user, source chat id), so importing the same
    export twice finds the chats already there."""
    return client_chat_id_for(tenant_id, owner_id, f"import:{source_chat_id}")


def normalise_tags(names: Sequence[str]) -> list[str]:
    """Tags as a chat keeps them: whitespace collapsed, case folded, each once, in the order given."""
    tags: list[str] = []
    for name in names:
        tag = " ".join(name.split()).casefold()
        if not 1 <= len(tag) <= MAX_TAG_CHARS or any(ord(c) < 32 for c in name):
            raise Invalid("INVALID_TAG", f"a tag is 1-{MAX_TAG_CHARS} characters without control characters", field="tags")
        if tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise Invalid("TOO_MANY_TAGS", f"a chat has at most {MAX_TAGS} tags", field="tags")
    return tags


def tool_call_id_for(generation_id: UUID, index: int) -> str:
    """The id parley gives the ``index``-th tool call of a generation: a tool result that names it leads
    back to the call (and to when it was made) in any chat."""
    return f"call_{generation_id.hex}_{index}"


def generation_of_tool_call(tool_call_id: str) -> UUID | None:
    prefix, _, rest = tool_call_id.partition("_")
    hex_id, _, index = rest.partition("_")
    if prefix != "call" or len(hex_id) != 32 or not index.isdigit():
        return None
    try:
        return UUID(hex=hex_id)
    except ValueError:
        return None


# Front ends' own calls. Open WebUI's task prompts (title, tags, follow-ups, search queries...) are one user
# message, not streamed, without tools, opening with "### Task:"; its RAG answer opens so too, but is a
# conversation turn (streamed, with tools, and its header says so). The first line names the task.
_TASK_PREFIX = "### Task:"
_RAG_TASK = "respond to the user query using the provided context"
_TASK_KINDS = (
    ("title", "title"),
    ("tags", "tags"),
    ("follow-up", "follow_ups"),
    ("follow up", "follow_ups"),
    ("messages this user might", "follow_ups"),
    ("search queries", "queries"),
    ("queries", "queries"),
    ("autocompletion", "autocomplete"),
    ("image generation", "image_prompt"),
    ("emoji", "emoji"),
)
_OTHER_TASKS = (
    ("your task is to reflect the speaker's likely facial expression", "emoji"),
    ("you have been provided with a set of responses from various models", "moa"),
)


def housekeeping_purpose(turns: Sequence[tuple[str, str]], *, streamed: bool, tools: bool) -> str | None:
    """The purpose of a front end's housekeeping call, from its (role, text) turns; None for a turn of a
    conversation."""
    if len(turns) != 1 or turns[0][0] != "user" or streamed or tools:
        return None
    text = turns[0][1].lstrip()
    lowered = text[:300].lower()
    for opening, purpose in _OTHER_TASKS:
        if lowered.startswith(opening):
            return purpose
    if not text.startswith(_TASK_PREFIX):
        return None
    first = text[len(_TASK_PREFIX) :].lstrip().split("\n", 1)[0].lower()
    if first.startswith(_RAG_TASK):
        return None
    return next((purpose for word, purpose in _TASK_KINDS if word in first), "task")


_THINKING = re.compile(
    r"<(think|thinking|reason|reasoning|thought)>.*?</\1>|<\|begin_of_thought\|>.*?<\|end_of_thought\|>|◁think▷.*?◁/think▷",
    re.S,
)
_USER_QUERY = re.compile(r"<user_query>(.*)</user_query>", re.S)


def comparable_text(role: str, text: str) -> str:
    """A turn's text as a front end hands it back: trimmed; an answer without its inline reasoning (Open
    WebUI keeps that apart and never resends it); a question without the retrieval it was wrapped in (a
    RAG prompt's query, which later turns resend with only the file list around it)."""
    if role == "assistant":
        return _THINKING.sub("", text).strip()
    if role == "user":
        query = _USER_QUERY.search(text)
        if query is not None:
            return query.group(1).strip()
        if "</attached_files>" in text:
            return text.rsplit("</attached_files>", 1)[1].strip()
        if text.lstrip().startswith(_TASK_PREFIX) and "</context>" in text:
            return text.rsplit("</context>", 1)[1].strip()
    return text.strip()


def check_title(title: str) -> str:
    value = title.strip()
    if not 1 <= len(value) <= MAX_TITLE_CHARS or any(ord(c) < 32 for c in value):
        raise Invalid("INVALID_TITLE", f"a title is 1-{MAX_TITLE_CHARS} characters without control characters", field="title")
    return value


class Chat(Aggregate):
    # Defaults for chats created before knowledge existed (events evolve by adding, never changing).
    knowledge_ids = cast(tuple[str, ...], ())
    file_ids = cast(tuple[str, ...], ())
    client_chat_id = cast(str | None, None)
    pinned = False
    folder_id = cast(str | None, None)
    """The folder the owner put it in; a chat whose folder was deleted is at the top level (domain.folders)."""
    tags = cast(tuple[str, ...], ())
    imported_from = cast(str | None, None)

    @staticmethod
    def create_id(tenant_id: str, owner_id: UUID, client_chat_id: str | None = None, **_: Any) -> UUID:
        """A client's chat has the id its client's id gives it; any other chat a random one."""
        return client_chat_id_for(tenant_id, owner_id, client_chat_id) if client_chat_id else uuid4()

    @event("ChatCreated")
    def __init__(
        self, tenant_id: str, owner_id: UUID, title: str, source: str, client_chat_id: str | None = None
    ) -> None:
        self.tenant_id = tenant_id
        self.owner_id = owner_id
        self.title = title
        self.source = source  # "api" (the chat UI) or "openai" (/v1/chat/completions)
        self.client_chat_id = client_chat_id
        self.archived = False
        self.deleted = False
        self.messages: dict[str, dict[str, Any]] = {}
        self.head: str | None = None

    def check_owner(self, user_id: UUID) -> None:
        if self.owner_id != user_id or self.deleted:
            raise NotFound("CHAT_NOT_FOUND", "no such chat")

    def check_writable(self) -> None:
        if self.deleted:
            raise NotFound("CHAT_NOT_FOUND", "no such chat")
        if self.archived:
            raise Conflict("CHAT_ARCHIVED", "unarchive the chat to continue it")

    def check_parent(self, parent_id: str | None) -> None:
        if parent_id is not None and parent_id not in self.messages:
            raise NotFound("MESSAGE_NOT_FOUND", "no such message in this chat", field="parent_id")

    def rename(self, title: str) -> None:
        title = check_title(title)
        if title != self.title:
            self._rename(title=title)

    @event("ChatRenamed")
    def _rename(self, title: str) -> None:
        self.title = title

    def set_archived(self, archived: bool) -> None:
        if archived and not self.archived:
            self._archive()
        elif not archived and self.archived:
            self._unarchive()

    @event("ChatArchived")
    def _archive(self) -> None:
        self.archived = True

    @event("ChatUnarchived")
    def _unarchive(self) -> None:
        self.archived = False

    def delete(self) -> None:
        if not self.deleted:
            self._delete()

    @event("ChatDeleted")
    def _delete(self) -> None:
        self.deleted = True

    # --- organising: only the owner reaches these (the service checks) ---------------------------------------
    def set_pinned(self, pinned: bool) -> None:
        if pinned and not self.pinned:
            self._pin()
        elif not pinned and self.pinned:
            self._unpin()

    @event("ChatPinned")
    def _pin(self) -> None:
        self.pinned = True

    @event("ChatUnpinned")
    def _unpin(self) -> None:
        self.pinned = False

    def file_in(self, folder_id: str | None) -> None:
        """Into the owner's folder ``folder_id`` (checked by the caller against the owner's tree), or out
        of any folder (None). A chat is in at most one folder."""
        if folder_id != self.folder_id:
            self._file_in(folder_id=folder_id)

    @event("ChatFiled")
    def _file_in(self, folder_id: str | None) -> None:
        self.folder_id = folder_id

    def set_tags(self, tags: Sequence[str]) -> None:
        wanted = normalise_tags(tags)
        if tuple(wanted) != self.tags:
            self._set_tags(tags=wanted)

    @event("ChatTagsChanged")
    def _set_tags(self, tags: list[str]) -> None:
        self.tags = tuple(tags)

    # --- import ---------------------------------------------------------------------------------------------
    def import_message(
        self,
        message_id: str,
        parent_id: str | None,
        role: str,
        content: str,
        *,
        created_at: datetime,
        model: str | None = None,
        thinking: str | None = None,
        tool_calls: Sequence[dict[str, str]] = (),
        tool_call_id: str | None = None,
        tool_name: str | None = None,
    ) -> None:
        """A message of an imported chat, as it was: any role, its model and its time. Parents come first."""
        if role not in ROLES:
            raise Invalid("INVALID_ROLE", "role must be one of system, user, assistant, tool", field="role")
        for text in (content, thinking or ""):
            if len(text) > MAX_MESSAGE_CHARS:
                raise TooLarge("MESSAGE_TOO_LARGE", f"a message holds at most {MAX_MESSAGE_CHARS} characters")
            if "\x00" in text:
                raise Invalid("INVALID_CONTENT", "a message contains a NUL character")
        self.check_parent(parent_id)
        if message_id in self.messages:
            raise Conflict("MESSAGE_EXISTS", "a message with this id exists")
        self._import_message(
            message_id=message_id,
            parent_id=parent_id,
            role=role,
            content=content,
            created_at=created_at,
            model=model,
            thinking=thinking or None,
            tool_calls=[dict(c) for c in tool_calls] or None,
            tool_call_id=tool_call_id,
            tool_name=tool_name,
        )

    @event("MessageImported")
    def _import_message(
        self,
        message_id: str,
        parent_id: str | None,
        role: str,
        content: str,
        created_at: datetime,
        model: str | None,
        thinking: str | None,
        tool_calls: list[dict[str, str]] | None,
        tool_call_id: str | None,
        tool_name: str | None,
    ) -> None:
        message: dict[str, Any] = {
            "id": message_id,
            "role": role,
            "content": content,
            "parent_id": parent_id,
            "created_at": created_at,
        }
        for key, value in (("model", model), ("thinking", thinking), ("tool_calls", tool_calls)):
            if value:
                message[key] = value
        if role == "tool":
            message.update(tool_call_id=tool_call_id, name=tool_name)
        self.messages[message_id] = message
        self.head = message_id

    @event("ChatImported")
    def record_import(
        self, source_format: str, source_chat_id: str, head_id: str | None, created_at: datetime, updated_at: datetime
    ) -> None:
        """The import is complete: where it came from, the branch it was on, its own times."""
        self.imported_from = source_format
        if head_id is not None and head_id in self.messages:
            self.head = head_id

    def post(
        self,
        message_id: str,
        role: str,
        content: str,
        parent_id: str | None,
        *,
        tool_calls: Sequence[dict[str, str]] = (),
        images: Sequence[dict[str, str]] = (),
    ) -> None:
        """A message from the user (or a system or assistant turn handed in through the OpenAI API, an
        assistant turn with the tool calls it made). Tool results go through ``post_tool_result``."""
        self.check_writable()
        if role not in ROLES or role == "tool":
            raise Invalid("INVALID_ROLE", "role must be one of system, user, assistant", field="role")
        if role == "user" and not images:
            check_content(content)
        elif len(content) > MAX_MESSAGE_CHARS:
            raise TooLarge("MESSAGE_TOO_LARGE", f"a message holds at most {MAX_MESSAGE_CHARS} characters")
        self.check_parent(parent_id)
        if message_id in self.messages:
            raise Conflict("MESSAGE_EXISTS", "a message with this id exists")
        extra: dict[str, Any] = {}
        if tool_calls:
            extra["tool_calls"] = [dict(c) for c in tool_calls]
        if images:
            extra["images"] = [dict(i) for i in images]
        self._post(message_id=message_id, role=role, content=content, parent_id=parent_id, **extra)

    @event("MessagePosted")
    def _post(
        self,
        message_id: str,
        role: str,
        content: str,
        parent_id: str | None,
        tool_calls: list[dict[str, str]] | None = None,
        images: list[dict[str, str]] | None = None,
    ) -> None:
        message: dict[str, Any] = {"id": message_id, "role": role, "content": content, "parent_id": parent_id}
        if tool_calls:
            message["tool_calls"] = list(tool_calls)
        if images:
            message["images"] = list(images)
        self.messages[message_id] = message
        self.head = message_id

    def post_tool_result(
        self,
        message_id: str,
        parent_id: str,
        *,
        tool_call_id: str,
        name: str | None,
        content: str,
        latency_ms: float | None,
    ) -> None:
        """The result of a tool call, handed back by the client: linked to the call it answers."""
        self.check_writable()
        self.check_parent(parent_id)
        if len(content) > MAX_MESSAGE_CHARS:
            raise TooLarge("MESSAGE_TOO_LARGE", f"a message holds at most {MAX_MESSAGE_CHARS} characters")
        if message_id in self.messages:
            raise Conflict("MESSAGE_EXISTS", "a message with this id exists")
        if name is None:
            name = next(
                (c["name"] for m in self.branch(parent_id) for c in m.get("tool_calls", ()) if c["id"] == tool_call_id),
                None,
            )
        self._post_tool_result(
            message_id=message_id,
            parent_id=parent_id,
            user_id=self.owner_id,
            tool_call_id=tool_call_id,
            name=name,
            content=content,
            size=len(content.encode()),
            latency_ms=None if latency_ms is None else round(latency_ms, 1),
        )

    @event("ToolResultPosted")
    def _post_tool_result(
        self,
        message_id: str,
        parent_id: str,
        user_id: UUID,
        tool_call_id: str,
        name: str | None,
        content: str,
        size: int,
        latency_ms: float | None,
    ) -> None:
        self.messages[message_id] = {
            "id": message_id,
            "role": "tool",
            "content": content,
            "parent_id": parent_id,
            "tool_call_id": tool_call_id,
            "name": name,
        }
        self.head = message_id

    def match(self, turns: Sequence[dict[str, Any]]) -> tuple[str | None, int]:
        """How much of a conversation handed in whole the chat already holds: the message the first
        ``n`` turns lead to (following the newest branch where several match), and ``n``."""
        children: dict[str | None, list[str]] = {}
        for message_id, message in self.messages.items():  # insertion order: oldest first
            children.setdefault(message["parent_id"], []).append(message_id)
        at: str | None = None
        for n, turn in enumerate(turns):
            found = next(
                (m for m in reversed(children.get(at, [])) if same_turn(self.messages[m], turn)),
                None,
            )
            if found is None:
                return at, n
            at = found
        return at, len(turns)

    def set_knowledge(self, knowledge_ids: list[str]) -> None:
        """The knowledge bases this chat's answers draw on (each checked readable by the caller)."""
        self.check_writable()
        ids = list(dict.fromkeys(knowledge_ids))
        if len(ids) > MAX_CHAT_KNOWLEDGE:
            raise Invalid("TOO_MANY_KNOWLEDGE_BASES", f"a chat draws on at most {MAX_CHAT_KNOWLEDGE} knowledge bases", field="knowledge_ids")
        if tuple(ids) != self.knowledge_ids:
            self._set_knowledge(knowledge_ids=ids)

    @event("ChatKnowledgeChanged")
    def _set_knowledge(self, knowledge_ids: list[str]) -> None:
        self.knowledge_ids = tuple(knowledge_ids)

    def attach_file(self, document_id: str) -> None:
        self.check_writable()
        if document_id not in self.file_ids:
            self._attach_file(document_id=document_id)

    @event("ChatFileAttached")
    def _attach_file(self, document_id: str) -> None:
        self.file_ids = (*self.file_ids, document_id)

    def detach_file(self, document_id: str) -> None:
        if document_id in self.file_ids:
            self._detach_file(document_id=document_id)

    @event("ChatFileDetached")
    def _detach_file(self, document_id: str) -> None:
        self.file_ids = tuple(f for f in self.file_ids if f != document_id)

    @event("AnswerRecorded")
    def record_answer(
        self,
        message_id: str,
        parent_id: str,
        generation_id: UUID,
        model: str,
        content: str,
        thinking: str,
        status: str,
        prompt_tokens: int,
        completion_tokens: int,
        timings: dict[str, float],
        citations: list[dict[str, Any]] | None = None,
        tool_calls: list[dict[str, str]] | None = None,
    ) -> None:
        self.messages[message_id] = {
            "id": message_id,
            "role": "assistant",
            "content": content,
            "parent_id": parent_id,
            "generation_id": str(generation_id),
            "model": model,
            "thinking": thinking,
            "status": status,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "timings": dict(timings),
            "citations": list(citations or []),
        }
        if tool_calls:
            self.messages[message_id]["tool_calls"] = list(tool_calls)
        if self.head == parent_id:
            self.head = message_id

    def branch(self, message_id: str) -> list[dict[str, Any]]:
        """The conversation from the root to ``message_id``, following parent links."""
        path: list[dict[str, Any]] = []
        current: str | None = message_id
        seen: set[str] = set()
        while current is not None and current not in seen:
            seen.add(current)
            message = self.messages[current]
            path.append(message)
            current = message["parent_id"]
        return list(reversed(path))


def _calls(value: Any) -> list[tuple[str, str]]:
    return [(str(c.get("name")), str(c.get("arguments", ""))) for c in value or ()]


def same_turn(message: dict[str, Any], turn: dict[str, Any]) -> bool:
    """Whether a held message is the turn a client handed back: the same role and text (as
    ``comparable_text`` reads them), the same tool calls, the same tool call answered, the same images."""
    role = message["role"]
    if role != turn["role"] or comparable_text(role, message["content"]) != comparable_text(role, str(turn.get("content") or "")):
        return False
    if _calls(message.get("tool_calls")) != _calls(turn.get("tool_calls")):
        return False
    if message["role"] == "tool" and message.get("tool_call_id") != turn.get("tool_call_id"):
        return False
    return [i["sha256"] for i in message.get("images", ())] == [i["sha256"] for i in turn.get("images", ())]


FINISHED = ("completed", "failed", "cancelled")


def generation_id_for(answer_message_id: str) -> UUID:
    """A generation's id follows from the (random) id of the answer it will write, so the command that
    requests it knows the id before it builds it (the quota reservation is made under it first)."""
    return uuid5(NAMESPACE_URL, f"/answers/{answer_message_id}")


class Generation(Aggregate):
    @staticmethod
    def create_id(answer_message_id: str, **_: Any) -> UUID:
        return generation_id_for(answer_message_id)

    # Defaults for generations requested before these existed.
    citations = cast(list[dict[str, Any]], [])
    tool_calls = cast(list[dict[str, str]], [])
    purpose = "chat"
    prompt = cast(list[dict[str, Any]] | None, None)
    tools = cast(dict[str, Any] | None, None)
    tools_ignored = cast(list[str], [])

    @event("GenerationRequested")
    def __init__(
        self,
        tenant_id: str,
        chat_id: UUID | None,
        user_id: UUID,
        model_id: UUID,
        model: str,
        user_message_id: str,
        answer_message_id: str,
        params: dict[str, Any],
        reserved_tokens: int,
        purpose: str = "chat",
        prompt: list[dict[str, Any]] | None = None,
        tools: dict[str, Any] | None = None,
        tools_ignored: list[str] | None = None,
    ) -> None:
        """``prompt``: the turns of a generation outside any chat's messages (housekeeping); ``tools``:
        the tools offered (their definitions' SHA-256 in the blob store, names, tool choice);
        ``tools_ignored``: the names of tools sent to a model that cannot call them."""
        self.purpose = purpose
        self.prompt = prompt
        self.tools = tools
        self.tools_ignored = list(tools_ignored or [])
        self.tenant_id = tenant_id
        self.chat_id = chat_id
        self.user_id = user_id
        self.model_id = model_id
        self.model = model
        self.user_message_id = user_message_id
        self.answer_message_id = answer_message_id
        self.params = dict(params)
        self.reserved_tokens = reserved_tokens
        self.status = "requested"
        self.attempt = 0
        self.cancel_requested = False
        self.text = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.thinking = ""
        self.finish_reason: str | None = None
        self.error_code: str | None = None
        self.error_message: str | None = None
        self.citations = []

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def check_visible_to(self, user_id: UUID, tenant_id: str) -> None:
        if self.user_id != user_id or self.tenant_id != tenant_id:
            raise NotFound("GENERATION_NOT_FOUND", "no such generation")

    def start(self, attempt: int, worker: str) -> None:
        if self.finished:
            raise Conflict("GENERATION_FINISHED", "this generation has finished")
        self._start(attempt=attempt, worker=worker)

    @event("GenerationStarted")
    def _start(self, attempt: int, worker: str) -> None:
        self.status = "running"
        self.attempt = attempt

    def request_cancel(self) -> None:
        if self.finished:
            raise Conflict("GENERATION_FINISHED", "this generation has already finished")
        if not self.cancel_requested:
            self._request_cancel()

    @event("GenerationCancelRequested")
    def _request_cancel(self) -> None:
        self.cancel_requested = True

    def _check_open(self) -> None:
        if self.finished:
            raise Conflict("GENERATION_FINISHED", "this generation has finished")

    def complete(self, **result: Any) -> None:
        self._check_open()
        # The tools called, by name: usage counts them; the calls' arguments are personal and sealed.
        result["tool_names"] = [str(call.get("name") or "unknown") for call in result.get("tool_calls") or ()]
        self._complete(**result)

    @event("GenerationCompleted")
    def _complete(
        self,
        text: str,
        thinking: str,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        ttft_ms: float,
        tokens_per_s: float,
        duration_ms: float,
        attempt: int,
        citations: list[dict[str, Any]] | None = None,
        tool_calls: list[dict[str, str]] | None = None,
        tool_names: list[str] | None = None,
    ) -> None:
        self._finish("completed", text, prompt_tokens, completion_tokens, attempt)
        self.thinking = thinking
        self.finish_reason = finish_reason
        self.citations = list(citations or [])
        self.tool_calls = list(tool_calls or [])

    def fail(self, **result: Any) -> None:
        self._check_open()
        self._fail(**result)

    @event("GenerationFailed")
    def _fail(
        self, code: str, message: str, text: str, prompt_tokens: int, completion_tokens: int, attempt: int
    ) -> None:
        self._finish("failed", text, prompt_tokens, completion_tokens, attempt)
        self.error_code = code
        self.error_message = message

    def cancel(self, **result: Any) -> None:
        self._check_open()
        self._cancel(**result)

    @event("GenerationCancelled")
    def _cancel(self, text: str, prompt_tokens: int, completion_tokens: int, attempt: int) -> None:
        self._finish("cancelled", text, prompt_tokens, completion_tokens, attempt)

    def _finish(self, status: str, text: str, prompt_tokens: int, completion_tokens: int, attempt: int) -> None:
        self.status = status
        if attempt:
            self.attempt = attempt  # the attempt whose outcome this is (a slow earlier one may finish first)
        self.text = text
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


def check_can_generate(role: str) -> None:
    if role in ("guest", "pending"):
        raise Forbidden("ROLE_CANNOT_GENERATE", f"a {role} account cannot generate answers")
