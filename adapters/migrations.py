"""One-off migrations of the event store.

``encrypt_personal_data``: seals the personal fields of events written before crypto-shredding (or while
it was off), in place. The log is read in pages of notification ids; each page's rewrites and the
migration's position are committed together, so the command can be stopped (or killed) and run again:
it goes on from where it was, and a field already sealed is left as it is. An erasure or deletion met in
the log destroys the keys it names, as the shredder would have, so what an erased subject left in the clear
is sealed and then shredded, and a later field of theirs becomes the erased marker.
Snapshots of sealed aggregates written in the clear are deleted (the library takes new ones, sealed).
What else held the old plaintext is the caller's to clear: ``PARLEY_EVENTS`` (purge it: projectors catch
up from the event store) and the audit log (rebuild it: its rows then hold the sealed form).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from adapters.crypto import ShreddingMapper, is_blank, is_sealed
from adapters.eventstore import EventStore, connect
from domain.privacy import shredded_by
from schema.contract import personal_fields

__all__ = ["encrypt_personal_data", "MIGRATION_NAME"]

log = structlog.get_logger("parley.migrations")

MIGRATION_NAME = "encrypt-personal-data"
_POSITIONS_DDL = "CREATE TABLE IF NOT EXISTS parley_migrations (name text PRIMARY KEY, position bigint NOT NULL)"


def encrypt_personal_data(
    store: EventStore, *, page: int = 2_000, progress: Callable[[int, int, int], None] | None = None
) -> tuple[int, int]:
    """Seal every personal field still in the clear. Returns (events read, events rewritten) by this run;
    ``progress(position, target, rewritten)`` after each page."""
    mapper = store.mapper
    assert isinstance(mapper, ShreddingMapper) and mapper.keys is not None
    target = store.max_id()
    read = rewritten = 0
    # Keys in their own transactions (KeyStore.ensure), never made afresh for an aggregate's first event:
    # an aggregate of this history may have a key already, which its later events are sealed with.
    with store.keys.direct(), connect(store.database_url) as conn:
        conn.execute(_POSITIONS_DDL)
        conn.execute(
            "INSERT INTO parley_migrations (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING", (MIGRATION_NAME,)
        )
        conn.commit()
        while True:
            with conn.transaction():
                row = conn.execute(
                    "SELECT position FROM parley_migrations WHERE name = %s FOR UPDATE", (MIGRATION_NAME,)
                ).fetchone()
                assert row is not None
                position = int(row[0])
                if position >= target:
                    break
                notifications = store.recorder.select_notifications(start=position + 1, limit=page, stop=target)
                for n in notifications:
                    read += 1
                    event_type = n.topic.rpartition(".")[2]
                    scope = shredded_by(event_type, n.originator_id)  # type: ignore[arg-type]
                    if scope is not None:  # an erasure before the migration: the keys it names did not exist
                        store.keys.destroy(scope)  # then; what they sealed since goes now, as the shredder would
                        continue
                    fields = personal_fields(event_type)
                    if not fields:
                        continue
                    state = mapper.transcoder.decode(n.state)
                    plain = [f for f in fields if not is_blank(state.get(f)) and not is_sealed(state.get(f))]
                    if not plain:
                        continue
                    event = mapper.to_sealed_event(n)  # the domain event as stored, to seal as new ones are
                    sealed = mapper.to_stored_event(event)
                    conn.execute(
                        "UPDATE parley_events SET state = %s WHERE notification_id = %s", (sealed.state, n.id)
                    )
                    rewritten += 1
                end = notifications[-1].id if notifications else target
                conn.execute("UPDATE parley_migrations SET position = %s WHERE name = %s", (end, MIGRATION_NAME))
            if progress is not None:
                progress(end, target, rewritten)
        # Snapshots taken in the clear: the library takes them again (sealed) as aggregates are saved.
        deleted = conn.execute("DELETE FROM parley_snapshots WHERE position('enc:v1:' in convert_from(state, 'UTF8')) = 0")
        conn.commit()
        log.info("personal_data_sealed", read=read, rewritten=rewritten, snapshots_deleted=deleted.rowcount)
    return read, rewritten
