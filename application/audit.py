"""Auditors replay history: the state of any aggregate of their tenant as of an instant, straight from
the event store (a chat with its messages, a user, the tenant's quota policy, or any aggregate by id); and
they open the sealed detail of the audit log. Admins can do all of it too.

Content is another matter than metadata: replaying what someone wrote (a chat, a generation, a document)
or opening the sealed personal fields of audit entries needs a stated reason, and is recorded as a
``ContentAccessed`` event before the content is handed over."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from application.context import CommandContext
from application.identity import Principal
from application.ports import EventStorePort
from domain.errors import BadRequest, NotFound
from domain.privacy import ContentAccess, check_reason
from domain.quotas import policy_id_for

__all__ = ["Audit", "CONTENT_TYPES", "REPLAY_KINDS"]

_HIDDEN = ("_hash", "used_hashes", "_pending_events")

REPLAY_KINDS = {"aggregate": None, "chat": "Chat", "user": "User", "quota_policy": "QuotaPolicy"}
"""What ``kind`` of thing a replay asks for, and the aggregate type it must be (None: any)."""

CONTENT_TYPES = frozenset({"Chat", "Generation", "Document"})
"""Aggregates whose state holds what people wrote or uploaded: messages, prompts and answers, documents'
text. Replaying one for anyone but its owner needs a reason."""

OpenDetails = Callable[[Sequence[dict[str, Any]]], tuple[list[dict[str, Any]], list[str]]]
"""Audit entries -> the same entries with their sealed personal fields opened, and the target ids whose
fields were opened (``projections.audit.open_details`` over the event store's keys)."""


class Audit:
    def __init__(self, *, store: EventStorePort, events_of: Any, open_details: OpenDetails | None = None) -> None:
        self.store = store
        self._events_of = events_of  # (aggregate_id, until) -> list of domain events
        self._open_details = open_details

    def _replayed(self, tenant_id: str, aggregate_id: uuid.UUID, at: datetime) -> Any:
        events = self._events_of(aggregate_id, until=at)
        if not events:
            raise NotFound("AGGREGATE_NOT_FOUND", "nothing existed with this id at that instant")
        aggregate: Any = None
        for e in events:
            aggregate = e.mutate(aggregate)
        owner = str(getattr(aggregate, "tenant_id", ""))
        if owner != tenant_id:  # another tenant's history does not exist for you
            raise NotFound("AGGREGATE_NOT_FOUND", "nothing existed with this id at that instant")
        return aggregate

    @staticmethod
    def _state(aggregate: Any, aggregate_id: uuid.UUID, at: datetime, kind: str) -> dict[str, Any]:
        state = {
            k.lstrip("_"): v
            for k, v in vars(aggregate).items()
            if not any(k.endswith(h) for h in _HIDDEN) and k not in ("_pending_events",)
        }
        return {
            "kind": kind,
            "aggregate_type": type(aggregate).__name__,
            "aggregate_id": str(aggregate_id),
            "version": aggregate.version,
            "as_of": at.isoformat(),
            "state": state,
        }

    async def state_at(
        self,
        ctx: CommandContext,
        principal: Principal,
        at: datetime,
        *,
        kind: str = "aggregate",
        aggregate_id: uuid.UUID | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """The state of one thing of the caller's tenant as of ``at``: ``kind`` ``aggregate`` (any, by id),
        ``chat`` (its messages), ``user``, or ``quota_policy`` (the tenant's; no id). A chat, a generation
        or a document of someone else needs ``reason``, and the reading is recorded first."""
        principal.require_auditor()
        if kind not in REPLAY_KINDS:
            raise BadRequest("VALIDATION_FAILED", f"kind must be one of {', '.join(REPLAY_KINDS)}", field="kind")
        if kind == "quota_policy":
            aggregate_id = policy_id_for(principal.tenant_id)
        elif aggregate_id is None:
            raise BadRequest(
                "VALIDATION_FAILED", f"a replay of kind '{kind}' names the aggregate_id", field="aggregate_id"
            )
        aggregate = await self.store.call(self._replayed, principal.tenant_id, aggregate_id, at)
        aggregate_type = type(aggregate).__name__
        wanted = REPLAY_KINDS[kind]
        if wanted is not None and aggregate_type != wanted:
            raise NotFound("AGGREGATE_NOT_FOUND", f"no {kind.replace('_', ' ')} with this id existed at that instant")
        owner = getattr(aggregate, "owner_id", None) or getattr(aggregate, "user_id", None)
        if aggregate_type in CONTENT_TYPES and str(owner) != str(principal.user_id):
            await self._record_access(
                ctx, principal, [str(aggregate_id)], "chat" if aggregate_type == "Chat" else "aggregate", reason
            )
        return self._state(aggregate, aggregate_id, at, kind)

    async def open_entries(
        self, ctx: CommandContext, principal: Principal, entries: Sequence[dict[str, Any]], reason: str | None
    ) -> list[dict[str, Any]]:
        """``entries`` (a page of the audit log) with their sealed personal fields opened (erased ones as
        the erased marker). Needs ``reason``; each aggregate whose content is opened is one
        ``ContentAccessed``, recorded before the page is handed back."""
        principal.require_auditor()
        check_reason(reason)
        if self._open_details is None:
            return list(entries)
        opened, subjects = await self.store.call(self._open_details, entries)
        await self._record_access(ctx, principal, subjects, "audit_detail", reason)
        return opened

    async def _record_access(
        self, ctx: CommandContext, principal: Principal, subjects: Sequence[str], kind: str, reason: str | None
    ) -> None:
        check_reason(reason)  # before anything is read or written
        if not subjects:
            return

        def command() -> None:
            self.store.save(*(ContentAccess.record(principal.tenant_id, s, kind, reason) for s in subjects))

        await self.store.execute(ctx, command)
