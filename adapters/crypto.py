"""Crypto-shredding: personal fields of events and snapshots are sealed with a key per aggregate, and
destroying a key makes every copy of what it sealed unreadable at once.

Keys. Every aggregate that holds personal data has its own data key (AES-256-GCM), its id the
aggregate's id, in ``parley_subject_keys`` beside the event store. A key row names its data subjects: the
user (a user's own aggregate, a chat's owner, a generation's or a document's user) and the chat (a chat,
its generations, the documents attached to it). Erasing a user destroys every key naming the user;
deleting a chat destroys every key naming the chat. A destroyed key keeps its row (``wrapped`` NULL,
``destroyed_at`` set) so that what it sealed reads as erased, not as an error. Data keys are stored
wrapped (AES-GCM) by a key-encryption key derived (HKDF-SHA256) from the deployment secret: the table
alone, or a backup of it, opens nothing; the secret cannot be rotated without re-wrapping (not built).

Sealing. The mapper (``ShreddingMapper``, the library's ``MAPPER_TOPIC``) seals the fields the event
contract marks personal (``schema.contract.personal_fields``) before an event is stored, and a Chat
snapshot's whole state. A sealed value is a string ``enc:v1:<kind>:<key id>:<base64url(nonce|ciphertext)>``
(``kind``: s text, l list, d object, o other), the plaintext the transcoder's JSON of the value, the
associated data the aggregate id and the field name (a sealed value moved to another field or aggregate
does not open). Events keep their sealed form on their way out of the event store (NATS, the audit log);
what needs the text opens it (the projectors of chats, knowledge, vectors and users, the aggregates
loaded by commands). A value whose key is destroyed opens as the erased marker of its kind: ``"[erased]"``,
``[]``, ``{}`` or ``None``; sealing with a destroyed key stores the marker.

Caching. Opened data keys are cached in-process for ``KEY_TTL_S`` (another process's erasure is seen
within that bound; the erasing process forgets at once); destroyed keys are cached for good.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import psycopg
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic
from psycopg_pool import ConnectionPool

from domain.identity import ERASED
from domain.privacy import KeyScope
from schema.contract import AGGREGATE_SUBJECTS, event_types, personal_fields, subject_fields

__all__ = [
    "ERASED",
    "KEY_TTL_S",
    "KeyRow",
    "KeyStore",
    "SEALING_AGGREGATES",
    "SEALED_PREFIX",
    "ShreddingMapper",
    "erased_marker",
    "is_blank",
    "is_sealed",
]

log = structlog.get_logger("parley.crypto")

SEALED_PREFIX = "enc:v1:"
KEY_TTL_S = 30.0
_SNAPSHOT_TOPIC = "eventsourcing.domain:Snapshot"
_KINDS = {str: "s", list: "l", tuple: "l", dict: "d"}
_MARKERS: dict[str, Any] = {"s": ERASED, "l": [], "d": {}, "o": None}

KEYS_DDL = """
CREATE TABLE IF NOT EXISTS parley_subject_keys (
    key_id uuid PRIMARY KEY,
    tenant_id text NOT NULL DEFAULT '',
    user_id uuid,
    chat_id uuid,
    wrapped bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    destroyed_at timestamptz
);
CREATE INDEX IF NOT EXISTS parley_subject_keys_user ON parley_subject_keys (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS parley_subject_keys_chat ON parley_subject_keys (chat_id) WHERE chat_id IS NOT NULL;
"""


def is_sealed(value: Any) -> bool:
    return type(value) is str and value.startswith(SEALED_PREFIX)


def erased_marker(sealed: str) -> Any:
    kind = sealed[len(SEALED_PREFIX) : len(SEALED_PREFIX) + 1]
    marker = _MARKERS.get(kind)
    return marker.copy() if isinstance(marker, list | dict) else marker


def is_blank(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {} or value == ()


class KeyRow(NamedTuple):
    """A data key made for an aggregate being created, written in the transaction of its first events."""

    key_id: uuid.UUID
    tenant_id: str
    user_id: uuid.UUID | None
    chat_id: uuid.UUID | None
    wrapped: bytes
    cipher: AESGCM


def _sealing_aggregates() -> frozenset[str]:
    """The aggregate types that have personal fields in some event: each gets a key when created."""
    return frozenset(
        str(getattr(cls, "aggregate", "")) for event_type, cls in event_types().items() if personal_fields(event_type)
    )


SEALING_AGGREGATES = _sealing_aggregates()


class KeyStore:
    """Data keys per aggregate: created with the aggregate (in the transaction of its first events, by the
    event store's recorder), unwrapped once and cached, destroyed by subject. An aggregate from before
    sealing gets its key on first need, in a transaction of its own (``ensure``)."""

    def __init__(self, database_url: str, secret_key: str) -> None:
        if len(secret_key) < 32:
            raise ValueError("the deployment secret must be at least 32 characters to derive the key wrapper")
        kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"parley subject keys v1").derive(
            secret_key.encode()
        )
        self._wrapper = AESGCM(kek)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            database_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=True
        )
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's command: keys made for it, not yet committed
        self.on_forget: Callable[[list[uuid.UUID]], None] | None = None
        """Told the keys this store destroyed (the event store evicts what they sealed from its cache)."""
        # key id -> (cipher or None when destroyed, cached at, user id, chat id)
        self._cache: dict[uuid.UUID, tuple[AESGCM | None, float, uuid.UUID | None, uuid.UUID | None]] = {}

    def create_table(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(KEYS_DDL)

    def close(self) -> None:
        self._pool.close()

    # --- wrapping -----------------------------------------------------------------------------------------
    def _wrap(self, key_id: uuid.UUID, key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._wrapper.encrypt(nonce, key, key_id.bytes)

    def _unwrap(self, key_id: uuid.UUID, wrapped: bytes) -> AESGCM:
        return AESGCM(self._wrapper.decrypt(wrapped[:12], wrapped[12:], key_id.bytes))

    def _remember(
        self, key_id: uuid.UUID, wrapped: bytes | None, user_id: uuid.UUID | None, chat_id: uuid.UUID | None
    ) -> AESGCM | None:
        cipher = None if wrapped is None else self._unwrap(key_id, bytes(wrapped))
        with self._lock:
            self._cache[key_id] = (cipher, time.monotonic(), user_id, chat_id)
        return cipher

    def _cached(self, key_id: uuid.UUID) -> tuple[AESGCM | None, uuid.UUID | None, uuid.UUID | None] | None:
        entry = self._cache.get(key_id)
        if entry is None:
            return None
        cipher, at, user_id, chat_id = entry
        if cipher is not None and time.monotonic() - at > KEY_TTL_S:
            return None
        return cipher, user_id, chat_id

    # --- keys made with their aggregate ----------------------------------------------------------------------
    def _pending(self) -> dict[uuid.UUID, KeyRow]:
        pending: dict[uuid.UUID, KeyRow] | None = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = {}
        return pending

    def makes_keys_in_append(self) -> bool:
        """False inside ``direct()`` (the migration rewrites history: its aggregates may have keys already)."""
        return not getattr(self._local, "direct", False)

    @contextlib.contextmanager
    def direct(self) -> Iterator[None]:
        self._local.direct = True
        try:
            yield
        finally:
            self._local.direct = False

    def new_key(
        self, key_id: uuid.UUID, *, tenant_id: str, user_id: uuid.UUID | None, chat_id: uuid.UUID | None
    ) -> AESGCM:
        """A key for an aggregate this command creates: held for the command until the recorder writes it
        with the aggregate's first events (``take_pending``), cached once they are committed."""
        pending = self._pending()
        row = pending.get(key_id)
        if row is None:
            raw = AESGCM.generate_key(bit_length=256)
            row = KeyRow(key_id, tenant_id, user_id, chat_id, self._wrap(key_id, raw), AESGCM(raw))
            pending[key_id] = row
        return row.cipher

    def pending_cipher(self, key_id: uuid.UUID) -> AESGCM | None:
        row = self._pending().get(key_id)
        return None if row is None else row.cipher

    def take_pending(self) -> list[KeyRow]:
        """The keys this thread's command made, handed to the recorder (and forgotten here)."""
        pending = self._pending()
        rows = list(pending.values())
        pending.clear()
        return rows

    def discard_pending(self) -> None:
        self._pending().clear()

    def committed(self, rows: Sequence[KeyRow]) -> None:
        now = time.monotonic()
        with self._lock:
            for row in rows:
                self._cache[row.key_id] = (row.cipher, now, row.user_id, row.chat_id)

    def insert_now(self, rows: Sequence[KeyRow]) -> None:
        """Write made keys in a transaction of their own (for the library's own append path)."""
        if not rows:
            return
        with self._pool.connection() as conn:
            conn.cursor().executemany(
                "INSERT INTO parley_subject_keys (key_id, tenant_id, user_id, chat_id, wrapped)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key_id) DO NOTHING",
                [(r.key_id, r.tenant_id, r.user_id, r.chat_id, r.wrapped) for r in rows],
            )

    def prefetch(self, key_ids: Iterable[uuid.UUID]) -> None:
        """Bring the keys not cached into the cache in one query (a page of events being opened)."""
        missing = [k for k in set(key_ids) if self._cached(k) is None]
        if not missing:
            return
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT key_id, wrapped, user_id, chat_id FROM parley_subject_keys WHERE key_id = ANY(%s)", (missing,)
            ).fetchall()
        for key_id, wrapped, user_id, chat_id in rows:
            self._remember(key_id, wrapped, user_id, chat_id)

    # --- the keys -----------------------------------------------------------------------------------------
    def ensure(
        self, key_id: uuid.UUID, *, tenant_id: str, user_id: uuid.UUID | None, chat_id: uuid.UUID | None
    ) -> AESGCM | None:
        """The aggregate's key, created if it has none; None if it was destroyed. A subject named for the
        first time (an invitation accepted by a user) is added to the key's row."""
        cached = self._cached(key_id)
        if cached is not None:
            cipher, known_user, known_chat = cached
            if (user_id is None or known_user is not None) and (chat_id is None or known_chat is not None):
                return cipher
        wrapped_new = self._wrap(key_id, AESGCM.generate_key(bit_length=256))
        with self._pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO parley_subject_keys AS k (key_id, tenant_id, user_id, chat_id, wrapped)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (key_id) DO UPDATE SET user_id = COALESCE(k.user_id, EXCLUDED.user_id),"
                " chat_id = COALESCE(k.chat_id, EXCLUDED.chat_id)"
                " RETURNING wrapped, user_id, chat_id",
                (key_id, tenant_id, user_id, chat_id, wrapped_new),
            ).fetchone()
        assert row is not None
        return self._remember(key_id, row[0], row[1], row[2])

    def get(self, key_id: uuid.UUID) -> AESGCM | None:
        """The key, or None if it was destroyed (or never existed: nothing sealed with it can be opened)."""
        cached = self._cached(key_id)
        if cached is not None:
            return cached[0]
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT wrapped, user_id, chat_id FROM parley_subject_keys WHERE key_id = %s", (key_id,)
            ).fetchone()
        if row is None:
            log.warning("subject_key_missing", key_id=str(key_id))
            return None
        return self._remember(key_id, row[0], row[1], row[2])

    _IN_SCOPE = "(user_id = %s OR chat_id = %s OR key_id = %s)"

    def destroy(self, scope: KeyScope) -> list[uuid.UUID]:
        """Destroy every key in ``scope``; returns the ids destroyed now. Idempotent."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                "UPDATE parley_subject_keys SET wrapped = NULL, destroyed_at = now()"
                f" WHERE wrapped IS NOT NULL AND {self._IN_SCOPE} RETURNING key_id",
                (scope.user_id, scope.chat_id, scope.key_id),
            ).fetchall()
        destroyed = [r[0] for r in rows]
        self.forget(destroyed)
        if self.on_forget is not None:
            self.on_forget(destroyed)
        return destroyed

    def forget(self, key_ids: Iterable[uuid.UUID]) -> None:
        with self._lock:
            for key_id in key_ids:
                self._cache[key_id] = (None, time.monotonic(), None, None)

    def keys_of(self, scope: KeyScope) -> list[uuid.UUID]:
        """Every key in ``scope``, destroyed or not."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT key_id FROM parley_subject_keys WHERE {self._IN_SCOPE}",
                (scope.user_id, scope.chat_id, scope.key_id),
            ).fetchall()
        return [r[0] for r in rows]

    # --- values -------------------------------------------------------------------------------------------
    @staticmethod
    def _aad(aggregate_id: uuid.UUID, field: str) -> bytes:
        return f"{aggregate_id}:{field}".encode()

    def seal(self, cipher: AESGCM | None, key_id: uuid.UUID, aggregate_id: uuid.UUID, field: str, data: bytes,
             value: Any) -> Any:  # fmt: skip
        kind = _KINDS.get(type(value), "o")
        if cipher is None:  # the key is destroyed: what would have been sealed is already erased
            return _MARKERS[kind].copy() if isinstance(_MARKERS[kind], list | dict) else _MARKERS[kind]
        nonce = os.urandom(12)
        sealed = base64.urlsafe_b64encode(nonce + cipher.encrypt(nonce, data, self._aad(aggregate_id, field)))
        return f"{SEALED_PREFIX}{kind}:{key_id.hex}:{sealed.decode()}"

    def open(self, sealed: str, aggregate_id: uuid.UUID, field: str) -> bytes | None:
        """The plaintext bytes, or None if the key is destroyed."""
        _, _, kind_key_body = sealed.partition(SEALED_PREFIX)
        _kind, key_hex, body = kind_key_body.split(":", 2)
        cipher = self.get(uuid.UUID(hex=key_hex))
        if cipher is None:
            return None
        raw = base64.urlsafe_b64decode(body)
        try:
            return cipher.decrypt(raw[:12], raw[12:], self._aad(aggregate_id, field))
        except InvalidTag:
            log.warning("sealed_value_rejected", aggregate_id=str(aggregate_id), field=field)
            return None


def _type_name(topic: str) -> tuple[str, str]:
    qualname = topic.rpartition(":")[2]
    parts = qualname.split(".")
    return parts[0], parts[-1]


class ShreddingMapper(Mapper[uuid.UUID]):
    """The library's mapper, sealing personal fields on the way in and opening them on the way out.
    ``keys`` is set by the event store once built; without it nothing is sealed or opened."""

    keys: KeyStore | None = None

    # --- in -----------------------------------------------------------------------------------------------
    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        keys = self.keys
        if keys is None:
            return super().to_stored_event(domain_event)
        topic = get_topic(type(domain_event))
        if topic == _SNAPSHOT_TOPIC:
            return self._snapshot_in(keys, domain_event)
        aggregate_type, event_type = _type_name(topic)
        state = vars(domain_event)
        aggregate_id: uuid.UUID = state["originator_id"]
        creating = state["originator_version"] == 1 and aggregate_type in SEALING_AGGREGATES
        if creating and keys.makes_keys_in_append():  # its key, with its subjects, goes in with it
            self._key_for(keys, aggregate_type, event_type, aggregate_id, state, create=True)
        fields = personal_fields(event_type)
        if not fields:
            return super().to_stored_event(domain_event)
        present = [f for f in fields if not is_blank(state.get(f)) and not is_sealed(state.get(f))]
        if not present:
            return super().to_stored_event(domain_event)
        cipher = self._key_for(keys, aggregate_type, event_type, aggregate_id, state)
        sealed = dict(state)
        for name in present:
            value = state[name]
            sealed[name] = keys.seal(cipher, aggregate_id, aggregate_id, name, self.transcoder.encode(value), value)
        return self._stored(type(domain_event), sealed)

    def _key_for(
        self,
        keys: KeyStore,
        aggregate_type: str,
        event_type: str,
        aggregate_id: uuid.UUID,
        state: Mapping[str, Any],
        *,
        create: bool = False,
    ) -> AESGCM | None:
        """The aggregate's key: made with it (``create``: its first event), made earlier in this command,
        or the one it has (made now, in a transaction of its own, for an aggregate from before sealing)."""
        made = keys.pending_cipher(aggregate_id)
        if made is not None:
            return made
        subjects = {kind: state.get(name) for kind, name in subject_fields(event_type).items()}
        own = AGGREGATE_SUBJECTS.get(aggregate_type)
        if own is not None:
            subjects[own] = aggregate_id
        meta = state.get("meta") or {}
        tenant_id = str(meta.get("tenant_id") or state.get("tenant_id") or "")
        user_id, chat_id = _as_uuid(subjects.get("user")), _as_uuid(subjects.get("chat"))
        if create:
            return keys.new_key(aggregate_id, tenant_id=tenant_id, user_id=user_id, chat_id=chat_id)
        return keys.ensure(aggregate_id, tenant_id=tenant_id, user_id=user_id, chat_id=chat_id)

    def _snapshot_in(self, keys: KeyStore, snapshot: Any) -> StoredEvent:
        state = vars(snapshot)
        aggregate_type = _type_name(str(state.get("topic", "")))[1]
        if aggregate_type not in AGGREGATE_SUBJECTS:
            return super().to_stored_event(snapshot)
        aggregate_id: uuid.UUID = state["originator_id"]
        cipher = keys.ensure(aggregate_id, tenant_id="", user_id=None, chat_id=None)
        if cipher is None:
            raise ValueError("no snapshot of an aggregate whose key is destroyed")
        sealed = dict(state)
        sealed["state"] = keys.seal(
            cipher, aggregate_id, aggregate_id, "state", self.transcoder.encode(state["state"]), state["state"]
        )
        return self._stored(type(snapshot), sealed)

    def _stored(self, cls: type, state: dict[str, Any]) -> StoredEvent:
        """The library's ``to_stored_event`` over a state other than the event's own."""
        event_state = dict(state)
        originator_id = event_state.pop("originator_id")
        originator_version = event_state.pop("originator_version")
        class_version = getattr(cls, "class_version", 1)
        if class_version > 1:
            event_state["class_version"] = class_version
        stored_state = self.transcoder.encode(event_state)
        if self.compressor:
            stored_state = self.compressor.compress(stored_state)
        if self.cipher:
            stored_state = self.cipher.encrypt(stored_state)
        return StoredEvent(
            originator_id=originator_id, originator_version=originator_version, topic=get_topic(cls), state=stored_state
        )

    # --- out ----------------------------------------------------------------------------------------------
    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        event = super().to_domain_event(stored_event)
        if self.keys is not None:
            self.open_fields(vars(event), stored_event.originator_id)  # type: ignore[arg-type]
        return event

    def to_sealed_event(self, stored_event: StoredEvent) -> Any:
        """The domain event as stored: personal fields still sealed (for what leaves the event store)."""
        return super().to_domain_event(stored_event)

    def open_fields(self, state: dict[str, Any], aggregate_id: uuid.UUID) -> bool:
        """Open, in place, every sealed top-level value of ``state``; True if any was sealed."""
        keys = self.keys
        if keys is None:
            return False
        found = False
        for name, value in state.items():
            if type(value) is str and value.startswith(SEALED_PREFIX):
                found = True
                data = keys.open(value, aggregate_id, name)
                state[name] = erased_marker(value) if data is None else self.transcoder.decode(data)
        return found


def _as_uuid(value: Any) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
