"""Request and response bodies of organising chats (folders, tags) and of exchanging them (export,
import). Unknown fields are rejected; every string is bounded (the domain checks names with its own codes)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

__all__ = ["Folder", "FolderCreate", "FolderDeletion", "FolderUpdate", "ImportResult", "TagCount"]

FolderName = Annotated[str, Meta(max_length=1000)]  # the domain says 1-100 characters, with its own code
FolderId = Annotated[str, Meta(max_length=64)]


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class FolderCreate(_Body):
    name: FolderName
    parent_id: FolderId | None = None
    """The folder it goes in; absent or null: the top level."""


class FolderUpdate(_Body):
    name: FolderName | UnsetType = UNSET
    parent_id: FolderId | None | UnsetType = UNSET
    """Move it under this folder; null: to the top level. Never under itself or its own subfolders."""


class Folder(msgspec.Struct, kw_only=True):
    id: str
    name: str
    parent_id: str | None
    path: list[str]
    """Its name and its parents', from the top level down."""
    chat_count: int | None = None
    """The chats in it (not in its subfolders); in a list only."""
    created_at: datetime | None = None
    updated_at: datetime | None = None


class FolderDeletion(msgspec.Struct, kw_only=True):
    deleted_folder_ids: list[str]
    """The folder and every folder under it: all deleted."""
    chats: str = "moved to the top level"
    """What became of the chats in them: they are kept, in no folder."""


class TagCount(msgspec.Struct, kw_only=True):
    name: str
    chat_count: int


class ImportResult(msgspec.Struct, kw_only=True):
    format: str
    """``openwebui`` or ``parley``: how the body was read."""
    imported: list[str]
    """The ids of the chats imported now."""
    skipped: list[str]
    """The ids of chats of this export imported before: nothing was added for them."""
    messages: int
    """Messages imported now."""
