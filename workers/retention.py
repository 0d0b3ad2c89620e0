"""The retention service as the processes build it, and the loop that sweeps every tenant periodically
(beside the audit projector, in ``parley project`` and so in ``parley serve``; ``parley retention sweep``
runs one sweep)."""

from __future__ import annotations

import asyncio

import structlog

from adapters.checkpoints import CheckpointKey, CheckpointSink, checkpoint_key, open_checkpoint_sink
from application.retention import Retention
from projections.retention import ReadModelRetention
from workers.bootstrap import Container

__all__ = ["CheckpointAnchor", "RetentionSweeper", "retention_service"]

log = structlog.get_logger("parley.retention")


class CheckpointAnchor:
    """Signs (tenant, seq, hash) with the deployment's checkpoint key and keeps it in the checkpoint sink
    (``application.ports.AuditAnchor``). A checkpoint already kept for that (tenant, seq) stays as it is."""

    def __init__(self, key: CheckpointKey, sink: CheckpointSink) -> None:
        self.key = key
        self.sink = sink

    async def __call__(self, tenant_id: str, seq: int, hash: str) -> None:
        await self.sink.put(self.key.sign(tenant_id, seq, hash))


def retention_service(c: Container, *, sweeping: bool = False) -> Retention:
    """The service over the container's event store and read models; ``sweeping``: with the checkpoint
    key and sink too, which dropping audit rows needs (the API only changes the policy)."""
    anchor = None
    if sweeping:
        settings = c.settings
        anchor = CheckpointAnchor(checkpoint_key(settings.secret_key), open_checkpoint_sink(settings.audit_checkpoint_sink))
    return Retention(store=c.store, chats=c.chats, data=ReadModelRetention(c.engine), anchor=anchor)


class RetentionSweeper:
    """Sweeps every tenant every ``interval_s`` (the first time at once)."""

    def __init__(self, retention: Retention, *, interval_s: float = 3600) -> None:
        self.retention = retention
        self.interval_s = interval_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.retention.sweep_all()
            except Exception as exc:  # noqa: BLE001 - a database away for a while must not stop the projectors
                log.warning("retention_sweep_failed", error=str(exc), error_type=type(exc).__name__)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
