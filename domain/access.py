"""Who may read and change what a user made and shared: the access model of knowledge bases and prompts
(Open WebUI's access control). A thing has an owner and grants, each to a grantee (``user:<id>``,
``role:<role>`` or ``tenant``) for ``read`` or ``write``; its owner and the tenant's admins may do
anything with it. Refusals say "not found" to whoever may not read it, so nothing leaks that it exists.

``Shared`` is the aggregate side (a mixin: each aggregate keeps its own grant and revoke events, named
for it); ``access_level`` the same rule for a read-model row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar
from uuid import UUID

from domain.errors import Conflict, Forbidden, Invalid, NotFound

__all__ = ["ACCESS_LEVELS", "Reader", "Shared", "access_level", "check_grantee"]

ACCESS_LEVELS = ("read", "write")
_GRANTEE = re.compile(r"^(user:[0-9a-f-]{36}|role:(admin|user|premium|guest)|tenant)$")


@dataclass(frozen=True)
class Reader:
    """Who reads: the caller of a request, or the user whose question a generation answers."""

    tenant_id: str
    user_id: UUID
    role: str
    is_admin: bool

    @property
    def grantees(self) -> list[str]:
        """The grantees whose access this reader has."""
        return [f"user:{self.user_id}", f"role:{self.role}", "tenant"]


def access_level(owner_id: UUID | str, access: dict[str, str], reader: Reader) -> str | None:
    """``write``, ``read`` or None: the best access the owner, the admin role or any grant gives."""
    if reader.is_admin or str(owner_id) == str(reader.user_id):
        return "write"
    levels = {access.get(g) for g in reader.grantees}
    return "write" if "write" in levels else "read" if "read" in levels else None


def check_grantee(grantee: str) -> str:
    if not _GRANTEE.match(grantee):
        raise Invalid(
            "INVALID_GRANTEE", "grant to 'user:<id>', 'role:<admin|user|premium|guest>' or 'tenant'", field="grantee"
        )
    return grantee


class Shared:
    """Checks of an aggregate that has ``tenant_id``, ``owner_id``, ``access`` and ``deleted``. The class
    attributes name its refusals: (code, message) when the caller may not see it, may only read it, or is
    neither its owner nor an admin."""

    NOT_FOUND: ClassVar[tuple[str, str]] = ("NOT_FOUND", "no such thing")
    READ_ONLY: ClassVar[tuple[str, str]] = ("READ_ONLY", "you may read this but not change it")
    OWNER_ONLY: ClassVar[tuple[str, str]] = ("OWNER_ONLY", "only the owner or an admin can do this")

    if TYPE_CHECKING:
        tenant_id: str
        owner_id: UUID
        access: dict[str, str]
        deleted: bool

    def level_for(self, user_id: UUID, role: str, *, is_admin: bool) -> str | None:
        """``write``, ``read`` or None: the best access any grant gives this caller."""
        if self.deleted:
            return None
        return access_level(self.owner_id, self.access, Reader(self.tenant_id, user_id, role, is_admin))

    def check_readable(self, user_id: UUID, role: str, *, is_admin: bool) -> None:
        if self.level_for(user_id, role, is_admin=is_admin) is None:
            raise NotFound(*self.NOT_FOUND)

    def check_writable(self, user_id: UUID, role: str, *, is_admin: bool) -> None:
        level = self.level_for(user_id, role, is_admin=is_admin)
        if level is None:
            raise NotFound(*self.NOT_FOUND)
        if level != "write":
            raise Forbidden(*self.READ_ONLY)

    def check_manageable(self, user_id: UUID, role: str, *, is_admin: bool) -> None:
        """Sharing and deletion belong to the owner (and tenant admins)."""
        self.check_writable(user_id, role, is_admin=is_admin)
        if not (is_admin or self.owner_id == user_id):
            raise Forbidden(*self.OWNER_ONLY)

    def check_grant(self, grantee: str, level: str) -> None:
        check_grantee(grantee)
        if level not in ACCESS_LEVELS:
            raise Invalid("INVALID_ACCESS_LEVEL", "level is 'read' or 'write'", field="level")
        if self.access.get(grantee) == level:
            raise Conflict("ALREADY_GRANTED", "this access is already granted")

    def check_revoke(self, grantee: str) -> None:
        if grantee not in self.access:
            raise Conflict("NOT_GRANTED", "this access is not granted")
