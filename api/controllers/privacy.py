"""Personal data: a user's export of everything parley holds about them (GDPR articles 15 and 20), for
the user themself or an admin of their tenant; another tenant's user does not exist (404)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, get
from litestar.params import FromPath
from litestar.response import Stream

from api.deps import App, Caller, command_context
from application.privacy import Privacy
from projections.export import ReadModelExport
from workers.bootstrap import Container

__all__ = ["PrivacyController", "privacy_service"]


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
