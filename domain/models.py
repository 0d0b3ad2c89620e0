"""Model providers and the models on them, with access grants; generation parameters and their bounds."""

from __future__ import annotations

import math
import re
from typing import Any, cast
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Invalid

__all__ = [
    "PROVIDER_KINDS",
    "Provider",
    "Model",
    "check_params",
    "model_id_for",
    "provider_id_for",
    "check_model_name",
    "MAX_NEW_TOKENS",
]

PROVIDER_KINDS = ("local", "openai", "ollama", "echo")
MAX_NEW_TOKENS = 8192
MAX_SYSTEM_PROMPT = 16_000
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")


def provider_id_for(tenant_id: str, name: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/providers/{name}")


def model_id_for(tenant_id: str, name: str) -> UUID:
    """Deterministic: a model's name is unique per tenant without a read model."""
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/models/{name}")


def check_model_name(name: str, field: str = "name") -> str:
    if not _MODEL_NAME.match(name):
        raise Invalid("INVALID_MODEL_NAME", "names are 1-100 of letters, digits and . _ : / -", field=field)
    return name


def _number(params: dict[str, Any], key: str, low: float, high: float, *, integer: bool = False) -> None:
    if key not in params or params[key] is None:
        params.pop(key, None)
        return
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
        raise Invalid("INVALID_PARAMETER", f"{key} must be a number", field=key)
    if integer and not float(value).is_integer():
        raise Invalid("INVALID_PARAMETER", f"{key} must be an integer", field=key)
    if not low <= value <= high:
        raise Invalid("INVALID_PARAMETER", f"{key} must be between {low:g} and {high:g}", field=key, value=value)
    params[key] = int(value) if integer else float(value)


def check_params(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Validated generation parameters (unknown keys refused)."""
    params = dict(raw or {})
    unknown = set(params) - {"temperature", "top_p", "max_tokens", "stop", "seed", "system_prompt"}
    if unknown:
        raise Invalid("INVALID_PARAMETER", f"unknown parameter(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    _number(params, "temperature", 0.0, 2.0)
    _number(params, "top_p", 0.0, 1.0)
    if params.get("top_p") == 0.0:
        raise Invalid("INVALID_PARAMETER", "top_p must be greater than 0", field="top_p")
    _number(params, "max_tokens", 1, MAX_NEW_TOKENS, integer=True)
    _number(params, "seed", 0, 2**31 - 1, integer=True)
    if "stop" in params:
        stop = params["stop"]
        if stop is None:
            params.pop("stop")
        else:
            if isinstance(stop, str):
                stop = [stop]
            if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in stop):
                raise Invalid("INVALID_PARAMETER", "stop must be up to 4 strings of 1-64 characters", field="stop")
            params["stop"] = stop
    if "system_prompt" in params:
        prompt = params["system_prompt"]
        if prompt is None:
            params.pop("system_prompt")
        elif not isinstance(prompt, str) or len(prompt) > MAX_SYSTEM_PROMPT:
            raise Invalid("INVALID_PARAMETER", f"system_prompt must be a string of at most {MAX_SYSTEM_PROMPT}", field="system_prompt")
    return params


class Provider(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, name: str, **_: Any) -> UUID:
        return provider_id_for(tenant_id, name)

    @event("ProviderRegistered")
    def __init__(
        self, tenant_id: str, name: str, kind: str, base_url: str | None, api_key_encrypted: str | None
    ) -> None:
        self.tenant_id = tenant_id
        self.name = name
        self.kind = kind
        self.base_url = base_url
        self.api_key_encrypted = api_key_encrypted

    @event("ProviderChanged")
    def change(self, base_url: str | None, api_key_encrypted: str | None) -> None:
        self.base_url = base_url
        self.api_key_encrypted = api_key_encrypted


class Model(Aggregate):
    knowledge_ids = cast(tuple[str, ...], ())  # the default for models registered before knowledge existed

    @staticmethod
    def create_id(tenant_id: str, name: str, **_: Any) -> UUID:
        return model_id_for(tenant_id, name)

    @event("ModelRegistered")
    def __init__(
        self,
        tenant_id: str,
        name: str,
        display_name: str,
        provider_id: UUID,
        provider_kind: str,
        upstream_model: str,
        defaults: dict[str, Any],
        open_to_tenant: bool,
    ) -> None:
        self.tenant_id = tenant_id
        self.name = name
        self.display_name = display_name
        self.provider_id = provider_id
        self.provider_kind = provider_kind
        self.upstream_model = upstream_model
        self.defaults = dict(defaults)
        self.open_to_tenant = open_to_tenant
        self.active = True
        self.granted_users: list[str] = []
        self.granted_roles: list[str] = []

    def can_use(self, user_id: UUID | str, role: str) -> bool:
        if not self.active:
            return False
        return (
            role == "admin"
            or self.open_to_tenant
            or str(user_id) in self.granted_users
            or role in self.granted_roles
        )

    @event("ModelChanged")
    def change(self, display_name: str, defaults: dict[str, Any], open_to_tenant: bool, active: bool) -> None:
        self.display_name = display_name
        self.defaults = dict(defaults)
        self.open_to_tenant = open_to_tenant
        self.active = active

    def set_knowledge(self, knowledge_ids: list[str]) -> None:
        """Knowledge bases every answer of this model draws on (as far as the asking user may read them)."""
        ids = list(dict.fromkeys(knowledge_ids))
        if len(ids) > 10:
            raise Invalid("TOO_MANY_KNOWLEDGE_BASES", "a model draws on at most 10 knowledge bases", field="knowledge_ids")
        if tuple(ids) != self.knowledge_ids:
            self._set_knowledge(knowledge_ids=ids)

    @event("ModelKnowledgeChanged")
    def _set_knowledge(self, knowledge_ids: list[str]) -> None:
        self.knowledge_ids = tuple(knowledge_ids)

    def grant(self, *, user_id: str | None = None, role: str | None = None) -> None:
        if (user_id is None) == (role is None):
            raise Invalid("INVALID_GRANT", "grant to exactly one of user_id or role")
        if (user_id and user_id in self.granted_users) or (role and role in self.granted_roles):
            raise Conflict("ALREADY_GRANTED", "this access is already granted")
        self._grant(user_id=user_id, role=role)

    @event("ModelAccessGranted")
    def _grant(self, user_id: str | None, role: str | None) -> None:
        if user_id:
            self.granted_users.append(user_id)
        if role:
            self.granted_roles.append(role)

    def revoke(self, *, user_id: str | None = None, role: str | None = None) -> None:
        if (user_id is None) == (role is None):
            raise Invalid("INVALID_GRANT", "revoke exactly one of user_id or role")
        if (user_id and user_id not in self.granted_users) or (role and role not in self.granted_roles):
            raise Conflict("NOT_GRANTED", "this access is not granted")
        self._revoke(user_id=user_id, role=role)

    @event("ModelAccessRevoked")
    def _revoke(self, user_id: str | None, role: str | None) -> None:
        if user_id:
            self.granted_users.remove(user_id)
        if role:
            self.granted_roles.remove(role)
