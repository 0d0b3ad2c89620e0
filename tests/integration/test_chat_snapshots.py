"""A chat with thousands of messages stays fast to load: the event store snapshots it every 100 events."""

from __future__ import annotations

import uuid

from application.context import CommandContext
from domain.chats import Chat


async def test_a_long_chat_loads_from_a_snapshot_not_from_every_event(container) -> None:
    store = container.store
    ctx = CommandContext(tenant_id="t", actor="system")
    owner = uuid.uuid4()

    def create() -> uuid.UUID:
        chat = Chat(tenant_id="t", owner_id=owner, title="long", source="api")
        store.save(chat)
        return chat.id

    chat_id = await store.execute(ctx, create)

    def post_many(n: int) -> None:
        chat = store.get(Chat, chat_id)
        for _ in range(n):
            chat.post(uuid.uuid4().hex, "user", "hello " * 20, chat.head)
            store.save(chat)

    await store.execute(ctx, lambda: post_many(1500))

    chat = await store.call(store.get, Chat, chat_id)
    assert len(chat.messages) == 1500 and chat.version == 1501
    snapshots = list(store.app.snapshots.get(chat_id)) if store.app.snapshots else []
    assert snapshots and snapshots[-1].originator_version >= 1500 - 100
    # Loading reads the snapshot plus the events after it (not 1,501 events).
    tail = list(store.app.events.get(chat_id, gt=snapshots[-1].originator_version))
    assert len(tail) < 100

