"""Read-model tables (SQLAlchemy Core). Every row carries ``tenant_id``; every query filters by it.
Projections own their tables; ``create_all`` at start creates what is missing."""

from __future__ import annotations

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Computed,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID

__all__ = [
    "metadata",
    "webhook_endpoints",
    "webhook_scopes",
    "webhook_messages",
    "webhook_attempts",
    "webhook_health",
    "webhook_replays",
    "webhook_log_floor",
    "projector_positions",
    "relay_positions",
    "tenants",
    "users",
    "api_keys",
    "audit_log",
    "audit_heads",
]

metadata = MetaData()

# Where each consumer of the notification log has got to. Written in the same transaction as its effects.
projector_positions = Table(
    "projector_positions",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False, server_default="0"),
)

relay_positions = Table(
    "relay_positions",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False, server_default="0"),
)

tenants = Table(
    "rm_tenants",
    metadata,
    Column("tenant_id", UUID(as_uuid=False), primary_key=True),
    Column("slug", String(40), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("allow_signup", Boolean, nullable=False),
    Column("default_role", String(20), nullable=False),
    Column("domains", JSONB, nullable=False),
    Column("user_count", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

users = Table(
    "rm_users",
    metadata,
    Column("user_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("email", String(254), nullable=False),
    Column("name", String(100), nullable=False),
    Column("role", String(20), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("token_version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant_id", "email", name="uq_rm_users_tenant_email"),
    Index("ix_rm_users_tenant_created", "tenant_id", "created_at"),
)

api_keys = Table(
    "rm_api_keys",
    metadata,
    Column("key_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("user_id", UUID(as_uuid=False), nullable=False),
    Column("name", String(100), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("scopes", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("role_map", JSONB),  # gateway keys: front-end role -> parley role for the end users they create
    Index("ix_rm_api_keys_user", "tenant_id", "user_id"),
)

# One row per event, chained per tenant: hash = sha256(prev_hash + canonical row), so an edited,
# inserted or deleted row breaks the chain; audit_heads anchors the newest hash of each tenant.
audit_log = Table(
    "rm_audit_log",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("notification_id", BigInteger, nullable=False),
    Column("event_id", UUID(as_uuid=False), nullable=False, unique=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(100), nullable=False),
    Column("target_type", String(50), nullable=False),
    Column("target_id", String(64), nullable=False),
    Column("ip", String(64)),
    Column("user_agent", Text),
    Column("correlation_id", String(64), nullable=False),
    Column("detail", JSONB, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("via", String(100)),  # the gateway key through which the actor (an end user it named) acted
    Index("ix_rm_audit_tenant_time", "tenant_id", "occurred_at"),
    Index("ix_rm_audit_tenant_actor", "tenant_id", "actor"),
    Index("ix_rm_audit_tenant_action", "tenant_id", "action"),
    # The tenant's log in order, from any position: the event feed and webhook replays page it.
    Index("ix_rm_audit_tenant_notification", "tenant_id", "notification_id"),
)

audit_heads = Table(
    "rm_audit_heads",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)


# --- conversations: providers and models (projector "models"), chats, messages, generations ("chats") ---
__all__ += ["chats", "generations", "messages", "models", "providers"]

providers = Table(
    "rm_providers",
    metadata,
    Column("provider_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("name", String(100), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("base_url", String(500)),
    Column("has_api_key", Boolean, nullable=False),  # never the key itself
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_rm_providers_tenant_name"),
)

models = Table(
    "rm_models",
    metadata,
    Column("model_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("name", String(100), nullable=False),
    Column("display_name", String(100), nullable=False),
    Column("provider_id", UUID(as_uuid=False), nullable=False),
    Column("provider_kind", String(20), nullable=False),
    Column("upstream_model", Text, nullable=False),
    Column("defaults", JSONB, nullable=False),
    Column("open_to_tenant", Boolean, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("granted_users", JSONB, nullable=False),  # user ids as strings
    Column("granted_roles", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("knowledge_ids", JSONB, nullable=False, server_default="[]"),  # knowledge its answers draw on
    Column("capabilities", JSONB),  # as the admin set them; None: the defaults of the provider's kind
    Column("base_model_id", UUID(as_uuid=False)),  # a preset's base model; None: a model of its own
    Column("base_model", String(100)),  # the base model's name
    UniqueConstraint("tenant_id", "name", name="uq_rm_models_tenant_name"),
)

chats = Table(
    "rm_chats",
    metadata,
    Column("chat_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("owner_id", UUID(as_uuid=False), nullable=False),
    Column("title", String(200), nullable=False),
    Column("source", String(20), nullable=False),
    Column("archived", Boolean, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("message_count", Integer, nullable=False),
    Column("head_id", String(64)),  # the newest message, where the next one attaches by default
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),  # time of the chat's latest event
    Column("knowledge_ids", JSONB, nullable=False, server_default="[]"),  # knowledge its answers draw on
    Column("file_ids", JSONB, nullable=False, server_default="[]"),  # documents uploaded into the chat
    Column("client_chat_id", Text),  # the front end's own id of the chat (Open WebUI's), where it sent one
    Column("pinned", Boolean, nullable=False, server_default="false"),
    Column("folder_id", UUID(as_uuid=False)),  # as the chat names it: a deleted folder's chats are unfiled
    Column("tags", JSONB, nullable=False, server_default="[]"),  # normalised names
)
Index("ix_rm_chats_owner_updated", chats.c.tenant_id, chats.c.owner_id, chats.c.updated_at.desc())
Index("ix_rm_chats_owner_folder", chats.c.tenant_id, chats.c.owner_id, chats.c.folder_id)
Index("ix_rm_chats_tags", chats.c.tags, postgresql_using="gin")

# --- folders (projector "folders"): each user's folder tree ---
__all__ += ["folders"]

folders = Table(
    "rm_folders",
    metadata,
    Column("folder_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("tree_id", UUID(as_uuid=False), nullable=False),  # its owner's tree: domain.folders.folder_tree_id_for
    Column("name", String(100), nullable=False),
    Column("parent_id", UUID(as_uuid=False)),  # None: at the top level
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_rm_folders_tree", "tenant_id", "tree_id"),
)

messages = Table(
    "rm_messages",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("chat_id", UUID(as_uuid=False), nullable=False),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("seq", BigInteger, nullable=False),  # notification id: breaks created_at ties in log order
    Column("role", String(20), nullable=False),
    Column("content", Text, nullable=False),
    Column("parent_id", String(64)),
    Column("model", String(100)),
    Column("generation_id", UUID(as_uuid=False)),
    Column("thinking", Text),
    Column("status", String(20)),  # assistant answers: completed, failed or cancelled
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("timings", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("citations", JSONB, nullable=True),  # the sources an answer drew on (knowledge)
    Column("tool_calls", JSONB),  # assistant: the calls it made [{id, name, arguments}]
    Column("tool_call_id", Text),  # tool: the call this result answers
    Column("tool_name", String(100)),  # tool: the function's name
    Column("tool_latency_ms", Double),  # tool: from the call's answer to its result
    Column("images", JSONB),  # user: [{sha256, media_type}] (the bytes are in the blob store)
    Index("ix_rm_messages_chat_created", "chat_id", "created_at"),
)

generations = Table(
    "rm_generations",
    metadata,
    Column("generation_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("chat_id", UUID(as_uuid=False)),  # None: housekeeping outside any chat
    Column("user_id", UUID(as_uuid=False), nullable=False),
    Column("model", String(100), nullable=False),
    Column("user_message_id", String(64), nullable=False),
    Column("answer_message_id", String(64), nullable=False),
    Column("params", JSONB, nullable=False),
    Column("reserved_tokens", Integer, nullable=False),
    Column("status", String(20), nullable=False),  # requested, running, completed, failed, cancelled
    Column("attempt", Integer, nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    Column("text", Text),  # the final (or partial, when failed or cancelled) answer
    Column("finish_reason", String(40)),
    Column("error_code", String(100)),
    Column("error_message", Text),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("ttft_ms", Double),
    Column("tokens_per_s", Double),
    Column("duration_ms", Double),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("purpose", String(20), nullable=False, server_default="chat"),  # chat, or a front end's title, tags...
    Column("tool_calls", JSONB),  # the calls the answer made
    Column("tools_ignored", JSONB),  # names of tools sent to a model that cannot call them
    Index("ix_rm_generations_chat", "tenant_id", "chat_id"),
)


# --- usage (projector "usage"): tokens per tenant-local day, user and model, pre-aggregated for reports ---
__all__ += ["usage_daily", "usage_generations", "usage_roles", "usage_timezones"]

usage_daily = Table(
    "rm_usage_daily",
    metadata,
    Column("tenant_id", UUID(as_uuid=False), primary_key=True),
    Column("day", Date, primary_key=True),  # the tenant-local day the generation was requested
    Column("user_id", UUID(as_uuid=False), primary_key=True),
    Column("model", String(100), primary_key=True),
    Column("role", String(20), nullable=False),  # the user's role at their latest request that day
    Column("prompt_tokens", BigInteger, nullable=False, server_default="0"),
    Column("completion_tokens", BigInteger, nullable=False, server_default="0"),
    Column("total_tokens", BigInteger, nullable=False, server_default="0"),
    Column("requests", Integer, nullable=False, server_default="0"),  # generations requested
    Column("completed", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("cancelled", Integer, nullable=False, server_default="0"),
    # The primary key serves ranges by (tenant_id, day); this one ranges of one user.
    Index("ix_rm_usage_daily_tenant_user_day", "tenant_id", "user_id", "day"),
)

# Open generations: the outcome events carry neither user nor model, so the request leaves them here.
usage_generations = Table(
    "rm_usage_generations",
    metadata,
    Column("generation_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("user_id", UUID(as_uuid=False), nullable=False),
    Column("model", String(100), nullable=False),
    Column("day", Date, nullable=False),
    Column("reserved_tokens", BigInteger, nullable=False, server_default="0"),
    Column("requested_at", DateTime(timezone=True), nullable=False),
)

usage_roles = Table(
    "rm_usage_roles",
    metadata,
    Column("user_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("role", String(20), nullable=False),
)

usage_timezones = Table(
    "rm_usage_timezones",
    metadata,
    Column("tenant_id", UUID(as_uuid=False), primary_key=True),
    Column("policy_id", UUID(as_uuid=False), nullable=False, unique=True),
    Column("timezone", String(64), nullable=False),
)

# Monthly rollup of rm_usage_daily, kept by the same projector in the same transaction, so that reports over
# whole months read one row per user and model instead of one per day.
__all__ += ["usage_monthly"]

usage_monthly = Table(
    "rm_usage_monthly",
    metadata,
    Column("tenant_id", UUID(as_uuid=False), primary_key=True),
    Column("month", Date, primary_key=True),  # the first day of the tenant-local month
    Column("user_id", UUID(as_uuid=False), primary_key=True),
    Column("model", String(100), primary_key=True),
    Column("role", String(20), nullable=False),  # the user's role at their latest request that month
    Column("prompt_tokens", BigInteger, nullable=False, server_default="0"),
    Column("completion_tokens", BigInteger, nullable=False, server_default="0"),
    Column("total_tokens", BigInteger, nullable=False, server_default="0"),
    Column("requests", Integer, nullable=False, server_default="0"),
    Column("completed", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("cancelled", Integer, nullable=False, server_default="0"),
)

# Tool calls per tenant-local day, user and tool: how often each tool was called (from the answers that
# called it) and how its results came back (from the results clients handed in).
__all__ += ["usage_tools"]

usage_tools = Table(
    "rm_usage_tools",
    metadata,
    Column("tenant_id", UUID(as_uuid=False), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("user_id", UUID(as_uuid=False), primary_key=True),
    Column("tool", String(100), primary_key=True),
    Column("calls", Integer, nullable=False, server_default="0"),
    Column("results", Integer, nullable=False, server_default="0"),
    Column("result_bytes", BigInteger, nullable=False, server_default="0"),
    Column("result_latency_ms", Double, nullable=False, server_default="0"),  # summed over results with one
)

# The original bytes of uploaded documents, by content hash per tenant (the default blob store; a directory
# or an S3-compatible store are the options). Not a read model: nothing rebuilds it, events point into it.
__all__ += ["blobs"]

blobs = Table(
    "blobs",
    metadata,
    Column("tenant_id", UUID(as_uuid=False), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Knowledge bases and their documents (projections.knowledge). ``readers`` holds the grantees of ``access``
# (``user:<id>``, ``role:<role>``, ``tenant``), so that who may read is one indexable array overlap.
__all__ += ["knowledge_bases", "documents", "chunks", "vector_spaces", "embedding_spaces", "embedding_cache"]

knowledge_bases = Table(
    "rm_knowledge_bases",
    metadata,
    Column("knowledge_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("owner_id", UUID(as_uuid=False), nullable=False),
    Column("name", String(100), nullable=False),
    Column("description", Text, nullable=False),
    Column("embedding", JSONB, nullable=False),
    Column("pending_embedding", JSONB(none_as_null=True), nullable=True),
    Column("chunk_size", Integer, nullable=False),
    Column("chunk_overlap", Integer, nullable=False),
    Column("access", JSONB, nullable=False),
    Column("readers", ARRAY(String(60)), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_rm_knowledge_bases_tenant", "tenant_id", "created_at"),
)

# --- prompts (projector "prompts"): the prompt library; who may use each, as for knowledge bases ---
__all__ += ["prompts"]

prompts = Table(
    "rm_prompts",
    metadata,
    Column("prompt_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("owner_id", UUID(as_uuid=False), nullable=False),
    Column("scope", String(10), nullable=False),  # user, tenant
    Column("command", String(41), nullable=False),
    Column("title", String(100), nullable=False),
    Column("content", Text, nullable=False),
    Column("variables", JSONB, nullable=False),  # the {{names}} of the content, in order
    Column("access", JSONB, nullable=False),
    Column("readers", ARRAY(String(60)), nullable=False),  # the grantees in access, for a listing's WHERE
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_rm_prompts_tenant_command", "tenant_id", "command"),
)

documents = Table(
    "rm_documents",
    metadata,
    Column("document_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("knowledge_id", UUID(as_uuid=False), nullable=True),
    Column("chat_id", UUID(as_uuid=False), nullable=True),
    Column("owner_id", UUID(as_uuid=False), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("media_type", String(100), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("source_url", Text, nullable=True),
    Column("title", Text, nullable=True),
    Column("status", String(20), nullable=False),
    Column("chars", Integer, nullable=False, server_default="0"),
    Column("chunk_count", Integer, nullable=False, server_default="0"),
    Column("error_code", String(60), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_rm_documents_knowledge", "tenant_id", "knowledge_id", "created_at"),
    Index("ix_rm_documents_chat", "tenant_id", "chat_id"),
)

# The vector index (projections.vectors): one row per chunk, embedded in the active space of its knowledge
# base. ``embedding`` is an untyped pgvector column so that every space (any model, any dimension) shares
# the table; each space gets a partial HNSW index on ``embedding::vector(dims)`` (see projections.vectors).
chunks = Table(
    "rm_chunks",
    metadata,
    Column("document_id", UUID(as_uuid=False), primary_key=True),
    Column("chunk_index", Integer, primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("knowledge_id", UUID(as_uuid=False), nullable=True),
    Column("chat_id", UUID(as_uuid=False), nullable=True),
    Column("heading", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("page", Integer, nullable=True),
    Column("start", Integer, nullable=False),
    Column("end", Integer, nullable=False),
    Column("content_sha", String(64), nullable=False),
    Column("space", String(200), nullable=False),
    Column("embedding", Vector(), nullable=True),  # None: the provider refused to embed it (full text only)
    Column(
        "tsv",
        TSVECTOR,
        Computed("to_tsvector('english'::regconfig, heading || ' ' || text)", persisted=True),
    ),
    # With the space, so the size of a search's scope is counted from the index alone.
    Index("ix_rm_chunks_knowledge_space", "tenant_id", "knowledge_id", "space"),
    Index("ix_rm_chunks_chat_space", "tenant_id", "chat_id", "space"),
    Index("ix_rm_chunks_document", "document_id"),
    Index("ix_rm_chunks_tsv", "tsv", postgresql_using="gin"),
)

# Which space each knowledge base's vectors are in, as the vector projector has seen it.
vector_spaces = Table(
    "rm_vector_spaces",
    metadata,
    Column("knowledge_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("embedding", JSONB, nullable=False),
    Column("space", String(200), nullable=False),
)

# Infrastructure, not read models (a rebuild keeps them): the dimension and index of each vector space, and
# a content-addressed cache of embeddings, so that rebuilds and re-embeddings never embed a text twice.
embedding_spaces = Table(
    "embedding_spaces",
    metadata,
    Column("space", String(200), primary_key=True),
    Column("dims", Integer, nullable=False),
    Column("index_name", String(63), nullable=True),  # None: pgvector cannot index this dimension
    # The index is built CONCURRENTLY, outside the projector's transaction (never blocking the index's
    # writers); until it is, the space is searched exactly.
    Column("indexed", Boolean, nullable=False, server_default="false"),
)

embedding_cache = Table(
    "embedding_cache",
    metadata,
    Column("tenant_id", UUID(as_uuid=False), primary_key=True),
    Column("space", String(200), primary_key=True),
    Column("content_sha", String(64), primary_key=True),
    Column("embedding", Vector(), nullable=False),
)

# Webhooks (projections/webhooks.py, workers/webhooks.py). The endpoints and scopes are the webhooks
# projector's read models (a rebuild re-derives them); messages, attempts, health and replays are the
# delivery log, which a rebuild keeps (it only adds the messages that are missing).
webhook_endpoints = Table(
    "rm_webhook_endpoints",
    metadata,
    Column("endpoint_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("event_types", JSONB, nullable=False),
    Column("user_ids", JSONB, nullable=False),
    Column("models", JSONB, nullable=False),
    Column("include_personal", Boolean, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("disabled_reason", String(20)),
    Column("secret_version", Integer, nullable=False),  # the aggregate version of its last secret change
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_rm_webhook_endpoints_tenant", "tenant_id"),
)

# Who and which model an aggregate is about, for the endpoints' user and model filters: a chat's owner, a
# generation's user and model (its later events name neither).
webhook_scopes = Table(
    "rm_webhook_scopes",
    metadata,
    Column("aggregate_id", UUID(as_uuid=False), primary_key=True),
    Column("user_id", String(64)),
    Column("model", String(200)),
)

# One message per (endpoint, event): what is to be sent, and how it went. ``webhook-id`` is the event id.
webhook_messages = Table(
    "webhook_messages",
    metadata,
    Column("message_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("endpoint_id", UUID(as_uuid=False), nullable=False),
    Column("event_id", UUID(as_uuid=False), nullable=False),
    Column("notification_id", BigInteger, nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("status", String(16), nullable=False),  # pending, delivered, failed, cancelled
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("locked_by", String(64)),  # the dispatcher sending it, until ``locked_until``
    Column("locked_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    Column("last_status", Integer),
    Column("last_error", Text),
    UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_messages_endpoint_event"),
    Index("ix_webhook_messages_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    Index("ix_webhook_messages_endpoint", "endpoint_id", "notification_id"),
    Index("ix_webhook_messages_event", "tenant_id", "event_id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("attempt_id", BigInteger, primary_key=True, autoincrement=True),
    Column("message_id", UUID(as_uuid=False), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("endpoint_id", UUID(as_uuid=False), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("status_code", Integer),
    Column("latency_ms", Double, nullable=False),
    Column("response_excerpt", Text),
    Column("error", Text),
    Column("dispatcher", String(64), nullable=False),
    Index("ix_webhook_attempts_message", "message_id", "attempt_id"),
)

webhook_health = Table(
    "webhook_health",
    metadata,
    Column("endpoint_id", UUID(as_uuid=False), primary_key=True),
    Column("failing_since", DateTime(timezone=True)),  # the first failure since the last success
    Column("last_success_at", DateTime(timezone=True)),
    Column("last_failure_at", DateTime(timezone=True)),
    Column("disabled_at", DateTime(timezone=True)),  # when a dispatcher disabled it for failing
)

webhook_replays = Table(
    "webhook_replays",
    metadata,
    Column("replay_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("endpoint_id", UUID(as_uuid=False), nullable=False),
    Column("since", DateTime(timezone=True)),
    Column("cursor", BigInteger, nullable=False),  # the last notification id looked at
    Column("upto", BigInteger, nullable=False),  # the request's own position: nothing after it
    Column("queued", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("done_at", DateTime(timezone=True)),
)

# The delivery log's retention (workers/webhooks.py sweeps it): messages of events up to this position may
# have been dropped, so a rebuild of the webhooks projector writes no message for them (it would re-send).
webhook_log_floor = Table(
    "webhook_log_floor",
    metadata,
    Column("name", String(20), primary_key=True),  # always "floor": one row
    Column("notification_id", BigInteger, nullable=False),
    Column("swept_at", DateTime(timezone=True), nullable=False),
)


# --- sharing (projector "shares"): share links and each tenant's sharing policy ------------------------------
__all__ += ["shares", "sharing_policies"]

shares = Table(
    "rm_shares",
    metadata,
    Column("share_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("chat_id", UUID(as_uuid=False), nullable=False),
    Column("owner_id", UUID(as_uuid=False), nullable=False),
    Column("leaf_message_id", String(64), nullable=False),  # the shared branch ends here
    Column("title", String(200), nullable=False),  # the chat's title when shared
    Column("public", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_rm_shares_chat", "chat_id"),
    Index("ix_rm_shares_owner", "owner_id"),
)

sharing_policies = Table(
    "rm_sharing_policies",
    metadata,
    Column("policy_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False, unique=True),
    Column("allow_public_links", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# --- ratings (projector "ratings"): one row per user and rated answer; a removed rating keeps its row -------
__all__ += ["ratings"]

ratings = Table(
    "rm_ratings",
    metadata,
    Column("rating_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("user_id", UUID(as_uuid=False), nullable=False),
    Column("chat_id", UUID(as_uuid=False), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("model", String(100), nullable=False),
    Column("rating", String(4)),  # up, down; None: removed
    Column("reason", String(100)),
    Column("comment", Text),  # None once removed, or shredded (chat deleted, rater erased)
    Column("rated_at", DateTime(timezone=True), nullable=False),
    Index("ix_rm_ratings_user_chat", "tenant_id", "user_id", "chat_id"),
    Index("ix_rm_ratings_tenant_model", "tenant_id", "model"),
    Index("ix_rm_ratings_chat", "chat_id"),
)

# --- search in messages (projector "message_search"): each user's own questions and answers, full text -----
__all__ += ["search_chats", "search_messages"]

# The chats the search index knows: whose they are and whether archived (messages' events name neither).
search_chats = Table(
    "rm_search_chats",
    metadata,
    Column("chat_id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("owner_id", UUID(as_uuid=False), nullable=False),
    Column("title", String(200), nullable=False),
    Column("archived", Boolean, nullable=False),
    Index("ix_rm_search_chats_owner", "owner_id"),
)

search_messages = Table(
    "rm_search_messages",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    Column("user_id", UUID(as_uuid=False), nullable=False),  # the chat's owner
    Column("chat_id", UUID(as_uuid=False), nullable=False),
    Column("role", String(20), nullable=False),  # user or assistant
    Column("archived", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("content", Text, nullable=False),
    # The text's lexemes, and one lexeme naming the owner ('~' || user_id, which the parser never makes):
    # a query ANDs it in, so the GIN index itself narrows to the caller's messages (no btree_gin needed).
    Column(
        "tsv",
        TSVECTOR,
        Computed(
            "to_tsvector('english'::regconfig, content) || array_to_tsvector(ARRAY['~' || user_id::text])",
            persisted=True,
        ),
    ),
    Index("ix_rm_search_messages_tsv", "tsv", postgresql_using="gin"),
    Index("ix_rm_search_messages_chat", "chat_id"),
    Index("ix_rm_search_messages_user", "user_id"),
)
