"""SCIM provisioning (RFC 7643/7644): a tenant's identity provider creates, updates, deactivates and deletes
parley users and maps its groups to parley roles, through a tenant-scoped SCIM token.

Users are parley ``User`` aggregates (their existing events: ``UserRegistered`` without a password,
``UserRenamed``, ``UserDeactivated``/``UserReactivated`` — deactivating bumps the token version, so every
access token of the user stops working —, ``RoleChanged``, ``UserErased`` on delete); what SCIM holds
beyond them (userName, externalId, name parts) and which users and groups the provider manages is the
tenant's ``ScimDirectory``. Groups are ``Group`` aggregates; a tenant admin maps a group to a role, and a
member's role is the highest-ranked role their mapped groups give (the tenant's default role once they
leave every mapped group).

Reads load the aggregates (read-your-writes, which SCIM clients rely on: a provider creates a user, then
looks it up). The protocol itself (JSON shapes, filters, PATCH) lives at the edge, in ``api/scim.py``.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from application.context import CommandContext
from application.credentials import secret_hash, secrets_equal
from application.identity import Identity, Principal
from domain.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from domain.identity import EmailIndex, Tenant, TokenMisuse, User, check_name, email_index_id, normalize_email
from domain.scim import (
    Group,
    ScimAccount,
    ScimDirectory,
    ScimToken,
    account_id,
    check_scim_text,
    directory_id,
    role_from_groups,
)

__all__ = [
    "SCIM_TOKEN_PREFIX",
    "ScimCaller",
    "NewScimToken",
    "ScimUserData",
    "ScimUserView",
    "ScimGroupData",
    "ScimGroupView",
    "Provisioning",
    "parse_scim_token",
]

SCIM_TOKEN_PREFIX = "ps_"


def new_scim_token(token_id: uuid.UUID) -> str:
    return f"{SCIM_TOKEN_PREFIX}{token_id.hex}_{secrets.token_urlsafe(32)}"


def parse_scim_token(token: str) -> uuid.UUID:
    try:
        if not token.startswith(SCIM_TOKEN_PREFIX):
            raise ValueError
        hex_id, _, secret = token[len(SCIM_TOKEN_PREFIX) :].partition("_")
        if len(secret) < 20:
            raise ValueError
        return uuid.UUID(hex=hex_id)
    except ValueError:
        raise Unauthenticated("INVALID_SCIM_TOKEN", "SCIM token is not valid") from None


@dataclass(frozen=True)
class ScimCaller:
    tenant_id: str
    token_id: uuid.UUID

    @property
    def actor(self) -> str:
        return f"scimtoken:{self.token_id}"


@dataclass(frozen=True)
class NewScimToken:
    id: uuid.UUID
    name: str
    token: str  # shown once
    prefix: str


@dataclass(frozen=True)
class ScimUserData:
    """A user as the provider sends it (POST, PUT, or the result of a PATCH)."""

    user_name: str
    emails: list[dict[str, Any]]
    """``{"value": ..., "primary": True/False/None}`` each."""
    display_name: str | None = None
    external_id: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    active: bool | None = True
    """None: the provider says nothing (the user is then active, and ``active`` is shown absent)."""


@dataclass(frozen=True)
class ScimUserView:
    id: uuid.UUID
    user_name: str
    email: str
    """The parley account's e-mail (set at creation)."""
    emails: list[dict[str, Any]]
    """The e-mails as the provider last sent them (``value``, ``primary``)."""
    display_name: str | None
    external_id: str | None
    given_name: str | None
    family_name: str | None
    active: bool | None
    created: datetime
    last_modified: datetime


@dataclass(frozen=True)
class ScimGroupData:
    display_name: str
    members: list[str] = field(default_factory=list)
    external_id: str | None = None


@dataclass(frozen=True)
class ScimGroupView:
    id: uuid.UUID
    display_name: str
    external_id: str | None
    members: list[str]  # user ids
    role: str | None
    created: datetime
    last_modified: datetime


def _optional(value: str | None, field_name: str) -> str | None:
    return None if value is None or not value.strip() else check_scim_text(value, field_name)


def _profile(data: ScimUserData) -> dict[str, Any]:
    emails = [
        {"value": check_scim_text(str(e.get("value") or ""), "emails.value", 254), "primary": e.get("primary")}
        for e in data.emails
    ]
    if len(emails) > 20:
        raise Invalid("INVALID_VALUE", "at most 20 e-mails", field="emails")
    return {
        "emails": emails,
        "userName": check_scim_text(data.user_name, "userName"),
        "externalId": _optional(data.external_id, "externalId"),
        "givenName": _optional(data.given_name, "name.givenName"),
        "familyName": _optional(data.family_name, "name.familyName"),
        "displayName": _optional(data.display_name, "displayName"),
        "active": None if data.active is None else "given",
    }


def _name_hash(tenant_id: str, user_name: str) -> str:
    """userName is unique case aside (RFC 7643 §4.1.1): the directory keeps a hash of its folded form."""
    return secret_hash(f"{tenant_id}\n{user_name.casefold()}")


def _display_name(data: ScimUserData) -> str:
    for candidate in (data.display_name, " ".join(p for p in (data.given_name, data.family_name) if p), data.user_name):
        if candidate and candidate.strip():
            try:
                return check_name(candidate[:100], "displayName")
            except Invalid:
                continue
    raise Invalid("INVALID_VALUE", "displayName must be 1-100 printable characters", field="displayName")


def _email(data: ScimUserData) -> str:
    """The user's parley e-mail: the provider's primary (first) e-mail, else a userName that is one."""
    ordered = sorted(data.emails, key=lambda e: e.get("primary") is not True)
    for candidate in [*(str(e.get("value") or "") for e in ordered), data.user_name]:
        try:
            return normalize_email(candidate)
        except Invalid:
            continue
    raise Invalid("INVALID_VALUE", "a user needs an e-mail address (emails, or a userName that is one)", field="emails")


class Provisioning:
    """The SCIM use cases of one tenant at a time; every method takes the tenant the caller's token names."""

    def __init__(self, *, identity: Identity) -> None:
        self.identity = identity
        self.store = identity.store

    # --- tokens (tenant admins) ---------------------------------------------------------------------------
    async def issue_token(self, ctx: CommandContext, principal: Principal, *, name: str) -> NewScimToken:
        principal.require_admin()
        if principal.via != "token":
            raise Forbidden("SESSION_REQUIRED", "SCIM tokens are issued from a signed-in session")
        name = check_name(name)
        token_id = uuid.uuid4()
        token = new_scim_token(token_id)
        prefix = token[:11]

        def command() -> ScimToken:
            issued = ScimToken(
                token_id=token_id, tenant_id=principal.tenant_id, name=name, prefix=prefix,
                token_hash=secret_hash(token), issued_by=ctx.actor,
            )
            self.store.save(issued)
            return issued

        await self.store.execute(ctx, command)
        return NewScimToken(token_id, name, token, prefix)

    async def revoke_token(self, ctx: CommandContext, principal: Principal, token_id: uuid.UUID) -> None:
        principal.require_admin()

        def command() -> None:
            token = self.store.find(ScimToken, token_id)
            if token is None or token.tenant_id != principal.tenant_id:
                raise NotFound("SCIM_TOKEN_NOT_FOUND", "no such SCIM token")
            token.revoke()
            self.store.save(token)

        await self.store.execute(ctx, command)

    async def authenticate(self, ctx: CommandContext, credential: str) -> ScimCaller:
        token_id = parse_scim_token(credential)
        token = await self.store.call(self.store.find, ScimToken, token_id)
        if token is None or not secrets_equal(token.token_hash, secret_hash(credential)):
            raise Unauthenticated("INVALID_SCIM_TOKEN", "SCIM token is not valid")
        if token.revoked:
            if await self.identity.token_versions.first_sighting(f"scim:{token_id.hex}"):
                misuse = TokenMisuse(tenant_id=token.tenant_id, user_id=None, token_kind="scim", reason="revoked")
                await self.store.execute(ctx.replace(tenant_id=token.tenant_id), lambda: self.store.save(misuse))
            token.check_usable()
        return ScimCaller(token.tenant_id, token_id)

    # --- helpers (inside commands) --------------------------------------------------------------------------
    def _directory(self, tenant_id: str) -> ScimDirectory:
        found = self.store.find(ScimDirectory, directory_id(tenant_id))
        return found if found is not None else ScimDirectory(tenant_id=tenant_id)

    def _view(self, user: User, account: ScimAccount) -> ScimUserView:
        profile = account.profile
        return ScimUserView(
            id=user.id, user_name=str(profile["userName"]), email=user.email, emails=list(profile.get("emails") or []),
            display_name=profile.get("displayName"),
            external_id=profile["externalId"], given_name=profile["givenName"], family_name=profile["familyName"],
            active=user.active if profile.get("active") or not user.active else None,
            created=user.created_on, last_modified=user.modified_on,
        )

    def _listed_user(self, directory: ScimDirectory, user_id: uuid.UUID) -> tuple[User, ScimAccount]:
        if str(user_id) not in directory.users:
            raise NotFound("USER_NOT_FOUND", f"no user {user_id}")
        return self.store.get(User, user_id), self.store.get(ScimAccount, account_id(user_id))

    def _groups(self, directory: ScimDirectory) -> list[Group]:
        return [self.store.get(Group, uuid.UUID(gid)) for gid in directory.groups]

    def _apply_roles(self, tenant_id: str, user_ids: Iterable[str], groups: list[Group]) -> list[User]:
        """Each user's role from the mapped groups they are in now; the tenant's default role for one who
        was given a role by groups and is in no mapped group any more."""
        tenant = self.store.get(Tenant, uuid.UUID(tenant_id))
        changed = []
        for user_id in dict.fromkeys(user_ids):
            user = self.store.find(User, uuid.UUID(user_id))
            if user is None or getattr(user, "erased", False):
                continue
            role = role_from_groups([g.role for g in groups if user_id in g.members and not g.deleted])
            before = user.token_version
            user.change_role(role or tenant.default_role)
            if user.token_version != before:
                changed.append(user)
        return changed

    async def _publish_versions(self, users: Iterable[User]) -> None:
        for user in users:
            await self.identity.token_versions.set(str(user.id), user.token_version)

    # --- users ------------------------------------------------------------------------------------------------
    async def create_user(self, ctx: CommandContext, caller: ScimCaller, data: ScimUserData) -> ScimUserView:
        profile = _profile(data)
        name = _display_name(data)
        email = _email(data)

        def command() -> ScimUserView:
            directory = self._directory(caller.tenant_id)
            tenant = self.store.get(Tenant, uuid.UUID(caller.tenant_id))
            if self.store.find(EmailIndex, email_index_id(caller.tenant_id, email)) is not None:
                raise Conflict("SCIM_UNIQUENESS", "an account with this e-mail exists in this tenant", field="emails")
            user = User(
                tenant_id=caller.tenant_id, email=email, name=name, role=tenant.default_role,
                password_hash=None, created_by=ctx.actor,
            )
            index = EmailIndex(tenant_id=caller.tenant_id, email=email, user_id=user.id)
            directory.list_user(user.id, _name_hash(caller.tenant_id, str(profile["userName"])))
            account = ScimAccount(tenant_id=caller.tenant_id, user_id=user.id, profile=profile)
            if data.active is False:
                user.deactivate()
            self.store.save(user, index, directory, account)
            return self._view(user, account)

        return await self.store.execute(ctx, command)

    async def get_user(self, caller: ScimCaller, user_id: uuid.UUID) -> ScimUserView:
        def read() -> ScimUserView:
            directory = self._directory(caller.tenant_id)
            return self._view(*self._listed_user(directory, user_id))

        return await self.store.call(read)

    async def list_users(self, caller: ScimCaller) -> list[ScimUserView]:
        def read() -> list[ScimUserView]:
            directory = self._directory(caller.tenant_id)
            return [self._view(*self._listed_user(directory, uuid.UUID(uid))) for uid in directory.users]

        return await self.store.call(read)

    async def replace_user(
        self, ctx: CommandContext, caller: ScimCaller, user_id: uuid.UUID, data: ScimUserData
    ) -> ScimUserView:
        """PUT: the user becomes ``data``. The account's own e-mail stays (parley accounts are told apart by
        it); ``emails`` are kept as the provider sends them."""
        return await self.modify_user(ctx, caller, user_id, lambda _: data)

    async def modify_user(
        self, ctx: CommandContext, caller: ScimCaller, user_id: uuid.UUID, change: Callable[[ScimUserView], ScimUserData]
    ) -> ScimUserView:
        """PATCH: the user becomes what ``change`` (pure: a PATCH applied) makes of them as they are, inside
        the command, so two PATCHes at once never lose one another's change (a conflict runs it again)."""

        def command() -> tuple[ScimUserView, User]:
            directory = self._directory(caller.tenant_id)
            user, account = self._listed_user(directory, user_id)
            data = change(self._view(user, account))
            profile = _profile(data)
            name = _display_name(data)
            directory.rename_user(user.id, _name_hash(caller.tenant_id, str(profile["userName"])))
            account.change(profile)
            user.rename(name)
            if data.active is False:
                user.deactivate()  # bumps the token version: every token of the user stops working
            else:
                user.reactivate()
            self.store.save(user, directory, account)
            return self._view(user, account), user

        view, user = await self.store.execute(ctx, command)
        await self._publish_versions([user])
        return view

    async def delete_user(self, ctx: CommandContext, caller: ScimCaller, user_id: uuid.UUID) -> None:
        """The provider deletes the user: they leave every group and are erased (``UserErased``; their
        personal data is shredded as an admin's erasure does)."""
        await self.get_user(caller, user_id)  # 404 before gathering
        shredder = self.identity.shredder
        doomed = await shredder.gather(caller.tenant_id, user_id=str(user_id)) if shredder is not None else None

        def command() -> User:
            directory = self._directory(caller.tenant_id)
            user, _ = self._listed_user(directory, user_id)
            groups = [g for g in self._groups(directory) if str(user_id) in g.members]
            for group in groups:
                group.set_members([m for m in group.members if m != str(user_id)])
            directory.unlist_user(user_id)
            user.erase(erased_by=ctx.actor)
            self.store.save(user, directory, *groups)
            return user

        user = await self.store.execute(ctx, command)
        await self._publish_versions([user])
        if shredder is not None:
            await shredder.shred(doomed, user_id=user_id)

    # --- groups -----------------------------------------------------------------------------------------------
    def _group_view(self, group: Group, directory: ScimDirectory) -> ScimGroupView:
        members = [m for m in group.members if m in directory.users]
        return ScimGroupView(
            id=group.id, display_name=group.display_name, external_id=group.external_id, members=members,
            role=group.role, created=group.created_on, last_modified=group.modified_on,
        )

    def _listed_group(self, directory: ScimDirectory, group_id: uuid.UUID) -> Group:
        if str(group_id) not in directory.groups:
            raise NotFound("GROUP_NOT_FOUND", f"no group {group_id}")
        return self.store.get(Group, group_id)

    @staticmethod
    def _check_members(directory: ScimDirectory, members: list[str]) -> list[str]:
        checked = []
        for member in members:
            try:
                member_id = str(uuid.UUID(member))
            except ValueError:
                raise Invalid("INVALID_VALUE", f"member {member[:64]!r} is not a user id", field="members") from None
            if member_id not in directory.users:
                raise Invalid("INVALID_VALUE", f"member {member_id} is not a provisioned user", field="members")
            checked.append(member_id)
        return checked

    async def create_group(self, ctx: CommandContext, caller: ScimCaller, data: ScimGroupData) -> ScimGroupView:
        display_name = check_scim_text(data.display_name, "displayName")
        external_id = _optional(data.external_id, "externalId")

        def command() -> ScimGroupView:
            directory = self._directory(caller.tenant_id)
            group = Group(tenant_id=caller.tenant_id, display_name=display_name, external_id=external_id, created_by=ctx.actor)
            group.set_members(self._check_members(directory, data.members))
            directory.list_group(group.id, display_name)
            self.store.save(group, directory)
            return self._group_view(group, directory)

        return await self.store.execute(ctx, command)

    async def get_group(self, caller: ScimCaller, group_id: uuid.UUID) -> ScimGroupView:
        def read() -> ScimGroupView:
            directory = self._directory(caller.tenant_id)
            return self._group_view(self._listed_group(directory, group_id), directory)

        return await self.store.call(read)

    async def list_groups(self, caller: ScimCaller) -> list[ScimGroupView]:
        def read() -> list[ScimGroupView]:
            directory = self._directory(caller.tenant_id)
            return [self._group_view(g, directory) for g in self._groups(directory)]

        return await self.store.call(read)

    async def replace_group(
        self, ctx: CommandContext, caller: ScimCaller, group_id: uuid.UUID, data: ScimGroupData
    ) -> ScimGroupView:
        return await self.modify_group(ctx, caller, group_id, lambda _: data)

    async def modify_group(
        self, ctx: CommandContext, caller: ScimCaller, group_id: uuid.UUID, change: Callable[[ScimGroupView], ScimGroupData]
    ) -> ScimGroupView:
        """PATCH: as ``modify_user``; identity providers send member changes of one group at once."""

        def command() -> tuple[ScimGroupView, list[User]]:
            directory = self._directory(caller.tenant_id)
            group = self._listed_group(directory, group_id)
            data = change(self._group_view(group, directory))
            display_name = check_scim_text(data.display_name, "displayName")
            external_id = _optional(data.external_id, "externalId")
            before = set(group.members)
            group.rename(display_name, external_id)
            group.set_members(self._check_members(directory, data.members))
            directory.rename_group(group.id, display_name)
            touched = before ^ set(group.members) if group.role is not None else set()
            users = self._apply_roles(caller.tenant_id, touched, self._groups_with(directory, group))
            self.store.save(group, directory, *users)
            return self._group_view(group, directory), users

        view, users = await self.store.execute(ctx, command)
        await self._publish_versions(users)
        return view

    def _groups_with(self, directory: ScimDirectory, changed: Group) -> list[Group]:
        """The tenant's groups, ``changed`` as it stands in this command (not as stored)."""
        return [changed if str(g.id) == str(changed.id) else g for g in self._groups(directory)]

    async def delete_group(self, ctx: CommandContext, caller: ScimCaller, group_id: uuid.UUID) -> None:
        def command() -> list[User]:
            directory = self._directory(caller.tenant_id)
            group = self._listed_group(directory, group_id)
            members = list(group.members) if group.role is not None else []
            group.delete(deleted_by=ctx.actor)
            directory.unlist_group(group.id)
            users = self._apply_roles(caller.tenant_id, members, [g for g in self._groups(directory) if g.id != group.id])
            self.store.save(group, directory, *users)
            return users

        await self._publish_versions(await self.store.execute(ctx, command))

    async def map_group_role(
        self, ctx: CommandContext, principal: Principal, group_id: uuid.UUID, role: str | None
    ) -> ScimGroupView:
        """A tenant admin: the role members of ``group_id`` get (None: the group gives no role)."""
        principal.require_admin()

        def command() -> tuple[ScimGroupView, list[User]]:
            directory = self._directory(principal.tenant_id)
            group = self._listed_group(directory, group_id)
            group.map_role(role)
            users = self._apply_roles(principal.tenant_id, group.members, self._groups_with(directory, group))
            self.store.save(group, *users)
            return self._group_view(group, directory), users

        view, users = await self.store.execute(ctx, command)
        await self._publish_versions(users)
        return view

    async def list_groups_for_admin(self, principal: Principal) -> list[ScimGroupView]:
        principal.require_admin()
        return await self.list_groups(ScimCaller(principal.tenant_id, uuid.UUID(int=0)))

