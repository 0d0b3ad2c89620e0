"""Webhook endpoints: the tenant admin's commands, and the few the dispatcher issues as the system actor.

A signing secret is made here (Standard Webhooks: ``whsec_`` + base64 of 32 random bytes), sealed
(``SecretBox``) into the endpoint's events, and returned once, to the admin who made or rotated it. The URL
is checked when it is given (``check_url``: http(s), no credentials, not a private, loopback, link-local or
metadata address unless the deployment allows private ones); the dispatcher checks again at every connect,
against the address it connects to (DNS may change).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from application.context import CommandContext
from application.identity import Principal, check_user_of_tenant
from application.ports import EventStorePort, SecretBox
from domain.errors import NotFound
from domain.integrations import DEFAULT_ROTATION_OVERLAP, Webhook, check_type_patterns

__all__ = ["WEBHOOKS_ACTOR", "MessageLookup", "SigningSecret", "Webhooks", "new_secret"]

WEBHOOKS_ACTOR = "system:webhooks"
"""The actor of what the dispatcher records (an endpoint disabled for failing)."""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class SigningSecret:
    key: bytes
    valid_until: datetime | None
    """None: the current secret; else a rotated-out one, valid until then."""


class MessageLookup(Protocol):
    async def __call__(self, tenant_id: str, endpoint_id: str, message_id: str) -> bool:
        """Whether the endpoint has this message in its delivery log."""
        ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Webhooks:
    def __init__(
        self,
        *,
        store: EventStorePort,
        secrets: SecretBox,
        event_types: Collection[str],
        check_url: Callable[[str], Awaitable[str]],
        message_exists: MessageLookup,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.event_types = event_types
        """Every event type parley emits: what filters are checked against."""
        self.check_url = check_url
        self.message_exists = message_exists
        self.clock = clock

    # --- reads -------------------------------------------------------------------------------------------
    def _endpoint(self, tenant_id: str, endpoint_id: uuid.UUID) -> Webhook:
        """The tenant's live endpoint, or 404 (another tenant's is not found either). Sync."""
        webhook = self.store.find(Webhook, endpoint_id)
        if webhook is None or webhook.tenant_id != tenant_id or webhook.deleted:
            raise NotFound("WEBHOOK_NOT_FOUND", "no such webhook endpoint in this tenant")
        return webhook

    async def get(self, principal: Principal, endpoint_id: uuid.UUID) -> Webhook:
        principal.require_admin()
        return await self.store.call(self._endpoint, principal.tenant_id, endpoint_id)

    def signing_secrets(self, endpoint_id: uuid.UUID) -> list[SigningSecret]:
        """The secrets deliveries to the endpoint are signed with, now: the current one, and the previous
        one while its overlap lasts. Sync (the dispatcher calls it on the event store's thread)."""
        webhook = self.store.get(Webhook, endpoint_id)
        found = []
        for sealed in webhook.secrets_encrypted(self.clock()):
            plain = self.secrets.decrypt(sealed)
            key = base64.b64decode(plain.removeprefix("whsec_") + "==")
            found.append(
                SigningSecret(key, None if sealed == webhook.secret_encrypted else webhook.previous_valid_until)
            )
        return found

    # --- commands ----------------------------------------------------------------------------------------
    def _check_filters(
        self, principal: Principal, event_types: Sequence[str] | None, user_ids: Sequence[Any] | None
    ) -> list[str] | None:
        """Filters checked inside the command: users must be the tenant's. Sync."""
        for user_id in user_ids or ():
            check_user_of_tenant(self.store, principal.tenant_id, user_id)
        return None if event_types is None else check_type_patterns(list(event_types), self.event_types)

    async def create(
        self,
        ctx: CommandContext,
        principal: Principal,
        *,
        url: str,
        description: str = "",
        event_types: Sequence[str],
        user_ids: Sequence[uuid.UUID] = (),
        models: Sequence[str] = (),
        include_personal: bool = False,
    ) -> tuple[Webhook, str]:
        """The new endpoint and its signing secret (shown this once)."""
        principal.require_admin()
        url = await self.check_url(url)
        secret = new_secret()
        sealed = self.secrets.encrypt(secret)

        def command() -> Webhook:
            patterns = self._check_filters(principal, event_types, user_ids) or []
            webhook = Webhook.make(
                tenant_id=principal.tenant_id,
                url=url,
                description=description,
                event_types=patterns,
                user_ids=user_ids,
                models=models,
                include_personal=include_personal,
                secret_encrypted=sealed,
            )
            self.store.save(webhook)
            return webhook

        return await self.store.execute(ctx, command), secret

    async def change(
        self, ctx: CommandContext, principal: Principal, endpoint_id: uuid.UUID, **changes: Any
    ) -> Webhook:
        """Change any of url, description, event_types, user_ids, models, include_personal; and ``enabled``
        (which records an enable or a manual disable)."""
        principal.require_admin()
        if "url" in changes:
            changes["url"] = await self.check_url(changes["url"])
        enabled = changes.pop("enabled", None)

        def command() -> Webhook:
            webhook = self._endpoint(principal.tenant_id, endpoint_id)
            if "event_types" in changes or "user_ids" in changes:
                patterns = self._check_filters(principal, changes.get("event_types"), changes.get("user_ids"))
                if patterns is not None:
                    changes["event_types"] = patterns
            if changes:
                webhook.change(**changes)
            if enabled is True:
                webhook.enable()
            elif enabled is False:
                webhook.disable(reason="manual")
            self.store.save(webhook)
            return webhook

        return await self.store.execute(ctx, command)

    async def rotate_secret(
        self, ctx: CommandContext, principal: Principal, endpoint_id: uuid.UUID, *, overlap_s: float | None = None
    ) -> tuple[Webhook, str]:
        """A new signing secret (shown this once); the old one stays valid for ``overlap_s`` (default a day)."""
        principal.require_admin()
        secret = new_secret()
        sealed = self.secrets.encrypt(secret)
        overlap = DEFAULT_ROTATION_OVERLAP if overlap_s is None else timedelta(seconds=overlap_s)

        def command() -> Webhook:
            webhook = self._endpoint(principal.tenant_id, endpoint_id)
            webhook.rotate_secret(secret_encrypted=sealed, now=self.clock(), overlap=overlap)
            self.store.save(webhook)
            return webhook

        return await self.store.execute(ctx, command), secret

    async def delete(self, ctx: CommandContext, principal: Principal, endpoint_id: uuid.UUID) -> None:
        principal.require_admin()

        def command() -> None:
            webhook = self._endpoint(principal.tenant_id, endpoint_id)
            webhook.delete()
            self.store.save(webhook)

        await self.store.execute(ctx, command)

    async def retry(
        self, ctx: CommandContext, principal: Principal, endpoint_id: uuid.UUID, message_id: uuid.UUID
    ) -> None:
        principal.require_admin()
        if not await self.message_exists(principal.tenant_id, str(endpoint_id), str(message_id)):
            raise NotFound("WEBHOOK_MESSAGE_NOT_FOUND", "no such message for this endpoint")

        def command() -> None:
            webhook = self._endpoint(principal.tenant_id, endpoint_id)
            webhook.request_retry(message_id)
            self.store.save(webhook)

        await self.store.execute(ctx, command)

    async def replay(
        self,
        ctx: CommandContext,
        principal: Principal,
        endpoint_id: uuid.UUID,
        *,
        since: datetime | None = None,
        after: int | None = None,
    ) -> str:
        """Queue every matching event after ``after`` (a position) or since ``since``, up to now; the
        replay's id."""
        principal.require_admin()

        def command() -> str:
            webhook = self._endpoint(principal.tenant_id, endpoint_id)
            replay_id = webhook.request_replay(since=since, after=after)
            self.store.save(webhook)
            return replay_id

        return await self.store.execute(ctx, command)

    async def disable_failing(self, tenant_id: str, endpoint_id: uuid.UUID, failing_since: datetime) -> bool:
        """The dispatcher's decision: every delivery failed since ``failing_since``; False when the endpoint
        was disabled (or deleted) already."""
        ctx = CommandContext(tenant_id=tenant_id, actor=WEBHOOKS_ACTOR)

        def command() -> bool:
            webhook = self.store.find(Webhook, endpoint_id)
            if webhook is None or webhook.deleted:
                return False
            if not webhook.disable(reason="failing", failing_since=failing_since):
                return False
            self.store.save(webhook)
            return True

        return await self.store.execute(ctx, command)
