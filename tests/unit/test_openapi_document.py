"""The OpenAPI document, as the app builds it (no engines needed): every operation documents the refusals
its shape implies, in its family's error body; the routes that need a caller say how to be one; text
media types name their charset once. The live contract (schemathesis against a running parley) is
tests/e2e/test_openapi_contract.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from api.app import create_app

PUBLIC = {"Register", "Login", "LoginLdap", "RefreshTokens", "AcceptInvitation", "Health", "Ready", "Metrics", "GetSharedChat"}
"""``GetSharedChat``: a public share link is read without signing in (a credential, when sent, is checked)."""
PUBLIC |= {"StartOidcSignIn", "CompleteOidcSignIn"}  # OpenID Connect sign-in: the browser has no token yet


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    c: Any = SimpleNamespace(settings=SimpleNamespace(max_request_bytes=1024 * 1024))
    return create_app(c).openapi_schema.to_schema()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_the_document_declares_both_ways_to_be_a_caller(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["BearerToken"]["type"] == "http" and schemes["BearerToken"]["scheme"] == "bearer"
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}


def test_only_sign_in_and_operations_routes_are_public(document: dict[str, Any]) -> None:
    public = {op["operationId"] for _, _, op in operations(document) if not op.get("security")}
    assert public == PUBLIC
    for _, _, op in operations(document):
        if op.get("security"):
            assert op["security"] == [{"BearerToken": []}, {"ApiKey": []}]
            assert {"401", "403", "429"} <= set(op["responses"]), op["operationId"]
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"]


def test_every_refusal_has_the_error_body_of_its_family(document: dict[str, Any]) -> None:
    for path, _, op in operations(document):
        family = "OpenAIErrorResponse" if path.startswith("/v1/") else "ErrorResponse"
        for status, response in op["responses"].items():
            if int(status) < 400 or op["operationId"] == "Ready":
                continue
            assert response["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{family}"}, (
                op["operationId"],
                status,
            )


def test_refusals_follow_from_what_a_route_takes(document: dict[str, Any]) -> None:
    by_id = {op["operationId"]: (method, op) for _, method, op in operations(document)}
    for op_id, (method, op) in by_id.items():
        statuses = set(op["responses"])
        if "requestBody" in op:
            assert {"400", "413", "415", "422"} <= statuses, op_id
        if any(p["in"] == "path" for p in op.get("parameters", [])):
            assert "404" in statuses, op_id
        if method != "get":
            assert "409" in statuses, op_id
    assert {"401", "429"} <= set(by_id["Login"][1]["responses"])
    assert "503" in by_id["SendMessage"][1]["responses"]
    assert set(by_id["Health"][1]["responses"]) == {"200"}


def test_bodies_that_refuse_unknown_fields_say_so(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["MessageSend"]["additionalProperties"] is False
    assert schemas["ErrorInfo"]["additionalProperties"] is False


def test_media_types_are_named_as_served(document: dict[str, Any]) -> None:
    for _, _, op in operations(document):
        for response in op["responses"].values():
            for media_type in response.get("content", {}):
                assert media_type.count("charset") <= 1, (op["operationId"], media_type)
                if media_type.startswith("text/"):
                    assert media_type.endswith("charset=utf-8"), (op["operationId"], media_type)
    report = {op["operationId"]: op for _, _, op in operations(document)}["GetUsageReport"]
    assert set(report["responses"]["200"]["content"]) == {"application/json", "text/csv; charset=utf-8"}
    stream = {op["operationId"]: op for _, _, op in operations(document)}["StreamGeneration"]
    assert set(stream["responses"]["200"]["content"]) == {"text/event-stream; charset=utf-8"}


def test_uploads_document_the_bodies_they_read_themselves(document: dict[str, Any]) -> None:
    upload = document["paths"]["/api/v1/knowledge/{knowledge_id}/documents"]["post"]
    assert set(upload["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"413", "415"} <= set(upload["responses"])
