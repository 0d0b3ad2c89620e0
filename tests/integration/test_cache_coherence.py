"""Two ``parley api`` processes on one deployment, each with its caches (aggregates with fast-forward, the
quota policy dropped on change), never decide on stale state: a quota limit changed through one process
holds on the very next request through the other, and messages posted to one chat through both at once
are each recorded once or refused with a conflict."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from adapters.eventstore import EventStore, envelopes
from adapters.settings import Settings
from tests.e2e.test_chat_api import add_echo_model, bearer, new_chat, send, sign_up
from tests.integration.procs import Part
from tests.integration.test_upload_memory import free_port, serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
async def two_apis(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    parts, clients = [], []
    try:
        for _ in range(2):
            port = free_port()
            part = Part(msgspec.structs.replace(settings, port=port), tmp_path / "logs", "api").start()
            parts.append(part)
            await part.wait_for_log("api_listening")
            client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
            clients.append(client)
            await serving(client)
        yield clients[0], clients[1]
    finally:
        for client in clients:
            await client.aclose()
        for part in parts:
            part.stop()


async def admin_of(a: httpx.AsyncClient) -> dict[str, Any]:
    admin = await sign_up(a, "admin@example.com")
    await add_echo_model(a, admin)
    lifted = {"user_per_minute": 100_000, "api_key_per_minute": 100_000}
    r = await a.put("/api/v1/quotas/rate-limits", json=lifted, headers=bearer(admin))
    assert r.status_code == 200, r.text
    return admin


async def test_a_quota_changed_through_one_process_holds_at_once_in_the_other(
    two_apis: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = two_apis
    admin = await admin_of(a)
    chat = await new_chat(b, admin)
    # B has read (and cached) the policy before every change below.
    assert (await send(b, admin, chat, "warm", params={"max_tokens": 8})).status_code == 202
    for round_ in range(12):
        changer, sender = (a, b) if round_ % 2 == 0 else (b, a)
        low = round_ % 4 < 2
        limit = 1 if low else 10**9
        r = await changer.put(f"/api/v1/quotas/users/{admin['id']}", json={"limit": limit}, headers=bearer(admin))
        assert r.status_code == 200, r.text
        r = await send(sender, admin, chat, f"turn {round_}", params={"max_tokens": 8})
        if low:
            assert r.status_code == 429 and r.json()["error"]["code"] == "QUOTA_EXCEEDED", (round_, r.text)
        else:
            assert r.status_code == 202, (round_, r.text)


async def test_one_chat_written_through_two_processes_at_once_records_each_answered_message_once(
    two_apis: tuple[httpx.AsyncClient, httpx.AsyncClient], settings: Settings
) -> None:
    a, b = two_apis
    admin = await admin_of(a)
    r = await a.put(f"/api/v1/quotas/users/{admin['id']}", json={"limit": 10**9}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    chat = await new_chat(a, admin)
    outcomes: dict[str, int] = {}

    async def post(client: httpx.AsyncClient, name: str) -> None:
        for n in range(15):
            content = f"{name}-{n}"
            r = await send(client, admin, chat, content, params={"max_tokens": 4})
            assert r.status_code in (202, 409), r.text
            outcomes[content] = r.status_code

    await asyncio.gather(post(a, "a1"), post(b, "b1"), post(a, "a2"), post(b, "b2"))

    store = EventStore(settings.database_url, secret_key=settings.secret_key, pool_size=2, max_overflow=0)
    try:
        events = [e for page in envelopes(store, 1) for e in store.open_envelopes(page) if str(e.aggregate_id) == chat]
    finally:
        store.close()
    posted = [e.data["content"] for e in events if e.type == "MessagePosted" and e.data["role"] == "user"]
    answered = sorted(c for c, status in outcomes.items() if status == 202)
    assert sorted(posted) == answered  # each answered message once, no refused one
    assert len(answered) >= 30  # conflicts are retried: most get through
    versions = [e.aggregate_version for e in events]
    assert versions == list(range(1, len(versions) + 1))
