"""The relay: the notification log, in order, onto ``PARLEY_EVENTS``.

Only one relay is active per deployment: it holds a Postgres advisory lock on a dedicated connection
(released by Postgres the moment that process dies); others wait as standbys and take over. The active
relay reads from its tracked position, publishes each event with ``Nats-Msg-Id`` = notification id and
advances the position only after JetStream acked everything before it. A restart may publish again;
JetStream's dedup window and the projectors' positions absorb it. It wakes on LISTEN/NOTIFY, with a
polling fallback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import structlog
from opentelemetry.trace import Span
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters import tracing
from adapters.eventstore import EventStore
from schema.events import EventEnvelope, encode
from schema.jobs import IngestJob, Job, encode_ingest_job, encode_job
from schema.locks import advisory_key
from schema.subjects import Subjects
from schema.tables import relay_positions

__all__ = ["Relay"]

log = structlog.get_logger("parley.relay")


LOCK_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "options": "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3",
}
"""TCP keepalives on the lock connection, both ways (over TCP; a local socket needs none): a relay whose host
vanishes without closing its connection (power, network) would hold the lock until Postgres noticed the
dead peer, two hours by the OS defaults; with these Postgres drops the session, and with it the lock, about
8 s after the host went silent, and the standby takes over. The vanished relay, if it still runs, finds its
own connection dead as soon and stops leading (NATS drops what both published twice, by message id)."""


class Relay:
    name = "relay"

    def __init__(
        self,
        *,
        store: EventStore,
        engine: AsyncEngine,
        js: Any,
        subjects: Subjects,
        batch_size: int = 500,
        poll_s: float = 1.0,
    ) -> None:
        self.store = store
        self.engine = engine
        self.js = js
        self.subjects = subjects
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.position = 0
        self.active = asyncio.Event()

    async def _read_position(self) -> int:
        async with self.engine.begin() as conn:
            await conn.execute(insert(relay_positions).values(name=self.name, position=0).on_conflict_do_nothing())
            row = await conn.execute(select(relay_positions.c.position).where(relay_positions.c.name == self.name))
            return int(row.scalar_one())

    async def _save_position(self, position: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                relay_positions.update().where(relay_positions.c.name == self.name).values(position=position)
            )

    def _messages(self, e: EventEnvelope) -> list[tuple[str, bytes, str]]:
        """What one event becomes on NATS: itself on PARLEY_EVENTS and, for a GenerationRequested or an
        upload still to ingest, a job on the PARLEY_JOBS work queue (subject, payload, ``Nats-Msg-Id``)."""
        messages = [(self.subjects.event(e.tenant_id or "platform", e.aggregate_type, e.type), encode(e), str(e.id))]
        if e.type == "GenerationRequested":
            job = Job(
                generation_id=str(e.aggregate_id),
                tenant_id=e.tenant_id,
                model=str(e.data.get("model", "")),
                event_id=str(e.event_id),
                correlation_id=e.correlation_id,
            )
            messages.append((self.subjects.job(job.model), encode_job(job), f"job:{e.id}"))
        elif e.type in ("DocumentUploaded", "DocumentReuploaded"):
            ingest = IngestJob(
                document_id=str(e.aggregate_id),
                tenant_id=e.tenant_id,
                event_id=str(e.event_id),
                correlation_id=e.correlation_id,
            )
            messages.append((self.subjects.ingest(e.tenant_id), encode_ingest_job(ingest), f"job:{e.id}"))
        return messages

    async def publish(self, batch: list[EventEnvelope]) -> int:
        """Publish a batch (pipelined, in order); return the last id whose messages, and all before them,
        were acked."""
        sent: list[tuple[int, tuple[str, bytes, str], dict[str, str]]] = []
        spans: dict[int, Span] = {}
        for e in batch:
            # The trace the event's command began goes on in its messages' headers: through the relay's own
            # publish span where tracing is on here, else straight from the event.
            publish_span = tracing.start_span(
                "publish", e.traceparent, kind=tracing.SpanKind.PRODUCER,
                attributes={"messaging.system": "nats", "parley.event_type": e.type, "parley.notification_id": e.id},
            )  # fmt: skip
            traceparent = e.traceparent
            if publish_span is not None:
                spans[e.id] = publish_span
                traceparent = tracing.traceparent_of(publish_span) or traceparent
            for message in self._messages(e):
                headers = {"Nats-Msg-Id": message[2]}
                if traceparent:
                    headers["traceparent"] = traceparent
                sent.append((e.id, message, headers))
        results = await asyncio.gather(
            *(self.js.publish(subject, payload, headers=headers) for _, (subject, payload, _), headers in sent),
            return_exceptions=True,
        )
        acked = self.position
        failed: dict[int, BaseException] = {}
        for (notification_id, _, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                failed.setdefault(notification_id, result)
        for notification_id, publish_span in spans.items():
            tracing.end_span(publish_span, failed.get(notification_id))
        if failed:  # one line a batch: while a stream elects a leader, every message of it fails alike
            first = min(failed)
            log.warning(
                "publish_failed", notification_id=first, failed=len(failed), error_type=type(failed[first]).__name__,
                error=str(failed[first])[:200],
            )  # fmt: skip
        for e in batch:
            if e.id in failed:
                break
            acked = e.id
        return acked

    async def run(self, stop: asyncio.Event) -> None:
        conninfo = self.store.database_url.replace("postgresql+psycopg://", "postgresql://")
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, **LOCK_KEEPALIVES
                ) as lock_conn:
                    await self._standby(lock_conn, stop)
                    if stop.is_set():
                        return
                    await self._lead(lock_conn, stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Postgres or NATS went away (whichever library noticed first): give up the lead (the
                # lock connection closes with it), wait, and start again as a standby. Nothing is lost:
                # the position only ever advanced past acked events.
                log.warning("relay_interrupted", error_type=type(exc).__name__, error=str(exc)[:200])
                self.active.clear()
                await asyncio.sleep(1)

    async def _standby(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        key = advisory_key(f"{self.subjects.namespace}:relay")
        announced = False
        while not stop.is_set():
            row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))).fetchone()
            if row and row[0]:
                log.info("relay_active")
                return
            if not announced:
                log.info("relay_standby")
                announced = True
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass

    async def _lead(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        await conn.execute(f'LISTEN "{self.store.notify_channel}"')
        self.position = await self._read_position()
        self.active.set()
        while not stop.is_set():
            batch = await self.store.call(self.store.read, self.position + 1, self.batch_size)
            if batch:
                acked = await self.publish(batch)
                if acked > self.position:
                    self.position = acked
                    await self._save_position(acked)
                if acked < batch[-1].id:
                    await asyncio.sleep(0.5)  # NATS unhappy: back off, then retry from the acked id
                continue
            # Caught up: wait for a NOTIFY from an append, or poll. This also checks the lock
            # connection is alive: if it died, the lock is gone and another relay may be active.
            gen = conn.notifies(timeout=self.poll_s, stop_after=1)
            async for _ in gen:
                pass
