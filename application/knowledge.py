"""Knowledge: knowledge bases, documents, their ingestion, search and retrieval for answers.

``Knowledge`` holds the use cases; it reaches the outside only through ports handed in by the composition
root: a blob store for the original bytes, a type detector and a text extractor (the document parsers), a
search index (the vector projection), the storage a tenant uses (the read model), and ``Embedders``, which
finds the embedding engine an embedding setting names (the local model, or a tenant's provider).

An upload is checked in the request: its size, the tenant's storage, its type (from the bytes) and, for
text, its encoding. The API hands each file over as it was ``Received``: spooled, counted and hashed while
it arrived, so only the file being checked is ever in memory (and the blob store streams it from the
spool), and a file past the size limit is refused from its first limit + 1 bytes, without the rest being
read. A refused upload is still recorded (``DocumentUploaded`` then ``DocumentFailed`` with
the reason), so what users tried is auditable and shows in the knowledge base with its error. Extraction
and chunking run later, in the ingestion worker, and end in ``DocumentExtracted`` + ``DocumentChunked``
or in ``DocumentFailed``.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

import msgspec

from application.chunking import chunk_text
from application.context import CommandContext
from application.embeddings import Embedder, EmbeddingError, Embeddings
from application.engines import ChatTurn, EngineRequest
from application.identity import Principal, check_user_of_tenant
from application.ports import Blobs, EventStorePort, SecretBox
from domain.chats import Chat
from domain.errors import Forbidden, Invalid, NotFound, ParleyError, TooLarge, Unavailable, UnsupportedType
from domain.knowledge import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    LOCAL_EMBEDDING,
    LOCAL_EMBEDDING_MODEL,
    Document,
    Hit,
    KnowledgeBase,
    Reader,
    SearchScope,
    check_chunking,
    check_description,
    check_embedding,
    check_filename,
    check_name,
    embedding_space,
)
from domain.models import Provider

__all__ = [
    "Embedders",
    "Knowledge",
    "KnowledgeLimits",
    "LOCAL_EMBEDDING",
    "RAG_TEMPLATE",
    "Reader",
    "Received",
    "citations_of",
    "with_sources",
]

MAX_QUERY_CHARS = 2_000
MAX_SEARCH_RESULTS = 50
# Refusals decided in the request, and the error kind each is answered with.
_REFUSALS: dict[str, type[ParleyError]] = {"UNSUPPORTED_TYPE": UnsupportedType}


class Parsed(Protocol):
    media_type: str
    text: str
    title: str | None
    page_starts: tuple[int, ...]


class Received(Protocol):
    """An uploaded file as the API received it, with its size and SHA-256 taken while it arrived.
    ``complete`` is False when the sender went past the size limit and the rest was not read: then
    ``size`` and ``sha256`` describe the part that was (the limit + 1 bytes)."""

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str: ...

    @property
    def complete(self) -> bool: ...

    @property
    def file(self) -> IO[bytes]:
        """Where the bytes wait (a temporary file), to be read from its start."""
        ...


class SearchIndex(Protocol):
    async def embeddings_of(self, tenant_id: str, knowledge_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    async def search(
        self, tenant_id: str, scopes: Sequence[SearchScope], query: str, *, limit: int = 10, document_ids: Sequence[str] = ()
    ) -> list[Hit]: ...


@dataclass(frozen=True)
class KnowledgeLimits:
    max_file_bytes: int = 25 * 1024 * 1024
    tenant_storage_bytes: int = 2 * 1024**3
    max_chars: int = 5_000_000
    """Extracted text per document."""
    max_unpacked_bytes: int = 200 * 1024 * 1024
    """What a DOCX (a zip archive) may inflate to."""
    part_chars: int = 200_000
    """Chunk text per ``DocumentChunked`` event, so that no event grows past a few hundred kilobytes."""
    extract_timeout_s: float = 300.0


class Embedders:
    """The embedder of each embedding setting, built once per process: the local model, or a model on one
    of the tenant's providers (whose key is decrypted here, never stored elsewhere)."""

    def __init__(
        self, *, store: EventStorePort, secrets: SecretBox, build: Callable[..., Embedder], device: str | None = None
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.build = build
        self.device = device
        self._embedders: dict[tuple[str | None, ...], Embedder] = {}
        self._lock = asyncio.Lock()

    async def get(self, tenant_id: str, embedding: dict[str, Any]) -> Embedder:
        provider_id = embedding.get("provider_id")
        model = str(embedding["model"])
        if provider_id is None:
            key: tuple[str | None, ...] = ("local", model)
            options: dict[str, Any] = {"device": self.device}
        else:
            provider = await self.store.call(self.store.find, Provider, uuid.UUID(str(provider_id)))
            if provider is None or provider.tenant_id != tenant_id or provider.kind not in ("openai", "ollama"):
                raise EmbeddingError("MODEL_UNAVAILABLE", "no provider that can embed with this id")
            api_key = self.secrets.decrypt(provider.api_key_encrypted) if provider.api_key_encrypted else None
            key = (provider.kind, provider.base_url, api_key, model)
            options = {"base_url": provider.base_url, "api_key": api_key}
        async with self._lock:
            embedder = self._embedders.get(key)
            if embedder is None:
                embedder = self.build(key[0], model=model, **options)
                self._embedders[key] = embedder
            return embedder

    async def close(self) -> None:
        for embedder in self._embedders.values():
            await embedder.close()


def _embedding_failure(exc: EmbeddingError) -> ParleyError:
    if exc.code in ("UPSTREAM_ERROR", "UPSTREAM_TIMEOUT"):
        return Unavailable("EMBEDDING_UNAVAILABLE", f"the embedding engine failed: {exc.message}", upstream_code=exc.code)
    return Invalid("EMBEDDING_MODEL_UNAVAILABLE", f"the embedding model cannot be used: {exc.message}", upstream_code=exc.code)


class Knowledge:
    def __init__(
        self,
        *,
        store: EventStorePort,
        blobs: Blobs,
        embedders: Embedders,
        index: SearchIndex,
        detect: Callable[..., str],
        extract: Callable[..., Parsed],
        parse_errors: tuple[type[Exception], ...],
        storage_used: Callable[[str], Any],
        limits: KnowledgeLimits = KnowledgeLimits(),
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.embedders = embedders
        self.index = index
        self.detect = detect
        self.extract = extract
        self.parse_errors = parse_errors
        self.storage_used = storage_used
        self.limits = limits

    # -- knowledge bases ------------------------------------------------------------------------------
    def _kb(self, principal: Principal, knowledge_id: uuid.UUID) -> KnowledgeBase:
        kb = self.store.find(KnowledgeBase, knowledge_id)
        if kb is None or kb.tenant_id != principal.tenant_id:
            raise NotFound("KNOWLEDGE_NOT_FOUND", "no such knowledge base")
        kb.check_readable(principal.user_id, principal.role, is_admin=principal.is_admin)
        return kb

    async def get(self, principal: Principal, knowledge_id: uuid.UUID) -> KnowledgeBase:
        return await self.store.call(self._kb, principal, knowledge_id)

    async def _checked_embedding(self, principal: Principal, model: str, provider_id: str | None) -> dict[str, Any]:
        embedding = check_embedding({"provider_id": provider_id, "model": model})
        if embedding["provider_id"] is None and embedding["model"] != LOCAL_EMBEDDING_MODEL:
            raise Invalid(
                "EMBEDDING_MODEL_UNAVAILABLE",
                f"the local embedding model is '{LOCAL_EMBEDDING_MODEL}'; other models need a provider_id",
                field="embedding_model",
            )
        if embedding["provider_id"] is not None:
            try:
                uuid.UUID(embedding["provider_id"])
                embedder = await self.embedders.get(principal.tenant_id, embedding)
                await embedder.embed(["parley checks that this model embeds"])
            except ValueError:
                raise Invalid("INVALID_PROVIDER_ID", "provider_id is not a UUID", field="provider_id") from None
            except EmbeddingError as exc:
                raise _embedding_failure(exc) from None
        return embedding

    async def create(
        self,
        ctx: CommandContext,
        principal: Principal,
        *,
        name: str,
        description: str = "",
        embedding_model: str = LOCAL_EMBEDDING_MODEL,
        provider_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ) -> KnowledgeBase:
        if principal.role in ("guest", "pending"):
            raise Forbidden("ROLE_CANNOT_CREATE", f"a {principal.role} account cannot create knowledge bases")
        name = check_name(name)
        description = check_description(description)
        check_chunking(chunk_size, chunk_overlap)
        embedding = await self._checked_embedding(principal, embedding_model, provider_id)

        def command() -> KnowledgeBase:
            kb = KnowledgeBase(
                tenant_id=principal.tenant_id,
                owner_id=principal.user_id,
                name=name,
                description=description,
                embedding=embedding,
                chunk_size=chunk_size,
                chunk_overlap=chunk_overlap,
            )
            self.store.save(kb)
            return kb

        return await self.store.execute(ctx, command)

    async def _change(
        self,
        ctx: CommandContext,
        principal: Principal,
        knowledge_id: uuid.UUID,
        change: Callable[[KnowledgeBase], None],
        *,
        manage: bool,
    ) -> KnowledgeBase:
        """One change to a knowledge base, by someone who may write to it (``manage``: its owner or an
        admin: sharing, the embedding model, deletion)."""

        def command() -> KnowledgeBase:
            kb = self._kb(principal, knowledge_id)
            check = kb.check_manageable if manage else kb.check_writable
            check(principal.user_id, principal.role, is_admin=principal.is_admin)
            change(kb)
            self.store.save(kb)
            return kb

        return await self.store.execute(ctx, command)

    async def update(
        self,
        ctx: CommandContext,
        principal: Principal,
        knowledge_id: uuid.UUID,
        *,
        name: str | None = None,
        description: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> KnowledgeBase:
        def change(kb: KnowledgeBase) -> None:
            kb.update(name=name, description=description, chunk_size=chunk_size, chunk_overlap=chunk_overlap)

        return await self._change(ctx, principal, knowledge_id, change, manage=False)

    async def grant(self, ctx: CommandContext, principal: Principal, knowledge_id: uuid.UUID, grantee: str, level: str) -> KnowledgeBase:
        def change(kb: KnowledgeBase) -> None:
            if grantee.startswith("user:"):
                check_user_of_tenant(self.store, principal.tenant_id, grantee.removeprefix("user:"))
            kb.grant(grantee, level)

        return await self._change(ctx, principal, knowledge_id, change, manage=True)

    async def revoke(self, ctx: CommandContext, principal: Principal, knowledge_id: uuid.UUID, grantee: str) -> KnowledgeBase:
        return await self._change(ctx, principal, knowledge_id, lambda kb: kb.revoke(grantee), manage=True)

    async def change_embedding(
        self, ctx: CommandContext, principal: Principal, knowledge_id: uuid.UUID, *, model: str, provider_id: str | None
    ) -> KnowledgeBase:
        kb = await self.get(principal, knowledge_id)
        kb.check_manageable(principal.user_id, principal.role, is_admin=principal.is_admin)
        embedding = await self._checked_embedding(principal, model, provider_id)
        return await self._change(ctx, principal, knowledge_id, lambda kb: kb.change_embedding(embedding), manage=True)

    async def switch_embedding(self, ctx: CommandContext, knowledge_id: uuid.UUID, space: str) -> bool:
        """The background re-embedder has the vectors of ``space`` ready: switch over."""

        def command() -> bool:
            kb = self.store.find(KnowledgeBase, knowledge_id)
            if kb is None or not kb.switch_embedding(space):
                return False
            self.store.save(kb)
            return True

        return await self.store.execute(ctx, command)

    async def delete(self, ctx: CommandContext, principal: Principal, knowledge_id: uuid.UUID) -> None:
        await self._change(ctx, principal, knowledge_id, KnowledgeBase.delete, manage=True)

    # -- documents ------------------------------------------------------------------------------------
    def _chat(self, principal: Principal, chat_id: uuid.UUID | None) -> Chat:
        chat = self.store.find(Chat, chat_id) if chat_id is not None else None
        if chat is None or chat.tenant_id != principal.tenant_id:
            raise NotFound("CHAT_NOT_FOUND", "no such chat")
        chat.check_owner(principal.user_id)
        return chat

    def _place(self, principal: Principal, knowledge_id: uuid.UUID | None, chat_id: uuid.UUID | None) -> tuple[str, Chat | None]:
        """Where an upload goes (checking the caller may write there): the document scope, and the chat
        when it goes into one."""
        if knowledge_id is not None:
            kb = self._kb(principal, knowledge_id)
            kb.check_writable(principal.user_id, principal.role, is_admin=principal.is_admin)
            return f"knowledge/{knowledge_id}", None
        chat = self._chat(principal, chat_id)
        chat.check_writable()
        return f"chats/{chat_id}", chat

    async def check_upload(
        self, principal: Principal, *, knowledge_id: uuid.UUID | None = None, chat_id: uuid.UUID | None = None
    ) -> None:
        """Whether the caller may upload there at all, asked before a request's files are read."""
        principal.require_scope("write")
        if (knowledge_id is None) == (chat_id is None):
            raise Invalid("INVALID_DOCUMENT_PLACE", "a document goes into exactly one knowledge base or chat")
        await self.store.call(self._place, principal, knowledge_id, chat_id)

    async def upload(
        self,
        ctx: CommandContext,
        principal: Principal,
        *,
        data: bytes | Received,
        filename: str,
        declared_type: str | None = None,
        knowledge_id: uuid.UUID | None = None,
        chat_id: uuid.UUID | None = None,
        source_url: str | None = None,
    ) -> Document:
        """Store the bytes and record the upload; the ingestion worker takes it from there. A refused
        upload is recorded as failed, then answered with its error (carrying the document's id)."""
        principal.require_scope("write")
        if (knowledge_id is None) == (chat_id is None):
            raise Invalid("INVALID_DOCUMENT_PLACE", "a document goes into exactly one knowledge base or chat")
        filename = check_filename(filename)
        if isinstance(data, bytes):
            size, sha256, complete = len(data), hashlib.sha256(data).hexdigest(), True
        else:
            size, sha256, complete = data.size, data.sha256, data.complete
        media_type, refusal = await self._accept(principal, data, size, sha256, complete, filename, declared_type)

        def command() -> Document:
            scope, chat = self._place(principal, knowledge_id, chat_id)
            kind = media_type[:100]
            document = self.store.find(Document, Document.create_id(principal.tenant_id, scope, sha256))
            if document is None:
                document = Document(
                    tenant_id=principal.tenant_id,
                    scope=scope,
                    sha256=sha256,
                    owner_id=principal.user_id,
                    knowledge_id=knowledge_id,
                    chat_id=chat_id,
                    filename=filename,
                    media_type=kind,
                    size=size,
                    source_url=source_url,
                )
            else:
                document.upload_again(filename=filename, media_type=kind, size=size, source_url=source_url)
            if refusal is not None:
                document.fail(refusal.code, refusal.message)
            if chat is not None and refusal is None:
                chat.attach_file(str(document.id))
            self.store.save(document, chat)
            return document

        document = await self.store.execute(ctx, command)
        if refusal is not None:
            refusal.detail["document_id"] = str(document.id)
            raise refusal
        return document

    async def _accept(
        self,
        principal: Principal,
        data: bytes | Received,
        size: int,
        sha256: str,
        complete: bool,
        filename: str,
        declared_type: str | None,
    ) -> tuple[str, ParleyError | None]:
        """The checks an upload passes before it is recorded, and its bytes stored when it passes them:
        the media type, and the refusal if there is one. The size checks come first, so a file that is
        too large is refused without its bytes being read."""
        media_type = declared_type or "application/octet-stream"
        limit = self.limits.max_file_bytes
        if not complete or size > limit:
            return media_type, TooLarge("FILE_TOO_LARGE", f"a document may be at most {limit} bytes", limit=limit)
        if await self.storage_used(principal.tenant_id) + size > self.limits.tenant_storage_bytes:
            return media_type, TooLarge(
                "TENANT_STORAGE_FULL", "this tenant's document storage is full", limit=self.limits.tenant_storage_bytes
            )
        try:
            media_type = await self._detected_type(data, filename, declared_type)
        except self.parse_errors as exc:
            code, message = _reason(exc)
            return media_type, _REFUSALS.get(code, Invalid)(code, message)
        if isinstance(data, bytes):
            await self.blobs.put(principal.tenant_id, sha256, data)
        else:
            await self.blobs.put_file(principal.tenant_id, sha256, data.file)
        return media_type, None

    async def _detected_type(self, data: bytes | Received, filename: str, declared_type: str | None) -> str:
        """The media type the content shows; a received file's bytes are in memory only meanwhile."""
        content = data if isinstance(data, bytes) else await asyncio.to_thread(_contents, data.file)
        return await asyncio.to_thread(self.detect, content, filename=filename, declared=declared_type)

    def _located(self, principal: Principal, document_id: uuid.UUID) -> tuple[Document, KnowledgeBase | Chat]:
        """A document the caller may read, with the knowledge base or chat it is in."""
        document = self.store.find(Document, document_id)
        if document is None or document.deleted or document.tenant_id != principal.tenant_id:
            raise NotFound("DOCUMENT_NOT_FOUND", "no such document")
        try:
            if document.knowledge_id is not None:
                return document, self._kb(principal, document.knowledge_id)
            return document, self._chat(principal, document.chat_id)
        except NotFound:
            raise NotFound("DOCUMENT_NOT_FOUND", "no such document") from None

    async def document(self, principal: Principal, document_id: uuid.UUID) -> Document:
        document, _ = await self.store.call(self._located, principal, document_id)
        return document

    async def delete_document(self, ctx: CommandContext, principal: Principal, document_id: uuid.UUID) -> None:
        def command() -> None:
            document, place = self._located(principal, document_id)
            if isinstance(place, KnowledgeBase):
                place.check_writable(principal.user_id, principal.role, is_admin=principal.is_admin)
            document.delete()
            if isinstance(place, Chat):
                place.detach_file(str(document.id))
            self.store.save(document, place)

        await self.store.execute(ctx, command)

    async def ingest(self, ctx: CommandContext, document_id: uuid.UUID) -> str | None:
        """Extract and chunk one queued document; record the result. Returns the document's new status, or
        None when there was nothing to do (already ingested, deleted: a redelivered job)."""
        document = await self.store.call(self.store.find, Document, document_id)
        if document is None or not document.pending:
            return None
        size, overlap = DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_OVERLAP
        failure: tuple[str, str] | None = None
        chunks: list[dict[str, Any]] = []
        parsed: Parsed | None = None
        if document.knowledge_id is not None:
            kb = await self.store.call(self.store.find, KnowledgeBase, document.knowledge_id)
            if kb is None or kb.deleted:
                failure = ("KNOWLEDGE_DELETED", "the knowledge base was deleted")
            else:
                size, overlap = kb.chunk_size, kb.chunk_overlap
        if failure is None:
            try:
                data = await self.blobs.get(document.tenant_id, document.sha256)
            except KeyError:
                failure = ("BLOB_MISSING", "the document's bytes are missing from the blob store")
            else:
                try:
                    # A hostile file could keep a parser busy for ever: give up on it after a while (its
                    # thread finishes in the background; the document fails).
                    parsed = await asyncio.wait_for(
                        asyncio.to_thread(
                            self.extract,
                            data,
                            document.media_type,
                            max_chars=self.limits.max_chars,
                            max_unpacked_bytes=self.limits.max_unpacked_bytes,
                        ),
                        timeout=self.limits.extract_timeout_s,
                    )
                    pieces = await asyncio.to_thread(
                        chunk_text, parsed.text, size=size, overlap=overlap, page_starts=parsed.page_starts
                    )
                    chunks = [
                        {"index": c.index, "text": c.text, "heading": c.heading, "page": c.page, "start": c.start, "end": c.end}
                        for c in pieces
                    ]
                    if not chunks:
                        failure = ("DOCUMENT_EMPTY", "the document has no text to index")
                except self.parse_errors as exc:
                    failure = _reason(exc)
                except TimeoutError:
                    failure = ("EXTRACTION_TIMEOUT", f"extraction took over {self.limits.extract_timeout_s:g} s")

        def command() -> str | None:
            current = self.store.get(Document, document_id)
            if not current.pending:
                return None
            if failure is not None or parsed is None:
                code, message = failure or ("UNREADABLE", "the document could not be read")
                current.fail(code, message)
            else:
                current.extracted(
                    title=parsed.title, media_type=parsed.media_type, chars=len(parsed.text), chunks=chunks, part_chars=self.limits.part_chars
                )
            self.store.save(current)
            return str(current.status)

        return await self.store.execute(ctx, command)

    async def fail_ingestion(self, ctx: CommandContext, document_id: uuid.UUID, code: str, message: str) -> bool:
        """A document the worker could not get through (it crashed on it every time): fail it."""

        def command() -> bool:
            document = self.store.find(Document, document_id)
            if document is None or not document.pending:
                return False
            document.fail(code, message)
            self.store.save(document)
            return True

        return await self.store.execute(ctx, command)

    # -- search and retrieval -------------------------------------------------------------------------
    async def _query_vector(self, tenant_id: str, embedding: dict[str, Any], query: str) -> list[float] | None:
        try:
            embedder = await self.embedders.get(tenant_id, embedding)
            return (await embedder.embed([query])).vectors[0]
        except EmbeddingError as exc:
            if exc.code in ("UPSTREAM_ERROR", "UPSTREAM_TIMEOUT"):
                raise _embedding_failure(exc) from None
            return None  # the model cannot be used any more: full text still answers

    async def _indexed_embeddings(self, tenant_id: str, kbs: Sequence[KnowledgeBase]) -> dict[str, dict[str, Any]]:
        """Each knowledge base's embedding as its vectors are now (the aggregate's, if not indexed yet)."""
        indexed = await self.index.embeddings_of(tenant_id, [str(kb.id) for kb in kbs])
        return {str(kb.id): indexed.get(str(kb.id), kb.embedding) for kb in kbs}

    async def search(
        self,
        principal: Principal,
        knowledge_id: uuid.UUID,
        query: str,
        *,
        document_ids: Sequence[uuid.UUID] = (),
        limit: int = 10,
    ) -> list[Hit]:
        principal.require_scope("read")
        query = _check_query(query)
        if not 1 <= limit <= MAX_SEARCH_RESULTS:
            raise Invalid("INVALID_LIMIT", f"limit is between 1 and {MAX_SEARCH_RESULTS}", field="limit")
        kb = await self.get(principal, knowledge_id)
        hits, _ = await self._hybrid(
            principal.tenant_id, [kb], None, query, limit=limit, document_ids=[str(d) for d in document_ids], tolerant=False
        )
        return hits

    async def _hybrid(
        self,
        tenant_id: str,
        kbs: Sequence[KnowledgeBase],
        chat_id: uuid.UUID | None,
        query: str,
        *,
        limit: int,
        document_ids: Sequence[str] = (),
        tolerant: bool,
    ) -> tuple[list[Hit], bool]:
        """Search the knowledge bases (each in the space its vectors are in) and the chat's files; also
        whether any vector ranking was made. A switch of embedding model that commits while we search
        would leave us looking in a space that is gone: the spaces are read again after the search, and
        the search repeated if they changed. ``tolerant``: an embedding engine that fails costs its space
        the vector ranking (answers), instead of failing the search (the search API)."""
        local = embedding_space(LOCAL_EMBEDDING)
        hits: list[Hit] = []
        vectored = False
        for _ in range(3):
            embeddings = await self._indexed_embeddings(tenant_id, kbs)
            by_space: dict[str, tuple[dict[str, Any], list[str]]] = {}
            for kb in kbs:
                embedding = embeddings[str(kb.id)]
                by_space.setdefault(embedding_space(embedding), (embedding, []))[1].append(str(kb.id))
            if chat_id is not None:
                by_space.setdefault(local, (LOCAL_EMBEDDING, []))
            if not by_space:
                return [], False
            scopes = []
            for space, (embedding, ids) in by_space.items():
                try:
                    vector = await self._query_vector(tenant_id, embedding, query)
                except ParleyError:
                    if not tolerant:
                        raise
                    vector = None
                chat = str(chat_id) if space == local and chat_id else None
                scopes.append(SearchScope(space=space, vector=vector, knowledge_ids=ids, chat_id=chat))
            vectored = any(scope.vector is not None for scope in scopes)
            hits = await self.index.search(tenant_id, scopes, query, limit=limit, document_ids=document_ids)
            if await self._indexed_embeddings(tenant_id, kbs) == embeddings:
                break
        return hits, vectored

    def readable(self, reader: Reader, knowledge_ids: Sequence[uuid.UUID]) -> list[KnowledgeBase]:
        """The knowledge bases among ``knowledge_ids`` that ``reader`` may read now (runs in a command)."""
        found = []
        for knowledge_id in dict.fromkeys(knowledge_ids):
            kb = self.store.find(KnowledgeBase, knowledge_id)
            if kb is not None and kb.tenant_id == reader.tenant_id and kb.level_for(reader.user_id, reader.role, is_admin=reader.is_admin):
                found.append(kb)
        return found

    async def retrieve(
        self,
        reader: Reader,
        *,
        knowledge_ids: Sequence[uuid.UUID],
        chat_id: uuid.UUID | None,
        query: str,
        limit: int,
        min_similarity: float = 0.0,
    ) -> list[Hit]:
        """The chunks that best answer ``query`` from the knowledge bases the reader may read and the files
        of the chat: what a generation puts in its prompt and cites."""
        if not query.strip():
            return []
        kbs = await self.store.call(self.readable, reader, knowledge_ids)
        hits, vectored = await self._hybrid(reader.tenant_id, kbs, chat_id, query[:MAX_QUERY_CHARS], limit=limit, tolerant=True)
        # A chunk that is far from the question only distracts the model (small ones most): keep those the
        # vector ranking found close enough (all of them when no vector ranking could be made).
        return [h for h in hits if h.similarity is None or h.similarity >= min_similarity] if vectored else hits

    async def embed(self, tenant_id: str, embedding: dict[str, Any], texts: Sequence[str]) -> Embeddings:
        """Embeddings for ``/v1/embeddings``."""
        try:
            embedder = await self.embedders.get(tenant_id, embedding)
            return await embedder.embed(texts)
        except EmbeddingError as exc:
            raise _embedding_failure(exc) from None


def _contents(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read()


def _reason(exc: Exception) -> tuple[str, str]:
    """The stable code and the message a document parser's failure carries."""
    return getattr(exc, "code", "UNREADABLE"), getattr(exc, "message", str(exc))


def _check_query(query: str) -> str:
    query = query.strip()
    if not query:
        raise Invalid("EMPTY_QUERY", "the query is empty", field="q")
    if len(query) > MAX_QUERY_CHARS or "\x00" in query:
        raise Invalid("INVALID_QUERY", f"a query is at most {MAX_QUERY_CHARS} characters", field="q")
    return query


# --- answers from knowledge ----------------------------------------------------------------------------
RAG_TEMPLATE = """Answer the user's question using the sources below. Cite the sources you use as [1], [2] and so on.
If the sources do not contain the answer, say that you do not know.

{sources}"""
"""The system message a generation with retrieved chunks gets (``{sources}``: the numbered chunks)."""


def with_sources(request: EngineRequest, hits: Sequence[Hit]) -> EngineRequest:
    """``request`` with the retrieved chunks put before the conversation, numbered as they are cited."""
    if not hits:
        return request
    sources = "\n\n".join(
        f"[{n}] {hit.title or hit.filename}{' — ' + hit.heading if hit.heading else ''}\n{hit.text}"
        for n, hit in enumerate(hits, start=1)
    )
    system = RAG_TEMPLATE.format(sources=sources)
    messages = list(request.messages)
    if messages and messages[0].role == "system":
        system = f"{messages[0].content}\n\n{system}"
        messages = messages[1:]
    return msgspec.structs.replace(request, messages=[ChatTurn(role="system", content=system), *messages])


def citations_of(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [
        {
            "n": n,
            "document_id": hit.document_id,
            "knowledge_id": hit.knowledge_id,
            "filename": hit.filename,
            "title": hit.title,
            "chunk_index": hit.chunk_index,
            "heading": hit.heading,
            "page": hit.page,
            "score": round(hit.score, 6),
        }
        for n, hit in enumerate(hits, start=1)
    ]
