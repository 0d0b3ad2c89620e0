"""How a projector following the bus cuts a fetched batch into transactions: at most its ``batch_size``
handled events in each, the events it skips riding along, so that skipping costs no transaction of its own
(the vector index fetched 16 events at a time and committed once per fetch, most of them skipped)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from projections.runtime import _by_handled
from schema.events import EventEnvelope


class Embeds:
    name = "embeds"
    tables = ()

    def __init__(self, batch_size: int | None) -> None:
        if batch_size is not None:
            self.batch_size = batch_size

    def handles(self, event_type: str) -> bool:
        return event_type == "DocumentChunked"


def events(types: str) -> list[EventEnvelope]:
    """``types``: one letter per event, C a DocumentChunked, anything else an event the projector skips."""
    return [
        EventEnvelope(
            id=i, event_id=uuid.uuid4(), type="DocumentChunked" if t == "C" else "MessagePosted", aggregate_type="X",
            aggregate_id=uuid.uuid4(), aggregate_version=1, occurred_at=datetime.now(UTC), tenant_id="t",
            actor="system", correlation_id="",
        )  # fmt: skip
        for i, t in enumerate(types, start=1)
    ]


def shape(chunks: list[list[EventEnvelope]]) -> list[str]:
    return ["".join("C" if e.type == "DocumentChunked" else "." for e in chunk) for chunk in chunks]


def test_skipped_events_ride_with_the_handled_ones_up_to_the_batch_size() -> None:
    batch = events("..C..C.C...CC.")
    assert shape([list(c) for c in _by_handled(Embeds(2), batch)]) == ["..C..C", ".C...C", "C."]


def test_a_batch_of_only_skipped_events_is_one_transaction() -> None:
    assert shape([list(c) for c in _by_handled(Embeds(16), events("." * 200))]) == ["." * 200]


def test_a_projector_without_a_batch_size_takes_the_whole_batch() -> None:
    batch = events("C" * 40)
    assert [list(c) for c in _by_handled(Embeds(None), batch)] == [batch]


def test_every_event_is_in_exactly_one_transaction_in_order() -> None:
    batch = events("C.CC..C.C.CCC..C" * 5)
    chunks = [list(c) for c in _by_handled(Embeds(3), batch)]
    assert [e.id for chunk in chunks for e in chunk] == [e.id for e in batch]
    assert all(sum(e.type == "DocumentChunked" for e in chunk) <= 3 for chunk in chunks)
