"""Read-model tables (SQLAlchemy Core). Every row carries ``tenant_id``; every query filters by it.
Projections own their tables; ``create_all`` at start creates what is missing."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

__all__ = [
    "metadata",
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
    Index("ix_rm_audit_tenant_time", "tenant_id", "occurred_at"),
    Index("ix_rm_audit_tenant_actor", "tenant_id", "actor"),
    Index("ix_rm_audit_tenant_action", "tenant_id", "action"),
)

audit_heads = Table(
    "rm_audit_heads",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
