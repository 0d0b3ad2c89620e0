"""Sharing a chat: a link to a read-only snapshot of one branch of a chat, as it stood when shared.

A share names the chat and the branch's last message (``leaf_message_id``); the snapshot is the path from
the chat's first message to that leaf. Messages in parley are never changed once recorded (editing a
question or regenerating an answer starts a branch beside it), so that path is fixed the moment it is
shared: the chat may continue, branch or be renamed and the share still shows what was shared, under the
title it had then. A share is seen by the signed-in users of its tenant, or by anyone holding the link
where it was made ``public`` and the tenant's ``SharingPolicy`` allows public links (off by default). Its
id is random (``uuid4``: 122 random bits), so a link cannot be guessed.

A share ends three ways, each answered 404 for everyone afterwards: its owner revokes it; the chat is
deleted; the chat's owner is erased. Its title is personal data sealed with the share's own key, and that
key names the chat and its owner as its subjects (``ShareCreated.chat_id`` / ``owner_id``), so deleting
the chat or erasing the owner destroys it with theirs (crypto-shredding); the branch's messages are the
chat's own and go with it.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Forbidden, NotFound

__all__ = ["Share", "SharingPolicy", "sharing_policy_id_for"]


def sharing_policy_id_for(tenant_id: str) -> UUID:
    """One sharing policy per tenant, without a read model."""
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/sharing-policy")


class SharingPolicy(Aggregate):
    """A tenant's rules for share links: whether a share may be public (seen without signing in)."""

    @staticmethod
    def create_id(tenant_id: str, **_: Any) -> UUID:
        return sharing_policy_id_for(tenant_id)

    @event("SharingPolicyCreated")
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.allow_public_links = False

    def set_public_links(self, allowed: bool) -> None:
        if allowed != self.allow_public_links:
            self._set_public_links(allowed=allowed)

    @event("PublicLinksSet")
    def _set_public_links(self, allowed: bool) -> None:
        self.allow_public_links = allowed

    def check_may_share(self, public: bool) -> None:
        if public and not self.allow_public_links:
            raise Forbidden("PUBLIC_LINKS_DISABLED", "this tenant does not allow public share links", field="public")


class Share(Aggregate):
    @staticmethod
    def create_id(**_: Any) -> UUID:
        return uuid4()  # random: the link is the secret

    @event("ShareCreated")
    def __init__(
        self, tenant_id: str, chat_id: UUID, owner_id: UUID, leaf_message_id: str, title: str, public: bool
    ) -> None:
        self.tenant_id = tenant_id
        self.chat_id = chat_id
        self.owner_id = owner_id
        self.leaf_message_id = leaf_message_id
        self.title = title
        self.public = public
        self.revoked = False

    def check_visible(self, tenant_id: str) -> None:
        """Whether the share can be read or copied in ``tenant_id`` (404 otherwise: nothing is disclosed)."""
        if self.revoked or self.tenant_id != tenant_id:
            raise NotFound("SHARE_NOT_FOUND", "no such share")

    def revoke(self, user_id: UUID) -> None:
        if self.owner_id != user_id:
            raise NotFound("SHARE_NOT_FOUND", "no such share")
        if self.revoked:
            raise Conflict("SHARE_REVOKED", "this share is revoked already")
        self._revoke()

    @event("ShareRevoked")
    def _revoke(self) -> None:
        self.revoked = True
