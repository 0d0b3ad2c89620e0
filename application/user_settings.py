"""A user's own settings (``GET/PATCH /api/v1/users/me/settings``) and avatar.

Settings live on their own aggregate (``domain.user_settings``); the display name is the user's name, so
it is changed on ``User`` in the same command. The avatar's bytes go to the blob store (checked for size
and type by the caller, which sniffs the bytes) before the event that names them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UnsetType

from application.context import CommandContext
from application.conversations import Models
from application.identity import Principal
from application.ports import Blobs, EventStorePort
from domain.errors import NotFound, TooLarge, UnsupportedType
from domain.identity import User
from domain.models import check_params
from domain.user_settings import AVATAR_TYPES, MAX_AVATAR_BYTES, UserSettings, check_preferences, settings_id_for

__all__ = ["Avatar", "SettingsView", "UserSettingsService"]


@dataclass(frozen=True)
class SettingsView:
    user_id: str
    display_name: str
    default_model: str | None = None
    default_params: dict[str, Any] = field(default_factory=dict)
    preferences: dict[str, Any] = field(default_factory=dict)
    avatar: dict[str, Any] | None = None


@dataclass(frozen=True)
class Avatar:
    data: bytes
    media_type: str
    sha256: str


class UserSettingsService:
    def __init__(self, *, store: EventStorePort, models: Models, blobs: Blobs) -> None:
        self.store = store
        self.models = models
        self.blobs = blobs

    def _user(self, principal: Principal) -> User:
        user = self.store.find(User, principal.user_id)
        if user is None or user.tenant_id != principal.tenant_id:
            raise NotFound("USER_NOT_FOUND", "no such user")
        return user

    def _settings(self, principal: Principal) -> UserSettings:
        settings = self.store.find(UserSettings, settings_id_for(principal.tenant_id, principal.user_id))
        if settings is None:
            settings = UserSettings(tenant_id=principal.tenant_id, user_id=principal.user_id)
        return settings

    def _view(self, principal: Principal) -> SettingsView:
        user = self._user(principal)
        s = self.store.find(UserSettings, settings_id_for(principal.tenant_id, principal.user_id))
        if s is None:
            return SettingsView(user_id=str(user.id), display_name=user.name)
        return SettingsView(
            user_id=str(user.id),
            display_name=user.name,
            default_model=s.default_model,
            default_params=dict(s.default_params),
            preferences=dict(s.preferences),
            avatar=None if s.avatar is None else dict(s.avatar),
        )

    async def get(self, principal: Principal) -> SettingsView:
        return await self.store.call(self._view, principal)

    async def update(
        self,
        ctx: CommandContext,
        principal: Principal,
        *,
        display_name: str | UnsetType = msgspec.UNSET,
        default_model: str | None | UnsetType = msgspec.UNSET,
        default_params: dict[str, Any] | None | UnsetType = msgspec.UNSET,
        preferences: dict[str, Any] | None | UnsetType = msgspec.UNSET,
    ) -> SettingsView:
        """Change what is given; ``None`` clears a setting (no default model, no default parameters, empty
        preferences). The default model must be one the user may use; parameters are checked as a
        message's are."""
        params = check_params(default_params) if isinstance(default_params, dict) else {}
        prefs = check_preferences(preferences) if isinstance(preferences, dict) else {}

        def command() -> SettingsView:
            user = self._user(principal)
            if isinstance(display_name, str):
                user.rename(display_name)
            touched: list[User | UserSettings] = [user]
            if not (default_model is msgspec.UNSET and default_params is msgspec.UNSET and preferences is msgspec.UNSET):
                settings = self._settings(principal)
                if not isinstance(default_model, UnsetType):
                    name = None if default_model is None else self.models.usable(principal, default_model).name
                    settings.choose_default_model(name)
                if default_params is not msgspec.UNSET:
                    settings.set_default_params(params)
                if preferences is not msgspec.UNSET:
                    settings.set_preferences(prefs)
                touched.append(settings)
            self.store.save(*touched)
            return self._view(principal)

        return await self.store.execute(ctx, command)

    async def set_avatar(self, ctx: CommandContext, principal: Principal, data: bytes, media_type: str | None) -> SettingsView:
        """``media_type``: as sniffed from the bytes (None: not an image parley takes)."""
        if len(data) > MAX_AVATAR_BYTES:
            raise TooLarge("AVATAR_TOO_LARGE", f"an avatar is at most {MAX_AVATAR_BYTES} bytes", limit=MAX_AVATAR_BYTES)
        if media_type not in AVATAR_TYPES:
            raise UnsupportedType("UNSUPPORTED_IMAGE_TYPE", "an avatar is a PNG, JPEG, GIF or WebP image", field="file")
        sha256 = hashlib.sha256(data).hexdigest()
        await self.blobs.put(principal.tenant_id, sha256, data)

        def command() -> SettingsView:
            self._user(principal)
            settings = self._settings(principal)
            settings.set_avatar(sha256, media_type, len(data))
            self.store.save(settings)
            return self._view(principal)

        return await self.store.execute(ctx, command)

    async def remove_avatar(self, ctx: CommandContext, principal: Principal) -> None:
        def command() -> None:
            settings = self.store.find(UserSettings, settings_id_for(principal.tenant_id, principal.user_id))
            if settings is not None:
                settings.remove_avatar()
                self.store.save(settings)

        await self.store.execute(ctx, command)

    async def avatar(self, principal: Principal, user_id: Any) -> Avatar:
        """A user's avatar, for any signed-in user of the same tenant (the id of the settings names the
        tenant: another tenant's user has none here)."""
        settings = await self.store.call(self.store.find, UserSettings, settings_id_for(principal.tenant_id, user_id))
        if settings is None or settings.avatar is None:
            raise NotFound("AVATAR_NOT_FOUND", "this user has no avatar")
        sha256 = str(settings.avatar["sha256"])
        return Avatar(await self.blobs.get(principal.tenant_id, sha256), str(settings.avatar["media_type"]), sha256)
