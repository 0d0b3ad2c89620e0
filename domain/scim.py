"""SCIM provisioning: the tenant's SCIM tokens, its directory of provisioned users and groups, and groups
with their members and the parley role they give.

An identity provider provisions through a tenant-scoped SCIM token. The ``ScimDirectory`` (one per
tenant) lists what the provider manages and keeps ``userName`` and group ``displayName`` unique (SCIM
compares them case-insensitively); users themselves are parley ``User`` aggregates, groups are ``Group``
aggregates. No I/O here: the application layer hashes tokens and hands in hashes.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, Invalid, Unauthenticated
from domain.identity import ROLES, check_role

__all__ = [
    "ROLE_RANK",
    "ScimToken",
    "ScimDirectory",
    "ScimAccount",
    "account_id",
    "Group",
    "directory_id",
    "role_from_groups",
    "check_scim_text",
]

ROLE_RANK = ("admin", "auditor", "premium", "user", "guest", "pending")
"""Which mapped role wins when a user is in several groups: the first in this order."""
assert set(ROLE_RANK) == set(ROLES)
MAX_MEMBERS = 10_000


def directory_id(tenant_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/scim")


def account_id(user_id: UUID) -> UUID:
    return uuid5(NAMESPACE_URL, f"/scim/users/{user_id}")


def check_scim_text(value: str, field: str, max_len: int = 256) -> str:
    value = value.strip()
    if not 1 <= len(value) <= max_len or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise Invalid("INVALID_VALUE", f"{field} must be 1-{max_len} printable characters", field=field)
    return value


def role_from_groups(roles: list[str | None]) -> str | None:
    """The role a user's groups give: the highest-ranked mapped one; None where no group maps a role."""
    mapped = [r for r in roles if r is not None]
    return min(mapped, key=ROLE_RANK.index) if mapped else None


class ScimToken(Aggregate):
    """A tenant's SCIM bearer token. Only a hash is kept; the id is part of the token."""

    @staticmethod
    def create_id(token_id: UUID, **_: Any) -> UUID:
        return token_id

    @event("ScimTokenIssued")
    def __init__(self, token_id: UUID, tenant_id: str, name: str, prefix: str, token_hash: str, issued_by: str) -> None:
        self.tenant_id = tenant_id
        self.name = name
        self.prefix = prefix
        self.token_hash = token_hash
        self.issued_by = issued_by
        self.revoked = False

    def check_usable(self) -> None:
        if self.revoked:
            raise Unauthenticated("SCIM_TOKEN_REVOKED", "this SCIM token was revoked")

    def revoke(self) -> None:
        if not self.revoked:
            self._revoke()

    @event("ScimTokenRevoked")
    def _revoke(self) -> None:
        self.revoked = True


class ScimDirectory(Aggregate):
    """What a tenant's identity provider manages: its users (id -> a hash of the userName) and groups (id -> displayName).
    Names are unique case aside, as RFC 7643 makes ``userName`` (and parley makes group names)."""

    @staticmethod
    def create_id(tenant_id: str, **_: Any) -> UUID:
        return directory_id(tenant_id)

    @event("ScimDirectoryOpened")
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.users: dict[str, str] = {}  # user id -> hash of the folded userName
        self.groups: dict[str, str] = {}

    def _check_unique(self, names: dict[str, str], name: str, own_id: str | None, what: str) -> None:
        folded = name.casefold()
        for other_id, other in names.items():
            if other_id != own_id and other.casefold() == folded:
                raise Conflict("SCIM_UNIQUENESS", f"another {what} has this name", field=what)

    def list_user(self, user_id: UUID, user_name_hash: str) -> None:
        """``user_name_hash``: a hash of the case-folded userName (a name is personal data; uniqueness
        needs only its hash)."""
        self._check_unique_hash(user_name_hash, None)
        self._list_user(user_id=user_id, user_name_hash=user_name_hash)

    def _check_unique_hash(self, user_name_hash: str, own_id: str | None) -> None:
        if any(h == user_name_hash and uid != own_id for uid, h in self.users.items()):
            raise Conflict("SCIM_UNIQUENESS", "another user has this userName", field="userName")

    @event("ScimUserListed")
    def _list_user(self, user_id: UUID, user_name_hash: str) -> None:
        self.users[str(user_id)] = user_name_hash

    def rename_user(self, user_id: UUID, user_name_hash: str) -> None:
        self._check_unique_hash(user_name_hash, str(user_id))
        if self.users.get(str(user_id)) != user_name_hash:
            self._rename_user(user_id=user_id, user_name_hash=user_name_hash)

    @event("ScimUserNameChanged")
    def _rename_user(self, user_id: UUID, user_name_hash: str) -> None:
        self.users[str(user_id)] = user_name_hash

    def unlist_user(self, user_id: UUID) -> None:
        if str(user_id) in self.users:
            self._unlist_user(user_id=user_id)

    @event("ScimUserUnlisted")
    def _unlist_user(self, user_id: UUID) -> None:
        del self.users[str(user_id)]

    def list_group(self, group_id: UUID, display_name: str) -> None:
        self._check_unique(self.groups, display_name, None, "displayName")
        self._list_group(group_id=group_id, display_name=display_name)

    @event("ScimGroupListed")
    def _list_group(self, group_id: UUID, display_name: str) -> None:
        self.groups[str(group_id)] = display_name

    def rename_group(self, group_id: UUID, display_name: str) -> None:
        self._check_unique(self.groups, display_name, str(group_id), "displayName")
        if self.groups.get(str(group_id)) != display_name:
            self._rename_group(group_id=group_id, display_name=display_name)

    @event("ScimGroupNameChanged")
    def _rename_group(self, group_id: UUID, display_name: str) -> None:
        self.groups[str(group_id)] = display_name

    def unlist_group(self, group_id: UUID) -> None:
        if str(group_id) in self.groups:
            self._unlist_group(group_id=group_id)

    @event("ScimGroupUnlisted")
    def _unlist_group(self, group_id: UUID) -> None:
        del self.groups[str(group_id)]


class ScimAccount(Aggregate):
    """What SCIM holds about one parley user beyond the ``User`` itself: userName, externalId, name parts,
    displayName as the provider gave it. Personal: sealed with the user's key, erased with the user."""

    @staticmethod
    def create_id(user_id: UUID, **_: Any) -> UUID:
        return account_id(user_id)

    @event("ScimAccountCreated")
    def __init__(self, tenant_id: str, user_id: UUID, profile: dict[str, Any]) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.profile = dict(profile)

    def change(self, profile: dict[str, Any]) -> None:
        if profile != self.profile:
            self._change(profile=profile)

    @event("ScimAccountChanged")
    def _change(self, profile: dict[str, Any]) -> None:
        self.profile = dict(profile)


class Group(Aggregate):
    """A group of a tenant's users, as its identity provider names it; members get the role it maps to."""

    @event("GroupCreated")
    def __init__(self, tenant_id: str, display_name: str, external_id: str | None, created_by: str) -> None:
        self.tenant_id = tenant_id
        self.display_name = display_name
        self.external_id = external_id
        self.members: list[str] = []
        self.role: str | None = None
        self.deleted = False

    def rename(self, display_name: str, external_id: str | None) -> None:
        if (display_name, external_id) != (self.display_name, self.external_id):
            self._rename(display_name=display_name, external_id=external_id)

    @event("GroupRenamed")
    def _rename(self, display_name: str, external_id: str | None) -> None:
        self.display_name = display_name
        self.external_id = external_id

    def set_members(self, members: list[str]) -> None:
        wanted = list(dict.fromkeys(members))
        if len(wanted) > MAX_MEMBERS:
            raise Invalid("TOO_MANY_MEMBERS", f"a group has at most {MAX_MEMBERS} members", field="members")
        added = [m for m in wanted if m not in self.members]
        removed = [m for m in self.members if m not in wanted]
        if added or removed:
            self._change_members(added=added, removed=removed)

    @event("GroupMembersChanged")
    def _change_members(self, added: list[str], removed: list[str]) -> None:
        self.members = [m for m in self.members if m not in removed] + added

    def map_role(self, role: str | None) -> None:
        if role is not None:
            check_role(role)
        if role != self.role:
            self._map_role(role=role)

    @event("GroupRoleMapped")
    def _map_role(self, role: str | None) -> None:
        self.role = role

    def delete(self, deleted_by: str) -> None:
        if not self.deleted:
            self._delete(deleted_by=deleted_by)

    @event("GroupDeleted")
    def _delete(self, deleted_by: str) -> None:
        self.deleted = True
        self.members = []
