"""What an import from another system made: one record per thing of the source (a user, a knowledge base,
a share link, ...) naming what it became in parley. The record's id follows from the tenant, the source and
the thing's id there, so an import run again finds what it made before and adds nothing, for the things
whose own ids parley draws at random (users, knowledge bases, share links)."""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

__all__ = ["ImportRecord", "import_record_id"]


def import_record_id(tenant_id: str, source: str, kind: str, source_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/imports/{source}/{kind}/{source_id}")


class ImportRecord(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, source: str, kind: str, source_id: str, **_: Any) -> UUID:
        return import_record_id(tenant_id, source, kind, source_id)

    @event("ImportRecorded")
    def __init__(self, tenant_id: str, source: str, kind: str, source_id: str, target_id: str) -> None:
        self.tenant_id = tenant_id
        self.source = source
        self.kind = kind
        self.source_id = source_id
        self.target_id = target_id
