"""Data keys are made with their aggregate: written in the transaction of its first events (group commit
included), never for a command that was refused, and every sealed field opens with the key that landed —
even when many callers create the same client chat (one deterministic id) at once."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from adapters.eventstore import EventStore
from adapters.settings import Settings
from application.context import CommandContext
from domain.chats import Chat
from domain.errors import Conflict
from workers.bootstrap import Container


def _fresh_store(settings: Settings) -> EventStore:
    """Another process's view: nothing cached, keys read from the table."""
    return EventStore(settings.database_url, secret_key=settings.secret_key, pool_size=2, max_overflow=0)


async def test_keys_land_with_their_aggregates_and_only_theirs(container: Container, settings: Settings) -> None:
    await asyncio.to_thread(_keys_land_with_their_aggregates, container.store, settings)


def _keys_land_with_their_aggregates(store: EventStore, settings: Settings) -> None:
    ctx = CommandContext(tenant_id=str(uuid.uuid4()), actor="test")
    owner = uuid.uuid4()
    made: list[uuid.UUID] = []
    lock = threading.Lock()

    def create(n: int) -> None:
        def command() -> None:
            chat = Chat(tenant_id=ctx.tenant_id, owner_id=owner, title=f"title {n}", source="api")
            store.save(chat)
            with lock:
                made.append(chat.id)

        store.run_command(ctx, command)

    # Many callers creating the same client chat: one creation wins, the others are refused (or retried
    # into a no-op when the aggregate exists); the key in the table is the winner's.
    clashes: list[BaseException] = []

    def create_client_chat(n: int) -> None:
        def command() -> None:
            if store.find(Chat, Chat.create_id(ctx.tenant_id, owner, "open-webui-1")) is not None:
                return
            store.save(Chat(tenant_id=ctx.tenant_id, owner_id=owner, title=f"client {n}", source="openai", client_chat_id="open-webui-1"))

        try:
            store.run_command(ctx, command)
        except Conflict as e:
            clashes.append(e)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(120)))
        list(pool.map(create_client_chat, range(32)))

    other = _fresh_store(settings)
    try:
        with other.keys._pool.connection() as conn:  # noqa: SLF001 - the table itself is what is checked
            rows = dict(conn.execute("SELECT key_id, user_id FROM parley_subject_keys WHERE user_id = %s", (owner,)).fetchall())
        client_chat = Chat.create_id(ctx.tenant_id, owner, "open-webui-1")
        assert set(rows) == {*made, client_chat}  # a key per chat created, none for a refused command
        for chat_id in [*made, client_chat]:
            chat = other.get(Chat, chat_id)  # opened with the key from the table, not any cache
            assert chat.title.startswith(("title ", "client ")), chat.title
    finally:
        other.close()
