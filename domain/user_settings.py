"""A user's own settings: the model and generation parameters their messages get when they name none,
their avatar (an image in the blob store, by hash) and the front end's preferences (a JSON document
parley keeps but does not read, bounded so that it stays small).

Settings are an aggregate of their own beside ``User`` (one per user, its id derived from the user's):
``User`` is loaded on every sign-in and token check, and a front end may write preferences often. The
display name is the user's name (``User.rename``), not a second one.
"""

from __future__ import annotations

import json
import math
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Invalid
from domain.models import OPTIONAL_PARAMS, Model

__all__ = [
    "AVATAR_TYPES",
    "MAX_AVATAR_BYTES",
    "MAX_PREFERENCE_BYTES",
    "MAX_PREFERENCE_DEPTH",
    "MAX_PREFERENCE_KEYS",
    "UserSettings",
    "check_preferences",
    "settings_id_for",
]

MAX_AVATAR_BYTES = 1024 * 1024
AVATAR_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
MAX_PREFERENCE_BYTES = 64 * 1024
"""The document as compact JSON (UTF-8)."""
MAX_PREFERENCE_DEPTH = 8
"""Objects and arrays nested at most this deep (the document itself is depth 1)."""
MAX_PREFERENCE_KEYS = 500
"""Keys of every object in the document together."""
MAX_KEY_CHARS = 100


def settings_id_for(tenant_id: str, user_id: UUID | str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/users/{user_id}/settings")


def check_preferences(document: Any) -> dict[str, Any]:
    """A JSON object within the bounds, each broken one its own 422 code: ``PREFERENCES_NOT_AN_OBJECT``,
    ``PREFERENCES_TOO_LARGE``, ``PREFERENCES_TOO_DEEP``, ``PREFERENCES_TOO_MANY_KEYS`` and
    ``INVALID_PREFERENCES`` (a key too long or a value that is not JSON, such as NaN)."""
    if not isinstance(document, dict):
        raise Invalid("PREFERENCES_NOT_AN_OBJECT", "preferences are a JSON object", field="preferences")
    keys = 0
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_PREFERENCE_DEPTH:
                raise Invalid(
                    "PREFERENCES_TOO_DEEP", f"preferences nest at most {MAX_PREFERENCE_DEPTH} levels", field="preferences",
                    limit=MAX_PREFERENCE_DEPTH,
                )
            if isinstance(value, dict):
                keys += len(value)
                if keys > MAX_PREFERENCE_KEYS:
                    raise Invalid(
                        "PREFERENCES_TOO_MANY_KEYS", f"preferences hold at most {MAX_PREFERENCE_KEYS} keys", field="preferences",
                        limit=MAX_PREFERENCE_KEYS,
                    )
                for key in value:
                    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS or "\x00" in key:
                        raise Invalid("INVALID_PREFERENCES", f"keys are 1-{MAX_KEY_CHARS} characters", field="preferences")
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise Invalid("INVALID_PREFERENCES", "preferences hold JSON values only (no NaN or infinity)", field="preferences")
        elif isinstance(value, str) and "\x00" in value:
            raise Invalid("INVALID_PREFERENCES", "text in preferences holds no NUL character", field="preferences")
        elif value is not None and not isinstance(value, str | int | float | bool):
            raise Invalid("INVALID_PREFERENCES", "preferences hold JSON values only", field="preferences")
    size = len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_PREFERENCE_BYTES:
        raise Invalid(
            "PREFERENCES_TOO_LARGE", f"preferences are at most {MAX_PREFERENCE_BYTES} bytes of JSON", field="preferences",
            limit=MAX_PREFERENCE_BYTES, size=size,
        )
    return document


class UserSettings(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, user_id: UUID, **_: Any) -> UUID:
        return settings_id_for(tenant_id, user_id)

    @event("UserSettingsCreated")
    def __init__(self, tenant_id: str, user_id: UUID) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.default_model: str | None = None
        self.default_params: dict[str, Any] = {}
        self.preferences: dict[str, Any] = {}
        self.avatar: dict[str, Any] | None = None

    def choose_default_model(self, model: str | None) -> None:
        """``model``: the model's name as registered (the service checks that the user may use it)."""
        if model != self.default_model:
            self._choose_default_model(model=model)

    @event("DefaultModelChosen")
    def _choose_default_model(self, model: str | None) -> None:
        self.default_model = model

    def set_default_params(self, params: dict[str, Any]) -> None:
        """``params`` checked as a message's are (``domain.models.check_params``)."""
        if params != self.default_params:
            self._set_default_params(params=params)

    @event("DefaultParamsSet")
    def _set_default_params(self, params: dict[str, Any]) -> None:
        self.default_params = dict(params)

    def params_for(self, model: Model) -> dict[str, Any]:
        """The default parameters that apply to a message to ``model``, under the message's own: those the
        model honours (a preference is not a request: one the model cannot serve is left out, not
        refused), over the model's defaults, but under a preset's (a preset is chosen for its own)."""
        caps = model.capabilities
        params = {k: v for k, v in self.default_params.items() if k not in OPTIONAL_PARAMS or k in caps.params}
        if params.get("max_tokens", 0) > (caps.max_output_tokens or caps.context_window):
            params.pop("max_tokens")
        if model.base_model_id is not None:
            params = {k: v for k, v in params.items() if k not in model.defaults}
        return params

    def set_preferences(self, preferences: dict[str, Any]) -> None:
        preferences = check_preferences(preferences)
        if preferences != self.preferences:
            self._set_preferences(preferences=preferences)

    @event("PreferencesSet")
    def _set_preferences(self, preferences: dict[str, Any]) -> None:
        self.preferences = dict(preferences)

    def set_avatar(self, sha256: str, media_type: str, size: int) -> None:
        if media_type not in AVATAR_TYPES:
            raise Invalid("UNSUPPORTED_IMAGE_TYPE", "an avatar is PNG, JPEG, GIF or WebP", field="file")
        if not 0 < size <= MAX_AVATAR_BYTES:
            raise Invalid("AVATAR_TOO_LARGE", f"an avatar is at most {MAX_AVATAR_BYTES} bytes", field="file")
        if self.avatar is None or self.avatar["sha256"] != sha256:
            self._set_avatar(sha256=sha256, media_type=media_type, size=size)

    @event("AvatarSet")
    def _set_avatar(self, sha256: str, media_type: str, size: int) -> None:
        self.avatar = {"sha256": sha256, "media_type": media_type, "size": size}

    def remove_avatar(self) -> None:
        if self.avatar is not None:
            self._remove_avatar()

    @event("AvatarRemoved")
    def _remove_avatar(self) -> None:
        self.avatar = None
