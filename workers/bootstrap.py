"""The composition root: builds the object graph from settings. Tests build it the same way, with
other settings, never with mocks of our own engines."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters import documents
from adapters import nats as nats_adapter
from adapters import redis as redis_adapter
from adapters.blobs import open_blob_store
from adapters.database import create_engine, create_tables
from adapters.embeddings import build_embedder
from adapters.eventstore import EventStore
from adapters.ldap import Ldap3Directory
from adapters.metrics import Metrics
from adapters.oidc import HttpRelyingParty, RedisOidcFlows
from adapters.outbound import AddressPolicy, check_url
from adapters.quota_ledger import QuotaLedger
from adapters.security import AccessTokens, FernetBox, Passwords
from adapters.settings import Settings
from adapters.shredding import Shredding
from application.audit import Audit
from application.chat_exchange import ChatExchange
from application.conversations import Chats, Generations, Models
from application.folders import Folders
from application.identity import Identity
from application.integrations import Webhooks
from application.knowledge import Embedders, Knowledge, KnowledgeLimits
from application.ldap import LdapDirectories
from application.oidc import OidcProviders
from application.prompts import Prompts
from application.quotas import Quotas
from application.scim import Provisioning
from application.user_settings import UserSettingsService
from domain.privacy import shredded_by
from projections.audit import AuditProjector, open_details
from projections.deliveries import message_exists
from projections.identity import IdentityProjector
from projections.knowledge import storage_used
from projections.runtime import Projector
from projections.vectors import VectorIndex
from schema.contract import event_types
from schema.events import decode as decode_envelope
from schema.subjects import Subjects

__all__ = ["Container", "PROJECTOR_NAMES", "bootstrap", "all_projectors"]

log = structlog.get_logger("parley.bootstrap")


PROJECTOR_NAMES = ("identity", "audit", "models", "chats", "usage", "knowledge", "vectors", "shredder", "folders", "prompts", "shares", "ratings", "message_search")


def all_projectors(c: Container) -> list[Projector]:
    from projections.conversations import ChatsProjector, ModelsProjector
    from projections.folders import FoldersProjector
    from projections.knowledge import KnowledgeProjector
    from projections.message_search import MessageSearchProjector
    from projections.prompts import PromptsProjector
    from projections.ratings import RatingsProjector
    from projections.sharing import SharesProjector
    from projections.shredding import ShredderProjector
    from projections.usage import UsageProjector
    from projections.vectors import VectorsProjector

    return [
        IdentityProjector(),
        AuditProjector(),
        ModelsProjector(),
        ChatsProjector(),
        UsageProjector(),
        KnowledgeProjector(),
        VectorsProjector(c.embedders),
        ShredderProjector(c.store.forget),
        FoldersProjector(),
        PromptsProjector(),
        SharesProjector(),
        RatingsProjector(),
        MessageSearchProjector(),
    ]


@dataclass
class Container:
    settings: Settings
    store: EventStore
    engine: AsyncEngine
    redis: Redis
    identity: Identity
    audit: Audit
    models: Models
    chats: Chats
    generations: Generations
    quotas: Quotas
    knowledge: Knowledge
    embedders: Embedders
    subjects: Subjects
    shredding: Shredding
    webhooks: Webhooks
    ldap: LdapDirectories
    folders: Folders
    exchange: ChatExchange
    prompts: Prompts
    user_settings: UserSettingsService
    scim: Provisioning
    oidc: OidcProviders
    nc: Any = None
    js: Any = None
    metrics: Metrics = field(default_factory=Metrics)
    _closed: bool = field(default=False, repr=False)
    _following_policies: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.quotas.policy_changed = self.announce_policy_change
        self.quotas.refused = self.metrics.quota_refused

    async def connect_nats(self, name: str) -> Any:
        if self.js is None:
            assert self.settings.nats_url, "PARLEY_NATS_URL is not set"
            self.nc, self.js = await nats_adapter.connect(
                self.settings.nats_url, name, disconnected=self._bus_lost, reconnected=self._bus_back
            )
            await nats_adapter.ensure_streams(self.js, self.subjects, replicas=self.settings.nats_replicas)
            self.shredding.js = self.js
        return self.js

    async def follow_policy_changes(self, name: str = "parley-api") -> None:
        """Hear every quota-policy change, from any process, so the policy cache can serve the hot path:
        the direct notice the changing process sends when it commits, and the policy's events as the relay
        publishes them (which also covers a process that died before its notice). While the bus is lost
        the cache is off and every decision reads the event store."""

        async def forget(msg: Any) -> None:
            tokens = msg.subject.split(".")
            self.quotas.policies.forget(tokens[3] if tokens[1] == "notices" else tokens[2])

        await self.connect_nats(name)
        await self.nc.subscribe(self.subjects.policy_changes, cb=forget)
        await self.nc.subscribe(self.subjects.events_of_aggregate_type("QuotaPolicy"), cb=forget)
        await self.nc.flush()
        self._following_policies = True
        self.quotas.policies.follow(True)

    async def follow_shredding(self, name: str) -> None:
        """Hear every erasure and deletion, from any process, and forget the keys they destroyed and the
        aggregates those sealed (cached here, opened): within the relay's lag of the event, nothing of the
        erased content stays in this process; without the bus, the key cache's bound (``KEY_TTL_S``)."""

        async def forget(msg: Any) -> None:
            event = decode_envelope(msg.data)
            scope = shredded_by(event.type, event.aggregate_id)
            if scope is not None:
                self.store.forget(await self.store.call(self.store.keys.keys_of, scope))

        await self.connect_nats(name)
        for aggregate_type, event_type in (("User", "UserErased"), ("Chat", "ChatDeleted"), ("Document", "DocumentDeleted")):
            await self.nc.subscribe(self.subjects.events_of_type(aggregate_type, event_type), cb=forget)
        await self.nc.flush()

    async def announce_policy_change(self, tenant_id: str) -> None:
        if self.nc is None or not self.nc.is_connected:
            return  # the policy's event will tell the others when the relay publishes it
        try:
            await self.nc.publish(self.subjects.policy_changed(tenant_id), b"")
        except Exception as e:  # noqa: BLE001 - a notice lost only delays the others until the event
            log.warning("policy_notice_failed", error=str(e))

    async def _bus_lost(self) -> None:
        self.quotas.policies.follow(False)

    async def _bus_back(self) -> None:
        if self._following_policies:
            self.quotas.policies.follow(True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.nc is not None:
            await self.nc.drain()
        await self.embedders.close()
        await self.oidc.aclose()
        await self.redis.aclose()
        await self.engine.dispose()
        await asyncio.to_thread(self.store.close)


async def bootstrap(settings: Settings, *, pool_size: int = 10, passwords: Passwords | None = None) -> Container:
    if not (settings.database_url and settings.redis_url):
        raise ValueError("bootstrap needs database and Redis URLs (the embedded launcher provides them)")
    store = await asyncio.to_thread(
        EventStore, settings.database_url, secret_key=settings.secret_key, pool_size=pool_size
    )
    engine = create_engine(settings.database_url, pool_size=pool_size)
    await create_tables(engine)
    redis = redis_adapter.connect(settings.redis_url)
    identity = Identity(
        store=store,
        passwords=passwords or Passwords(),
        tokens=AccessTokens(settings.secret_key, settings.access_token_ttl_s),
        token_versions=redis_adapter.RedisTokenVersions(redis, settings.namespace),
        refresh_ttl_s=settings.refresh_token_ttl_s,
        platform_tenant=settings.default_tenant,
    )
    models = Models(store=store, secrets=FernetBox(settings.secret_key), allow_echo=settings.enable_echo_engine)
    quotas = Quotas(store=store, ledger=QuotaLedger(redis, settings.namespace), engine=engine, read_events=store.read)
    secrets = FernetBox(settings.secret_key)
    embedders = Embedders(
        store=store,
        secrets=secrets,
        build=build_embedder,
        device=None if settings.local_device == "auto" else settings.local_device,
    )
    blobs = open_blob_store(settings.blob_store, engine=engine)
    knowledge = Knowledge(
        store=store,
        blobs=blobs,
        embedders=embedders,
        index=VectorIndex(engine),
        detect=documents.detect_type,
        extract=documents.extract,
        parse_errors=(documents.ExtractionFailed,),
        storage_used=partial(storage_used, engine),
        limits=KnowledgeLimits(
            max_file_bytes=settings.max_upload_bytes, tenant_storage_bytes=settings.tenant_storage_bytes
        ),
    )
    chats = Chats(store=store, models=models, quotas=quotas, blobs=blobs)
    subjects = Subjects(settings.namespace)
    shredding = Shredding(engine=engine, keys=store.keys, blobs=blobs, subjects=subjects)
    identity.shredder = shredding
    chats.shredder = shredding
    webhooks = Webhooks(
        store=store,
        secrets=secrets,
        event_types=frozenset(event_types()),
        check_url=partial(check_url, policy=AddressPolicy(allow_private=settings.webhooks_allow_private)),
        message_exists=partial(message_exists, engine),
    )
    return Container(
        settings=settings,
        webhooks=webhooks,
        ldap=LdapDirectories(store=store, secrets=secrets, identity=identity, directory=Ldap3Directory()),
        prompts=Prompts(store=store),
        scim=Provisioning(identity=identity),
        oidc=OidcProviders(
            store=store,
            secrets=secrets,
            identity=identity,
            # Providers on private addresses (an in-house Keycloak) where the deployment allows them, as webhooks.
            relying_party=HttpRelyingParty(policy=AddressPolicy(allow_private=settings.webhooks_allow_private)),
            flows=RedisOidcFlows(redis, settings.namespace),
        ),
        user_settings=UserSettingsService(store=store, models=models, blobs=blobs),
        shredding=shredding,
        knowledge=knowledge,
        embedders=embedders,
        models=models,
        chats=chats,
        folders=Folders(store=store),
        exchange=ChatExchange(store=store),
        generations=Generations(store=store, models=models, blobs=blobs),
        quotas=quotas,
        store=store,
        engine=engine,
        redis=redis,
        identity=identity,
        audit=Audit(store=store, events_of=store.events_of, open_details=partial(open_details, store.open_envelopes)),
        subjects=subjects,
    )
