"""Folders: each user's own tree of folders (``domain.folders.FolderTree``), and filing a chat in one.

Only the owner sees or touches their folders: every command reaches the caller's own tree by its
deterministic id, so another user's folder id is simply not found there.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from application.context import CommandContext
from application.identity import Principal
from application.ports import EventStorePort
from domain.errors import Invalid, NotFound
from domain.folders import FolderTree, folder_tree_id_for

__all__ = ["Folders", "FolderView", "Deleted", "check_folder_id"]


@dataclass(frozen=True)
class FolderView:
    id: str
    name: str
    parent_id: str | None
    path: list[str]


@dataclass(frozen=True)
class Deleted:
    folder_ids: list[str]
    """The folder and every folder under it, deleted; their chats are at the top level now."""


def check_folder_id(value: str, field: str = "folder_id") -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Invalid("INVALID_FOLDER_ID", "a folder id is a UUID", field=field) from None


class Folders:
    def __init__(self, *, store: EventStorePort) -> None:
        self.store = store

    def tree(self, principal: Principal) -> FolderTree | None:
        """The caller's tree (sync: inside a command or via ``store.call``); None before their first folder."""
        return self.store.find(FolderTree, folder_tree_id_for(principal.tenant_id, principal.user_id))

    def _tree_or_404(self, principal: Principal) -> FolderTree:
        tree = self.tree(principal)
        if tree is None:
            raise NotFound("FOLDER_NOT_FOUND", "no such folder")
        return tree

    def check_usable(self, principal: Principal, folder_id: str) -> None:
        """That ``folder_id`` is one of the caller's folders (sync)."""
        self._tree_or_404(principal).check_folder(folder_id)

    @staticmethod
    def _view(tree: FolderTree, folder_id: str) -> FolderView:
        folder = tree.folders[folder_id]
        return FolderView(folder_id, folder["name"], folder["parent_id"], tree.path(folder_id))

    async def create(
        self, ctx: CommandContext, principal: Principal, *, name: str, parent_id: str | None = None
    ) -> FolderView:
        parent = check_folder_id(parent_id, "parent_id") if parent_id is not None else None
        folder_id = str(uuid.uuid4())

        def command() -> FolderView:
            tree = self.tree(principal) or FolderTree(tenant_id=principal.tenant_id, owner_id=principal.user_id)
            tree.create_folder(folder_id, name, parent)
            self.store.save(tree)
            return self._view(tree, folder_id)

        return await self.store.execute(ctx, command)

    async def update(
        self,
        ctx: CommandContext,
        principal: Principal,
        folder_id: str,
        *,
        name: str | None = None,
        move: bool = False,
        parent_id: str | None = None,
    ) -> FolderView:
        """Rename and/or move (``move``: under ``parent_id``, None for the top level)."""
        folder_id = check_folder_id(folder_id)
        parent = check_folder_id(parent_id, "parent_id") if parent_id is not None else None

        def command() -> FolderView:
            tree = self._tree_or_404(principal)
            if name is not None:
                tree.rename_folder(folder_id, name)
            if move:
                tree.move_folder(folder_id, parent)
            self.store.save(tree)
            return self._view(tree, folder_id)

        return await self.store.execute(ctx, command)

    async def delete(self, ctx: CommandContext, principal: Principal, folder_id: str) -> Deleted:
        folder_id = check_folder_id(folder_id)

        def command() -> Deleted:
            tree = self._tree_or_404(principal)
            doomed = tree.delete_folder(folder_id)
            self.store.save(tree)
            return Deleted(doomed)

        return await self.store.execute(ctx, command)
