"""Privacy: what parley records about the handling of personal data itself. No I/O here.

An export of a data subject's personal data (GDPR articles 15 and 20) is an event of its own, so the
audit trail shows who took a copy of whose data and when; it carries identifiers only, never the data.
So is every reading of someone's content by another (an admin or an auditor replaying a chat, opening the
sealed detail of the audit log): it needs a stated reason, recorded before the content is handed over."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import BadRequest

__all__ = [
    "CONTENT_ACCESS_KINDS",
    "EXPORT_FORMAT_VERSION",
    "SHREDDING_EVENTS",
    "ContentAccess",
    "DataExport",
    "KeyScope",
    "check_reason",
    "shredded_by",
]

@dataclass(frozen=True)
class KeyScope:
    """The data keys one erasure or deletion destroys: every key naming ``user_id``, every key naming
    ``chat_id``, and the key of aggregate ``key_id``."""

    user_id: UUID | None = None
    chat_id: UUID | None = None
    key_id: UUID | None = None


SHREDDING_EVENTS = frozenset({"UserErased", "ChatDeleted", "DocumentDeleted"})


def shredded_by(event_type: str, aggregate_id: UUID) -> KeyScope | None:
    """What an event shreds: an erased user everything naming them (their own aggregate, the chats they own,
    their generations and documents); a deleted chat everything naming it (its generations, the files
    uploaded into it); a deleted document its own key. None for any other event."""
    if event_type == "UserErased":
        return KeyScope(user_id=aggregate_id)
    if event_type == "ChatDeleted":
        return KeyScope(chat_id=aggregate_id, key_id=aggregate_id)
    if event_type == "DocumentDeleted":
        return KeyScope(key_id=aggregate_id)
    return None


EXPORT_FORMAT_VERSION = 1
"""The version of the export archive's layout and JSON shapes (``manifest.json`` says which)."""


class DataExport(Aggregate):
    """One export of one subject's data: who asked (the event's actor) is in the event's metadata."""

    @event("PersonalDataExported")
    def __init__(self, tenant_id: str, subject_id: UUID, format_version: int) -> None:
        self.tenant_id = tenant_id
        self.subject_id = subject_id
        self.format_version = format_version


CONTENT_ACCESS_KINDS = ("chat", "aggregate", "audit_detail")
"""How content was read: a chat replayed, another aggregate holding content replayed (a generation, a
document), the sealed detail of audit entries opened."""
REASON_LENGTH = (3, 500)


def check_reason(reason: str | None) -> str:
    """The stated reason for reading someone else's content, stripped: 3 to 500 characters."""
    text = (reason or "").strip()
    low, high = REASON_LENGTH
    if not low <= len(text) <= high:
        raise BadRequest(
            "REASON_REQUIRED",
            f"reading someone else's content needs a reason ({low}-{high} characters)",
            field="reason",
        )
    return text


class ContentAccess(Aggregate):
    """One reading of personal content by someone other than its owner; who read it is the event's actor.
    ``subject`` is the id of what was read (a chat, a user, a generation, a document)."""

    @event("ContentAccessed")
    def __init__(self, tenant_id: str, subject: str, kind: str, reason: str) -> None:
        self.tenant_id = tenant_id
        self.subject = subject
        self.kind = kind
        self.reason = reason  # checked by check_reason before

    @classmethod
    def record(cls, tenant_id: str, subject: str, kind: str, reason: str | None) -> ContentAccess:
        if kind not in CONTENT_ACCESS_KINDS:
            raise ValueError(f"unknown content access kind {kind!r}")
        return cls(tenant_id=tenant_id, subject=subject, kind=kind, reason=check_reason(reason))
