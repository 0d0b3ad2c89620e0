"""The OpenAPI document says what the API does, derived from the routes themselves so that a new route is
documented truthfully without anyone remembering to.

Litestar documents each operation's success response from the handler's return type. ``OpenAPIContract``
(a plugin that sees every route as it is registered) adds the rest, from what the route takes:

====  ==========================================================================================
400   it takes a body, a parameter or a caller: an undecodable body or a malformed parameter, or
      a gateway's incomplete end-user headers
401   it needs a caller: no credential, or one expired, revoked or forged
403   it needs a caller: the credential may not do this (scope, role, tenant)
404   it names something in its path or by id in its query, or resolves the request's tenant
409   it changes state: every command retries a version conflict once, then answers 409
413   it takes a body: larger than the request limit
415   it takes a body: not of a media type the route reads
422   it takes a body or a parameter other than an id: well-formed input that breaks a rule
429   it needs a caller: the per-user or per-key rate limit (``Retry-After``)
====  ==========================================================================================

``OPTIONS`` names in ``Allow`` every method of the path (see ``_allow_every_method``).

Every refusal carries the error body of the exception handler that answers the route: parley's
``{"error": {"code", "message", "detail"}}`` or, on the OpenAI-compatible routes, OpenAI's
``{"error": {"message", "type", "param", "code"}}``. A route adds what only it can answer with
``responses=refusals(...)`` in its decorator (a sign-in's 401, an engine's 503), or documents another
media type for its success status with ``responses={200: alternative("text/csv")}``; a route that reads
its body itself describes it with ``opt={"request_body": ...}``. Routes that need a caller name the two
ways to be one (``security``): a Bearer token (an access token or an API key) or ``X-API-Key``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

import msgspec
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIType
from litestar.plugins import OpenAPISchemaPlugin, ReceiveRoutePlugin
from litestar.response import ServerSentEvent
from litestar.routes import BaseRoute, HTTPRoute
from litestar.typing import FieldDefinition

from api.errors import exception_handlers
from domain.errors import ParleyError

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

__all__ = [
    "ErrorResponse",
    "OpenAIErrorResponse",
    "OpenAPIContract",
    "alternative",
    "openapi_config",
    "refusals",
]


class ErrorInfo(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    code: str
    """Stable and machine-readable: what clients switch on."""
    message: str
    detail: dict[str, Any]
    """What the refusal is about (``field``, limits, ``retry_after_s``...); may be empty."""


class ErrorResponse(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How parley refuses a request."""

    error: ErrorInfo


class OpenAIErrorInfo(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the OpenAI-compatible routes refuse a request, in OpenAI's shape."""

    error: OpenAIErrorInfo


REFUSALS: dict[int, str] = {
    400: "The body cannot be decoded or lacks the documented shape, a parameter is malformed, or a gateway's "
    "end-user headers are incomplete.",
    401: "No credential, or one that is expired, revoked or forged.",
    403: "The credential may not do this: its scope, the caller's role or tenant.",
    404: "What the request names does not exist, or the caller may not see it.",
    409: "The change conflicts with the current state, or with a concurrent change (VERSION_CONFLICT).",
    413: "The body is larger than this route takes.",
    415: "The body is not of a media type this route reads.",
    422: "Well-formed input that breaks a rule.",
    429: "Too many requests (retry after the time given), or a token quota is spent.",
    502: "The model's upstream failed to answer.",
    503: "An engine this request needs is unavailable; retry shortly.",
}

SECURITY_SCHEMES = {
    "BearerToken": SecurityScheme(
        type="http",
        scheme="bearer",
        bearer_format="JWT access token or API key (pk_...)",
        description="An access token from `/api/v1/auths/login`, or a personal API key.",
    ),
    "ApiKey": SecurityScheme(
        type="apiKey",
        name="X-API-Key",
        security_scheme_in="header",
        description="A personal API key (pk_...), for clients that cannot send a Bearer token.",
    ),
}
CALLER: list[SecurityRequirement] = [{"BearerToken": []}, {"ApiKey": []}]
"""Either scheme identifies the caller."""

# Handler parameters that are not the client's input: what Litestar injects by name, and the body.
_INJECTED = frozenset({"request", "state", "scope", "headers", "cookies", "query", "body", "socket", "data"})
_CALLER = "caller"
_TENANT = "tenant"


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="parley",
        version="0.1.0",
        path="/schema",
        use_handler_docstrings=True,  # each route's docstring is its operation's description
        components=Components(security_schemes=dict(SECURITY_SCHEMES)),
    )


def refusals(*statuses: int) -> dict[int, ResponseSpec]:
    """The refusals only this route answers, beyond those its shape implies (documented in the error body of
    the route's family)."""
    return {status: _refusal(status, ErrorResponse) for status in statuses}


def alternative(media_type: str, description: str = "") -> ResponseSpec:
    """The success body in another media type as well (a CSV export, an event stream): text."""
    return ResponseSpec(str, media_type=media_type, description=description, generate_examples=False)


def _refusal(status: int, body: type[msgspec.Struct]) -> ResponseSpec:
    return ResponseSpec(body, description=REFUSALS[status], generate_examples=False)


@dataclass(frozen=True)
class _Shape:
    """What the rules read off a route handler."""

    changes_state: bool
    takes_body: bool
    authenticated: bool
    names_tenant: bool
    names_something: bool
    """In its path, or by id in its query."""
    takes_parameters: bool
    """Query, header or path parameters other than ids."""

    @classmethod
    def of(cls, route: HTTPRoute, handler: HTTPRouteHandler) -> _Shape:
        parameters = handler.parsed_fn_signature.parameters
        dependencies = handler.resolve_dependencies()
        inputs = {name: f for name, f in parameters.items() if name not in dependencies and name not in _INJECTED}
        ids = {name for name, f in inputs.items() if _is_id(f)}
        return cls(
            changes_state=bool(set(handler.http_methods) - {"GET", "HEAD", "OPTIONS"}),
            takes_body="data" in parameters or "request_body" in handler.opt,
            authenticated=_CALLER in parameters,
            names_tenant=_TENANT in parameters,
            names_something=bool(route.path_parameters or ids),
            takes_parameters=bool(inputs.keys() - ids),
        )


def _is_id(field: FieldDefinition) -> bool:
    return field.annotation is UUID or any(_is_id(inner) for inner in field.inner_types)


RULES: tuple[tuple[int, Callable[[_Shape], bool]], ...] = (
    (400, lambda s: s.takes_body or s.takes_parameters or s.names_something or s.authenticated),
    (401, lambda s: s.authenticated),
    (403, lambda s: s.authenticated),
    (404, lambda s: s.names_something or s.names_tenant),
    (409, lambda s: s.changes_state),
    (413, lambda s: s.takes_body),
    (415, lambda s: s.takes_body),
    (422, lambda s: s.takes_body or s.takes_parameters),
    (429, lambda s: s.authenticated),
)


def _error_body(handler: HTTPRouteHandler) -> type[msgspec.Struct]:
    """The body of the exception handler that answers this route's refusals: parley's own, or (where a
    controller answers in OpenAI's shape instead) OpenAI's."""
    answer = handler.resolve_exception_handlers().get(ParleyError)
    return ErrorResponse if answer is exception_handlers[ParleyError] else OpenAIErrorResponse


class OpenAPIContract(ReceiveRoutePlugin, OpenAPISchemaPlugin):
    """Documents each route's refusals, security and media types as the route is registered (see above);
    and says of each body that refuses unknown fields (``forbid_unknown_fields``) that it is closed."""

    def receive_route(self, route: BaseRoute) -> None:
        if isinstance(route, HTTPRoute):
            _allow_every_method(route)
            for handler in route.route_handlers:
                if handler.resolve_include_in_schema():
                    _document(route, handler)

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return (
            not field_definition.is_union
            and field_definition.is_subclass_of(msgspec.Struct)
            and field_definition.type_.__struct_config__.forbid_unknown_fields
        )

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        """Litestar's own schema of the struct, closed."""
        plugin = next(
            p
            for p in schema_creator.plugins
            if p is not self and schema_creator.plugin_supports_field(p, field_definition)
        )
        schema = plugin.to_openapi_schema(field_definition, schema_creator)
        registered = (
            schema_creator.schema_registry.from_reference(schema).schema if isinstance(schema, Reference) else schema
        )
        registered.additional_properties = False
        return schema


def _allow_every_method(route: HTTPRoute) -> None:
    """``OPTIONS`` answers ``Allow`` with every method the document lists for the path. Litestar 2 gives a
    route the OPTIONS handler it made for the route's first methods, whose ``Allow`` names only those
    (litestar#4169, fixed in Litestar 3): point that handler at the route it serves."""
    options = route.route_handler_map.get("OPTIONS", (None, None))[0]
    for cell in getattr(getattr(options, "fn", None), "__closure__", None) or ():
        if isinstance(cell.cell_contents, HTTPRoute) and cell.cell_contents is not route:
            cell.cell_contents = route


def _document(route: HTTPRoute, handler: HTTPRouteHandler) -> None:
    shape = _Shape.of(route, handler)
    body = _error_body(handler)
    responses = {status: _refusal(status, body) for status, applies in RULES if applies(shape)}
    alternatives: dict[str, str] = {}
    for status, spec in (handler.responses or {}).items():
        if status == handler.status_code:
            if spec.data_container is not str:
                raise TypeError(f"{handler}: an alternative success body is text (see api.openapi.alternative)")
            alternatives[str(spec.media_type)] = spec.description
        elif spec.data_container is ErrorResponse:
            responses[status] = _refusal(status, body)
        else:
            responses[status] = spec
    handler.responses = responses
    if shape.authenticated and handler.security is None:
        handler.security = CALLER
    if handler.operation_class is Operation:
        streams = handler.parsed_fn_signature.return_type.is_subclass_of(ServerSentEvent)
        handler.operation_class = type(
            f"{handler.handler_name}Operation",
            (_Amended,),
            {
                "alternatives": alternatives,
                "raw_body": handler.opt.get("request_body"),
                "family": body,
                "served_as": "text/event-stream" if streams else None,
            },
        )


@dataclass
class _Amended(Operation):
    """Litestar's operation with what it cannot say by itself: the media types as served, alternative
    success bodies, a body the route reads itself, optional bodies, and the headers refusals carry."""

    alternatives: ClassVar[Mapping[str, str]] = {}
    raw_body: ClassVar[RequestBody | None] = None
    family: ClassVar[type[msgspec.Struct]] = ErrorResponse
    served_as: ClassVar[str | None] = None
    """The success body's media type, where the response sets its own (an event stream)."""

    def __post_init__(self) -> None:
        if self.raw_body is not None:
            self.request_body = self.raw_body
        elif isinstance(self.request_body, RequestBody) and _admits_null(self.request_body):
            self.request_body.required = False
        for response in (self.responses or {}).values():
            if isinstance(response, OpenAPIResponse) and response.content:
                response.content = {_as_served(m): v for m, v in response.content.items()}
        success = next((r for s, r in (self.responses or {}).items() if s.startswith("2")), None)
        if isinstance(success, OpenAPIResponse) and self.served_as and success.content:
            success.content = {_as_served(self.served_as): _text(self.served_as)}
        if isinstance(success, OpenAPIResponse):
            for media_type, description in self.alternatives.items():
                success.content = {**(success.content or {}), _as_served(media_type): _text(media_type)}
                success.description += f"; as {media_type}" + (f" {description}" if description else "")
        self._headers()

    def _headers(self) -> None:
        responses = self.responses or {}
        unauthenticated = responses.get("401")
        if isinstance(unauthenticated, OpenAPIResponse):
            unauthenticated.headers = {
                "WWW-Authenticate": OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), required=True)
            }
        limited = responses.get("429")
        if isinstance(limited, OpenAPIResponse) and self.family is ErrorResponse:
            limited.headers = {
                "Retry-After": OpenAPIHeader(
                    schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
                    description="Seconds until a rate-limited request may be retried (not sent when a quota is spent).",
                )
            }


def _admits_null(body: RequestBody) -> bool:
    for media in body.content.values():
        schema = media.schema
        if isinstance(schema, Schema) and any(
            isinstance(s, Schema) and s.type == OpenAPIType.NULL for s in (schema.one_of or [])
        ):
            return True
    return False


SSE_EVENT = Schema(
    type=OpenAPIType.OBJECT,
    description="One server-sent event (comment lines, sent to keep the connection alive, are not events).",
    properties={
        "event": Schema(type=OpenAPIType.STRING),
        "id": Schema(type=OpenAPIType.STRING),
        "data": Schema(type=OpenAPIType.STRING),
        "retry": Schema(type=OpenAPIType.INTEGER, minimum=0),
    },
    required=["data"],
)


def _text(media_type: str) -> OpenAPIMediaType:
    """A text body: an event stream's schema describes each event (as Open API before 3.2 reads it)."""
    if media_type.startswith("text/event-stream"):
        return OpenAPIMediaType(schema=SSE_EVENT)
    return OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))


def _as_served(media_type: str) -> str:
    """A text media type as the response sends it: Litestar adds the charset to every ``text/*``."""
    if media_type.startswith("text/") and "charset=" not in media_type:
        return f"{media_type}; charset=utf-8"
    return media_type
