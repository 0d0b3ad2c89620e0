"""What every handler needs from a request: the container, the caller, the tenant, the command context."""

from __future__ import annotations

import re
import time
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from adapters.rate_limit import SlidingWindowLimiter, TtlCache
from application.context import CommandContext
from application.identity import Principal
from domain.errors import Forbidden, RateLimited, Unauthenticated
from domain.identity import tenant_id_for
from domain.quotas import DEFAULT_RATE_LIMITS, QuotaPolicy, policy_id_for
from projections.identity import tenant_for_host
from workers.bootstrap import Container

__all__ = [
    "container",
    "principal",
    "optional_principal",
    "command_context",
    "request_tenant",
    "check_rate",
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


def _base_context(request: Request[Any, Any, Any], tenant_id: str, actor: str) -> CommandContext:
    traceparent = request.headers.get("traceparent")
    return CommandContext(
        tenant_id=tenant_id,
        actor=actor,
        correlation_id=request.scope.get("state", {}).get("correlation_id", ""),
        traceparent=traceparent if traceparent and _TRACEPARENT.match(traceparent) else None,
        ip=request.client.host if request.client else None,
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
    request.scope.setdefault("state", {})["actor"] = p.actor
    return p


class _RateLimits:
    """The shared limiter, and each tenant's limits from its quota policy, cached a few seconds."""

    def __init__(self, c: Container) -> None:
        self._c = c
        self.limiter = SlidingWindowLimiter(c.redis, c.settings.namespace)
        self.policies: TtlCache[dict[str, int]] = TtlCache(self._load, ttl_s=5.0)

    async def _load(self, tenant_id: str) -> dict[str, int]:
        policy = await self._c.store.call(self._c.store.find, QuotaPolicy, policy_id_for(tenant_id))
        return dict(policy.rate_limits) if policy is not None else dict(DEFAULT_RATE_LIMITS)


def _rate_limits(state: State) -> _RateLimits:
    limits: _RateLimits | None = getattr(state, "rate_limits", None)
    if limits is None:
        limits = _RateLimits(state.container)
        state.rate_limits = limits
    return limits


async def check_rate(state: State, tenant_id: str, key: str, limit_name: str) -> None:
    """Count one request against ``key`` under the tenant's ``limit_name`` per minute; 429 when over."""
    limits = _rate_limits(state)
    per_minute = (await limits.policies.get(tenant_id)).get(limit_name, DEFAULT_RATE_LIMITS[limit_name])
    decision = await limits.limiter.hit(key, per_minute)
    if not decision.allowed:
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
    else:
        await check_rate(state, p.tenant_id, f"user:{p.user_id}", "user_per_minute")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        p.require_scope("write")
    else:
        p.require_scope("read")
    return p


def command_context(request: Request[Any, Any, Any], p: Principal | None = None, tenant_id: str = "") -> CommandContext:
    if p is not None:
        return _base_context(request, p.tenant_id, p.actor)
    return _base_context(request, tenant_id, "anonymous")


# Handler parameters that Litestar fills from the app's dependencies (declared explicitly, as Litestar 3 needs).
App = NamedDependency[Container]
Caller = NamedDependency[Principal]
TenantSlug = NamedDependency[str]
