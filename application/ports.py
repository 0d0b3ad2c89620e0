"""The ports the application services need; adapters implement them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Collection
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from eventsourcing.domain import Aggregate

from application.context import CommandContext

if TYPE_CHECKING:
    from application.identity import AccessClaims

__all__ = [
    "EventStorePort",
    "SecretBox",
    "PasswordHasher",
    "AccessTokenIssuer",
    "TokenVersionCache",
    "Blobs",
    "PersonalData",
    "Shredder",
    "AuditDropPlan",
    "RetentionData",
    "AuditAnchor",
]

A = TypeVar("A", bound=Aggregate)
R = TypeVar("R")


class EventStorePort(Protocol):
    """``get``/``find``/``save`` run inside a command (on a worker thread); ``execute`` runs a command
    with its context and one retry on a version conflict; ``call`` runs any sync function off the loop."""

    def get(self, cls: type[A], aggregate_id: uuid.UUID) -> A: ...

    def find(self, cls: type[A], aggregate_id: uuid.UUID) -> A | None: ...

    def save(self, *aggregates: Aggregate | None) -> list[int]: ...

    async def execute(self, ctx: CommandContext, fn: Callable[[], R]) -> R: ...

    async def call(self, fn: Callable[..., R], *args: Any) -> R: ...


class SecretBox(Protocol):
    """Seals secrets at rest (provider API keys, webhook signing secrets); they are never returned."""

    def encrypt(self, plaintext: str) -> str: ...

    def decrypt(self, ciphertext: str) -> str: ...


class PasswordHasher(Protocol):
    def hash(self, password: str) -> str: ...

    def verify(self, password_hash: str | None, password: str) -> bool: ...

    def needs_rehash(self, password_hash: str) -> bool: ...


class AccessTokenIssuer(Protocol):
    ttl_s: int

    def issue(self, *, user_id: uuid.UUID, tenant_id: str, role: str, token_version: int, session_id: str) -> str: ...

    def verify(self, token: str) -> AccessClaims: ...


class TokenVersionCache(Protocol):
    async def get(self, user_id: str) -> int | None: ...

    async def set(self, user_id: str, version: int) -> None: ...

    async def state(self, user_id: str, session_id: str | None) -> tuple[int | None, bool]: ...

    async def end_session(self, session_id: str, ttl_s: int) -> None: ...

    async def first_sighting(self, token_id: str, window_s: int = 60) -> bool: ...


class Blobs(Protocol):
    """Content-addressed bytes per tenant (uploads, images, tool definitions): ``put`` is idempotent."""

    async def put(self, tenant_id: str, sha256: str, data: bytes) -> None: ...

    async def put_file(self, tenant_id: str, sha256: str, file: IO[bytes]) -> None:
        """``put`` for what a file holds, streamed: never whole in memory."""
        ...

    async def get(self, tenant_id: str, sha256: str) -> bytes: ...

    def chunks(self, tenant_id: str, sha256: str) -> AsyncIterator[bytes]:
        """The bytes a piece at a time, never whole in memory; ``KeyError`` (before the first piece)
        when there are none."""
        ...


class PersonalData(Protocol):
    """What the read models hold about one data subject (a user of a tenant), for an export. Rows are
    plain dicts of JSON-encodable values, read a page at a time: an iterator holds no connection while
    its consumer waits."""

    async def profile(self, tenant_id: str, user_id: str) -> dict[str, Any] | None: ...

    def api_keys(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]: ...

    def sessions(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]: ...

    def chats(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]: ...

    def messages(self, tenant_id: str, chat_id: str) -> AsyncIterator[dict[str, Any]]: ...

    def documents(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]: ...

    def usage_days(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]: ...

    def tool_days(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]: ...

    def generations(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]: ...

    def audit(self, tenant_id: str, user_id: str) -> AsyncIterator[dict[str, Any]]: ...


class Shredder(Protocol):
    """The immediate part of erasing a user or deleting a chat outside the event store (keys, snapshots,
    blobs, token chunks): ``gather`` what will go while the read models still name it, store the event,
    then ``shred``."""

    async def gather(self, tenant_id: str, *, user_id: str | None = None, chat_id: str | None = None) -> Any: ...

    async def shred(self, doomed: Any, *, user_id: uuid.UUID | None = None, chat_id: uuid.UUID | None = None) -> None: ...


class AuditDropPlan(Protocol):
    """The oldest rows of a tenant's audit chain that retention may drop: every row up to ``up_to_seq``
    (``count`` of them), and the hash of the row at ``up_to_seq``, which a checkpoint must vouch for."""

    @property
    def up_to_seq(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def hash(self) -> str: ...


class RetentionData(Protocol):
    """What retention reads and trims in the read models."""

    async def tenant_ids(self) -> list[str]: ...

    async def expired_chats(
        self, tenant_id: str, before: datetime, *, spare_owners: Collection[str], limit: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """(chat id, owner id) of the tenant's chats not deleted, last active before ``before``, whose owner
        is not among ``spare_owners``; oldest first, at most ``limit``."""
        ...

    async def plan_audit_drop(self, tenant_id: str, before: datetime, *, spare_users: Collection[str]) -> AuditDropPlan | None:
        """The rows that may go (``domain.retention.audit_drop_end``): None when none may."""
        ...

    async def drop_audit_rows(self, tenant_id: str, up_to_seq: int) -> int:
        """Delete the tenant's audit rows up to ``up_to_seq`` in one transaction; how many went."""
        ...


class AuditAnchor(Protocol):
    async def __call__(self, tenant_id: str, seq: int, hash: str) -> None:
        """Make sure a signed checkpoint of (tenant, seq, hash) is kept outside the database."""
        ...
