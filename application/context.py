"""The command context: who asked for a change, for which tenant, in which causal chain. The event
store stamps it on every event the command produces."""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CommandContext", "current_command"]


@dataclass(frozen=True)
class CommandContext:
    tenant_id: str
    actor: str = "system"
    """``user:<uuid>``, ``apikey:<uuid>``, ``system`` or ``anonymous``."""
    via: str | None = None
    """``apikey:<uuid>``: the gateway through which ``actor``, an end user it named, acted."""
    correlation_id: str = ""
    causation_id: str | None = None
    traceparent: str | None = None
    ip: str | None = None
    user_agent: str | None = None

    def __post_init__(self) -> None:
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", uuid.uuid4().hex)

    def replace(self, **changes: Any) -> CommandContext:
        return CommandContext(**{**asdict(self), **changes})

    @classmethod
    def caused_by(
        cls, tenant_id: str, actor: str, *, event_id: str | None, correlation_id: str | None = None
    ) -> CommandContext:
        """The context of a command that an event caused (a worker acting on a job): it carries the event's
        id as its causation and the event's correlation id, so the chain reads from request to outcome."""
        return cls(tenant_id=tenant_id, actor=actor, causation_id=event_id, correlation_id=correlation_id or "")

    def as_meta(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


current_command: contextvars.ContextVar[CommandContext | None] = contextvars.ContextVar(
    "parley_command", default=None
)
