"""A user's folders: one tree per user, in one aggregate.

Folders nest; a folder's name is unique among its siblings (ignoring case), so a path of names finds at
most one folder (an import files a chat by its folder path). The whole tree is one aggregate, not one
aggregate per folder, because "no cycle" is a rule about the whole tree: two moves checked against
separate folders could each pass and together close a loop (A under B, B under A); in one aggregate the
second is a version conflict, retried against the first's result and refused.

A chat names its folder itself (``Chat.folder_id``, an event on the chat). Deleting a folder deletes its
subfolders with it and leaves their chats where they are: a chat whose folder no longer exists is at the
top level (``FolderTree.effective``); folder ids are random and never reused, so it never comes back into
a folder by itself. Nothing can orphan a chat, whatever order moves and deletions arrive in.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Invalid, NotFound

__all__ = [
    "FolderTree",
    "MAX_FOLDERS",
    "MAX_FOLDER_DEPTH",
    "MAX_FOLDER_NAME",
    "check_folder_name",
    "folder_tree_id_for",
]

MAX_FOLDER_NAME = 100
MAX_FOLDERS = 1_000
MAX_FOLDER_DEPTH = 20


def folder_tree_id_for(tenant_id: str, owner_id: UUID) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/users/{owner_id}/folders")


def check_folder_name(name: str) -> str:
    value = " ".join(name.split())
    if not 1 <= len(value) <= MAX_FOLDER_NAME or any(ord(c) < 32 for c in name if c not in "\t\n\r"):
        raise Invalid(
            "INVALID_FOLDER_NAME", f"a folder name is 1-{MAX_FOLDER_NAME} characters without control characters", field="name"
        )
    return value


class FolderTree(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, owner_id: UUID, **_: Any) -> UUID:
        return folder_tree_id_for(tenant_id, owner_id)

    @event("FolderTreeCreated")
    def __init__(self, tenant_id: str, owner_id: UUID) -> None:
        self.tenant_id = tenant_id
        self.owner_id = owner_id
        self.folders: dict[str, dict[str, Any]] = {}
        """folder id -> {"name", "parent_id"}"""

    # --- reading ------------------------------------------------------------------------------------------
    def check_folder(self, folder_id: str, field: str = "folder_id") -> dict[str, Any]:
        folder = self.folders.get(folder_id)
        if folder is None:
            raise NotFound("FOLDER_NOT_FOUND", "no such folder", field=field)
        return folder

    def effective(self, folder_id: str | None) -> str | None:
        """The folder a chat that names ``folder_id`` is in: none once that folder is deleted."""
        return folder_id if folder_id is not None and folder_id in self.folders else None

    def children(self, parent_id: str | None) -> list[str]:
        return [f for f, folder in self.folders.items() if folder["parent_id"] == parent_id]

    def subtree(self, folder_id: str) -> list[str]:
        """The folder and every folder under it, parents before children."""
        out = [folder_id]
        for at in out:  # grows as it goes: breadth first
            out.extend(self.children(at))
        return out

    def ancestors(self, folder_id: str) -> list[str]:
        """From the folder's parent up to its top-level folder."""
        out: list[str] = []
        at = self.folders[folder_id]["parent_id"]
        while at is not None and at not in out:
            out.append(at)
            at = self.folders[at]["parent_id"]
        return out

    def path(self, folder_id: str) -> list[str]:
        """The names from the top level down to the folder."""
        return [self.folders[f]["name"] for f in reversed([folder_id, *self.ancestors(folder_id)])]

    def child_named(self, parent_id: str | None, name: str) -> str | None:
        wanted = name.casefold()
        return next((f for f in self.children(parent_id) if self.folders[f]["name"].casefold() == wanted), None)

    def _height(self, folder_id: str) -> int:
        """Levels from the folder down to its deepest descendant, itself counted."""
        return 1 + max((self._height(c) for c in self.children(folder_id)), default=0)

    # --- commands -----------------------------------------------------------------------------------------
    def _check_place(self, name: str, parent_id: str | None, moving: str | None = None) -> None:
        if parent_id is not None:
            self.check_folder(parent_id, "parent_id")
        clash = self.child_named(parent_id, name)
        if clash is not None and clash != moving:
            raise Conflict("FOLDER_EXISTS", f"a folder named '{name}' is already there", field="name")
        depth = 1 + (len(self.ancestors(parent_id)) + 1 if parent_id is not None else 0)
        height = self._height(moving) if moving is not None else 1
        if depth + height - 1 > MAX_FOLDER_DEPTH:
            raise Invalid("FOLDER_TOO_DEEP", f"folders nest at most {MAX_FOLDER_DEPTH} deep", field="parent_id")

    def create_folder(self, folder_id: str, name: str, parent_id: str | None = None) -> None:
        name = check_folder_name(name)
        if folder_id in self.folders:
            raise Conflict("FOLDER_EXISTS", "a folder with this id exists")
        if len(self.folders) >= MAX_FOLDERS:
            raise Invalid("TOO_MANY_FOLDERS", f"a user has at most {MAX_FOLDERS} folders")
        self._check_place(name, parent_id)
        self._create_folder(folder_id=folder_id, name=name, parent_id=parent_id)

    @event("FolderCreated")
    def _create_folder(self, folder_id: str, name: str, parent_id: str | None) -> None:
        self.folders[folder_id] = {"name": name, "parent_id": parent_id}

    def rename_folder(self, folder_id: str, name: str) -> None:
        folder = self.check_folder(folder_id)
        name = check_folder_name(name)
        if name == folder["name"]:
            return
        self._check_place(name, folder["parent_id"], moving=folder_id)
        self._rename_folder(folder_id=folder_id, name=name)

    @event("FolderRenamed")
    def _rename_folder(self, folder_id: str, name: str) -> None:
        self.folders[folder_id]["name"] = name

    def move_folder(self, folder_id: str, parent_id: str | None) -> None:
        """Under ``parent_id`` (None: the top level); never under itself or one of its own subfolders."""
        folder = self.check_folder(folder_id)
        if parent_id == folder["parent_id"]:
            return
        if parent_id is not None:
            self.check_folder(parent_id, "parent_id")
            if parent_id == folder_id or folder_id in self.ancestors(parent_id):
                raise Conflict("FOLDER_CYCLE", "a folder cannot go inside itself or one of its subfolders", field="parent_id")
        self._check_place(folder["name"], parent_id, moving=folder_id)
        self._move_folder(folder_id=folder_id, parent_id=parent_id)

    @event("FolderMoved")
    def _move_folder(self, folder_id: str, parent_id: str | None) -> None:
        self.folders[folder_id]["parent_id"] = parent_id

    def delete_folder(self, folder_id: str) -> list[str]:
        """Delete the folder and every folder under it; the ids deleted, parents first."""
        self.check_folder(folder_id)
        doomed = self.subtree(folder_id)
        self._delete_folders(folder_ids=doomed)
        return doomed

    @event("FolderDeleted")
    def _delete_folders(self, folder_ids: list[str]) -> None:
        for folder_id in folder_ids:
            self.folders.pop(folder_id, None)
