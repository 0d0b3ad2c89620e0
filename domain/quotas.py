"""Token quotas and rate limits: the policy of one tenant, and which limits apply to a request.

Which limit applies (the README states the same rule):
- a user's daily limit is their per-user override if one is set, else their role's default (the most
  specific setting wins; ``None`` means unlimited);
- a per-model limit, if the model has one, applies per user per day on top of the user's limit;
- the tenant's daily cap, if set, always applies to the sum of all its users.
A request must fit every applicable limit. Days roll over at midnight in the tenant's time zone.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from eventsourcing.domain import Aggregate, event

from domain.errors import Invalid
from domain.identity import ROLES

__all__ = [
    "QuotaPolicy",
    "DEFAULT_ROLE_LIMITS",
    "DEFAULT_RATE_LIMITS",
    "MAX_LIMIT",
    "policy_id_for",
    "check_limit",
    "check_timezone",
    "day_of",
    "next_midnight",
]

MAX_LIMIT = 10**12
DEFAULT_ROLE_LIMITS: dict[str, int | None] = {
    "admin": None,
    "premium": 2_000_000,
    "user": 500_000,
    "guest": 50_000,
    "pending": 0,
    "auditor": 50_000,  # reads the audit trail; chats, if at all, as a guest would
}
DEFAULT_RATE_LIMITS: dict[str, int] = {
    "user_per_minute": 120,
    "api_key_per_minute": 120,
    "sign_in_per_ip_per_minute": 20,
    # A session refreshes once per access-token lifetime (15 min); a few tabs at once may race. An address
    # may front many users (an office behind one NAT).
    "refresh_per_ip_per_minute": 60,
    "refresh_per_session_per_minute": 10,
}


def policy_id_for(tenant_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/quota-policy")


def check_limit(value: int | None, field: str = "limit") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise Invalid("INVALID_LIMIT", f"{field} must be an integer from 0 to {MAX_LIMIT}, or null for unlimited", field=field)
    return value


def check_timezone(name: str) -> str:
    if name not in available_timezones() and name != "UTC":
        raise Invalid("INVALID_TIMEZONE", "not an IANA time zone name (e.g. Europe/Paris)", field="timezone")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid("INVALID_TIMEZONE", "not an IANA time zone name (e.g. Europe/Paris)", field="timezone") from None
    return name


def day_of(moment: datetime, timezone: str) -> date:
    """The tenant's calendar day at ``moment``."""
    return moment.astimezone(ZoneInfo(timezone)).date()


def next_midnight(moment: datetime, timezone: str) -> datetime:
    """When the tenant's current day ends (the reset time of daily limits), as an aware datetime."""
    zone = ZoneInfo(timezone)
    local = moment.astimezone(zone)
    return datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=zone)


class QuotaPolicy(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, **_: Any) -> UUID:
        return policy_id_for(tenant_id)

    @event("QuotaPolicyCreated")
    def __init__(self, tenant_id: str, timezone: str = "UTC") -> None:
        self.tenant_id = tenant_id
        self.timezone = timezone
        self.role_limits: dict[str, int | None] = dict(DEFAULT_ROLE_LIMITS)
        self.user_limits: dict[str, int | None] = {}
        self.model_limits: dict[str, int] = {}
        self.tenant_cap: int | None = None
        self.rate_limits: dict[str, int] = dict(DEFAULT_RATE_LIMITS)

    def limits_for(self, user_id: UUID | str, role: str, model: str) -> list[tuple[str, int]]:
        """Every limit a request of this user on this model must fit (see the module docstring)."""
        limits: list[tuple[str, int]] = []
        key = str(user_id)
        user_limit = self.user_limits[key] if key in self.user_limits else self.role_limits.get(role)
        if user_limit is not None:
            limits.append(("user", user_limit))
        if model in self.model_limits:
            limits.append((f"user_model:{model}", self.model_limits[model]))
        if self.tenant_cap is not None:
            limits.append(("tenant", self.tenant_cap))
        return limits

    def set_role_limit(self, role: str, limit: int | None) -> None:
        if role not in ROLES:
            raise Invalid("INVALID_ROLE", f"role must be one of {', '.join(ROLES)}", field="role")
        self._set_role_limit(role=role, limit=check_limit(limit))

    @event("RoleQuotaSet")
    def _set_role_limit(self, role: str, limit: int | None) -> None:
        self.role_limits[role] = limit

    def set_user_limit(self, user_id: UUID | str, limit: int | None, *, clear: bool = False) -> None:
        """``clear`` removes the override (the role default applies again); ``limit=None`` is unlimited."""
        self._set_user_limit(user_id=str(user_id), limit=check_limit(limit), clear=clear)

    @event("UserQuotaSet")
    def _set_user_limit(self, user_id: str, limit: int | None, clear: bool) -> None:
        if clear:
            self.user_limits.pop(user_id, None)
        else:
            self.user_limits[user_id] = limit

    def set_model_limit(self, model: str, limit: int | None) -> None:
        self._set_model_limit(model=model, limit=check_limit(limit))

    @event("ModelQuotaSet")
    def _set_model_limit(self, model: str, limit: int | None) -> None:
        if limit is None:
            self.model_limits.pop(model, None)
        else:
            self.model_limits[model] = limit

    def set_tenant_cap(self, limit: int | None) -> None:
        self._set_tenant_cap(limit=check_limit(limit, "tenant_cap"))

    @event("TenantQuotaCapSet")
    def _set_tenant_cap(self, limit: int | None) -> None:
        self.tenant_cap = limit

    def set_timezone(self, timezone: str) -> None:
        self._set_timezone(timezone=check_timezone(timezone))

    @event("QuotaTimezoneSet")
    def _set_timezone(self, timezone: str) -> None:
        self.timezone = timezone

    def set_rate_limits(self, **limits: int) -> None:
        unknown = set(limits) - set(DEFAULT_RATE_LIMITS)
        if unknown:
            raise Invalid("INVALID_RATE_LIMIT", f"unknown rate limit(s): {', '.join(sorted(unknown))}")
        for name, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
                raise Invalid("INVALID_RATE_LIMIT", f"{name} must be an integer from 1 to 100000", field=name)
        self._set_rate_limits(limits=dict(limits))

    @event("RateLimitsSet")
    def _set_rate_limits(self, limits: dict[str, int]) -> None:
        self.rate_limits.update(limits)
