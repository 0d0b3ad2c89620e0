"""SCIM 2.0 provisioning (RFC 7644) under ``/scim/v2``, authenticated by a tenant's SCIM token; and the
tenant admin's side: issuing and revoking SCIM tokens, mapping groups to roles (``/api/v1/scim``).

The SCIM routes speak ``application/scim+json`` with SCIM error bodies (``scimType``), whatever fails;
the protocol's shapes live in ``api/scim.py``, the use cases in ``application/scim.py``."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, Response, delete, get, patch, post, put, route
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from pydantic import ValidationError
from scim2_models import (
    Context,
    InvalidFilterException,
    InvalidSyntaxException,
    InvalidValueException,
    PatchOp,
    PayloadTooLargeException,
    ResponseParameters,
    SCIMException,
    ScimFilter,
    SearchRequest,
)

from api import scim
from api.deps import App, Caller, command_context
from api.errors import STATUS_OF
from application.context import CommandContext
from application.scim import ScimCaller, ScimGroupData, ScimGroupView, ScimUserData, ScimUserView
from domain.errors import Conflict, Invalid, NotFound, ParleyError, Unauthenticated

__all__ = ["ScimController", "ScimAdminController"]

log = structlog.get_logger(__name__)
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
MAX_BODY = 1_000_000


def _scim_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(content=json.dumps(body).encode(), status_code=status, media_type=scim.SCIM_MEDIA_TYPE, headers=headers)


def _error(status: int, detail: str, scim_type: str | None = None) -> Response[bytes]:
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    return _scim_response(body, status, {"WWW-Authenticate": "Bearer"} if status == 401 else None)


def _parley_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, ParleyError)
    # SCIM answers bad values 400 with a scimType (RFC 7644 §3.12), where parley's own API says 422.
    status = 400 if isinstance(exc, Invalid) else next((s for cls, s in STATUS_OF.items() if isinstance(exc, cls)), 400)
    scim_type = None
    if isinstance(exc, Conflict) and exc.code == "SCIM_UNIQUENESS":
        scim_type = "uniqueness"
    elif exc.code == "MUTABILITY":
        scim_type = "mutability"
    elif isinstance(exc, Invalid):
        scim_type = "invalidValue"
    elif status == 400:
        scim_type = "invalidSyntax"
    return _error(status, f"{exc.code}: {exc.message}", scim_type)


def _scim_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, SCIMException)
    body = exc.to_error().model_dump()
    return _scim_response(body, int(body.get("status") or exc.status))


def _validation_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, ValidationError)
    body = scim.validation_error(exc)
    return _scim_response(body, int(body.get("status") or 400))


def _http_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    if exc.status_code >= 500:
        log.error("scim_http_error", status=exc.status_code, detail=str(exc.detail))
        return _error(500, "internal error")
    return _error(exc.status_code, str(exc.detail))


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("scim_unexpected_error", path=request.url.path)
    return _error(500, "internal error")


SCIM_ERRORS: dict[type[Exception], Any] = {
    ParleyError: _parley_error,
    SCIMException: _scim_error,
    ValidationError: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}


async def scim_caller(request: Request[Any, Any, Any], state: State) -> ScimCaller:
    header = request.headers.get("authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("UNAUTHENTICATED", "send the tenant's SCIM token: Authorization: Bearer <token>")
    ctx = command_context(request)
    return await state.container.scim.authenticate(ctx, value.strip())


def _ctx(request: Request[Any, Any, Any], caller: ScimCaller) -> CommandContext:
    return command_context(request, tenant_id=caller.tenant_id).replace(actor=caller.actor)


def _base_url(request: Request[Any, Any, Any]) -> str:
    return str(request.base_url).rstrip("/") + "/scim/v2"


async def _body(request: Request[Any, Any, Any]) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise PayloadTooLargeException(detail=f"a SCIM request body is at most {MAX_BODY} bytes")
    try:
        value = json.loads(raw or b"null")
    except ValueError:
        raise InvalidSyntaxException(detail="the body is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidSyntaxException(detail="the body is a JSON object")
    return value


def _int_param(request: Request[Any, Any, Any], name: str, default: int, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return max(minimum, int(raw))
    except ValueError:
        raise InvalidValueException(detail=f"{name} is an integer") from None


def _dump(resource: Any, ctx: Context, params: ResponseParameters[Any] | None = None) -> dict[str, Any]:
    return resource.model_dump(scim_ctx=ctx, response_parameters=params)  # type: ignore[no-any-return]


def _params(model: Any, attributes: Any, excluded: Any) -> ResponseParameters[Any] | None:
    if not attributes and not excluded:
        return None
    return ResponseParameters[model].model_validate(  # type: ignore[index,no-any-return]
        {"attributes": attributes, "excludedAttributes": excluded}
    )


def _page(
    resources: list[Any],
    model: Any,
    *,
    filter_text: str | None,
    start_index: int,
    count: int,
    attributes: Any = None,
    excluded: Any = None,
) -> Response[bytes]:
    if filter_text:
        try:
            bound = ScimFilter[model](filter_text)
        except SCIMException:
            raise
        except (ValueError, TypeError) as exc:  # what the grammar refuses that is no SCIMException
            raise InvalidFilterException(detail=str(exc)[:300]) from None
        resources = [r for r in resources if bound.match(r)]
    total = len(resources)
    count = min(count, scim.MAX_RESULTS)
    window = resources[start_index - 1 : start_index - 1 + count]
    params = _params(model, attributes, excluded)
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": len(window),
        "Resources": [_dump(r, Context.RESOURCE_QUERY_RESPONSE, params) for r in window],
    }
    return _scim_response(body)


class ScimController(Controller):
    path = "/scim/v2"
    tags = ["scim"]
    include_in_schema = False
    exception_handlers = SCIM_ERRORS  # type: ignore[assignment]

    # --- discovery (public, as RFC 7644 §4 allows) ---------------------------------------------------------
    @get("/ServiceProviderConfig", operation_id="ScimServiceProviderConfig")
    async def service_provider_config(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        return _scim_response(scim.service_provider_config(_base_url(request)).model_dump())

    @get("/Schemas", operation_id="ScimSchemas")
    async def schemas(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        found = scim.schemas(_base_url(request))
        return _scim_response(_list_body([s.model_dump() for s in found]))

    @get("/Schemas/{schema_id:str}", operation_id="ScimSchema")
    async def schema(self, request: Request[Any, Any, Any], schema_id: FromPath[str]) -> Response[bytes]:
        for s in scim.schemas(_base_url(request)):
            if s.id == schema_id:
                return _scim_response(s.model_dump())
        raise NotFound("SCHEMA_NOT_FOUND", f"no schema {schema_id[:200]}")

    @get("/ResourceTypes", operation_id="ScimResourceTypes")
    async def resource_types(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        found = scim.resource_types(_base_url(request))
        return _scim_response(_list_body([r.model_dump() for r in found]))

    @get("/ResourceTypes/{name:str}", operation_id="ScimResourceType")
    async def resource_type(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
        for r in scim.resource_types(_base_url(request)):
            if r.id == name:
                return _scim_response(r.model_dump())
        raise NotFound("RESOURCE_TYPE_NOT_FOUND", f"no resource type {name[:200]}")

    # --- users ------------------------------------------------------------------------------------------------
    @get("/Users", operation_id="ScimListUsers")
    async def list_users(self, request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        caller = await scim_caller(request, state)
        base = _base_url(request)
        views = await state.container.scim.list_users(caller)
        return _page([scim.user_resource(v, base) for v in views], scim.ParleyUser, **_list_query(request))

    @post("/Users", operation_id="ScimCreateUser", status_code=HTTP_201_CREATED)
    async def create_user(self, request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        caller = await scim_caller(request, state)
        resource = scim.ParleyUser.model_validate(await _body(request), scim_ctx=Context.RESOURCE_CREATION_REQUEST)
        view = await state.container.scim.create_user(_ctx(request, caller), caller, scim.user_data(resource))
        created = scim.user_resource(view, _base_url(request))
        return _scim_response(
            _dump(created, Context.RESOURCE_CREATION_RESPONSE), 201, {"Location": str(created.meta.location)}  # type: ignore[union-attr]
        )

    @get("/Users/{user_id:str}", operation_id="ScimGetUser")
    async def get_user(self, request: Request[Any, Any, Any], state: State, user_id: FromPath[str]) -> Response[bytes]:
        caller = await scim_caller(request, state)
        view = await state.container.scim.get_user(caller, _id(user_id, "USER_NOT_FOUND"))
        params = _params(scim.ParleyUser, *_projection(request))
        return _scim_response(_dump(scim.user_resource(view, _base_url(request)), Context.RESOURCE_QUERY_RESPONSE, params))

    @put("/Users/{user_id:str}", operation_id="ScimReplaceUser")
    async def replace_user(self, request: Request[Any, Any, Any], state: State, user_id: FromPath[str]) -> Response[bytes]:
        caller = await scim_caller(request, state)
        uid = _id(user_id, "USER_NOT_FOUND")
        resource = scim.ParleyUser.model_validate(await _body(request), scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST)
        view = await state.container.scim.replace_user(_ctx(request, caller), caller, uid, scim.user_data(resource))
        return _scim_response(_dump(scim.user_resource(view, _base_url(request)), Context.RESOURCE_REPLACEMENT_RESPONSE))

    @patch("/Users/{user_id:str}", operation_id="ScimPatchUser")
    async def patch_user(self, request: Request[Any, Any, Any], state: State, user_id: FromPath[str]) -> Response[bytes]:
        caller = await scim_caller(request, state)
        uid = _id(user_id, "USER_NOT_FOUND")
        base = _base_url(request)
        service = state.container.scim
        operations = PatchOp[scim.ParleyUser].model_validate(await _body(request), scim_ctx=Context.RESOURCE_PATCH_REQUEST)

        def change(current: ScimUserView) -> ScimUserData:
            resource = scim.user_resource(current, base)
            operations.patch(resource)
            return scim.user_data(resource)

        view = await service.modify_user(_ctx(request, caller), caller, uid, change)
        return _scim_response(_dump(scim.user_resource(view, base), Context.RESOURCE_PATCH_RESPONSE))

    @delete("/Users/{user_id:str}", operation_id="ScimDeleteUser", status_code=HTTP_204_NO_CONTENT)
    async def delete_user(self, request: Request[Any, Any, Any], state: State, user_id: FromPath[str]) -> None:
        caller = await scim_caller(request, state)
        await state.container.scim.delete_user(_ctx(request, caller), caller, _id(user_id, "USER_NOT_FOUND"))

    # --- groups -----------------------------------------------------------------------------------------------
    @get("/Groups", operation_id="ScimListGroups")
    async def list_groups(self, request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        caller = await scim_caller(request, state)
        base = _base_url(request)
        views = await state.container.scim.list_groups(caller)
        return _page([scim.group_resource(v, base) for v in views], scim.ParleyGroup, **_list_query(request))

    @post("/Groups", operation_id="ScimCreateGroup", status_code=HTTP_201_CREATED)
    async def create_group(self, request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        caller = await scim_caller(request, state)
        resource = scim.ParleyGroup.model_validate(await _body(request), scim_ctx=Context.RESOURCE_CREATION_REQUEST)
        view = await state.container.scim.create_group(_ctx(request, caller), caller, scim.group_data(resource))
        created = scim.group_resource(view, _base_url(request))
        return _scim_response(
            _dump(created, Context.RESOURCE_CREATION_RESPONSE), 201, {"Location": str(created.meta.location)}  # type: ignore[union-attr]
        )

    @get("/Groups/{group_id:str}", operation_id="ScimGetGroup")
    async def get_group(self, request: Request[Any, Any, Any], state: State, group_id: FromPath[str]) -> Response[bytes]:
        caller = await scim_caller(request, state)
        view = await state.container.scim.get_group(caller, _id(group_id, "GROUP_NOT_FOUND"))
        params = _params(scim.ParleyGroup, *_projection(request))
        return _scim_response(_dump(scim.group_resource(view, _base_url(request)), Context.RESOURCE_QUERY_RESPONSE, params))

    @put("/Groups/{group_id:str}", operation_id="ScimReplaceGroup")
    async def replace_group(self, request: Request[Any, Any, Any], state: State, group_id: FromPath[str]) -> Response[bytes]:
        caller = await scim_caller(request, state)
        gid = _id(group_id, "GROUP_NOT_FOUND")
        resource = scim.ParleyGroup.model_validate(await _body(request), scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST)
        view = await state.container.scim.replace_group(_ctx(request, caller), caller, gid, scim.group_data(resource))
        return _scim_response(_dump(scim.group_resource(view, _base_url(request)), Context.RESOURCE_REPLACEMENT_RESPONSE))

    @patch("/Groups/{group_id:str}", operation_id="ScimPatchGroup")
    async def patch_group(self, request: Request[Any, Any, Any], state: State, group_id: FromPath[str]) -> Response[bytes]:
        caller = await scim_caller(request, state)
        gid = _id(group_id, "GROUP_NOT_FOUND")
        base = _base_url(request)
        service = state.container.scim
        operations = PatchOp[scim.ParleyGroup].model_validate(await _body(request), scim_ctx=Context.RESOURCE_PATCH_REQUEST)

        def change(current: ScimGroupView) -> ScimGroupData:
            resource = scim.group_resource(current, base)
            operations.patch(resource)
            return scim.group_data(resource)

        view = await service.modify_group(_ctx(request, caller), caller, gid, change)
        return _scim_response(_dump(scim.group_resource(view, base), Context.RESOURCE_PATCH_RESPONSE))

    @delete("/Groups/{group_id:str}", operation_id="ScimDeleteGroup", status_code=HTTP_204_NO_CONTENT)
    async def delete_group(self, request: Request[Any, Any, Any], state: State, group_id: FromPath[str]) -> None:
        caller = await scim_caller(request, state)
        await state.container.scim.delete_group(_ctx(request, caller), caller, _id(group_id, "GROUP_NOT_FOUND"))

    # --- search -------------------------------------------------------------------------------------------------
    @post("/.search", operation_id="ScimSearchAll")
    async def search_all(self, request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        await scim_caller(request, state)
        return _error(501, "searching several resource types at once is not supported")

    @post("/Users/.search", operation_id="ScimSearchUsers", status_code=200)
    async def search_users(self, request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        caller = await scim_caller(request, state)
        base = _base_url(request)
        query = _search_query(await _body(request))
        views = await state.container.scim.list_users(caller)
        return _page([scim.user_resource(v, base) for v in views], scim.ParleyUser, **query)

    @post("/Groups/.search", operation_id="ScimSearchGroups", status_code=200)
    async def search_groups(self, request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        caller = await scim_caller(request, state)
        base = _base_url(request)
        query = _search_query(await _body(request))
        views = await state.container.scim.list_groups(caller)
        return _page([scim.group_resource(v, base) for v in views], scim.ParleyGroup, **query)

    @route("/{rest:path}", http_method=["GET", "POST", "PUT", "PATCH", "DELETE"], operation_id="ScimUnknown")
    async def unknown(self, rest: FromPath[str]) -> Response[bytes]:
        return _error(404, f"no SCIM endpoint {rest[:200]}")


def _list_body(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": len(resources),
        "startIndex": 1,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


def _id(value: str, code: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise NotFound(code, f"no resource {value[:64]}") from None


def _projection(request: Request[Any, Any, Any]) -> tuple[str | None, str | None]:
    return request.query_params.get("attributes"), request.query_params.get("excludedAttributes")


def _list_query(request: Request[Any, Any, Any]) -> dict[str, Any]:
    attributes, excluded = _projection(request)
    return {
        "filter_text": request.query_params.get("filter"),
        "start_index": _int_param(request, "startIndex", 1, 1),
        "count": _int_param(request, "count", scim.MAX_RESULTS, 0),
        "attributes": attributes,
        "excluded": excluded,
    }


def _search_query(body: dict[str, Any]) -> dict[str, Any]:
    search = SearchRequest.model_validate(body, scim_ctx=Context.SEARCH_REQUEST)
    return {
        "filter_text": str(search.filter) if search.filter else None,
        "start_index": max(1, search.start_index or 1),
        "count": max(0, search.count if search.count is not None else scim.MAX_RESULTS),
        "attributes": [str(a) for a in search.attributes] if search.attributes else None,
        "excluded": [str(a) for a in search.excluded_attributes] if search.excluded_attributes else None,
    }


# --- the tenant admin's side -------------------------------------------------------------------------------------
class ScimTokenCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class ScimTokenIssued(msgspec.Struct):
    id: UUID
    name: str
    token: str
    prefix: str


class GroupRole(msgspec.Struct, forbid_unknown_fields=True):
    role: str | None


class ScimGroupInfo(msgspec.Struct):
    id: UUID
    display_name: str
    role: str | None
    members: list[UUID]


class ScimAdminController(Controller):
    path = "/api/v1/scim"
    tags = ["scim"]

    @post("/tokens", operation_id="CreateScimToken", status_code=HTTP_201_CREATED)
    async def create_token(
        self, request: Request[Any, Any, Any], data: JSONBody[ScimTokenCreate], c: App, caller: Caller
    ) -> ScimTokenIssued:
        issued = await c.scim.issue_token(command_context(request, caller), caller, name=data.name)
        return ScimTokenIssued(id=issued.id, name=issued.name, token=issued.token, prefix=issued.prefix)

    @delete("/tokens/{token_id:uuid}", operation_id="RevokeScimToken", status_code=HTTP_204_NO_CONTENT)
    async def revoke_token(self, request: Request[Any, Any, Any], token_id: FromPath[UUID], c: App, caller: Caller) -> None:
        await c.scim.revoke_token(command_context(request, caller), caller, token_id)

    @get("/groups", operation_id="ListScimGroups")
    async def list_groups(self, c: App, caller: Caller) -> list[ScimGroupInfo]:
        views = await c.scim.list_groups_for_admin(caller)
        return [ScimGroupInfo(v.id, v.display_name, v.role, [UUID(m) for m in v.members]) for v in views]

    @put("/groups/{group_id:uuid}/role", operation_id="MapScimGroupRole")
    async def map_role(
        self, request: Request[Any, Any, Any], group_id: FromPath[UUID], data: JSONBody[GroupRole], c: App, caller: Caller
    ) -> ScimGroupInfo:
        v = await c.scim.map_group_role(command_context(request, caller), caller, group_id, data.role)
        return ScimGroupInfo(v.id, v.display_name, v.role, [UUID(m) for m in v.members])
