"""Knowledge bases (create, rename, describe, share, change the embedding model, delete), their documents
(upload, progress, delete) and hybrid search; and a chat's own files. What the caller may not read is
answered 404, as if it did not exist."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, delete, get, patch, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from msgspec import UNSET

from adapters.web import fetch_url
from api import dto_knowledge as dto
from api.deps import App, Caller, command_context
from api.openapi import refusals
from api.requests import decode_json_body
from api.uploads import SpooledFile, check_declared_length, read_bounded, receive_files, upload_body_limit
from application.identity import Principal
from domain.errors import Forbidden, NotFound, UnsupportedType
from domain.knowledge import LOCAL_EMBEDDING_MODEL, Hit, Reader
from domain.knowledge import Document as DocumentAggregate
from domain.knowledge import KnowledgeBase as KnowledgeAggregate
from projections.conversations import MAX_PAGE
from projections.knowledge import document_count, get_document, get_knowledge, list_documents, list_knowledge
from workers.bootstrap import Container

__all__ = ["ChatFilesController", "DocumentController", "KnowledgeController", "document_dto"]


def _reader(caller: Principal) -> Reader:
    return Reader(tenant_id=caller.tenant_id, user_id=caller.user_id, role=caller.role, is_admin=caller.is_admin)


def knowledge_dto(kb: KnowledgeAggregate | dict[str, Any], caller: Principal, *, documents: int = 0) -> dto.KnowledgeBase:
    """A read-model row as it is, or an aggregate with ``documents`` (the read model's count: the aggregate
    does not keep its documents)."""
    if isinstance(kb, dict):
        return dto.KnowledgeBase(**kb)
    level = kb.level_for(caller.user_id, caller.role, is_admin=caller.is_admin) or "read"
    return dto.KnowledgeBase(
        id=str(kb.id),
        name=kb.name,
        description=kb.description,
        owner_id=str(kb.owner_id),
        embedding=kb.embedding,
        pending_embedding=kb.pending_embedding,
        chunk_size=kb.chunk_size,
        chunk_overlap=kb.chunk_overlap,
        access=dict(kb.access) if level == "write" else {},
        your_access=level,
        document_count=documents,
        created_at=kb.created_on,
        updated_at=kb.modified_on,
    )


async def _knowledge_out(c: Any, kb: KnowledgeAggregate, caller: Principal) -> dto.KnowledgeBase:
    return knowledge_dto(kb, caller, documents=await document_count(c.engine, caller.tenant_id, kb.id))


def document_dto(d: DocumentAggregate | dict[str, Any]) -> dto.Document:
    if isinstance(d, dict):
        error = d.get("error")
        fields = {k: v for k, v in d.items() if k in dto.Document.__struct_fields__ and k != "error"}
        return dto.Document(**fields, error=dto.DocumentError(**error) if error else None)
    return dto.Document(
        id=str(d.id),
        knowledge_id=str(d.knowledge_id) if d.knowledge_id else None,
        chat_id=str(d.chat_id) if d.chat_id else None,
        filename=d.filename,
        media_type=d.media_type,
        size=d.size,
        sha256=d.sha256,
        status=d.status,
        chunk_count=d.chunk_count,
        chunks_indexed=0,
        title=d.title,
        source_url=d.source_url,
        error=dto.DocumentError(code=d.error_code, message=d.error_message or "") if d.error_code else None,
        created_at=d.created_on,
        updated_at=d.modified_on,
    )


def hit_dto(h: Hit) -> dto.SearchHit:
    return dto.SearchHit(
        document_id=h.document_id,
        filename=h.filename,
        title=h.title,
        chunk_index=h.chunk_index,
        heading=h.heading,
        text=h.text,
        page=h.page,
        score=round(h.score, 6),
        similarity=None if h.similarity is None else round(h.similarity, 6),
        vector_rank=h.vector_rank,
        text_rank=h.text_rank,
    )


def _upload_kind(request: Request[Any, Any, Any], c: Container) -> str:
    """``json`` (a page to fetch) or ``multipart`` (files), from the headers alone; a body the route could
    not take is refused here, before it is read: the wrong type, no ``Content-Length``, or one over what
    that kind of body may carry (the usual request limit for JSON; every file at its limit, and the
    framing, for multipart)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        check_declared_length(request, c.settings.max_request_bytes)
        return "json"
    if content_type == "multipart/form-data":
        check_declared_length(request, upload_body_limit(c.knowledge.limits.max_file_bytes))
        return "multipart"
    raise UnsupportedType(
        "UNSUPPORTED_MEDIA_TYPE", "upload files as multipart/form-data (field 'file'), or send JSON {\"url\": ...}"
    )


async def _uploads(
    request: Request[Any, Any, Any], c: Container, kind: str
) -> list[tuple[bytes | SpooledFile, str, str | None, str | None]]:
    """The files of a multipart upload (field ``file`` or ``files``), spooled as they arrive, or the page a
    JSON ``{"url"}`` names: (content, filename, declared type, source URL) each."""
    if kind == "json":
        body = decode_json_body(await read_bounded(request, c.settings.max_request_bytes), dto.UrlUpload)
        if not c.settings.allow_url_fetch:
            raise Forbidden("URL_FETCH_DISABLED", "this deployment does not fetch web pages; upload the file instead")
        page = await fetch_url(body.url, max_bytes=c.settings.max_upload_bytes, allow_private=c.settings.url_fetch_private)
        return [(page.data, page.filename, page.content_type, page.url)]
    files = await receive_files(request, max_file_bytes=c.knowledge.limits.max_file_bytes)
    return [(f.content, f.filename, f.declared_type, None) for f in files]


async def _ingest(
    request: Request[Any, Any, Any], c: Container, caller: Principal, *, knowledge_id: UUID | None = None, chat_id: UUID | None = None
) -> list[dto.Document]:
    """The request's files, received one after another (at most one file's bytes in memory at a time),
    then handed over in order; the first refusal answers the request, as the files before it stay."""
    kind = _upload_kind(request, c)
    await c.knowledge.check_upload(caller, knowledge_id=knowledge_id, chat_id=chat_id)
    uploads = await _uploads(request, c, kind)
    ctx = command_context(request, caller)
    documents = []
    try:
        for data, filename, declared, source_url in uploads:
            document = await c.knowledge.upload(
                ctx,
                caller,
                data=data,
                filename=filename,
                declared_type=declared,
                knowledge_id=knowledge_id,
                chat_id=chat_id,
                source_url=source_url,
            )
            documents.append(document_dto(document))
    finally:
        for data, *_ in uploads:
            if isinstance(data, SpooledFile):
                data.close()
    return documents


class KnowledgeController(Controller):
    path = "/api/v1/knowledge"
    tags = ["knowledge"]

    @get("/", operation_id="ListKnowledge")
    async def list_all(
        self,
        c: App,
        caller: Caller,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> dto.KnowledgePage:
        caller.require_scope("read")
        items = await list_knowledge(c.engine, _reader(caller), limit=limit, offset=offset)
        return dto.KnowledgePage(items=[knowledge_dto(i, caller) for i in items], limit=limit, offset=offset)

    @post("/", operation_id="CreateKnowledge", status_code=HTTP_201_CREATED, responses=refusals(404))
    async def create(self, request: Request[Any, Any, Any], c: App, caller: Caller, data: JSONBody[dto.KnowledgeCreate]) -> dto.KnowledgeBase:
        caller.require_scope("write")
        kb = await c.knowledge.create(
            command_context(request, caller),
            caller,
            name=data.name,
            description=data.description,
            embedding_model=data.embedding_model or LOCAL_EMBEDDING_MODEL,
            provider_id=data.provider_id,
            chunk_size=data.chunk_size,
            chunk_overlap=data.chunk_overlap,
        )
        return knowledge_dto(kb, caller)

    @get("/{knowledge_id:uuid}", operation_id="GetKnowledge")
    async def show(self, knowledge_id: FromPath[UUID], c: App, caller: Caller) -> dto.KnowledgeBase:
        caller.require_scope("read")
        row = await get_knowledge(c.engine, _reader(caller), knowledge_id)
        if row is not None:
            return knowledge_dto(row, caller)
        return await _knowledge_out(c, await c.knowledge.get(caller, knowledge_id), caller)  # not projected yet, or 404

    @patch("/{knowledge_id:uuid}", operation_id="UpdateKnowledge")
    async def update(
        self, request: Request[Any, Any, Any], knowledge_id: FromPath[UUID], c: App, caller: Caller, data: JSONBody[dto.KnowledgeUpdate]
    ) -> dto.KnowledgeBase:
        caller.require_scope("write")
        ctx = command_context(request, caller)
        fields = {k: v for k in ("name", "description", "chunk_size", "chunk_overlap") if (v := getattr(data, k)) is not UNSET}
        kb = await c.knowledge.get(caller, knowledge_id)
        if fields:
            kb = await c.knowledge.update(ctx, caller, knowledge_id, **fields)
        if data.embedding_model is not UNSET:
            provider_id = None if data.provider_id is UNSET else data.provider_id
            kb = await c.knowledge.change_embedding(ctx, caller, knowledge_id, model=data.embedding_model, provider_id=provider_id)
        return await _knowledge_out(c, kb, caller)

    @delete("/{knowledge_id:uuid}", operation_id="DeleteKnowledge", status_code=HTTP_204_NO_CONTENT)
    async def remove(self, request: Request[Any, Any, Any], knowledge_id: FromPath[UUID], c: App, caller: Caller) -> None:
        caller.require_scope("write")
        await c.knowledge.delete(command_context(request, caller), caller, knowledge_id)

    @put("/{knowledge_id:uuid}/access/{grantee:str}", operation_id="GrantKnowledgeAccess")
    async def grant(
        self,
        request: Request[Any, Any, Any],
        knowledge_id: FromPath[UUID],
        grantee: FromPath[str],
        c: App,
        caller: Caller,
        data: JSONBody[dto.AccessBody],
    ) -> dto.KnowledgeBase:
        caller.require_scope("write")
        kb = await c.knowledge.grant(command_context(request, caller), caller, knowledge_id, grantee, data.level)
        return await _knowledge_out(c, kb, caller)

    @delete("/{knowledge_id:uuid}/access/{grantee:str}", operation_id="RevokeKnowledgeAccess", status_code=HTTP_204_NO_CONTENT)
    async def revoke(
        self, request: Request[Any, Any, Any], knowledge_id: FromPath[UUID], grantee: FromPath[str], c: App, caller: Caller
    ) -> None:
        caller.require_scope("write")
        await c.knowledge.revoke(command_context(request, caller), caller, knowledge_id, grantee)

    @post(
        "/{knowledge_id:uuid}/documents",
        operation_id="UploadDocuments",
        status_code=HTTP_202_ACCEPTED,
        request_max_body_size=None,  # the upload readers bound the body, by its kind and the settings
        opt={"request_body": dto.UPLOAD_BODY},
        responses=refusals(503),
    )
    async def upload(self, request: Request[Any, Any, Any], knowledge_id: FromPath[UUID], c: App, caller: Caller) -> list[dto.Document]:
        return await _ingest(request, c, caller, knowledge_id=knowledge_id)

    @get("/{knowledge_id:uuid}/documents", operation_id="ListDocuments")
    async def documents(
        self,
        knowledge_id: FromPath[UUID],
        c: App,
        caller: Caller,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> dto.DocumentPage:
        caller.require_scope("read")
        await c.knowledge.get(caller, knowledge_id)
        items = await list_documents(c.engine, caller.tenant_id, knowledge_id=str(knowledge_id), limit=limit, offset=offset)
        return dto.DocumentPage(items=[document_dto(i) for i in items], limit=limit, offset=offset)

    @get("/{knowledge_id:uuid}/search", operation_id="SearchKnowledge", responses=refusals(503))
    async def search(
        self,
        knowledge_id: FromPath[UUID],
        c: App,
        caller: Caller,
        q: Annotated[str, QueryParameter(max_length=2000)],
        limit: Annotated[int, QueryParameter(ge=1, le=50)] = 10,
        document_id: FromQuery[list[UUID] | None] = None,
    ) -> dto.SearchResults:
        hits = await c.knowledge.search(caller, knowledge_id, q, document_ids=document_id or [], limit=limit)
        return dto.SearchResults(query=q, items=[hit_dto(h) for h in hits])


class DocumentController(Controller):
    path = "/api/v1/documents"
    tags = ["knowledge"]

    @get("/{document_id:uuid}", operation_id="GetDocument")
    async def show(self, document_id: FromPath[UUID], c: App, caller: Caller) -> dto.Document:
        caller.require_scope("read")
        document = await c.knowledge.document(caller, document_id)  # checks the caller may read it
        row = await get_document(c.engine, caller.tenant_id, document_id)
        return document_dto(row if row is not None else document)

    @delete("/{document_id:uuid}", operation_id="DeleteDocument", status_code=HTTP_204_NO_CONTENT)
    async def remove(self, request: Request[Any, Any, Any], document_id: FromPath[UUID], c: App, caller: Caller) -> None:
        caller.require_scope("write")
        await c.knowledge.delete_document(command_context(request, caller), caller, document_id)


class ChatFilesController(Controller):
    """Files attached to one chat: used for that chat's answers only, visible to its owner only."""

    path = "/api/v1/chats/{chat_id:uuid}/files"
    tags = ["chats"]

    # The upload readers bound the body, by its kind and the settings (see _upload_kind).
    @post(
        "/",
        operation_id="UploadChatFiles",
        status_code=HTTP_202_ACCEPTED,
        request_max_body_size=None,
        opt={"request_body": dto.UPLOAD_BODY},
        responses=refusals(503),
    )
    async def upload(self, request: Request[Any, Any, Any], chat_id: FromPath[UUID], c: App, caller: Caller) -> list[dto.Document]:
        return await _ingest(request, c, caller, chat_id=chat_id)

    @get("/", operation_id="ListChatFiles")
    async def list_all(self, chat_id: FromPath[UUID], c: App, caller: Caller) -> dto.DocumentPage:
        caller.require_scope("read")
        chat = await c.chats.get(caller, chat_id)
        if chat.owner_id != caller.user_id:
            raise NotFound("CHAT_NOT_FOUND", "no such chat")
        items = await list_documents(c.engine, caller.tenant_id, chat_id=str(chat_id), limit=MAX_PAGE)
        return dto.DocumentPage(items=[document_dto(i) for i in items], limit=MAX_PAGE, offset=0)
