"""The prompt library: saved prompts a user calls by a ``/command``, with ``{{variables}}`` filled at use.

A prompt belongs to a user (``scope`` ``user``: theirs, shared as they grant it) or to the tenant
(``scope`` ``tenant``: made by an admin, read by everyone in the tenant). Access is the knowledge bases'
(``domain.access``). A command names one prompt per owner: one of each user's own prompts, and one of the
tenant's, which ``PromptCommand`` makes certain without a read model (its id comes from the scope and the
command, so claiming a taken one conflicts in the event store).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.access import Shared
from domain.errors import Conflict, Invalid, NotFound

__all__ = [
    "MAX_CONTENT_CHARS",
    "PROMPT_SCOPES",
    "Prompt",
    "PromptCommand",
    "check_command",
    "check_content",
    "check_title",
    "command_id_for",
    "render",
    "variables_of",
]

PROMPT_SCOPES = ("user", "tenant")
MAX_CONTENT_CHARS = 20_000
MAX_TITLE_CHARS = 100
MAX_VARIABLES = 50
MAX_VALUE_CHARS = 20_000
_COMMAND = re.compile(r"^/[a-z0-9][a-z0-9_-]{0,39}$")
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")


def check_command(command: str) -> str:
    """``/name``: a slash (added when absent), then 1-40 of lowercase letters, digits, ``_`` and ``-``."""
    value = command.strip().lower()
    value = value if value.startswith("/") else f"/{value}"
    if not _COMMAND.match(value):
        raise Invalid(
            "INVALID_COMMAND", "a command is '/' and 1-40 lowercase letters, digits, '_' or '-', starting with a letter or digit",
            field="command",
        )
    return value


def check_title(title: str) -> str:
    value = unicodedata.normalize("NFC", title.strip())
    if not 1 <= len(value) <= MAX_TITLE_CHARS or any(ord(c) < 32 for c in value):
        raise Invalid("INVALID_TITLE", f"a title is 1-{MAX_TITLE_CHARS} characters without control characters", field="title")
    return value


def check_content(content: str) -> str:
    if not content.strip() or len(content) > MAX_CONTENT_CHARS or "\x00" in content:
        raise Invalid("INVALID_CONTENT", f"a prompt's content is 1-{MAX_CONTENT_CHARS} characters", field="content")
    if len(variables_of(content)) > MAX_VARIABLES:
        raise Invalid("TOO_MANY_VARIABLES", f"a prompt has at most {MAX_VARIABLES} variables", field="content")
    return content


def variables_of(content: str) -> list[str]:
    """The ``{{name}}`` variables of a prompt's content, each once, in order of first use."""
    return list(dict.fromkeys(_VARIABLE.findall(content)))


def render(content: str, values: dict[str, str]) -> str:
    """The content with each ``{{name}}`` replaced by its value (a value is not itself searched for
    variables). Every variable needs a value: 422 ``MISSING_VARIABLES`` names those without one; values for
    names the prompt does not use are ignored."""
    missing = [name for name in variables_of(content) if name not in values]
    if missing:
        raise Invalid("MISSING_VARIABLES", f"no value for {', '.join(missing)}", field="variables", missing=missing)
    for name, value in values.items():
        if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS or "\x00" in value:
            raise Invalid("INVALID_VARIABLE", f"a value is text of at most {MAX_VALUE_CHARS} characters", field=name)
    return _VARIABLE.sub(lambda m: values[m.group(1)], content)


def command_id_for(tenant_id: str, owner: str, command: str) -> UUID:
    """``owner``: the owning user's id, or ``tenant`` for the tenant's prompts."""
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/prompts/{owner}/commands/{command}")


class Prompt(Shared, Aggregate):
    NOT_FOUND = ("PROMPT_NOT_FOUND", "no such prompt")
    READ_ONLY = ("PROMPT_READ_ONLY", "you may use this prompt but not change it")
    OWNER_ONLY = ("PROMPT_OWNER_ONLY", "only the owner or an admin can do this")

    @event("PromptCreated")
    def __init__(
        self,
        tenant_id: str,
        owner_id: UUID,
        scope: str,
        command: str,
        title: str,
        content: str,
        subject_id: UUID | None,
    ) -> None:
        """``subject_id``: whose personal data the title and content are (the owner of a user's prompt;
        None for a tenant's prompt, which outlives the admin who wrote it)."""
        self.tenant_id = tenant_id
        self.owner_id = owner_id
        self.scope = scope
        self.command = command
        self.title = title
        self.content = content
        self.access: dict[str, str] = {"tenant": "read"} if scope == "tenant" else {}
        self.deleted = False

    @property
    def command_owner(self) -> str:
        return "tenant" if self.scope == "tenant" else str(self.owner_id)

    def update(self, *, command: str | None = None, title: str | None = None, content: str | None = None) -> None:
        changes: dict[str, Any] = {}
        if command is not None and check_command(command) != self.command:
            changes["command"] = check_command(command)
        if title is not None and check_title(title) != self.title:
            changes["title"] = check_title(title)
        if content is not None and content != self.content:
            changes["content"] = check_content(content)
        if changes:
            self._update(**{"command": None, "title": None, "content": None, **changes})

    @event("PromptUpdated")
    def _update(self, command: str | None, title: str | None, content: str | None) -> None:
        """Each of ``command``, ``title`` and ``content`` is None when it did not change."""
        self.command = command or self.command
        self.title = title or self.title
        self.content = content or self.content

    def grant(self, grantee: str, level: str) -> None:
        self.check_grant(grantee, level)
        self._grant(grantee=grantee, level=level)

    @event("PromptAccessGranted")
    def _grant(self, grantee: str, level: str) -> None:
        self.access = {**self.access, grantee: level}

    def revoke(self, grantee: str) -> None:
        self.check_revoke(grantee)
        self._revoke(grantee=grantee)

    @event("PromptAccessRevoked")
    def _revoke(self, grantee: str) -> None:
        self.access = {g: lv for g, lv in self.access.items() if g != grantee}

    def delete(self) -> None:
        if self.deleted:
            raise NotFound(*self.NOT_FOUND)
        self._delete()

    @event("PromptDeleted")
    def _delete(self) -> None:
        self.deleted = True


class PromptCommand(Aggregate):
    """One per (tenant, owner, command): which prompt holds the command now, if any."""

    @staticmethod
    def create_id(tenant_id: str, owner: str, command: str, **_: Any) -> UUID:
        return command_id_for(tenant_id, owner, command)

    @event("PromptCommandClaimed")
    def __init__(self, tenant_id: str, owner: str, command: str, prompt_id: UUID) -> None:
        self.tenant_id = tenant_id
        self.owner = owner
        self.command = command
        self.prompt_id: UUID | None = prompt_id

    def check_free_for(self, prompt_id: UUID) -> None:
        if self.prompt_id is not None and self.prompt_id != prompt_id:
            raise Conflict(
                "COMMAND_TAKEN", f"'{self.command}' names another prompt already", field="command", prompt_id=str(self.prompt_id)
            )

    def claim(self, prompt_id: UUID) -> None:
        self.check_free_for(prompt_id)
        if self.prompt_id != prompt_id:
            self._claim(prompt_id=prompt_id)

    @event("PromptCommandReclaimed")
    def _claim(self, prompt_id: UUID) -> None:
        self.prompt_id = prompt_id

    def release(self, prompt_id: UUID) -> None:
        if self.prompt_id == prompt_id:
            self._release()

    @event("PromptCommandReleased")
    def _release(self) -> None:
        self.prompt_id = None
