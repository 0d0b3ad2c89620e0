"""The generation job on ``PARLEY_JOBS`` (subject ``parley.jobs.generate.<model>``, ``Nats-Msg-Id`` =
``job:<notification id>``). The job only names the generation: the worker reads everything else from
the event store, so a redelivered job always sees the current state. ``event_id`` and ``correlation_id``
are those of the event the job came from: what the worker records carries them as its causation and
correlation. Version 1; fields are only ever added, with defaults."""

from __future__ import annotations

import msgspec

__all__ = ["Job", "IngestJob", "encode_job", "decode_job", "encode_ingest_job", "decode_ingest_job"]


class Job(msgspec.Struct, frozen=True, kw_only=True):
    generation_id: str
    tenant_id: str
    model: str
    event_id: str | None = None
    correlation_id: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Job)


def encode_job(job: Job) -> bytes:
    return _encoder.encode(job)


def decode_job(payload: bytes) -> Job:
    return _decoder.decode(payload)


class IngestJob(msgspec.Struct, frozen=True, kw_only=True):
    """An ingestion job (``parley.jobs.ingest.<tenant>``): extract and chunk one uploaded document."""

    document_id: str
    tenant_id: str
    event_id: str | None = None
    correlation_id: str | None = None


_ingest_decoder = msgspec.json.Decoder(IngestJob)


def encode_ingest_job(job: IngestJob) -> bytes:
    return _encoder.encode(job)


def decode_ingest_job(payload: bytes) -> IngestJob:
    return _ingest_decoder.decode(payload)
