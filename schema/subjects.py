"""The one place that knows stream names and NATS subjects. ``namespace`` is ``parley`` in
production; tests give each test its own so they never share streams."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Subjects"]


def _token(value: str) -> str:
    # NATS subject tokens may not contain '.', '*', '>' or whitespace.
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in value) or "_"


@dataclass(frozen=True)
class Subjects:
    namespace: str = "parley"

    @property
    def events_stream(self) -> str:
        return f"{self.namespace.upper()}_EVENTS"

    @property
    def events_all(self) -> str:
        return f"{self.namespace}.events.>"

    def event(self, tenant_id: str, aggregate_type: str, event_type: str) -> str:
        return f"{self.namespace}.events.{_token(tenant_id)}.{_token(aggregate_type)}.{_token(event_type)}"

    def events_of_tenant(self, tenant_id: str) -> str:
        return f"{self.namespace}.events.{_token(tenant_id)}.>"

    def events_of_aggregate_type(self, aggregate_type: str) -> str:
        """Every tenant's events of one aggregate type; the tenant is the subject's third token."""
        return f"{self.namespace}.events.*.{_token(aggregate_type)}.*"

    def events_of_type(self, aggregate_type: str, event_type: str) -> str:
        """Every tenant's events of one type."""
        return f"{self.namespace}.events.*.{_token(aggregate_type)}.{_token(event_type)}"

    def policy_changed(self, tenant_id: str) -> str:
        """A direct notice (core NATS, not a stream) that a tenant's quota policy changed, sent by the
        process that changed it the moment it committed; the tenant is the subject's fourth token."""
        return f"{self.namespace}.notices.policy.{_token(tenant_id)}"

    @property
    def policy_changes(self) -> str:
        return f"{self.namespace}.notices.policy.*"

    @property
    def jobs_stream(self) -> str:
        return f"{self.namespace.upper()}_JOBS"

    @property
    def jobs_stream_subjects(self) -> str:
        return f"{self.namespace}.jobs.>"

    @property
    def jobs_all(self) -> str:
        """Generation jobs (the name predates ingestion jobs)."""
        return f"{self.namespace}.jobs.generate.>"

    def job(self, model: str) -> str:
        return f"{self.namespace}.jobs.generate.{_token(model)}"

    @property
    def workers_durable(self) -> str:
        return f"{self.namespace}_generation_workers"

    @property
    def ingest_all(self) -> str:
        return f"{self.namespace}.jobs.ingest.>"

    def ingest(self, tenant_id: str) -> str:
        return f"{self.namespace}.jobs.ingest.{_token(tenant_id)}"

    @property
    def ingest_durable(self) -> str:
        return f"{self.namespace}_ingestion_workers"

    @property
    def tokens_stream(self) -> str:
        return f"{self.namespace.upper()}_TOKENS"

    @property
    def tokens_all(self) -> str:
        return f"{self.namespace}.tokens.>"

    def tokens(self, generation_id: str) -> str:
        return f"{self.namespace}.tokens.{_token(generation_id)}"

    def cancel(self, generation_id: str) -> str:
        """Core NATS (no stream): tells whichever worker runs a generation to stop now."""
        return f"{self.namespace}.control.cancel.{_token(generation_id)}"

    @property
    def cancel_all(self) -> str:
        return f"{self.namespace}.control.cancel.*"

    def durable(self, projector: str) -> str:
        return f"{self.namespace}_projector_{_token(projector)}"
