"""Model providers and the models on them, with access grants and capabilities; generation parameters
and their bounds."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, cast
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Invalid

__all__ = [
    "PROVIDER_KINDS",
    "CORE_PARAMS",
    "OPTIONAL_PARAMS",
    "Capabilities",
    "Provider",
    "Model",
    "check_capabilities",
    "check_params",
    "default_capabilities",
    "model_id_for",
    "provider_id_for",
    "check_model_name",
    "MAX_NEW_TOKENS",
]

PROVIDER_KINDS = ("local", "openai", "ollama", "echo")
MAX_NEW_TOKENS = 1 << 20
MAX_CONTEXT_WINDOW = 1 << 24
MAX_SYSTEM_PROMPT = 16_000
MAX_RESPONSE_FORMAT_BYTES = 64 * 1024
MAX_LOGIT_BIAS = 300
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")

CORE_PARAMS = ("temperature", "top_p", "max_tokens", "stop", "system_prompt")
"""Parameters every engine honours."""
OPTIONAL_PARAMS = (
    "seed", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias",
    "response_format", "reasoning_effort",
)  # fmt: skip
"""Parameters a model honours only where its capabilities say so; a request that sets one of them for a
model that does not is refused (400 ``UNSUPPORTED_PARAMETER``), never silently dropped."""


@dataclass(frozen=True)
class Capabilities:
    """What a model can serve. ``context_window``: tokens of prompt and answer together;
    ``max_output_tokens``: the most an answer may have (None: the rest of the window); ``tools``: it can
    call functions; ``vision``: it reads images; ``params``: the ``OPTIONAL_PARAMS`` it honours."""

    context_window: int
    tools: bool
    vision: bool
    params: tuple[str, ...]
    max_output_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "params": list(self.params)}

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Capabilities:
        return cls(
            context_window=int(raw["context_window"]),
            tools=bool(raw["tools"]),
            vision=bool(raw["vision"]),
            params=tuple(raw.get("params") or ()),
            max_output_tokens=raw.get("max_output_tokens"),
        )

    def answer_room(self, prompt_tokens: int) -> int:
        """The most tokens an answer to a prompt of this size can have."""
        room = self.context_window - prompt_tokens
        return max(1, min(room, self.max_output_tokens) if self.max_output_tokens else room)


_DEFAULT_CAPABILITIES = {
    # SmolLM2-135M-Instruct: 8,192 positions, no tool template, no vision; the local sampler does the rest.
    "local": Capabilities(
        8192, tools=False, vision=False,
        params=("seed", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias"),
    ),
    # OpenAI's own parameters; top_k, min_p and repetition_penalty (vLLM, llama.cpp, TGI) are for the
    # admin to turn on for servers that take them. The context window is the admin's to state.
    "openai": Capabilities(
        128_000, tools=True, vision=True,
        params=("seed", "frequency_penalty", "presence_penalty", "logit_bias", "response_format", "reasoning_effort"),
        max_output_tokens=16_384,
    ),
    "ollama": Capabilities(
        8192, tools=True, vision=False,
        params=("seed", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "response_format"),
    ),
    "echo": Capabilities(8192, tools=False, vision=False, params=("seed",)),
}  # fmt: skip


def default_capabilities(provider_kind: str) -> Capabilities:
    return _DEFAULT_CAPABILITIES.get(provider_kind, _DEFAULT_CAPABILITIES["openai"])


def check_capabilities(raw: dict[str, Any], base: Capabilities) -> Capabilities:
    """``base`` with the given fields changed, each checked."""
    unknown = set(raw) - {"context_window", "max_output_tokens", "tools", "vision", "params"}
    if unknown:
        raise Invalid("INVALID_CAPABILITIES", f"unknown capability: {', '.join(sorted(unknown))}", field="capabilities")
    merged = {**base.as_dict(), **raw}
    window, output = merged["context_window"], merged["max_output_tokens"]
    if "max_output_tokens" not in raw and isinstance(window, int) and output is not None and output >= window:
        output = None  # a smaller window than the kind's usual output limit: the window bounds the answer
    if isinstance(window, bool) or not isinstance(window, int) or not 16 <= window <= MAX_CONTEXT_WINDOW:
        raise Invalid("INVALID_CAPABILITIES", f"context_window is an integer of 16-{MAX_CONTEXT_WINDOW}", field="context_window")
    if output is not None and (isinstance(output, bool) or not isinstance(output, int) or not 1 <= output <= window):
        raise Invalid("INVALID_CAPABILITIES", "max_output_tokens is an integer up to the context window", field="max_output_tokens")
    for flag in ("tools", "vision"):
        if not isinstance(merged[flag], bool):
            raise Invalid("INVALID_CAPABILITIES", f"{flag} is true or false", field=flag)
    params = merged["params"]
    if not isinstance(params, list | tuple) or not all(p in OPTIONAL_PARAMS for p in params):
        raise Invalid("INVALID_CAPABILITIES", f"params are among {', '.join(OPTIONAL_PARAMS)}", field="params")
    return Capabilities(window, merged["tools"], merged["vision"], tuple(dict.fromkeys(params)), output)


def provider_id_for(tenant_id: str, name: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/providers/{name}")


def model_id_for(tenant_id: str, name: str) -> UUID:
    """Deterministic, and the same for any case of the name: a model's name is unique per tenant, case
    aside, without a read model. (Models registered before names were case-insensitive keep the id of
    their name as written; ``Models`` finds those too.)"""
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/models/{name.lower()}")


def legacy_model_id_for(tenant_id: str, name: str) -> UUID:
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


def _logit_bias(params: dict[str, Any]) -> None:
    bias = params.get("logit_bias")
    if bias is None or bias == {}:
        params.pop("logit_bias", None)
        return
    if not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS:
        raise Invalid("INVALID_PARAMETER", f"logit_bias maps up to {MAX_LOGIT_BIAS} token ids to biases", field="logit_bias")
    checked: dict[str, float] = {}
    for token, value in bias.items():
        try:
            token_id = int(str(token))
        except ValueError:
            raise Invalid("INVALID_PARAMETER", "logit_bias keys are token ids", field="logit_bias") from None
        if token_id < 0 or isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
            raise Invalid("INVALID_PARAMETER", "logit_bias values are numbers between -100 and 100", field="logit_bias")
        checked[str(token_id)] = float(value)
    params["logit_bias"] = checked


def _response_format(params: dict[str, Any]) -> None:
    fmt = params.get("response_format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        params.pop("response_format", None)
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        raise Invalid(
            "INVALID_PARAMETER", "response_format is {\"type\": \"text\" | \"json_object\" | \"json_schema\"}", field="response_format"
        )
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema", {}), dict):
            raise Invalid(
                "INVALID_PARAMETER", "json_schema needs a name and a schema object", field="response_format"
            )
    if len(json.dumps(fmt)) > MAX_RESPONSE_FORMAT_BYTES:
        raise Invalid("INVALID_PARAMETER", f"response_format is at most {MAX_RESPONSE_FORMAT_BYTES} bytes", field="response_format")


def check_params(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Validated generation parameters (unknown keys refused; those set to null dropped)."""
    params = dict(raw or {})
    unknown = set(params) - set(CORE_PARAMS) - set(OPTIONAL_PARAMS)
    if unknown:
        raise Invalid("INVALID_PARAMETER", f"unknown parameter(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    _number(params, "temperature", 0.0, 2.0)
    _number(params, "top_p", 0.0, 1.0)
    if params.get("top_p") == 0.0:
        raise Invalid("INVALID_PARAMETER", "top_p must be greater than 0", field="top_p")
    _number(params, "max_tokens", 1, MAX_NEW_TOKENS, integer=True)
    _number(params, "seed", 0, 2**63 - 1, integer=True)
    _number(params, "top_k", -1, 1 << 20, integer=True)
    if params.get("top_k") in (-1, 0):  # "no top-k", as vLLM and Ollama spell it
        params.pop("top_k")
    _number(params, "min_p", 0.0, 1.0)
    _number(params, "frequency_penalty", -2.0, 2.0)
    _number(params, "presence_penalty", -2.0, 2.0)
    _number(params, "repetition_penalty", 0.01, 10.0)
    _logit_bias(params)
    _response_format(params)
    if "reasoning_effort" in params:
        effort = params["reasoning_effort"]
        if effort is None:
            params.pop("reasoning_effort")
        elif effort not in REASONING_EFFORTS:
            raise Invalid("INVALID_PARAMETER", f"reasoning_effort is one of {', '.join(REASONING_EFFORTS)}", field="reasoning_effort")
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
    """A model on a provider, or a preset: a model based on another (``base_model_id``), with its own
    name, defaults (a system prompt among them), knowledge and access, served by its base's engine. A
    preset takes its base's provider, upstream model and capabilities when it is made."""

    knowledge_ids = cast(tuple[str, ...], ())  # the default for models registered before knowledge existed
    base_model_id = cast(UUID | None, None)  # and before presets
    base_model = cast(str | None, None)
    capabilities_set = cast(dict[str, Any] | None, None)
    """What the admin said the model can do; None: the defaults of its provider's kind."""

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
        base_model_id: UUID | None = None,
        base_model: str | None = None,
    ) -> None:
        """``base_model_id`` and ``base_model`` (its name): the model a preset is based on; None for a model
        of its own."""
        self.tenant_id = tenant_id
        self.name = name
        self.base_model_id = base_model_id
        self.base_model = base_model
        self.display_name = display_name
        self.provider_id = provider_id
        self.provider_kind = provider_kind
        self.upstream_model = upstream_model
        self.defaults = dict(defaults)
        self.open_to_tenant = open_to_tenant
        self.active = True
        self.granted_users: list[str] = []
        self.granted_roles: list[str] = []

    @property
    def capabilities(self) -> Capabilities:
        if self.capabilities_set is None:
            return default_capabilities(self.provider_kind)
        return Capabilities.of(self.capabilities_set)

    def set_capabilities(self, changes: dict[str, Any]) -> None:
        checked = check_capabilities(changes, self.capabilities).as_dict()
        if checked != self.capabilities.as_dict() or self.capabilities_set is None:
            self._set_capabilities(capabilities=checked)

    @event("ModelCapabilitiesChanged")
    def _set_capabilities(self, capabilities: dict[str, Any]) -> None:
        self.capabilities_set = dict(capabilities)

    def check_serves(self, params: dict[str, Any], *, images: bool) -> None:
        """Refuse what this model cannot do: an optional parameter it does not honour, images it cannot
        read, a ``max_tokens`` past what it can write."""
        caps = self.capabilities
        for name in OPTIONAL_PARAMS:
            if name in params and name not in caps.params:
                raise Invalid(
                    "UNSUPPORTED_PARAMETER", f"model '{self.name}' does not support '{name}'", field=name, model=self.name
                )
        if images and not caps.vision:
            raise Invalid("IMAGES_NOT_SUPPORTED", f"model '{self.name}' does not read images", field="messages", model=self.name)
        limit = caps.max_output_tokens or caps.context_window
        if params.get("max_tokens", 0) > limit:
            raise Invalid(
                "MAX_TOKENS_TOO_LARGE",
                f"max_tokens is too large: {params['max_tokens']}; model '{self.name}' writes at most {limit} tokens",
                field="max_tokens",
            )

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
