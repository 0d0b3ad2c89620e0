"""Every event the real engines store fits the event contract: over the varied history the rebuild test
builds (tenants, users, sessions, API keys, failed sign-ins, providers, models, chats with answers,
knowledge bases and documents), each envelope read back from the event store decodes with
``decode_data`` and validates, envelope and data, against ``contract_schema()``.

Personal fields leave the event store sealed (``enc:v1:...``, see adapters/crypto.py); the contract
describes their opened form, so they are opened first where the store seals them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from schema.contract import contract_schema, decode_data, event_types
from tests.conftest import Pipeline
from tests.integration.test_rebuild_equality import varied_history
from workers.bootstrap import Container

pytestmark = pytest.mark.timeout(180)


async def test_every_stored_event_decodes_and_fits_the_exported_schema(container: Container, pipeline: Pipeline) -> None:
    await varied_history(container)
    store: Any = container.store
    events = await store.call(store.read, 1, 100_000)
    if hasattr(store, "open_envelopes"):  # personal fields sealed: the contract is about the opened form
        events = await store.call(store.open_envelopes, events)
    validator = Draft202012Validator(contract_schema())

    seen: Counter[str] = Counter()
    for event in events:
        decoded = decode_data(event.type, event.data)
        assert type(decoded).__name__ == event.type
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(msgspec.to_builtins(event))]
        assert errors == [], f"{event.type} #{event.id}: {errors}"
        seen[event.type] += 1

    assert len(events) > 100 and len(seen) >= 40, seen  # the history really is varied
    assert set(seen) <= set(event_types())
