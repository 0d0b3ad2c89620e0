"""Personal data: a user's export of everything parley holds about them (GDPR articles 15 and 20), for
the user themself or an admin of their tenant; another tenant's user does not exist (404)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, get, put
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from api.deps import App, Caller, command_context
from application.privacy import Privacy
from projections.export import ReadModelExport
from workers.bootstrap import Container

__all__ = ["PrivacyController", "PrivacySettingsController", "privacy_service"]


def privacy_service(c: Container) -> Privacy:
    """The export service over the container's event store, read models and blob store (the CLI builds it
    the same way)."""
    return Privacy(store=c.store, data=ReadModelExport(c.engine), blobs=c.knowledge.blobs)


class PrivacyController(Controller):
    path = "/api/v1/users"
    tags = ["privacy"]

    @get(
        "/{user_id:uuid}/export",
        operation_id="ExportUser",
        summary="Export a user's personal data",
        media_type="application/zip",
        response_description="A zip archive; its README.md documents every file",
    )
    async def export(self, request: Request[Any, Any, Any], user_id: FromPath[UUID], c: App, caller: Caller) -> Stream:
        """A zip of the user's profile, chats, documents (as uploaded), images, usage, generations and audit
        trail, as JSON documented in its ``README.md`` and ``manifest.json``; streamed as it is written."""
        export = await privacy_service(c).export(command_context(request, caller), caller, user_id)
        return Stream(
            export.chunks,
            media_type="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="{export.filename}"',
                "Cache-Control": "no-store",
            },
        )


class PrivacySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    allow_self_erasure: bool
    """Whether the tenant's users may erase themselves (``DELETE /api/v1/users/{their id}?erase=true``);
    admins never erase themselves."""


class PrivacySettingsController(Controller):
    path = "/api/v1/privacy/settings"
    tags = ["privacy"]

    @get("/", operation_id="GetPrivacySettings")
    async def read(self, c: App, caller: Caller) -> PrivacySettings:
        return PrivacySettings(allow_self_erasure=await c.identity.self_erasure(caller))

    @put("/", operation_id="SetPrivacySettings")
    async def write(
        self, request: Request[Any, Any, Any], data: JSONBody[PrivacySettings], c: App, caller: Caller
    ) -> PrivacySettings:
        """Tenant admin."""
        allowed = await c.identity.set_self_erasure(command_context(request, caller), caller, data.allow_self_erasure)
        return PrivacySettings(allow_self_erasure=allowed)
