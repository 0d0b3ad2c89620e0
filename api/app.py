"""The Litestar app factory."""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

import structlog
from litestar import Litestar
from litestar.di import Provide
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send
from opentelemetry import trace

from adapters import tracing
from api.conformance import read_as_documented
from api.controllers.audit import AuditController
from api.controllers.auths import AuthController
from api.controllers.chats import ChatController
from api.controllers.events import EventsController
from api.controllers.folders import FolderController
from api.controllers.generations import GenerationController
from api.controllers.health import HealthController, MetricsController
from api.controllers.invitations import AcceptInvitationController, InvitationController
from api.controllers.knowledge import ChatFilesController, DocumentController, KnowledgeController
from api.controllers.ldap import LdapSettingsController, LdapSignInController
from api.controllers.models import ModelController, ProviderController
from api.controllers.oidc import OidcProviderController, OidcSignInController
from api.controllers.openai import OpenAIController
from api.controllers.privacy import PrivacyController, PrivacySettingsController
from api.controllers.prompts import PromptController
from api.controllers.quotas import QuotaController
from api.controllers.ratings import RatingController
from api.controllers.retention import RetentionController
from api.controllers.scim import ScimAdminController, ScimController
from api.controllers.search import MessageSearchController
from api.controllers.shared import ChatSharesController, SharedController, SharingSettingsController
from api.controllers.usage import UsageController
from api.controllers.user_settings import UserSettingsController
from api.controllers.users import TenantController, UserController
from api.controllers.webhooks import WebhookController
from api.deps import container, optional_principal, principal, request_tenant
from api.errors import exception_handlers
from api.openapi import OpenAPIContract, openapi_config
from api.requests import ParleyRequest
from api.server import CLIENT_GONE, TIMED_OUT
from workers.bootstrap import Container

__all__ = ["create_app"]

log = structlog.get_logger("parley.http")


# nginx's "client closed request": the client left before the response began. Not the server's fault,
# and not an answer anyone received, whatever the app went on to send.
CLIENT_CLOSED_REQUEST = 499


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    """One structured line per request, with its correlation id (``X-Request-ID`` in and out), and its
    count and duration in the metrics. The status is what the client got: the app's, or 408 when the body
    did not arrive in time, or 499 when the client left before the response began (the server says so in
    the scope's state, or the app heard ``http.disconnect`` first)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")[:64]
        correlation_id = incoming if incoming.replace("-", "").isalnum() else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["correlation_id"] = correlation_id
        started = time.perf_counter()
        status = 500
        response_started = False
        left_early = False

        async def receive_wrapper() -> ReceiveMessage:
            nonlocal left_early
            message = await receive()
            if message["type"] == "http.disconnect" and not response_started:
                left_early = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", correlation_id.encode())]
            await send(message)

        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        if tracing.enabled():  # the server span, named before routing (and ended with the response)
            route_template = scope.get("path_template") or "unmatched"
            server_span = trace.get_current_span()
            server_span.update_name(f"{scope.get('method')} {route_template}")
            server_span.set_attributes({"http.route": route_template, "parley.correlation_id": correlation_id})
        try:
            await app(scope, receive_wrapper, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            if state.get(TIMED_OUT):
                status = 408
            elif left_early or state.get(CLIENT_GONE):
                status = CLIENT_CLOSED_REQUEST
            route = scope.get("path_template") or "unmatched"  # the template, so ids don't explode labels
            metrics = getattr(scope.get("app"), "state", None)
            container = getattr(metrics, "container", None) if metrics is not None else None
            if container is not None:
                container.metrics.observe(str(scope.get("method")), str(route), status, elapsed)
            log.info(
                "request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                actor=state.get("actor", "anonymous"),
            )
            structlog.contextvars.unbind_contextvars("correlation_id")

    return middleware


async def _follow_policy_changes(c: Container) -> None:
    """The quota-policy cache serves rate limits and reservations only while policy changes are heard."""
    if not c.settings.nats_url:
        return
    try:
        await c.follow_policy_changes()
        await c.follow_shredding("parley-api")
    except Exception as e:  # noqa: BLE001 - without the bus, every decision reads the event store
        log.warning("policy_cache_off", reason=str(e))


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The server span's name before routing: the method alone (the path would hold ids); the request log
    middleware adds the route once it is known."""
    return str(scope.get("method") or "HTTP"), {}


def tracing_plugins() -> list[Any]:
    """Litestar's OpenTelemetry plugin where tracing is on: a server span per request (but probes and
    scrapes), continuing the caller's ``traceparent``, the current span of everything the request does."""
    if not tracing.enabled():
        return []
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    return [
        OpenTelemetryPlugin(
            OpenTelemetryConfig(
                exclude=["^/health", "^/metrics"],
                exclude_spans=["receive", "send"],  # a span per body chunk (every SSE event) is noise
                scope_span_details_extractor=_span_details,
            )
        )
    ]


def create_app(c: Container, *, on_shutdown: list[Any] | None = None) -> Litestar:
    app = Litestar(
        route_handlers=[
            AuthController,
            LdapSignInController,
            LdapSettingsController,
            OidcProviderController,
            OidcSignInController,
            UserController,
            UserSettingsController,
            TenantController,
            InvitationController,
            AcceptInvitationController,
            AuditController,
            HealthController,
            MetricsController,
            ProviderController,
            ModelController,
            ChatController,
            FolderController,
            GenerationController,
            OpenAIController,
            UsageController,
            QuotaController,
            KnowledgeController,
            DocumentController,
            ChatFilesController,
            EventsController,
            PrivacyController,
            PrivacySettingsController,
            RetentionController,
            WebhookController,
            PromptController,
            ChatSharesController,
            SharedController,
            SharingSettingsController,
            RatingController,
            MessageSearchController,
            ScimController,
            ScimAdminController,
        ],
        dependencies={
            "c": Provide(container, sync_to_thread=False),
            "caller": Provide(principal),
            "maybe_caller": Provide(optional_principal),
            "tenant": Provide(request_tenant),
        },
        exception_handlers=exception_handlers,
        request_class=ParleyRequest,
        before_request=read_as_documented,
        middleware=[request_log_middleware],
        openapi_config=openapi_config(),
        plugins=[OpenAPIContract(), *tracing_plugins()],
        request_max_body_size=c.settings.max_request_bytes,
        on_startup=[partial(_follow_policy_changes, c)],
        on_shutdown=on_shutdown or [],
        debug=False,
        logging_config=None,  # the one logger setup is adapters/logging.py (Litestar's would re-format the root)
    )
    app.state.container = c
    return app
