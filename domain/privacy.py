"""Privacy: what parley records about the handling of personal data itself. No I/O here.

An export of a data subject's personal data (GDPR articles 15 and 20) is an event of its own, so the
audit trail shows who took a copy of whose data and when; it carries identifiers only, never the data."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import Aggregate, event

__all__ = ["EXPORT_FORMAT_VERSION", "DataExport"]

EXPORT_FORMAT_VERSION = 1
"""The version of the export archive's layout and JSON shapes (``manifest.json`` says which)."""


class DataExport(Aggregate):
    """One export of one subject's data: who asked (the event's actor) is in the event's metadata."""

    @event("PersonalDataExported")
    def __init__(self, tenant_id: str, subject_id: UUID, format_version: int) -> None:
        self.tenant_id = tenant_id
        self.subject_id = subject_id
        self.format_version = format_version
