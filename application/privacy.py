"""Personal-data export (GDPR articles 15 and 20): everything parley holds about one user, as a zip of
documented JSON and the original files, streamed.

Streamed end to end: rows come from the read models a page at a time, blob bytes a piece at a time, and
the archive leaves as it is written (stdlib ``zipfile`` over a sink that cannot seek, so every entry's
sizes and CRC follow its data in a data descriptor), so an export of any size needs a few pages of
memory. ``manifest.json`` comes last, since it counts what was written; ``README.md`` comes first and
documents every file's shape. Each export is itself an event (``PersonalDataExported``) before its first
byte: the audit trail shows who took a copy of whose data.
"""

from __future__ import annotations

import asyncio
import io
import unicodedata
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import msgspec

from application.context import CommandContext
from application.identity import Principal
from application.ports import Blobs, EventStorePort, PersonalData
from domain.errors import NotFound
from domain.identity import EmailIndex, User, email_index_id, normalize_email
from domain.privacy import EXPORT_FORMAT_VERSION, DataExport

__all__ = ["FORMATS", "Export", "Privacy", "safe_filename"]

FORMATS: dict[str, str] = {
    "README.md": "this description of the archive",
    "manifest.json": (
        '{"format": "parley-personal-data-export", "format_version": int, "generated_at": ISO 8601, '
        '"subject": {"id", "email"}, "tenant": {"id", "slug"}, '
        '"files": [{"path", "kind", "count" (items in its main list; bytes for originals and images), '
        '"missing"? (true: the original was gone from the blob store)}], "formats": {kind: description}}; '
        "written last, as it counts what the archive holds"
    ),
    "profile.json": (
        '{"user": {"id", "email", "name", "role", "status" ("active" | "deactivated"), "created_at", "updated_at", '
        '"tenant": {"id", "slug", "name"}}, '
        '"api_keys": [{"id", "name", "prefix" (the visible start of the key; never the secret), "scopes", '
        '"created_at", "expires_at", "revoked_at"}], '
        '"sessions": [{"id", "started_at", "ip", "user_agent", "expires_at", "refreshes", "last_refreshed_at", '
        '"ended_at", "end_reason"}]}'
    ),
    "chats/<chat_id>.json": (
        '{"chat": {"id", "title", "source", "archived", "deleted", "message_count", "head_id", "knowledge_ids", '
        '"file_ids", "client_chat_id", "created_at", "updated_at"}, '
        '"messages": [{"id", "parent_id" (the tree: null for a root), "role" (system | user | assistant | tool), '
        '"content", "model", "created_at", "generation_id", "status", "thinking", "prompt_tokens", '
        '"completion_tokens", "timings", "tool_calls" ([{"id", "name", "arguments"}]), "tool_call_id", '
        '"tool_name", "tool_latency_ms", "images" ([{"sha256", "media_type"}]: the bytes are under images/), '
        '"citations" ([{document, chunk, score...}])}] oldest first}; a deleted chat keeps its metadata only'
    ),
    "documents/<document_id>/metadata.json": (
        '{"id", "knowledge_id", "chat_id", "filename", "media_type", "size", "sha256", "source_url", "title", '
        '"status", "chars", "chunk_count", "error_code", "error_message", "created_at", "updated_at", '
        '"original" (its path in this archive, or null when the blob store no longer holds it)}'
    ),
    "documents/<document_id>/<filename>": "the document's bytes as uploaded (the file name made safe)",
    "images/<sha256>.<ext>": "the bytes of an image sent in a chat, named by its SHA-256",
    "usage.json": (
        '{"days": [{"day", "model", "role", "prompt_tokens", "completion_tokens", "total_tokens", "requests", '
        '"completed", "failed", "cancelled"}], "tools": [{"day", "tool", "calls", "results", "result_bytes", '
        '"result_latency_ms"}]} (days are the tenant\'s local days)'
    ),
    "generations.json": (
        '{"generations": [{"id", "chat_id", "model", "user_message_id", "answer_message_id", "params", '
        '"reserved_tokens", "status", "attempt", "cancel_requested", "text", "finish_reason", "error_code", '
        '"error_message", "prompt_tokens", "completion_tokens", "ttft_ms", "tokens_per_s", "duration_ms", '
        '"requested_at", "started_at", "finished_at", "purpose", "tool_calls", "tools_ignored"}] oldest first}'
    ),
    "audit.json": (
        '{"rows": [{"seq", "event_id", "occurred_at", "actor", "via", "action", "target_type", "target_id", '
        '"ip", "user_agent", "correlation_id", "detail" (null where the target is another person), "hash"}] '
        "oldest first: what the subject did, in person or through their API keys, and what was done to them}"
    ),
}

_FLUSH_BYTES = 64 * 1024  # hand the archive on in pieces about this big
_IMAGE_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}
_UNSAFE = frozenset('<>:"/\\|?*')
_json = msgspec.json.Encoder()


def safe_filename(name: str, *, reserved: Sequence[str] = ("metadata.json",)) -> str:
    """``name`` as a file name that unpacks where it is put on any system: no directories, no control
    or reserved characters, no leading dots, at most 200 characters."""
    base = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    cleaned = "".join("_" if ch in _UNSAFE or not ch.isprintable() else ch for ch in base).strip().lstrip(".")
    cleaned = cleaned[:200].strip() or "document"
    return f"_{cleaned}" if cleaned in reserved else cleaned


class _Sink(io.RawIOBase):
    """Where the zip writer writes: it keeps what was written until ``take``, and cannot seek (so
    ``zipfile`` writes data descriptors instead of going back to the headers)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        piece = bytes(data)
        self._parts.append(piece)
        self.size += len(piece)
        return len(piece)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        self.size = 0
        return data


class _Archive:
    def __init__(self, moment: datetime) -> None:
        self.sink = _Sink()
        self.zip = zipfile.ZipFile(self.sink, "w", compression=zipfile.ZIP_DEFLATED)
        self.date_time = moment.astimezone(UTC).timetuple()[:6]
        self.files: list[dict[str, Any]] = []

    def entry(self, path: str) -> IO[bytes]:
        info = zipfile.ZipInfo(path, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        return self.zip.open(info, "w", force_zip64=True)  # sizes unknown ahead: room for any

    def ready(self) -> bool:
        return self.sink.size >= _FLUSH_BYTES

    def close(self) -> bytes:
        self.zip.close()
        return self.sink.take()


@dataclass(frozen=True)
class Export:
    """An export under way: ``chunks`` is the archive, produced as it is read."""

    tenant_id: str
    subject_id: uuid.UUID
    generated_at: datetime
    filename: str
    chunks: AsyncIterator[bytes]


def _now() -> datetime:
    return datetime.now(UTC)


class Privacy:
    def __init__(
        self, *, store: EventStorePort, data: PersonalData, blobs: Blobs, clock: Callable[[], datetime] = _now
    ) -> None:
        self.store = store
        self.data = data
        self.blobs = blobs
        self.clock = clock

    def _subject(self, tenant_id: str, user_id: uuid.UUID) -> User:
        user = self.store.find(User, user_id)
        if user is None or user.tenant_id != tenant_id:  # another tenant's user does not exist for you
            raise NotFound("USER_NOT_FOUND", "no such user")
        return user

    async def find_user(self, tenant_id: str, id_or_email: str) -> uuid.UUID:
        """The user an operator names by id or by e-mail address."""
        try:
            return uuid.UUID(id_or_email)
        except ValueError:
            pass
        index = await self.store.call(
            self.store.find, EmailIndex, email_index_id(tenant_id, normalize_email(id_or_email))
        )
        if index is None:
            raise NotFound("USER_NOT_FOUND", "no such user")
        return uuid.UUID(str(index.user_id))

    async def export(self, ctx: CommandContext, principal: Principal, user_id: uuid.UUID) -> Export:
        """The export of ``user_id``'s data: for the user themself, or an admin of their tenant. Recorded
        before its first byte."""
        principal.require_scope("read")
        if principal.user_id != user_id:
            principal.require_admin()
        tenant_id = principal.tenant_id
        await self.store.call(self._subject, tenant_id, user_id)
        profile = await self.data.profile(tenant_id, str(user_id))
        if profile is None:  # registered a moment ago: not in the read models yet
            raise NotFound("USER_NOT_FOUND", "no such user")
        record = DataExport(tenant_id=tenant_id, subject_id=user_id, format_version=EXPORT_FORMAT_VERSION)
        await self.store.execute(ctx, lambda: self.store.save(record))
        generated_at = self.clock()
        return Export(
            tenant_id=tenant_id,
            subject_id=user_id,
            generated_at=generated_at,
            filename=f"parley-export-{user_id}-{generated_at:%Y%m%dT%H%M%SZ}.zip",
            chunks=self._archive(tenant_id, str(user_id), profile, generated_at),
        )

    # --- the archive -------------------------------------------------------------------------------------
    async def _archive(
        self, tenant_id: str, user_id: str, profile: dict[str, Any], generated_at: datetime
    ) -> AsyncIterator[bytes]:
        archive = _Archive(generated_at)
        with archive.entry("README.md") as readme:
            readme.write(_readme(generated_at).encode())
        archive.files.append({"path": "README.md", "kind": "README.md", "count": 1})

        profile_lists = [
            ("api_keys", self.data.api_keys(tenant_id, user_id)),
            ("sessions", self.data.sessions(tenant_id, user_id)),
        ]
        async for piece in self._json(archive, "profile.json", "profile.json", {"user": profile}, profile_lists):
            yield piece

        images: dict[str, str] = {}  # sha256 -> media type, of the images the subject's chats hold

        def note_images(message: dict[str, Any]) -> None:
            for image in message.get("images") or ():
                if isinstance(image, dict) and isinstance(image.get("sha256"), str):
                    images.setdefault(image["sha256"], str(image.get("media_type") or ""))

        async for chat in self.data.chats(tenant_id, user_id):
            messages = [("messages", self.data.messages(tenant_id, str(chat["id"])))]
            path = f"chats/{chat['id']}.json"
            async for piece in self._json(archive, path, "chats/<chat_id>.json", {"chat": chat}, messages, note_images):
                yield piece

        async for document in self.data.documents(tenant_id, user_id):
            folder = f"documents/{document['id']}"
            original = f"{folder}/{safe_filename(str(document['filename']))}"
            async for piece in self._blob(
                archive, original, "documents/<document_id>/<filename>", tenant_id, str(document["sha256"])
            ):
                yield piece
            missing = archive.files[-1].get("missing", False)
            metadata = {**document, "original": None if missing else original}
            async for piece in self._json(
                archive, f"{folder}/metadata.json", "documents/<document_id>/metadata.json", metadata, []
            ):
                yield piece

        for sha256, media_type in images.items():
            path = f"images/{safe_filename(sha256)}.{_IMAGE_EXTENSIONS.get(media_type, 'bin')}"
            async for piece in self._blob(archive, path, "images/<sha256>.<ext>", tenant_id, sha256):
                yield piece

        usage = [("days", self.data.usage_days(tenant_id, user_id)), ("tools", self.data.tool_days(tenant_id, user_id))]
        async for piece in self._json(archive, "usage.json", "usage.json", {}, usage):
            yield piece
        generations = [("generations", self.data.generations(tenant_id, user_id))]
        async for piece in self._json(archive, "generations.json", "generations.json", {}, generations):
            yield piece
        async for piece in self._json(
            archive, "audit.json", "audit.json", {}, [("rows", self.data.audit(tenant_id, user_id))]
        ):
            yield piece

        manifest = {
            "format": "parley-personal-data-export",
            "format_version": EXPORT_FORMAT_VERSION,
            "generated_at": generated_at,
            "subject": {"id": user_id, "email": profile.get("email")},
            "tenant": {"id": tenant_id, "slug": (profile.get("tenant") or {}).get("slug")},
            "files": [*archive.files, {"path": "manifest.json", "kind": "manifest.json", "count": 1}],
            "formats": FORMATS,
        }
        with archive.entry("manifest.json") as out:
            out.write(_json.encode(manifest))
        yield archive.close()

    async def _json(
        self,
        archive: _Archive,
        path: str,
        kind: str,
        head: dict[str, Any],
        lists: Sequence[tuple[str, AsyncIterator[dict[str, Any]]]],
        each: Callable[[dict[str, Any]], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """One JSON object: ``head``'s members, then each list, streamed row by row. The file's count is
        the length of its first list (1 for a plain object)."""
        count = 0 if lists else 1
        with archive.entry(path) as out:
            members = [_json.encode(k) + b":" + _json.encode(v) for k, v in head.items()]
            out.write(b"{" + b",".join(members))
            for number, (name, rows) in enumerate(lists):
                out.write((b"," if members or number else b"") + _json.encode(name) + b":[")
                first = True
                async for row in rows:
                    if each is not None:
                        each(row)
                    out.write((b"" if first else b",") + _json.encode(row))
                    first = False
                    count += number == 0
                    if archive.ready():
                        yield archive.sink.take()
                out.write(b"]")
            out.write(b"}")
        archive.files.append({"path": path, "kind": kind, "count": count})
        if archive.ready():
            yield archive.sink.take()

    async def _blob(self, archive: _Archive, path: str, kind: str, tenant_id: str, sha256: str) -> AsyncIterator[bytes]:
        """The blob copied into the archive a piece at a time (compressed off the event loop), yielding
        what is ready to send. A missing blob leaves no entry; its line in the manifest says so."""
        pieces = self.blobs.chunks(tenant_id, sha256)
        try:
            piece: bytes | None = await anext(pieces)
        except StopAsyncIteration:
            piece = None
        except (KeyError, ValueError):  # gone from the blob store (or a key it never had)
            archive.files.append({"path": path, "kind": kind, "count": 0, "missing": True})
            return
        size = 0
        with archive.entry(path) as out:
            while piece is not None:
                await asyncio.to_thread(out.write, piece)
                size += len(piece)
                if archive.ready():
                    yield archive.sink.take()
                piece = await anext(pieces, None)
        archive.files.append({"path": path, "kind": kind, "count": size})
        if archive.ready():
            yield archive.sink.take()


def _readme(generated_at: datetime) -> str:
    lines = [
        "# Your data in parley",
        "",
        f"Generated {generated_at.astimezone(UTC).isoformat()} (format version {EXPORT_FORMAT_VERSION}).",
        "Every JSON file is UTF-8; times are ISO 8601 in UTC; ids are UUIDs unless said otherwise.",
        "`manifest.json` (written last) lists every file with how many items it holds.",
        "",
        "## Files and their shapes",
        "",
    ]
    lines += [f"- `{path}`: {shape}" for path, shape in FORMATS.items()]
    return "\n".join(lines) + "\n"
