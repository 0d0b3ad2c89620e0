"""Invitations: how a tenant gets its first admin (the platform admin invites them, at the tenant's
creation or later) and how a tenant's admins bring people in where sign-up is closed. A token is shown
once, expires and is used once; accepting it creates the account with the invitation's e-mail and role."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api import dto
from api.controllers.auths import user_dto
from api.deps import App, Caller, check_rate, client_ip, command_context
from api.openapi import refusals
from application.identity import NewInvitation

__all__ = ["InvitationController", "AcceptInvitationController", "invitation_dto"]


def invitation_dto(i: NewInvitation) -> dto.InvitationCreated:
    return dto.InvitationCreated(
        id=i.id, tenant_id=i.tenant_id, email=i.email, role=i.role, token=i.token, expires_at=i.expires_at
    )


class InvitationController(Controller):
    path = "/api/v1/tenants/{slug:str}/invitations"
    tags = ["tenants"]

    @post("/", operation_id="InviteUser", status_code=HTTP_201_CREATED)
    async def invite(
        self, request: Request[Any, Any, Any], slug: FromPath[str], data: JSONBody[dto.InvitationCreate], c: App, caller: Caller
    ) -> dto.InvitationCreated:
        """The platform admin invites into any tenant (its first admin, above all); a tenant's admin into
        their own. The token is shown once."""
        invitation = await c.identity.invite(
            command_context(request, caller),
            caller,
            tenant=slug,
            email=data.email,
            role=data.role,
            expires_in_days=data.expires_in_days,
        )
        return invitation_dto(invitation)


class AcceptInvitationController(Controller):
    path = "/api/v1/auths/invitations"
    tags = ["auth"]

    @post("/accept", operation_id="AcceptInvitation", status_code=HTTP_201_CREATED, responses=refusals(401, 429))
    async def accept(self, request: Request[Any, Any, Any], data: JSONBody[dto.InvitationAccept], c: App) -> dto.User:
        """Join the invitation's tenant: the account gets the invitation's e-mail and role."""
        ip = client_ip(request) or "unknown"
        await check_rate(request.app.state, c.identity.platform_tenant_id, f"invitation:{ip}", "sign_in_per_ip_per_minute")
        user = await c.identity.accept_invitation(
            command_context(request), token=data.token, name=data.name, password=data.password
        )
        return user_dto(user)
