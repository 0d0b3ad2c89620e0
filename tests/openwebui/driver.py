"""A small client that drives a running Open WebUI 0.12.4 the way its browser front end does.

Sign-up, sign-in and user administration go through Open WebUI's HTTP API; a chat message is the
``POST /api/chat/completions`` that ``Chat.svelte`` sends for a saved chat (``chat_id``, ``id``,
``parent_id``, ``user_message``, ``message_ids``, ``session_id``, ``background_tasks``...). Open WebUI then
builds the history itself from its database, calls its OpenAI connection in a background task and
runs the title / tags / follow-up tasks after it, in the same task (a new chat's first title runs in a
task of its own). The driver waits the way a reloaded page would: until the chat has no running task
left and the answer is marked done (and, for a new chat, until its title task has renamed it).

Besides sending, it regenerates an answer and edits a sent message as the front end does (both make a
branch in Open WebUI's history tree), keeps a chat's attached files (``chatFiles``) and can send a user
system prompt.

The browser also holds a socket.io connection whose id is the ``session_id``. Open WebUI only uses the
id to tell a browser-started chat from an API call (the background-task path); events are emitted to
the user's room whether or not anyone listens, and nothing it sends to its connection depends on a live
socket (see capture.md). So the driver sends a socket.io-style id without opening the socket, which
keeps it to ``httpx`` alone (it runs in the project's virtual environment).
"""

from __future__ import annotations

import asyncio
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["OpenWebUI", "Account", "Chat", "Reply", "OpenWebUIError"]


class OpenWebUIError(AssertionError):
    pass


@dataclass
class Account:
    id: str
    email: str
    name: str
    role: str
    token: str
    session_id: str = field(default_factory=lambda: _socket_id())

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Reply:
    """The assistant message as Open WebUI stored it once its task ended."""

    id: str
    content: str
    error: Any
    follow_ups: list[str] | None
    raw: dict[str, Any]


@dataclass
class Chat:
    """The front end's view of one chat: its id (None until the first message) and its history tree."""

    owner: Account
    model: str
    id: str | None = None
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    current_id: str | None = None
    title: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    """The chat's files (``chatFiles``): a file attached to a message stays with the chat, and the front end
    sends it in ``files`` with every later message too, so Open WebUI retrieves from it every turn."""
    system: str | None = None
    """The user's system prompt (Settings > General > System Prompt): the front end sends it as the only
    entry of ``messages``; Open WebUI puts it before the history it loads."""

    def path(self, leaf: str | None = None) -> list[dict[str, Any]]:
        """The branch from the root to ``leaf`` (default: the current message), oldest first."""
        out: list[dict[str, Any]] = []
        mid = leaf or self.current_id
        while mid:
            m = self.messages[mid]
            out.append(m)
            mid = m.get("parentId")
        return out[::-1]


def _socket_id() -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    return "".join(secrets.choice(alphabet) for _ in range(20))


class OpenWebUI:
    def __init__(self, base_url: str, *, timeout: float = 120) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._models: dict[str, dict[str, Any]] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> OpenWebUI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- helpers --------------------------------------------------------------------------------------
    async def _call(self, method: str, path: str, who: Account | None = None, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}) or {})
        if who is not None:
            headers.update(who.headers)
        r = await self.http.request(method, path, headers=headers, **kw)
        if r.status_code >= 400:
            raise OpenWebUIError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}")
        return r.json() if r.content else None

    # --- accounts -------------------------------------------------------------------------------------
    async def sign_up(self, name: str, email: str, password: str) -> Account:
        """The first sign-up of a fresh Open WebUI becomes its admin."""
        d = await self._call("POST", "/api/v1/auths/signup", json={"name": name, "email": email, "password": password})
        return Account(id=d["id"], email=d["email"], name=d["name"], role=d["role"], token=d["token"])

    async def sign_in(self, email: str, password: str) -> Account:
        d = await self._call("POST", "/api/v1/auths/signin", json={"email": email, "password": password})
        return Account(id=d["id"], email=d["email"], name=d["name"], role=d["role"], token=d["token"])

    async def add_user(self, admin: Account, name: str, email: str, password: str, role: str = "user") -> Account:
        """Admin > Users > Add user (``POST /api/v1/auths/add``), then that user signs in."""
        await self._call(
            "POST", "/api/v1/auths/add", admin, json={"name": name, "email": email, "password": password, "role": role}
        )
        return await self.sign_in(email, password)

    async def models(self, who: Account, refresh: bool = False) -> list[dict[str, Any]]:
        """The model picker's list (``GET /api/models``); ``refresh`` asks Open WebUI to re-read its
        connections as the admin's "refresh" does."""
        d = await self._call("GET", "/api/models", who, params={"refresh": "true"} if refresh else None)
        items = list(d.get("data", []))
        for m in items:
            self._models[m["id"]] = m
        return items

    async def update_openai_connection(self, admin: Account, url: str, key: str) -> None:
        """Admin > Settings > Connections: point the single OpenAI connection at ``url`` with ``key``."""
        current = await self._call("GET", "/openai/config", admin)
        body = {
            "ENABLE_OPENAI_API": True,
            "OPENAI_API_BASE_URLS": [url],
            "OPENAI_API_KEYS": [key],
            "OPENAI_API_CONFIGS": current.get("OPENAI_API_CONFIGS") or {},
        }
        await self._call("POST", "/openai/config/update", admin, json=body)

    async def update_embedding_connection(self, admin: Account, url: str, key: str, model: str) -> None:
        """Admin > Settings > Documents: embeddings from the OpenAI-compatible ``url`` with ``key``."""
        body = {
            "RAG_EMBEDDING_ENGINE": "openai",
            "RAG_EMBEDDING_MODEL": model,
            "openai_config": {"url": url, "key": key},
        }
        await self._call("POST", "/api/v1/retrieval/embedding/update", admin, json=body)

    async def upload(self, who: Account, name: str, data: bytes, *, wait_s: float = 60) -> dict[str, Any]:
        """Attach a file in the message input: upload it, wait until Open WebUI has processed (extracted and
        embedded) it, and return the item the front end puts into the message's ``files``."""
        f = await self._call("POST", "/api/v1/files/", who, files={"file": (name, data, "text/plain")})
        deadline = time.monotonic() + wait_s
        while True:
            st = await self._call("GET", f"/api/v1/files/{f['id']}/process/status", who)
            if st.get("status") in ("completed", "failed"):
                break
            if time.monotonic() > deadline:
                raise OpenWebUIError(f"file {f['id']} not processed after {wait_s}s: {st!r}")
            await asyncio.sleep(0.2)
        if st["status"] != "completed":
            raise OpenWebUIError(f"file {f['id']} failed: {st!r}")
        f = await self._call("GET", f"/api/v1/files/{f['id']}", who)
        meta = f.get("meta") or {}
        return {
            "type": "file",
            "file": f,
            "id": f["id"],
            "url": f["id"],
            "name": meta.get("name", name),
            "collection_name": meta.get("collection_name") or f"file-{f['id']}",
            "status": "uploaded",
            "size": meta.get("size", len(data)),
            "content_type": meta.get("content_type", "text/plain"),
            "error": "",
            "itemId": str(uuid.uuid4()),
        }

    # --- chatting -------------------------------------------------------------------------------------
    def new_chat(self, who: Account, model: str) -> Chat:
        return Chat(owner=who, model=model)

    def _variables(self, who: Account) -> dict[str, str]:
        now = time.localtime()
        return {
            "{{USER_NAME}}": who.name,
            "{{USER_EMAIL}}": who.email or "Unknown",
            "{{USER_LOCATION}}": "Unknown",
            "{{CURRENT_DATETIME}}": time.strftime("%Y-%m-%d %H:%M:%S", now),
            "{{CURRENT_DATE}}": time.strftime("%Y-%m-%d", now),
            "{{CURRENT_TIME}}": time.strftime("%H:%M:%S", now),
            "{{CURRENT_WEEKDAY}}": time.strftime("%A", now),
            "{{CURRENT_TIMEZONE}}": "UTC",
            "{{USER_LANGUAGE}}": "en-US",
        }

    async def _model_item(self, chat: Chat) -> dict[str, Any]:
        if chat.model not in self._models:
            await self.models(chat.owner)
        if chat.model not in self._models:
            raise OpenWebUIError(f"model {chat.model!r} is not in {chat.owner.email}'s model list")
        return self._models[chat.model]

    async def _submit(self, chat: Chat, user_message: dict[str, Any], assistant_id: str) -> dict[str, Any]:
        who = chat.owner
        # Title and tags are asked for with a chat's first answer, also when it is regenerated or its first
        # message edited; follow-ups with every answer.
        title_and_tags = chat.id is None or user_message.get("parentId") is None
        for f in user_message.get("files") or []:
            if f.get("type") != "image" and all(f.get("id") != g.get("id") for g in chat.files):
                chat.files.append(f)
        files = list(chat.files)
        body: dict[str, Any] = {
            "stream": True,
            "model": chat.model,
            **({"messages": [{"role": "system", "content": chat.system}]} if chat.system else {}),
            "params": {"model_controls": {}},
            **({"files": files} if files else {}),
            "tool_ids": [],
            "tool_servers": [],
            "features": {"voice": False, "image_generation": False, "code_interpreter": False, "web_search": False},
            "variables": self._variables(who),
            "model_item": await self._model_item(chat),
            "session_id": who.session_id,
            "id": assistant_id,
            "message_ids": [{"model_id": chat.model, "message_id": assistant_id, "modelIdx": 0}],
            "parent_id": user_message.get("parentId"),
            "user_message": user_message,
            "background_tasks": {
                **({"title_generation": True, "tags_generation": True} if title_and_tags else {}),
                "follow_up_generation": True,
            },
        }
        if chat.id is None:
            body["chat_variables"] = {}
        else:
            body["chat_id"] = chat.id
        d = await self._call("POST", "/api/chat/completions", who, json=body)
        if not isinstance(d, dict) or not d.get("status"):
            raise OpenWebUIError(f"unexpected answer to /api/chat/completions: {d!r}")
        return d

    def _user_message(
        self, chat: Chat, content: str, parent_id: str | None, files: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        who = chat.owner
        return {
            "id": str(uuid.uuid4()),
            "parentId": parent_id,
            "childrenIds": [],
            "role": "user",
            "user": {"id": who.id, "name": who.name},
            "user_id": who.id,
            "content": content,
            **({"files": files} if files else {}),
            "timestamp": int(time.time()),
            "models": [chat.model],
        }

    async def send(
        self, chat: Chat, content: str, *, files: list[dict[str, Any]] | None = None, wait_s: float = 120
    ) -> Reply:
        """Type ``content`` into the chat (with ``files`` attached, from ``upload``) and press enter;
        returns the stored answer when all is done."""
        return await self._turn(chat, content, parent_id=chat.current_id, files=files, wait_s=wait_s)

    async def edit(self, chat: Chat, user_message_id: str, content: str, *, wait_s: float = 120) -> Reply:
        """Edit a sent user message and resubmit: a sibling user message under the same parent."""
        parent = chat.messages[user_message_id].get("parentId")
        return await self._turn(chat, content, parent_id=parent, files=None, wait_s=wait_s)

    async def _turn(
        self, chat: Chat, content: str, parent_id: str | None, files: list[dict[str, Any]] | None, wait_s: float
    ) -> Reply:
        new_chat = chat.id is None
        user_message = self._user_message(chat, content, parent_id, files)
        assistant_id = str(uuid.uuid4())
        user_message["childrenIds"] = [assistant_id]
        d = await self._submit(chat, user_message, assistant_id)
        if new_chat:
            chat.id = d["chat_id"]
        return await self._wait(chat, assistant_id, new_chat=new_chat, wait_s=wait_s)

    async def regenerate(self, chat: Chat, assistant_id: str | None = None, *, wait_s: float = 120) -> Reply:
        """The regenerate button under an answer: a new assistant sibling for the same user message."""
        assistant_id = assistant_id or chat.current_id
        assert assistant_id is not None
        user_message = dict(chat.messages[chat.messages[assistant_id]["parentId"]])
        new_id = str(uuid.uuid4())
        user_message["childrenIds"] = [*user_message.get("childrenIds", []), new_id]
        await self._submit(chat, user_message, new_id)
        return await self._wait(chat, new_id, new_chat=False, wait_s=wait_s)

    async def chat_record(self, chat: Chat) -> dict[str, Any]:
        assert chat.id is not None
        return dict(await self._call("GET", f"/api/v1/chats/{chat.id}", chat.owner))

    async def _wait(self, chat: Chat, assistant_id: str, *, new_chat: bool, wait_s: float) -> Reply:
        """Until the answer is done and the chat has no task left (title, tags and follow-ups run in the
        answer's task); a new chat's first title is a task of its own, so also until the chat is renamed
        (Open WebUI always renames it, to the first message where the title task gave nothing usable)."""
        assert chat.id is not None
        deadline = time.monotonic() + wait_s
        record: dict[str, Any] = {}
        while True:
            record = await self.chat_record(chat)
            history = record["chat"].get("history") or {}
            message = (history.get("messages") or {}).get(assistant_id) or {}
            tasks = await self._call("GET", f"/api/tasks/chat/{chat.id}", chat.owner)
            titled = not new_chat or record.get("title") not in (None, "", "New Chat")
            if message.get("done") and not tasks.get("task_ids") and titled:
                break
            if time.monotonic() > deadline:
                raise OpenWebUIError(
                    f"chat {chat.id} not finished after {wait_s}s: message={message!r} tasks={tasks!r} "
                    f"title={record.get('title')!r}"
                )
            await asyncio.sleep(0.2)
        chat.messages = dict(history["messages"])
        chat.current_id = assistant_id
        chat.title = record.get("title")
        return Reply(
            id=assistant_id,
            content=message.get("content") or "",
            error=message.get("error"),
            follow_ups=message.get("followUps"),
            raw=message,
        )
