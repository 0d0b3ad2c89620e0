"""Request and response bodies of the knowledge routes: knowledge bases, their access, documents, search
results and the OpenAI-compatible embeddings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from msgspec import UNSET, Meta, UnsetType

from api.uploads import MAX_FILES_PER_REQUEST

__all__ = [
    "AccessBody",
    "Document",
    "DocumentPage",
    "EmbeddingsRequest",
    "KnowledgeBase",
    "KnowledgeCreate",
    "KnowledgePage",
    "KnowledgeUpdate",
    "SearchHit",
    "SearchResults",
    "UPLOAD_BODY",
    "UrlUpload",
]

Name = Annotated[str, Meta(max_length=1000)]  # the domain says 1-100 characters, with its own error code
Description = Annotated[str, Meta(max_length=10_000)]
ModelName = Annotated[str, Meta(min_length=1, max_length=100)]
Id = Annotated[str, Meta(min_length=1, max_length=64)]


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class KnowledgeCreate(_Body):
    name: Name
    description: Description = ""
    embedding_model: ModelName | None = None
    """``all-minilm-l6-v2`` (local, the default) or a model of ``provider_id``."""
    provider_id: Id | None = None
    chunk_size: int = 1000
    chunk_overlap: int = 150


class KnowledgeUpdate(_Body):
    name: Name | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    chunk_size: int | UnsetType = UNSET
    chunk_overlap: int | UnsetType = UNSET
    embedding_model: ModelName | UnsetType = UNSET
    """A new embedding model re-embeds every chunk in the background and switches over when done."""
    provider_id: Id | None | UnsetType = UNSET


class AccessBody(_Body):
    level: Annotated[str, Meta(max_length=10)]


class KnowledgeBase(msgspec.Struct, kw_only=True):
    id: str
    name: str
    description: str
    owner_id: str
    embedding: dict[str, Any]
    pending_embedding: dict[str, Any] | None
    chunk_size: int
    chunk_overlap: int
    access: dict[str, str]
    your_access: str
    document_count: int
    created_at: datetime
    updated_at: datetime


class KnowledgePage(msgspec.Struct, kw_only=True):
    items: list[KnowledgeBase]
    limit: int
    offset: int


class UrlUpload(_Body):
    url: Annotated[str, Meta(min_length=1, max_length=2000)]


UPLOAD_BODY = RequestBody(
    required=True,
    description="Files as multipart/form-data (the field `file`, once per file), or JSON naming a web page to "
    "fetch (`UrlUpload`, where this deployment fetches pages).",
    content={
        "multipart/form-data": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                properties={
                    "file": Schema(
                        type=OpenAPIType.ARRAY,
                        items=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                        min_items=1,
                        max_items=MAX_FILES_PER_REQUEST,
                    )
                },
                required=["file"],
            )
        ),
        "application/json": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                properties={"url": Schema(type=OpenAPIType.STRING, min_length=1, max_length=2000)},
                required=["url"],
                additional_properties=False,
            )
        ),
    },
)
"""How the upload routes take their body, which they read themselves (``UrlUpload`` as JSON)."""


class DocumentError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class Document(msgspec.Struct, kw_only=True):
    id: str
    knowledge_id: str | None
    chat_id: str | None
    filename: str
    media_type: str
    size: int
    sha256: str
    status: str
    """``queued`` → ``chunked`` → ``indexed``, or ``failed`` (with ``error``)."""
    chunk_count: int
    chunks_indexed: int
    title: str | None = None
    source_url: str | None = None
    error: DocumentError | None = None
    created_at: datetime
    updated_at: datetime


class DocumentPage(msgspec.Struct, kw_only=True):
    items: list[Document]
    limit: int
    offset: int


class SearchHit(msgspec.Struct, kw_only=True):
    document_id: str
    filename: str
    title: str | None
    chunk_index: int
    heading: str
    text: str
    page: int | None
    score: float
    """Reciprocal-rank fusion of the vector and full-text rankings."""
    similarity: float | None
    vector_rank: int | None
    text_rank: int | None


class SearchResults(msgspec.Struct, kw_only=True):
    query: str
    items: list[SearchHit]


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    """OpenAI's body (unknown fields are tolerated, as OpenAI SDKs send what they know)."""

    model: ModelName
    input: str | list[Any]
    """A string or a list of strings (token arrays are refused with UNSUPPORTED_INPUT)."""
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None
