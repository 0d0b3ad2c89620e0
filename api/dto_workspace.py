"""Request and response bodies of a user's own settings and the prompt library. Unknown fields are
rejected; every string is bounded (the domain then checks each with its own error code)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from msgspec import UNSET, Meta, UnsetType

__all__ = ["AVATAR_BODY", "Prompt", "PromptCreate", "PromptPage", "PromptRender", "PromptUpdate", "Rendered", "Settings", "SettingsUpdate"]

Params = Annotated[dict[str, Any], Meta(max_length=20)]


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# --- settings ------------------------------------------------------------------------------------------
class SettingsUpdate(_Body):
    """What is given changes; null clears a setting (no default model or parameters, no preferences)."""

    display_name: Annotated[str, Meta(max_length=1000)] | UnsetType = UNSET
    default_model: Annotated[str, Meta(min_length=1, max_length=100)] | None | UnsetType = UNSET
    """The model of messages that name none (one you may use)."""
    default_params: Params | None | UnsetType = UNSET
    """Generation parameters of your messages where they set none (checked as a message's are)."""
    preferences: dict[str, Any] | None | UnsetType = UNSET
    """The front end's own JSON object: at most 64 KiB, 8 levels deep, 500 keys."""


class Settings(msgspec.Struct, kw_only=True):
    user_id: str
    display_name: str
    default_model: str | None
    default_params: dict[str, Any]
    preferences: dict[str, Any]
    avatar_url: str | None
    """Readable by the signed-in users of your tenant."""


AVATAR_BODY = RequestBody(
    required=True,
    description="The image as multipart/form-data, in the field `file`.",
    content={
        "multipart/form-data": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                properties={"file": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)},
                required=["file"],
            )
        )
    },
)


# --- prompts -------------------------------------------------------------------------------------------
Command = Annotated[str, Meta(min_length=1, max_length=41)]
Title = Annotated[str, Meta(max_length=1000)]  # the domain says 1-100 characters, with its own error code
Content = Annotated[str, Meta(max_length=40_000)]  # likewise: 20,000


class PromptCreate(_Body):
    command: Command
    """``/name``: lowercase letters, digits, '_' and '-' (the slash may be left out)."""
    title: Title
    content: Content
    """The text; ``{{name}}`` marks a variable, filled when the prompt is used."""
    scope: Annotated[str, Meta(max_length=10)] = "user"
    """``user`` (yours, shared as you grant it) or ``tenant`` (admins: everyone in the tenant may use it)."""


class PromptUpdate(_Body):
    command: Command | UnsetType = UNSET
    title: Title | UnsetType = UNSET
    content: Content | UnsetType = UNSET


class Prompt(msgspec.Struct, kw_only=True):
    id: str
    owner_id: str
    scope: str
    command: str
    title: str
    content: str
    variables: list[str]
    level: str
    """Your access: ``read`` (use it) or ``write`` (change it)."""
    access: dict[str, str] | None = None
    """Its grants, for those who may change it."""
    created_at: datetime | None = None
    updated_at: datetime | None = None


class PromptPage(msgspec.Struct, kw_only=True):
    items: list[Prompt]
    total: int
    limit: int
    offset: int


class PromptRender(_Body):
    variables: Annotated[dict[Annotated[str, Meta(max_length=64)], str], Meta(max_length=50)] = msgspec.field(default_factory=dict)


class Rendered(msgspec.Struct, kw_only=True):
    prompt_id: str
    command: str
    text: str
