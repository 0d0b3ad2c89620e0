"""The identity read model: tenants, users per tenant, API keys; and the queries the API serves from it.
Every query takes the caller's tenant and filters by it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Integer, Table, bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.identity import ERASED
from projections.runtime import HandlesTypes
from schema.contract import (
    ApiKeyCreated,
    ApiKeyRevoked,
    ApiKeyRoleMapChanged,
    EventData,
    RoleChanged,
    TenantCreated,
    TenantSettingsChanged,
    UserDeactivated,
    UserErased,
    UserReactivated,
    UserRegistered,
    UserRenamed,
    decode_data,
)
from schema.events import EventEnvelope
from schema.tables import api_keys, tenants, users

__all__ = ["IdentityProjector", "list_users", "get_user_row", "list_api_keys", "list_tenants", "tenant_for_host"]

_REVOKING = {"PasswordChanged", "RoleChanged", "UserDeactivated", "TokensRevoked", "UserErased"}


class IdentityProjector(HandlesTypes):
    name = "identity"
    tables: Sequence[Table] = (tenants, users, api_keys)
    _types = frozenset(
        {
            "TenantCreated",
            "TenantSettingsChanged",
            "UserRegistered",
            "PasswordChanged",
            "RoleChanged",
            "UserRenamed",
            "UserDeactivated",
            "UserReactivated",
            "TokensRevoked",
            "UserErased",
            "ApiKeyCreated",
            "ApiKeyRevoked",
            "ApiKeyRoleMapChanged",
        }
    )

    async def apply(self, conn: AsyncConnection, e: EventEnvelope) -> None:
        await self.apply_many(conn, [e])

    async def apply_many(self, conn: AsyncConnection, events: Sequence[EventEnvelope]) -> None:
        """The events in order, in few statements. A row created in the batch is built in memory, takes
        the batch's later changes there, and goes in with the others of its table as one multi-row
        insert; a change to a row from an earlier batch runs as it comes (it touches no row of this
        batch, so the order between the two does not matter), and each tenant's new users are counted
        in one update."""
        new_tenants: dict[str, dict[str, Any]] = {}
        new_users: dict[str, dict[str, Any]] = {}
        new_keys: dict[str, dict[str, Any]] = {}
        joined: Counter[str] = Counter()  # users registered in tenants from earlier batches
        for e in events:
            aggregate_id = str(e.aggregate_id)
            match data := decode_data(e.type, e.data):
                case TenantCreated():
                    new_tenants[aggregate_id] = {
                        "tenant_id": aggregate_id,
                        "slug": data.slug,
                        "name": data.name,
                        "allow_signup": data.allow_signup,
                        "default_role": data.default_role,
                        "domains": data.domains,
                        "user_count": 0,
                        "created_at": e.occurred_at,
                    }
                case TenantSettingsChanged():
                    settings = {
                        "name": data.name,
                        "allow_signup": data.allow_signup,
                        "default_role": data.default_role,
                        "domains": data.domains,
                    }
                    if aggregate_id in new_tenants:
                        new_tenants[aggregate_id].update(settings)
                    else:
                        await conn.execute(tenants.update().where(tenants.c.tenant_id == aggregate_id).values(**settings))
                case UserRegistered(tenant_id=tenant_id):
                    new_users[aggregate_id] = {
                        "user_id": aggregate_id,
                        "tenant_id": tenant_id,
                        # Replayed after an erasure the address opens as the marker: as UserErased leaves it,
                        # so two erased users of a tenant do not collide on the unique e-mail.
                        "email": f"erased:{aggregate_id}" if data.email == ERASED else data.email,
                        "name": data.name,
                        "role": data.role,
                        "active": True,
                        "token_version": 1,
                        "created_at": e.occurred_at,
                        "updated_at": e.occurred_at,
                    }
                    if tenant_id in new_tenants:
                        new_tenants[tenant_id]["user_count"] += 1
                    else:
                        joined[tenant_id] += 1
                case ApiKeyCreated():
                    new_keys[aggregate_id] = {
                        "key_id": aggregate_id,
                        "tenant_id": data.tenant_id,
                        "user_id": str(data.user_id),
                        "name": data.name,
                        "prefix": data.prefix,
                        "scopes": data.scopes,
                        "created_at": e.occurred_at,
                        "expires_at": data.expires_at,
                        "revoked_at": None,
                        "role_map": data.role_map or None,  # an empty map is no map
                    }
                case ApiKeyRoleMapChanged() | ApiKeyRevoked():
                    change = (
                        {"role_map": data.role_map or None}
                        if isinstance(data, ApiKeyRoleMapChanged)
                        else {"revoked_at": e.occurred_at}
                    )
                    if aggregate_id in new_keys:
                        new_keys[aggregate_id].update(change)
                    else:
                        await conn.execute(api_keys.update().where(api_keys.c.key_id == aggregate_id).values(**change))
                case _:
                    changes = _user_changes(e, data)
                    user = new_users.get(aggregate_id)
                    if user is None:
                        if e.type in _REVOKING:
                            changes["token_version"] = users.c.token_version + 1
                        await conn.execute(users.update().where(users.c.user_id == aggregate_id).values(**changes))
                    else:
                        user.update(changes)
                        user["token_version"] += 1 if e.type in _REVOKING else 0
        for table, rows in ((tenants, new_tenants), (users, new_users), (api_keys, new_keys)):
            if rows:
                await conn.execute(table.insert(), list(rows.values()))
        if joined:
            count = bindparam("joined", type_=Integer)
            await conn.execute(
                tenants.update()
                .where(tenants.c.tenant_id == bindparam("tenant"))
                .values(user_count=tenants.c.user_count + count),
                [{"tenant": tenant, "joined": n} for tenant, n in joined.items()],
            )


def _user_changes(e: EventEnvelope, data: EventData) -> dict[str, Any]:
    """What a user event other than ``UserRegistered`` sets (``token_version`` aside)."""
    changes: dict[str, Any] = {"updated_at": e.occurred_at}
    match data:
        case RoleChanged():
            changes["role"] = data.role
        case UserRenamed():
            changes["name"] = data.name
        case UserDeactivated():
            changes["active"] = False
        case UserReactivated():
            changes["active"] = True
        case UserErased():  # the row stays (ids elsewhere name it), nothing personal in it
            changes.update(active=False, name=ERASED, email=f"erased:{e.aggregate_id}")
    return changes


def _user_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.user_id,
        "tenant_id": row.tenant_id,
        "email": row.email,
        "name": row.name,
        "role": row.role,
        "active": row.active,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def list_users(
    engine: AsyncEngine,
    tenant_id: str,
    *,
    limit: int = 50,
    offset: int = 0,
    role: str | None = None,
    q: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    where = [users.c.tenant_id == tenant_id]
    if role:
        where.append(users.c.role == role)
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append(or_(users.c.email.ilike(pattern), users.c.name.ilike(pattern)))
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(users).where(*where))).scalar_one()
        rows = await conn.execute(
            select(users).where(*where).order_by(users.c.created_at, users.c.user_id).limit(limit).offset(offset)
        )
        return [_user_dict(r) for r in rows], int(total)


async def get_user_row(engine: AsyncEngine, tenant_id: str, user_id: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(users).where(users.c.tenant_id == tenant_id, users.c.user_id == user_id))
        ).first()
        return _user_dict(row) if row else None


async def list_api_keys(engine: AsyncEngine, tenant_id: str, user_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(api_keys)
            .where(api_keys.c.tenant_id == tenant_id, api_keys.c.user_id == user_id)
            .order_by(api_keys.c.created_at.desc())
        )
        return [
            {
                "id": r.key_id,
                "name": r.name,
                "prefix": r.prefix,
                "scopes": r.scopes,
                "created_at": r.created_at,
                "expires_at": r.expires_at,
                "revoked_at": r.revoked_at,
                "role_map": r.role_map,
            }
            for r in rows
        ]


async def list_tenants(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(tenants).order_by(tenants.c.created_at))
        return [
            {
                "id": r.tenant_id,
                "slug": r.slug,
                "name": r.name,
                "allow_signup": r.allow_signup,
                "default_role": r.default_role,
                "domains": r.domains,
                "user_count": r.user_count,
                "created_at": r.created_at,
            }
            for r in rows
        ]


async def tenant_for_host(engine: AsyncEngine, host: str) -> str | None:
    """The slug of the tenant that claims this host name, if any."""
    async with engine.connect() as conn:
        row = await conn.execute(
            select(tenants.c.slug).where(tenants.c.domains.contains([host.lower()])).limit(1)
        )
        return row.scalar()
