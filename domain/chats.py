"""Chats and generations.

A chat is a tree of messages: each message names its parent, so regenerating an answer or editing and
resending a question starts a branch and keeps the old one, as Open WebUI users expect. ``head`` is the
newest message, where the next one attaches by default.

A generation is one request for an assistant answer: requested with its model and parameters, started by
a worker (once per delivery attempt), then completed, failed or cancelled, always with the text and the
usage so far (a cancelled or abandoned stream is still billed for what was generated).
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge

__all__ = [
    "Chat",
    "Generation",
    "MAX_MESSAGE_CHARS",
    "MAX_TITLE_CHARS",
    "check_content",
    "check_title",
    "check_can_generate",
]

MAX_MESSAGE_CHARS = 100_000
MAX_TITLE_CHARS = 200
MAX_CHAT_KNOWLEDGE = 10
ROLES = ("system", "user", "assistant", "tool")


def check_content(content: str, field: str = "content") -> str:
    if len(content) > MAX_MESSAGE_CHARS:
        raise TooLarge("MESSAGE_TOO_LARGE", f"a message holds at most {MAX_MESSAGE_CHARS} characters", field=field)
    if not content.strip():
        raise Invalid("EMPTY_MESSAGE", "the message is empty", field=field)
    if "\x00" in content:
        raise Invalid("INVALID_CONTENT", "the message contains a NUL character", field=field)
    return content


def check_title(title: str) -> str:
    value = title.strip()
    if not 1 <= len(value) <= MAX_TITLE_CHARS or any(ord(c) < 32 for c in value):
        raise Invalid("INVALID_TITLE", f"a title is 1-{MAX_TITLE_CHARS} characters without control characters", field="title")
    return value


class Chat(Aggregate):
    # Defaults for chats created before knowledge existed (events evolve by adding, never changing).
    knowledge_ids = cast(tuple[str, ...], ())
    file_ids = cast(tuple[str, ...], ())

    @event("ChatCreated")
    def __init__(self, tenant_id: str, owner_id: UUID, title: str, source: str) -> None:
        self.tenant_id = tenant_id
        self.owner_id = owner_id
        self.title = title
        self.source = source  # "api" (the chat UI) or "openai" (/v1/chat/completions)
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

    def post(self, message_id: str, role: str, content: str, parent_id: str | None) -> None:
        """A message from the user (or a system/tool turn handed in through the OpenAI API)."""
        self.check_writable()
        if role not in ROLES:
            raise Invalid("INVALID_ROLE", f"role must be one of {', '.join(ROLES)}", field="role")
        if role == "user":
            check_content(content)
        elif len(content) > MAX_MESSAGE_CHARS:
            raise TooLarge("MESSAGE_TOO_LARGE", f"a message holds at most {MAX_MESSAGE_CHARS} characters")
        self.check_parent(parent_id)
        if message_id in self.messages:
            raise Conflict("MESSAGE_EXISTS", "a message with this id exists")
        self._post(message_id=message_id, role=role, content=content, parent_id=parent_id)

    @event("MessagePosted")
    def _post(self, message_id: str, role: str, content: str, parent_id: str | None) -> None:
        self.messages[message_id] = {
            "id": message_id,
            "role": role,
            "content": content,
            "parent_id": parent_id,
        }
        self.head = message_id

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


FINISHED = ("completed", "failed", "cancelled")


class Generation(Aggregate):
    citations = cast(list[dict[str, Any]], [])  # for generations requested before citations existed
    @event("GenerationRequested")
    def __init__(
        self,
        tenant_id: str,
        chat_id: UUID,
        user_id: UUID,
        model_id: UUID,
        model: str,
        user_message_id: str,
        answer_message_id: str,
        params: dict[str, Any],
        reserved_tokens: int,
    ) -> None:
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
    ) -> None:
        self._finish("completed", text, prompt_tokens, completion_tokens, attempt)
        self.thinking = thinking
        self.finish_reason = finish_reason
        self.citations = list(citations or [])

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
