"""Moving in from Open WebUI: ``parley import open-webui`` reads a deployment's database and uploads and
writes what they hold as parley events, through parley's own services, so every rule and event applies.

What becomes what:

- users (``user`` + ``auth``): a parley user with the same e-mail, name and role (admin, user, pending:
  pending stays pending), its bcrypt password hash kept (sign-in accepts it and replaces it with argon2id
  the first time), its default model and temperature (``settings.ui``) as its parley settings. A parley
  user already holding the e-mail is linked, not created: that account receives the chats.
- API keys (``api_key``): Open WebUI stores them in the clear, so each becomes a parley API key (read and
  write) that keeps working as it is (``sk-...``; ``application.credentials.imported_api_key_id``).
- folders (ids from the source's), chats (their whole message tree, ``currentId``, title, tags, pinned, archived, folder): through
  ``ChatExchange``, as an uploaded Open WebUI export is.
- workspace models (``model`` with a base model): presets (``Models.register_preset``) with the system
  prompt and the parameters parley knows, public ones open to the tenant; a model row without a base
  model (Open WebUI's settings for a connection's model) maps to the parley model of that name.
- knowledge bases and their files, a chat's uploaded files: ``Knowledge.create``/``upload``, so the
  ingestion worker extracts, chunks and embeds them as any upload.
- ratings (``feedback``): ``Ratings.rate``; share links (``shared_chat``): ``Shares.create`` on the
  shared branch (a new link: parley draws share ids itself).

Idempotent: chats, messages, folders, API keys, documents and ratings have ids that follow from the
source; users, knowledge bases and share links are found again through ``ImportRecord``. A second run adds
nothing. What is not carried over is in the report, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from application.chat_exchange import ChatExchange, imported_message_id
from application.context import CommandContext
from application.conversations import Models
from application.credentials import imported_api_key_id, secret_hash
from application.identity import Identity, Principal
from application.knowledge import Knowledge
from application.ports import EventStorePort
from application.ratings import Ratings
from application.sharing import Shares
from application.user_settings import UserSettingsService
from domain.chats import Chat, import_chat_id_for
from domain.errors import Invalid, ParleyError
from domain.folders import FolderTree, folder_tree_id_for
from domain.identity import ApiKey, EmailIndex, User, check_name, email_index_id, normalize_email
from domain.imports import ImportRecord, import_record_id
from domain.knowledge import Document
from domain.models import CORE_PARAMS, OPTIONAL_PARAMS
from domain.ratings import Rating, rating_id_for

__all__ = ["OPENWEBUI_TABLES", "OpenWebUIData", "OpenWebUIImport", "ImportProgress", "MovingInReport"]

SOURCE = "open-webui"
OPENWEBUI_TABLES = (
    "user", "auth", "api_key", "folder", "chat", "tag", "model", "access_grant", "knowledge", "knowledge_file",
    "file", "chat_file", "feedback", "shared_chat",
)  # fmt: skip
ROLES = {"admin": "admin", "user": "user", "pending": "pending"}
PARAMS = {"system": "system_prompt", **{p: p for p in (*CORE_PARAMS, *OPTIONAL_PARAMS) if p != "system_prompt"}}
NOT_CARRIED = {
    "config": "Open WebUI's own settings (connections, features, UI): parley's are its settings and tenant settings",
    "model_history": "past versions of workspace models: parley keeps a model's history as its events",
    "access_grant": "grants other than public read (user '*'): none mapped beyond a model's or knowledge base's "
    "openness to the whole tenant",
}
MESSAGE_EXTRAS = ("files", "sources", "statusHistory", "followUps", "annotation", "usage", "info", "error")
"""Parts of an Open WebUI message that parley's messages do not hold (the text, role, model, time and
place in the tree are carried)."""


@dataclass(frozen=True)
class OpenWebUIData:
    """What the import reads: every row of ``OPENWEBUI_TABLES`` (JSON columns as text or decoded), the
    row count of every table in the database, and a reader of an uploaded file by its stored path."""

    rows: Mapping[str, list[dict[str, Any]]]
    table_counts: Mapping[str, int]
    schema_version: str | None
    read_upload: Callable[[str], bytes | None]


class ImportProgress(Protocol):
    def start(self, step: str, total: int) -> None: ...

    def advance(self) -> None: ...


class _Silent:
    def start(self, step: str, total: int) -> None:
        pass

    def advance(self) -> None:
        pass


@dataclass
class MovingInReport:
    dry_run: bool
    imported: dict[str, int] = field(default_factory=dict)
    """Per kind: how many were imported now (or would be, in a dry run)."""
    already: dict[str, int] = field(default_factory=dict)
    """Per kind: how many a run before imported."""
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, the thing in Open WebUI, why)"""
    notes: list[str] = field(default_factory=list)
    """What is not carried over at all, and why; links that changed."""

    def count(self, kind: str, done: bool) -> None:
        into = self.imported if done else self.already
        into[kind] = into.get(kind, 0) + 1

    def skip(self, kind: str, ref: str, why: str) -> None:
        self.skipped.append((kind, ref, why))


def _json(value: Any) -> Any:
    """A JSON column: decoded already (Postgres json) or text (SQLite)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    seconds = int(value)
    return datetime.fromtimestamp(seconds / 1e9 if seconds > 10**15 else seconds, UTC)


class OpenWebUIImport:
    def __init__(
        self,
        *,
        store: EventStorePort,
        identity: Identity,
        exchange: ChatExchange,
        models: Models,
        knowledge: Knowledge,
        user_settings: UserSettingsService,
        progress: ImportProgress | None = None,
    ) -> None:
        self.store = store
        self.identity = identity
        self.exchange = exchange
        self.models = models
        self.knowledge = knowledge
        self.user_settings = user_settings
        self.ratings = Ratings(store=store)
        self.shares = Shares(store=store)
        self.progress = progress or _Silent()

    async def run(self, data: OpenWebUIData, *, tenant: str, dry_run: bool = False) -> MovingInReport:
        t = await self.identity.tenant(tenant)
        self.tenant_id = str(t.id)
        self.ctx = CommandContext(tenant_id=self.tenant_id, actor="system:import-open-webui")
        self.data = data
        self.dry = dry_run
        self.report = MovingInReport(dry_run=dry_run)
        if not dry_run:  # the built-in model every tenant has: users' default model, presets' base
            await self.models.ensure_local(self.tenant_id)
        self.users: dict[str, Principal] = {}
        """Open WebUI user id -> the parley user as a principal"""
        self.knowledge_ids: dict[str, uuid.UUID] = {}
        self.new_tags: set[tuple[str, str]] = set()
        """(Open WebUI user id, tag) on the chats imported by this run"""
        await self._users()
        await self._api_keys()
        await self._folders()
        await self._chats()
        await self._knowledge()
        await self._models()
        await self._chat_files()
        await self._ratings()
        await self._shares()
        self._tags()
        self._not_carried()
        return self.report

    # --- helpers ---------------------------------------------------------------------------------------
    def _rows(self, table: str) -> list[dict[str, Any]]:
        return sorted(self.data.rows.get(table, []), key=lambda r: (int(r.get("created_at") or 0), str(r.get("id"))))

    async def _record(self, kind: str, source_id: str) -> str | None:
        record = await self.store.call(
            self.store.find, ImportRecord, import_record_id(self.tenant_id, SOURCE, kind, source_id)
        )
        return record.target_id if record is not None else None

    def _save_record(self, kind: str, source_id: str, target_id: str) -> None:
        record = ImportRecord(
            tenant_id=self.tenant_id, source=SOURCE, kind=kind, source_id=source_id, target_id=target_id
        )
        self.store.save(record)

    async def _remember(self, kind: str, source_id: str, target_id: str) -> None:
        await self.store.execute(self.ctx, lambda: self._save_record(kind, source_id, target_id))

    def _owner(self, kind: str, row: Mapping[str, Any], ref: str) -> Principal | None:
        owner = self.users.get(str(row.get("user_id")))
        if owner is None:
            self.report.skip(kind, ref, "its owner was not imported")
        return owner

    def _chat_id(self, owner: Principal, source_chat_id: str) -> uuid.UUID:
        return import_chat_id_for(self.tenant_id, owner.user_id, source_chat_id)

    # --- users and API keys ----------------------------------------------------------------------------
    async def _users(self) -> None:
        auth = {str(a["id"]): a for a in self.data.rows.get("auth", [])}
        rows = self._rows("user")
        self.progress.start("users", len(rows))
        for row in rows:
            await self._user(row, auth.get(str(row["id"])))
            self.progress.advance()

    async def _user(self, row: Mapping[str, Any], auth: Mapping[str, Any] | None) -> None:
        ref = f"{row.get('email')} ({row['id']})"
        role = ROLES.get(str(row.get("role")))
        if role is None:
            self.report.skip("user", ref, f"role '{row.get('role')}' has no parley counterpart")
            return
        try:
            email = normalize_email(str(row.get("email") or ""))
        except Invalid:
            self.report.skip("user", ref, "its e-mail is not an e-mail address")
            return
        try:
            name = check_name(str(row.get("name") or ""))
        except Invalid:
            name = check_name(email.split("@", 1)[0][:100] or "user")
        known = await self._record("user", str(row["id"]))
        if known is not None:
            user = await self.store.call(self.store.find, User, uuid.UUID(known))
            if user is not None:
                self.users[str(row["id"])] = Principal(self.tenant_id, user.id, user.role, via="token")
            self.report.count("user", False)
            return
        index = await self.store.call(self.store.find, EmailIndex, email_index_id(self.tenant_id, email))
        if index is not None:  # a parley account holds the e-mail: it receives this user's things
            existing = await self.store.call(self.store.get, User, index.user_id)
            self.users[str(row["id"])] = Principal(self.tenant_id, existing.id, existing.role, via="token")
            self.report.skip("user", ref, "a parley user with this e-mail exists: linked to it, not created")
            if not self.dry:
                await self._remember("user", str(row["id"]), str(existing.id))
            return
        password_hash = str(auth["password"]) if auth and auth.get("password") else None
        if password_hash is None:
            self.report.skip("user", ref, "no password hash: imported without a password (signs in elsewhere)")
        if self.dry:
            self.users[str(row["id"])] = Principal(self.tenant_id, uuid.uuid4(), role, via="token")
            self.report.count("user", True)
            return
        active = bool(int(auth.get("active", 1))) if auth else True
        created = await self.store.execute(
            self.ctx, partial(self._new_user, str(row["id"]), email, name, role, password_hash, active)
        )
        principal = Principal(self.tenant_id, created.id, created.role, via="token")
        self.users[str(row["id"])] = principal
        self.report.count("user", True)
        await self._user_settings(principal, ref, _json(row.get("settings")))

    def _new_user(
        self, source_id: str, email: str, name: str, role: str, password_hash: str | None, active: bool
    ) -> User:
        tenant = self.identity._tenant(self.tenant_id)
        user, aggregates = self.identity._new_user(tenant, email, name, role, password_hash, self.ctx.actor)
        if not active:
            user.deactivate()
        self.store.save(*aggregates)
        self._save_record("user", source_id, str(user.id))
        return user

    async def _user_settings(self, principal: Principal, ref: str, settings: Any) -> None:
        ui = settings.get("ui") if isinstance(settings, dict) else None
        if not isinstance(ui, dict):
            return
        models = ui.get("models") if isinstance(ui.get("models"), list) else []
        params = {k: v for k, v in (ui.get("params") or {}).items() if k in ("temperature", "top_p", "max_tokens")}
        try:
            await self.user_settings.update(
                self.ctx, principal, default_model=str(models[0]) if models else None, default_params=params or None
            )
        except ParleyError as e:
            self.report.skip("user settings", ref, f"{e.code}: {e.message}")

    async def _api_keys(self) -> None:
        rows = self._rows("api_key")
        self.progress.start("API keys", len(rows))
        for row in rows:
            self.progress.advance()
            ref = str(row["id"])
            owner = self._owner("api key", row, ref)
            key = str(row.get("key") or "")
            if owner is None:
                continue
            if not (key.startswith("sk-") and len(key) == 35):
                self.report.skip("api key", ref, "not an 'sk-' key of 32 hex digits")
                continue
            key_id = imported_api_key_id(key)
            existing = await self.store.call(self.store.find, ApiKey, key_id)
            if existing is not None and existing.tenant_id != self.tenant_id:
                self.report.skip("api key", ref, "imported into another tenant before: a key opens one account")
                continue
            if existing is not None:
                self.report.count("api key", False)
                continue
            if not self.dry:
                expires = _time(row.get("expires_at"))
                api_key = ApiKey(
                    key_id=key_id,
                    tenant_id=self.tenant_id,
                    user_id=owner.user_id,
                    name="Open WebUI key",
                    prefix=key[:11],
                    key_hash=secret_hash(key),
                    scopes=["read", "write"],
                    expires_at=expires,
                )
                await self.store.execute(self.ctx, partial(self.store.save, api_key))
            self.report.count("api key", True)

    # --- folders and chats -----------------------------------------------------------------------------
    async def _folders(self) -> None:
        rows = self._rows("folder")
        by_id = {str(r["id"]): r for r in rows}

        def depth(r: Mapping[str, Any]) -> int:
            n, at = 0, r.get("parent_id")
            while at is not None and str(at) in by_id and n < 100:
                n, at = n + 1, by_id[str(at)].get("parent_id")
            return n

        self.progress.start("folders", len(rows))
        for row in sorted(rows, key=depth):  # parents first
            self.progress.advance()
            owner = self._owner("folder", row, f"{row.get('name')} ({row['id']})")
            if owner is None:
                continue
            try:
                done = await self.store.execute(self.ctx, partial(self._folder, owner, row))
            except ParleyError as e:
                self.report.skip("folder", f"{row.get('name')} ({row['id']})", f"{e.code}: {e.message}")
                continue
            self.report.count("folder", done)

    def _folder_id(self, owner: Principal, source_folder_id: str) -> str:
        """parley's id of an imported folder (folder ids are unique across parley: the same deployment may
        be imported into two tenants)."""
        return str(
            uuid.uuid5(
                uuid.NAMESPACE_URL,
                f"/tenants/{self.tenant_id}/users/{owner.user_id}/imported-folders/{source_folder_id}",
            )
        )

    def _folder(self, owner: Principal, row: Mapping[str, Any]) -> bool:
        folder_id = self._folder_id(owner, str(row["id"]))
        tree = self.store.find(FolderTree, folder_tree_id_for(self.tenant_id, owner.user_id))
        if tree is not None and folder_id in tree.folders:
            return False
        if self.dry:
            return True
        tree = tree or FolderTree(tenant_id=self.tenant_id, owner_id=owner.user_id)
        parent = self._folder_id(owner, str(row["parent_id"])) if row.get("parent_id") else None
        tree.create_folder(folder_id, str(row["name"]), parent if parent in tree.folders else None)
        self.store.save(tree)
        return True

    def _export_item(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A chat row as Open WebUI's export writes it (what ``ChatExchange`` reads)."""
        return {
            "id": str(row["id"]),
            "title": row.get("title"),
            "chat": _json(row.get("chat")) or {},
            "meta": _json(row.get("meta")) or {},
            "pinned": bool(row.get("pinned")),
            "archived": bool(row.get("archived")),
            "folder_id": row.get("folder_id"),
            "created_at": row.get("created_at"),
            "updated_at": row.get("updated_at"),
        }

    async def _chats(self) -> None:
        rows = self._rows("chat")
        self.progress.start("chats", len(rows))
        extras: dict[str, int] = {}
        for row in rows:
            self.progress.advance()
            ref = f"{row.get('title')} ({row['id']})"
            owner = self._owner("chat", row, ref)
            if owner is None:
                continue
            item = self._export_item(row)
            if item["folder_id"]:
                item["folder_id"] = self._folder_id(owner, str(item["folder_id"]))
            for m in ((item["chat"].get("history") or {}).get("messages") or {}).values():
                for k in MESSAGE_EXTRAS:
                    if isinstance(m, dict) and m.get(k):
                        extras[k] = extras.get(k, 0) + 1
            if self.dry:
                exists = await self.store.call(self.store.find, Chat, self._chat_id(owner, str(row["id"])))
                self.report.count("chat", exists is None)
                if exists is None:
                    self.new_tags.update((str(row["user_id"]), str(t).lower()) for t in item["meta"].get("tags") or [])
                continue
            try:
                result = await self.exchange.import_chats(self.ctx, owner, [item])
            except ParleyError as e:
                self.report.skip("chat", ref, f"{e.code}: {e.message}")
                continue
            self.report.count("chat", bool(result.imported))
            if result.imported:
                self.new_tags.update((str(row["user_id"]), t.lower()) for t in item["meta"].get("tags") or [])
            if result.imported:
                self.report.imported["message"] = self.report.imported.get("message", 0) + result.messages
        if extras:
            listed = ", ".join(f"{k} on {n}" for k, n in sorted(extras.items()))
            self.report.notes.append(
                f"messages' {listed} messages: not carried (parley's messages hold text, role, model, time and "
                "their place in the tree; retrieved sources and follow-up suggestions are Open WebUI's UI state)"
            )

    # --- models ----------------------------------------------------------------------------------------
    def _public(self, resource_type: str, resource_id: str) -> bool:
        return any(
            g.get("resource_type") == resource_type
            and str(g.get("resource_id")) == resource_id
            and g.get("principal_type") == "user"
            and g.get("principal_id") == "*"
            and g.get("permission") == "read"
            for g in self.data.rows.get("access_grant", [])
        )

    async def _models(self) -> None:
        rows = self._rows("model")
        self.progress.start("models", len(rows))
        for row in rows:
            self.progress.advance()
            await self._model(row)

    async def _model(self, row: Mapping[str, Any]) -> None:
        name, ref = str(row["id"]), f"{row.get('name')} ({row['id']})"
        existing = await self.store.call(self.models._find, self.tenant_id, name)
        if not row.get("base_model_id"):
            if existing is None:
                self.report.skip(
                    "model",
                    ref,
                    "Open WebUI's settings for a connection's model: parley has no model of "
                    "that name (register its provider and model in parley)",
                )
            else:
                self.report.count("model", False)
            return
        if existing is not None:
            self.report.count("model", False)
            return
        owner = self._owner("model", row, ref)
        if owner is None:
            return
        params, meta = _json(row.get("params")) or {}, _json(row.get("meta")) or {}
        defaults = {PARAMS[k]: v for k, v in params.items() if k in PARAMS and v is not None}
        dropped = sorted(k for k in params if k not in PARAMS)
        if dropped:
            self.report.skip("model parameter", ref, f"{', '.join(dropped)}: no parley counterpart")
        if meta.get("description"):
            self.report.skip("model description", ref, "parley's models have no description")
        wanted = [str(k.get("id")) for k in meta.get("knowledge") or [] if isinstance(k, dict)]
        missing = [k for k in wanted if k not in self.knowledge_ids]
        if missing:
            self.report.skip(
                "model knowledge",
                ref,
                f"knowledge {', '.join(missing)}: not imported (not a knowledge base "
                "of the database: a single file or collection)",
            )
        if self.dry:
            self.report.count("model", True)
            return
        # Presets are an admin's in parley (any Open WebUI user may make a workspace model): made on the
        # owner's behalf; a private one is granted to its owner.
        admin = Principal(self.tenant_id, owner.user_id, "admin", via="token")
        public = self._public("model", name)
        try:
            await self.models.register_preset(
                self.ctx,
                admin,
                name=name,
                base_model=str(row["base_model_id"]),
                display_name=str(row.get("name") or name),
                defaults=defaults,
                open_to_tenant=public,
                knowledge_ids=[str(self.knowledge_ids[k]) for k in wanted if k in self.knowledge_ids] or None,
            )
            if not public:
                await self.models.set_grant(self.ctx, admin, name, grant=True, user_id=str(owner.user_id), role=None)
        except ParleyError as e:
            self.report.skip("model", ref, f"{e.code}: {e.message}")
            return
        self.report.count("model", True)

    # --- knowledge and files ---------------------------------------------------------------------------
    def _file_bytes(self, file_row: Mapping[str, Any]) -> bytes | None:
        data = self.data.read_upload(str(file_row.get("path") or file_row.get("filename") or ""))
        if data is None:
            content = (_json(file_row.get("data")) or {}).get("content")
            if isinstance(content, str) and content:
                self.report.skip(
                    "file",
                    f"{file_row.get('filename')} ({file_row['id']})",
                    "not in the uploads directory: its extracted text imported instead",
                )
                return content.encode()
        return data

    async def _knowledge(self) -> None:
        rows = self._rows("knowledge")
        files = {str(f["id"]): f for f in self.data.rows.get("file", [])}
        links = self._rows("knowledge_file")
        self.progress.start("knowledge bases", len(rows) + len(links))
        for row in rows:
            self.progress.advance()
            ref = f"{row.get('name')} ({row['id']})"
            owner = self._owner("knowledge", row, ref)
            if owner is None:
                continue
            known = await self._record("knowledge", str(row["id"]))
            if known is not None:
                self.knowledge_ids[str(row["id"])] = uuid.UUID(known)
                self.report.count("knowledge", False)
                continue
            if self.dry:
                self.report.count("knowledge", True)
                continue
            try:
                kb = await self.knowledge.create(
                    self.ctx, owner, name=str(row["name"]), description=str(row.get("description") or "")
                )
                await self._remember("knowledge", str(row["id"]), str(kb.id))
                if self._public("knowledge", str(row["id"])):
                    await self.knowledge.grant(self.ctx, owner, kb.id, "tenant", "read")
            except ParleyError as e:
                self.report.skip("knowledge", ref, f"{e.code}: {e.message}")
                continue
            self.knowledge_ids[str(row["id"])] = kb.id
            self.report.count("knowledge", True)
        for link in links:
            self.progress.advance()
            file_row = files.get(str(link.get("file_id")))
            kb_id = self.knowledge_ids.get(str(link.get("knowledge_id")))
            if file_row is None:
                self.report.skip("file", str(link.get("file_id")), "its file row is missing")
            elif kb_id is None and not self.dry:
                self.report.skip("file", str(link.get("file_id")), "its knowledge base was not imported")
            else:
                await self._upload(file_row, knowledge_id=kb_id, chat_id=None, owner_row=link)

    async def _chat_files(self) -> None:
        files = {str(f["id"]): f for f in self.data.rows.get("file", [])}
        chats = {str(c["id"]): c for c in self.data.rows.get("chat", [])}
        rows = self._rows("chat_file")
        self.progress.start("chat files", len(rows))
        for row in rows:
            self.progress.advance()
            file_row, chat = files.get(str(row.get("file_id"))), chats.get(str(row.get("chat_id")))
            owner = self.users.get(str(chat.get("user_id"))) if chat else None
            if file_row is None or chat is None or owner is None:
                self.report.skip("file", str(row.get("file_id")), "its file or chat was not imported")
                continue
            await self._upload(
                file_row, knowledge_id=None, chat_id=self._chat_id(owner, str(chat["id"])), owner_row=chat
            )

    async def _upload(
        self,
        file_row: Mapping[str, Any],
        *,
        knowledge_id: uuid.UUID | None,
        chat_id: uuid.UUID | None,
        owner_row: Mapping[str, Any],
    ) -> None:
        ref = f"{file_row.get('filename')} ({file_row['id']})"
        owner = self._owner("file", owner_row, ref)
        data = self._file_bytes(file_row)
        if owner is None:
            return
        if data is None:
            self.report.skip("file", ref, "neither in the uploads directory nor with extracted text")
            return
        scope = f"knowledge/{knowledge_id}" if knowledge_id is not None else f"chats/{chat_id}"
        document_id = Document.create_id(self.tenant_id, scope, hashlib.sha256(data).hexdigest())
        exists = await self.store.call(self.store.find, Document, document_id) is not None
        if self.dry or exists:
            self.report.count("file", not exists)
            return
        meta = _json(file_row.get("meta")) or {}
        try:
            await self.knowledge.upload(
                self.ctx,
                owner,
                data=data,
                filename=str(file_row.get("filename") or meta.get("name") or "file"),
                declared_type=meta.get("content_type"),
                knowledge_id=knowledge_id,
                chat_id=chat_id,
            )
        except ParleyError as e:
            self.report.skip("file", ref, f"{e.code}: {e.message}")
            return
        self.report.count("file", True)

    # --- ratings and shares ----------------------------------------------------------------------------
    async def _ratings(self) -> None:
        rows = self._rows("feedback")
        self.progress.start("ratings", len(rows))
        for row in rows:
            self.progress.advance()
            ref = str(row["id"])
            data, meta = _json(row.get("data")) or {}, _json(row.get("meta")) or {}
            owner = self._owner("rating", row, ref)
            if owner is None:
                continue
            if row.get("type") != "rating" or data.get("rating") not in (1, -1) or not meta.get("chat_id"):
                self.report.skip("rating", ref, "not a thumbs up or down on a chat's answer (arena or other feedback)")
                continue
            chat_id = self._chat_id(owner, str(meta["chat_id"]))
            message_id = imported_message_id(chat_id, str(meta.get("message_id")))
            before = await self.store.call(
                self.store.find, Rating, rating_id_for(self.tenant_id, owner.user_id, message_id)
            )
            if self.dry:
                self.report.count("rating", before is None)
                continue
            try:
                await self.ratings.rate(
                    self.ctx,
                    owner,
                    chat_id,
                    message_id,
                    rating="up" if data["rating"] == 1 else "down",
                    reason=data.get("reason"),
                    comment=data.get("comment"),
                )
            except ParleyError as e:
                self.report.skip("rating", ref, f"{e.code}: {e.message}")
                continue
            self.report.count("rating", before is None)

    async def _shares(self) -> None:
        rows = self._rows("shared_chat")
        self.progress.start("share links", len(rows))
        for row in rows:
            self.progress.advance()
            ref = f"{row.get('title')} ({row['id']})"
            owner = self._owner("share", row, ref)
            if owner is None:
                continue
            known = await self._record("share", str(row["id"]))
            if known is not None:
                self.report.count("share", False)
                continue
            chat_id = self._chat_id(owner, str(row["chat_id"]))
            leaf = ((_json(row.get("chat")) or {}).get("history") or {}).get("currentId")
            if self.dry:
                self.report.count("share", True)
                continue
            try:
                share = await self.shares.create(
                    self.ctx,
                    owner,
                    chat_id,
                    leaf_message_id=imported_message_id(chat_id, str(leaf)) if leaf else None,
                )
            except ParleyError as e:
                self.report.skip("share", ref, f"{e.code}: {e.message}")
                continue
            await self._remember("share", str(row["id"]), str(share.id))
            self.report.count("share", True)
            self.report.notes.append(
                f"share link /s/{row['id']} is now /api/v1/shared/{share.id} (parley draws share ids)"
            )

    # --- what is not carried ---------------------------------------------------------------------------
    def _tags(self) -> None:
        on_chats: set[tuple[str, str]] = set()
        for c in self.data.rows.get("chat", []):
            for tag in (_json(c.get("meta")) or {}).get("tags") or []:
                on_chats.add((str(c.get("user_id")), str(tag).lower()))
        for tag in self.data.rows.get("tag", []):
            if (str(tag.get("user_id")), str(tag.get("id")).lower()) in on_chats:
                self.report.count("tag", (str(tag.get("user_id")), str(tag.get("id")).lower()) in self.new_tags)
            else:
                self.report.skip("tag", str(tag.get("name")), "on no chat: parley's tags live on chats")

    def _not_carried(self) -> None:
        counts = self.data.table_counts
        for table, why in NOT_CARRIED.items():
            if counts.get(table):
                self.report.notes.append(f"{table} ({counts[table]} rows): not carried: {why}")
        read = {*OPENWEBUI_TABLES, "alembic_version", "chat_message"}  # chat_message: chat.history's messages again
        for table, n in sorted(counts.items()):
            if n and table not in read and table not in NOT_CARRIED:
                self.report.notes.append(f"{table} ({n} rows): not carried: parley has no counterpart yet")
