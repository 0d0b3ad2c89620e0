"""Model providers and the models on them (tenant admins), and the models a caller may use."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api import dto_chat as dto
from api.deps import App, Caller, command_context
from api.openapi import refusals
from domain.errors import Invalid
from domain.models import Model as ModelAggregate
from domain.models import Provider as ProviderAggregate
from projections.conversations import list_all_models, list_models, list_providers

__all__ = ["ModelController", "ProviderController", "model_dto"]


def provider_dto(p: ProviderAggregate | dict[str, Any]) -> dto.Provider:
    if isinstance(p, dict):
        return dto.Provider(
            id=str(p["id"]),
            name=p["name"],
            kind=p["kind"],
            base_url=p["base_url"],
            has_api_key=bool(p["has_api_key"]),
            created_at=p["created_at"],
        )
    return dto.Provider(
        id=str(p.id),
        name=p.name,
        kind=p.kind,
        base_url=p.base_url,
        has_api_key=p.api_key_encrypted is not None,
        created_at=p.created_on,
    )


def model_dto(m: ModelAggregate | dict[str, Any], *, provider: str | None = None) -> dto.Model:
    """A read-model row as it is (admin fields where the query gave them), or an aggregate with all."""
    if isinstance(m, dict):
        fields = {k: v for k, v in m.items() if k in dto.Model.__struct_fields__}
        for key in ("id", "provider_id"):
            if fields.get(key) is not None:
                fields[key] = str(fields[key])
        return dto.Model(**fields)
    return dto.Model(
        id=str(m.id),
        name=m.name,
        display_name=m.display_name,
        provider_kind=m.provider_kind,
        upstream_model=m.upstream_model,
        defaults=m.defaults,
        capabilities=m.capabilities.as_dict(),
        provider_id=str(m.provider_id),
        provider=provider,
        open_to_tenant=m.open_to_tenant,
        active=m.active,
        granted_users=list(m.granted_users),
        granted_roles=list(m.granted_roles),
        knowledge_ids=list(m.knowledge_ids),
        base_model=m.base_model,
    )


class ProviderController(Controller):
    path = "/api/v1/providers"
    tags = ["models"]

    @get("/", operation_id="ListProviders")
    async def list(self, c: App, caller: Caller) -> list[dto.Provider]:
        caller.require_admin()
        return [provider_dto(p) for p in await list_providers(c.engine, caller.tenant_id)]

    @post("/", operation_id="RegisterProvider", status_code=HTTP_201_CREATED)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[dto.ProviderCreate], c: App, caller: Caller
    ) -> dto.Provider:
        provider = await c.models.register_provider(
            command_context(request, caller),
            caller,
            name=data.name,
            kind=data.kind,
            base_url=data.base_url,
            api_key=data.api_key,
        )
        return provider_dto(provider)


class ModelController(Controller):
    path = "/api/v1/models"
    tags = ["models"]

    @get("/", operation_id="ListModels")
    async def list(
        self,
        c: App,
        caller: Caller,
        every: Annotated[
            bool, QueryParameter(name="all", description="every model of the tenant, with grants (admins)")
        ] = False,
    ) -> list[dto.Model]:
        if every:
            caller.require_admin()
            rows = await list_all_models(c.engine, caller.tenant_id)
        else:
            rows = await list_models(c.engine, caller.tenant_id, caller.user_id, caller.role)
        return [model_dto(r) for r in rows]

    @post("/", operation_id="RegisterModel", status_code=HTTP_201_CREATED, responses=refusals(404))
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[dto.ModelCreate], c: App, caller: Caller
    ) -> dto.Model:
        """A model on a provider, or a preset on a base model (``base_model``)."""
        own = data.provider is not None or data.upstream_model is not None or data.capabilities is not None
        if (data.base_model is None) == (data.provider is None or data.upstream_model is None) or (data.base_model and own):
            raise Invalid(
                "INVALID_MODEL_SOURCE",
                "give provider and upstream_model (a model of its own), or base_model alone (a preset)",
                field="base_model",
            )
        if data.base_model is not None:
            preset = await c.models.register_preset(
                command_context(request, caller),
                caller,
                name=data.name,
                base_model=data.base_model,
                display_name=data.display_name,
                defaults=data.defaults,
                open_to_tenant=data.open_to_tenant,
                knowledge_ids=data.knowledge_ids,
            )
            return model_dto(preset)
        if data.knowledge_ids is not None:
            raise Invalid("INVALID_MODEL_SOURCE", "set a model's knowledge with PATCH; knowledge_ids is for presets", field="knowledge_ids")
        assert data.provider is not None and data.upstream_model is not None
        model = await c.models.register_model(
            command_context(request, caller),
            caller,
            name=data.name,
            provider=data.provider,
            upstream_model=data.upstream_model,
            display_name=data.display_name,
            defaults=data.defaults,
            open_to_tenant=data.open_to_tenant,
            capabilities=dto.capabilities_given(data.capabilities),
        )
        return model_dto(model, provider=data.provider)

    @patch("/{name:str}", operation_id="UpdateModel")
    async def update(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        data: JSONBody[dto.ModelUpdate],
        c: App,
        caller: Caller,
    ) -> dto.Model:
        def given(v: Any) -> Any:
            return None if v is msgspec.UNSET else v

        model = await c.models.update_model(
            command_context(request, caller),
            caller,
            name,
            display_name=given(data.display_name),
            defaults=given(data.defaults),
            open_to_tenant=given(data.open_to_tenant),
            active=given(data.active),
            knowledge_ids=given(data.knowledge_ids),
            capabilities=dto.capabilities_given(data.capabilities),
        )
        return model_dto(model)

    @post("/{name:str}/grants", operation_id="GrantModelAccess", status_code=HTTP_200_OK)
    async def grant(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        data: JSONBody[dto.GrantBody],
        c: App,
        caller: Caller,
    ) -> dto.Model:
        model = await c.models.set_grant(
            command_context(request, caller), caller, name, grant=True, user_id=data.user_id, role=data.role
        )
        return model_dto(model)

    @delete("/{name:str}/grants", operation_id="RevokeModelAccess", status_code=HTTP_200_OK)
    async def revoke(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        c: App,
        caller: Caller,
        user_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
        role: Annotated[str | None, QueryParameter(max_length=20)] = None,
    ) -> dto.Model:
        model = await c.models.set_grant(
            command_context(request, caller), caller, name, grant=False, user_id=user_id, role=role
        )
        return model_dto(model)
