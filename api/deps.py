"""What every handler needs from a request: the container, the caller, the tenant, the command context."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import unquote

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from adapters.rate_limit import SlidingWindowLimiter
from application.context import CommandContext
from application.identity import EndUser, Principal
from domain.errors import BadRequest, Forbidden, RateLimited, Unauthenticated
from domain.identity import tenant_id_for
from domain.quotas import DEFAULT_RATE_LIMITS
from projections.identity import tenant_for_host
from workers.bootstrap import Container

__all__ = [
    "container",
    "principal",
    "optional_principal",
    "command_context",
    "request_tenant",
    "check_rate",
    "client_ip",
    "client_chat_id",
    "App",
    "Caller",
    "TenantSlug",
]

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_HOST_CACHE: dict[str, tuple[float, str | None]] = {}


def container(state: State) -> Container:
    return state.container  # type: ignore[no-any-return]


def _credential(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("INVALID_AUTHORIZATION", "use 'Authorization: Bearer <token or API key>'")
        return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


async def request_tenant(request: Request[Any, Any, Any], state: State) -> str:
    """Before sign-in: ``X-Tenant`` (slug), else the tenant that claims the host name, else the default."""
    c: Container = state.container
    slug = request.headers.get("x-tenant")
    if slug:
        return slug.strip().lower()
    host = (request.headers.get("host") or "").split(":")[0].lower()
    if host:
        cached = _HOST_CACHE.get(host)
        if cached is None or time.monotonic() - cached[0] > 30:
            cached = (time.monotonic(), await tenant_for_host(c.engine, host))
            _HOST_CACHE[host] = cached
        if cached[1]:
            return cached[1]
    return c.settings.default_tenant


# The end user of a request, as a gateway in front of parley names them: Open WebUI's forwarded headers
# (ENABLE_FORWARD_USER_INFO_HEADERS), or parley's own for any other front end.
_END_USER_HEADERS = {
    "email": ("x-parley-user-email", "x-openwebui-user-email"),
    "name": ("x-parley-user-name", "x-openwebui-user-name"),
    "role": ("x-parley-user-role", "x-openwebui-user-role"),
    "id": ("x-openwebui-user-id",),
}
_CHAT_ID_HEADERS = ("x-parley-chat-id", "x-openwebui-chat-id")
_MAX_CLIENT_CHAT_ID = 200


def _header(request: Request[Any, Any, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = request.headers.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def _end_user(request: Request[Any, Any, Any], p: Principal) -> EndUser | None:
    """The end user the request names, if it names one (and may: ``p`` is a gateway)."""
    found = {key: _header(request, names) for key, names in _END_USER_HEADERS.items()}
    if not any(found.values()):
        return None
    p.require_gateway()
    if not found["email"]:
        raise BadRequest("END_USER_EMAIL_REQUIRED", "name the end user by e-mail (X-Parley-User-Email)", field="email")
    name = unquote(found["name"]) if found["name"] else None  # Open WebUI percent-encodes names
    return EndUser(email=found["email"][:254], name=name, role=found["role"])


def client_chat_id(request: Request[Any, Any, Any]) -> str | None:
    """The front end's own id of the chat a request belongs to (``X-Parley-Chat-Id``, Open WebUI's
    ``X-OpenWebUI-Chat-Id``)."""
    value = _header(request, _CHAT_ID_HEADERS)
    if value is not None and (len(value) > _MAX_CLIENT_CHAT_ID or any(ord(ch) < 32 for ch in value)):
        raise BadRequest("INVALID_CHAT_ID", f"a chat id is 1-{_MAX_CLIENT_CHAT_ID} printable characters", field="chat_id")
    return value


def client_ip(request: Request[Any, Any, Any]) -> str | None:
    """The client's address: the peer's, or — where the peer is one of ``PARLEY_TRUSTED_PROXIES`` — the
    right-most forwarded address that is not itself a trusted proxy (the server rewrites the scope's
    client before the app sees it: api/server.py). Never read X-Forwarded-For anywhere else."""
    return request.client.host if request.client else None


def _base_context(request: Request[Any, Any, Any], tenant_id: str, actor: str, via: str | None = None) -> CommandContext:
    traceparent = request.headers.get("traceparent")
    return CommandContext(
        tenant_id=tenant_id,
        actor=actor,
        via=via,
        correlation_id=request.scope.get("state", {}).get("correlation_id", ""),
        traceparent=traceparent if traceparent and _TRACEPARENT.match(traceparent) else None,
        ip=client_ip(request),
        user_agent=(request.headers.get("user-agent") or "")[:512] or None,
    )


async def optional_principal(request: Request[Any, Any, Any], state: State) -> Principal | None:
    credential = _credential(request)
    if credential is None:
        return None
    c: Container = state.container
    p = await c.identity.authenticate(_base_context(request, "", "anonymous"), credential)
    claimed = request.headers.get("x-tenant")
    if claimed and str(tenant_id_for(claimed.strip().lower())) != p.tenant_id and claimed != p.tenant_id:
        raise Forbidden("TENANT_MISMATCH", "the credential belongs to another tenant")
    end_user = _end_user(request, p)
    if end_user is not None:
        # The gateway's own requests go in its name; the end user is created in its tenant.
        ctx = _base_context(request, p.tenant_id, p.actor)
        p = await c.identity.gateway_principal(ctx, p, end_user)
    request.scope.setdefault("state", {})["actor"] = p.actor
    return p


class _RateLimits:
    """The shared limiter; each tenant's limits come from its quota policy (``Quotas.current_policy``)."""

    def __init__(self, c: Container) -> None:
        self.quotas = c.quotas
        self.limiter = SlidingWindowLimiter(c.redis, c.settings.namespace)


def _rate_limits(state: State) -> _RateLimits:
    limits: _RateLimits | None = getattr(state, "rate_limits", None)
    if limits is None:
        limits = _RateLimits(state.container)
        state.rate_limits = limits
    return limits


async def check_rate(state: State, tenant_id: str, key: str, limit_name: str) -> None:
    """Count one request against ``key`` under the tenant's ``limit_name`` per minute; 429 when over."""
    limits = _rate_limits(state)
    policy = await limits.quotas.current_policy_async(tenant_id)
    per_minute = policy.rate_limits.get(limit_name, DEFAULT_RATE_LIMITS[limit_name])
    decision = await limits.limiter.hit(key, per_minute)
    if not decision.allowed:
        state.container.metrics.rate_limited(limit_name)
        raise RateLimited(
            "RATE_LIMITED",
            f"too many requests: at most {decision.limit} a minute; retry in {decision.retry_after_s}s",
            retry_after_s=decision.retry_after_s,
            limit=decision.limit,
        )


async def principal(request: Request[Any, Any, Any], state: State) -> Principal:
    p = await optional_principal(request, state)
    if p is None:
        raise Unauthenticated("UNAUTHENTICATED", "sign in, or send an API key")
    if p.via == "api_key":
        await check_rate(state, p.tenant_id, f"apikey:{p.api_key_id}", "api_key_per_minute")
    else:  # a session, or an end user a gateway named: the user's own limit
        await check_rate(state, p.tenant_id, f"user:{p.user_id}", "user_per_minute")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        p.require_scope("write")
    else:
        p.require_scope("read")
    return p


def command_context(request: Request[Any, Any, Any], p: Principal | None = None, tenant_id: str = "") -> CommandContext:
    if p is not None:
        return _base_context(request, p.tenant_id, p.actor, p.on_behalf_via)
    return _base_context(request, tenant_id, "anonymous")


# Handler parameters that Litestar fills from the app's dependencies (declared explicitly, as Litestar 3 needs).
App = NamedDependency[Container]
Caller = NamedDependency[Principal]
TenantSlug = NamedDependency[str]
