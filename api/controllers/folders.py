"""The caller's folders: a tree of their own (nobody else sees or touches it; another user's folder id is
404 here). Chats go in a folder through ``PATCH /api/v1/chats/{id}`` (``folder_id``) and are listed by
folder through ``GET /api/v1/chats?folder_id=``. Deleting a folder deletes the folders under it too and
keeps their chats, at the top level."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api import dto_organise as dto
from api.deps import App, Caller, command_context
from application.folders import FolderView
from projections.folders import list_folders

__all__ = ["FolderController"]


def folder_dto(folder: FolderView | dict[str, Any]) -> dto.Folder:
    if isinstance(folder, dict):
        return dto.Folder(**{k: v for k, v in folder.items() if k in dto.Folder.__struct_fields__})
    return dto.Folder(id=folder.id, name=folder.name, parent_id=folder.parent_id, path=folder.path)


class FolderController(Controller):
    path = "/api/v1/folders"
    tags = ["folders"]

    @get("/", operation_id="ListFolders")
    async def list(self, c: App, caller: Caller) -> list[dto.Folder]:
        """Every folder of yours, by path, with how many chats each holds."""
        return [folder_dto(f) for f in await list_folders(c.engine, caller.tenant_id, caller.user_id)]

    @post("/", operation_id="CreateFolder", status_code=HTTP_201_CREATED)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[dto.FolderCreate], c: App, caller: Caller
    ) -> dto.Folder:
        """A folder at the top level or in one of yours; its name is unique among its siblings (409)."""
        folder = await c.folders.create(command_context(request, caller), caller, name=data.name, parent_id=data.parent_id)
        return folder_dto(folder)

    @patch("/{folder_id:uuid}", operation_id="UpdateFolder")
    async def update(
        self,
        request: Request[Any, Any, Any],
        folder_id: FromPath[UUID],
        data: JSONBody[dto.FolderUpdate],
        c: App,
        caller: Caller,
    ) -> dto.Folder:
        """Rename it, move it (with everything in it; into itself or its own subfolder is 409
        ``FOLDER_CYCLE``), or both."""
        folder = await c.folders.update(
            command_context(request, caller),
            caller,
            str(folder_id),
            name=None if data.name is msgspec.UNSET else data.name,
            move=data.parent_id is not msgspec.UNSET,
            parent_id=data.parent_id if isinstance(data.parent_id, str) else None,
        )
        return folder_dto(folder)

    @delete("/{folder_id:uuid}", operation_id="DeleteFolder", status_code=200)
    async def delete(
        self, request: Request[Any, Any, Any], folder_id: FromPath[UUID], c: App, caller: Caller
    ) -> dto.FolderDeletion:
        """Deletes the folder and every folder under it; their chats are kept, at the top level."""
        deleted = await c.folders.delete(command_context(request, caller), caller, str(folder_id))
        return dto.FolderDeletion(deleted_folder_ids=deleted.folder_ids)
