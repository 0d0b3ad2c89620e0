"""Requests are read as the OpenAPI document describes them, or refused (400), never guessed at. Litestar
reads them leniently — the last of repeated values, numbers for date-times, ``0`` for ``false``, ``"5"``
for ``5`` — which a client reading the document cannot know, and a proxy or log in between may read
differently. Before any handler runs:

* a query parameter that takes one value, given several times, is ``REPEATED_PARAMETER`` (parameters
  that take a list repeat freely);
* a date-time query parameter given as a number (the decoder's Unix timestamp) is ``INVALID_PARAMETER``:
  the document says RFC 3339;
* a JSON body must have the documented types exactly, as JSON has them (``VALIDATION_FAILED``, in the
  route's own error format): no string for a number, no number for a boolean or a date-time.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import msgspec
from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, SerializationException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.params import BodyKwarg, ParameterKwarg
from litestar.typing import FieldDefinition

from domain.errors import BadRequest

__all__ = ["read_as_documented"]

_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_NO_BODY = object()


@dataclass(frozen=True)
class _Inputs:
    single: frozenset[str]
    """Query names of the parameters that take one value."""
    datetimes: frozenset[str]
    body: Any
    """The type of the JSON body, or ``_NO_BODY``."""


def _query_name(name: str, field: FieldDefinition) -> str:
    kwarg = field.kwarg_definition
    return (kwarg.name or kwarg.query if isinstance(kwarg, ParameterKwarg) else None) or name


def _is_datetime(field: FieldDefinition) -> bool:
    return field.annotation is datetime or any(_is_datetime(inner) for inner in field.inner_types)


def _is_json(data: FieldDefinition) -> bool:
    kwarg = data.kwarg_definition
    return not isinstance(kwarg, BodyKwarg) or kwarg.media_type == RequestEncodingType.JSON


@lru_cache(maxsize=4096)
def _inputs_of(handler: HTTPRouteHandler) -> _Inputs:
    fields = handler.parsed_fn_signature.parameters.items()
    data = handler.parsed_data_field
    return _Inputs(
        single=frozenset(_query_name(n, f) for n, f in fields if n != "data" and not f.is_non_string_sequence),
        datetimes=frozenset(_query_name(n, f) for n, f in fields if n != "data" and _is_datetime(f)),
        body=data.annotation if data is not None and _is_json(data) else _NO_BODY,
    )


async def read_as_documented(request: Request[Any, Any, Any]) -> None:
    """The app's ``before_request``: refuses what the document does not allow (see above)."""
    inputs = _inputs_of(request.route_handler)
    if request.scope.get("query_string"):
        _check_query(request, inputs)
    if inputs.body is not _NO_BODY:
        await _check_body(request, inputs.body)


def _check_query(request: Request[Any, Any, Any], inputs: _Inputs) -> None:
    given = list(request.query_params.multi_items())
    repeated = sorted(name for name, n in Counter(name for name, _ in given).items() if n > 1 and name in inputs.single)
    if repeated:
        raise BadRequest(
            "REPEATED_PARAMETER",
            f"the query parameter '{repeated[0]}' takes one value; it was given more",
            field=repeated[0],
        )
    for name, value in given:
        if name in inputs.datetimes and _NUMBER.match(value):
            raise BadRequest(
                "INVALID_PARAMETER",
                f"'{name}' is a date-time (RFC 3339, e.g. 2026-01-31T12:00:00Z), not a number",
                field=name,
            )


def _error_message(exc: msgspec.ValidationError) -> dict[str, str]:
    """As Litestar words its own: the message, and the field (``key``) where there is one."""
    message, _, where = str(exc).partition(" - at `$")
    error = {"message": message, "source": "body"}
    if where.startswith("."):
        error["key"] = where[1:].rstrip("`")
    return error


async def _check_body(request: Request[Any, Any, Any], body_type: Any) -> None:
    """The body converted as JSON types it (``strict``); Litestar converts it again, leniently, for the
    handler — by then nothing lenient is left to do. The request keeps the body it read (and what it
    refused: a body past the size limit is 413 here, as it would be there)."""
    try:
        value = await request.json()
    except SerializationException as exc:  # undecodable: refused as Litestar's own reading refuses it
        raise ClientException(str(exc)) from exc
    try:
        msgspec.convert(value, type=body_type, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationException(
            detail=f"Validation failed for {request.method} {request.url.path}", extra=[_error_message(exc)]
        ) from None
    except TypeError:  # a type msgspec cannot convert by itself: Litestar's reading decides
        return
