"""The caller's own settings (``/api/v1/users/me/settings``) and avatar, and any user's avatar for the
signed-in users of the same tenant."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, patch, put
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_204_NO_CONTENT

from adapters.images import sniff_image_type
from api import dto_workspace as dto
from api.deps import App, Caller, command_context
from api.openapi import refusals
from api.uploads import check_declared_length, receive_files, upload_body_limit
from application.user_settings import SettingsView
from domain.errors import TooLarge, UnsupportedType
from domain.user_settings import MAX_AVATAR_BYTES

__all__ = ["UserSettingsController", "settings_dto"]


def settings_dto(view: SettingsView) -> dto.Settings:
    return dto.Settings(
        user_id=view.user_id,
        display_name=view.display_name,
        default_model=view.default_model,
        default_params=view.default_params,
        preferences=view.preferences,
        avatar_url=f"/api/v1/users/{view.user_id}/avatar" if view.avatar else None,
    )


class UserSettingsController(Controller):
    path = "/api/v1/users"
    tags = ["users"]

    @get("/me/settings", operation_id="GetMySettings")
    async def get_settings(self, c: App, caller: Caller) -> dto.Settings:
        return settings_dto(await c.user_settings.get(caller))

    @patch("/me/settings", operation_id="UpdateMySettings", responses=refusals(404))
    async def update_settings(
        self, request: Request[Any, Any, Any], data: JSONBody[dto.SettingsUpdate], c: App, caller: Caller
    ) -> dto.Settings:
        caller.require_scope("write")
        view = await c.user_settings.update(
            command_context(request, caller),
            caller,
            display_name=data.display_name,
            default_model=data.default_model,
            default_params=data.default_params,
            preferences=data.preferences,
        )
        return settings_dto(view)

    @put("/me/avatar", operation_id="SetMyAvatar", request_max_body_size=None, opt={"request_body": dto.AVATAR_BODY})
    async def set_avatar(self, request: Request[Any, Any, Any], c: App, caller: Caller) -> dto.Settings:
        """A PNG, JPEG, GIF or WebP image of at most 1 MiB, as multipart/form-data (field ``file``); its type
        is read from its bytes."""
        caller.require_scope("write")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
            raise UnsupportedType("UNSUPPORTED_MEDIA_TYPE", "upload the avatar as multipart/form-data (field 'file')")
        check_declared_length(request, upload_body_limit(MAX_AVATAR_BYTES))
        files = await receive_files(request, max_file_bytes=MAX_AVATAR_BYTES)
        try:
            part = files[0]
            if not part.content.complete:
                raise TooLarge("AVATAR_TOO_LARGE", f"an avatar is at most {MAX_AVATAR_BYTES} bytes", limit=MAX_AVATAR_BYTES)
            part.content.file.seek(0)
            data = part.content.file.read()
        finally:
            for f in files:
                f.content.close()
        view = await c.user_settings.set_avatar(command_context(request, caller), caller, data, sniff_image_type(data))
        return settings_dto(view)

    @delete("/me/avatar", operation_id="RemoveMyAvatar", status_code=HTTP_204_NO_CONTENT)
    async def remove_avatar(self, request: Request[Any, Any, Any], c: App, caller: Caller) -> None:
        caller.require_scope("write")
        await c.user_settings.remove_avatar(command_context(request, caller), caller)

    @get("/{user_id:uuid}/avatar", operation_id="GetAvatar", media_type="image/*")
    async def avatar(self, user_id: FromPath[UUID], c: App, caller: Caller) -> Response[bytes]:
        """The user's avatar; for the signed-in users of their tenant only."""
        found = await c.user_settings.avatar(caller, user_id)
        headers = {
            "Cache-Control": "private, max-age=300",
            "ETag": f'"{found.sha256}"',
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'",
        }
        return Response(content=found.data, media_type=found.media_type, headers=headers)
