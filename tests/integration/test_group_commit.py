"""Group commit (``adapters.eventstore.GroupCommitRecorder``): commands that arrive while a transaction is
being written are written together in the next one. Whatever the mix, every command is either recorded
exactly once or refused with its own error; the notification log stays gapless and in order; what a
client saw acknowledged survives a kill -9 of the process, and nothing is ever half-written."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from eventsourcing.domain import Aggregate, event
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from adapters.eventstore import EventStore, envelopes
from adapters.settings import Settings
from application.context import CommandContext
from domain.errors import Conflict, Invalid
from tests.e2e.test_chat_api import add_echo_model, bearer, new_chat, send, sign_up
from tests.integration.procs import Part
from tests.integration.test_upload_memory import free_port, serving
from workers.bootstrap import Container

pytestmark = [pytest.mark.timeout(300)]


class Tally(Aggregate):
    """A test aggregate: each command adds one mark, naming the command."""

    @event("TallyOpened")
    def __init__(self) -> None:
        self.marks: list[str] = []

    @event("Marked")
    def mark(self, command: str) -> None:
        self.marks.append(command)


def _command(
    store: EventStore, tallies: list[uuid.UUID], targets: tuple[int, ...], fails: bool, name: str
) -> list[int]:
    """Mark every tally in ``targets`` in one save (one command, one or more aggregates)."""

    def fn() -> list[int]:
        loaded = [store.get(Tally, tallies[i]) for i in targets]
        for tally in loaded:
            tally.mark(name)
        if fails:
            raise Invalid("REFUSED_BY_TEST", "this command breaks an invariant")
        return store.save(*loaded)

    ctx = CommandContext(tenant_id="t", actor="test", correlation_id=name)
    return store.run_command(ctx, fn)


command_mixes = st.lists(
    st.tuples(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True).map(tuple), st.booleans()),
    min_size=8,
    max_size=60,
)


@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(mix=command_mixes, threads=st.sampled_from([4, 16]), shared=st.integers(1, 6))
async def test_every_command_is_recorded_once_or_refused_alone(
    container: Container, mix: Any, threads: int, shared: int
) -> None:
    await asyncio.to_thread(_every_command_is_recorded_once_or_refused_alone, container.store, mix, threads, shared)


def _every_command_is_recorded_once_or_refused_alone(store: EventStore, mix: Any, threads: int, shared: int) -> None:
    recorder = store.recorder
    ctx = CommandContext(tenant_id="t", actor="test")

    def open_tallies() -> list[uuid.UUID]:
        tallies = [Tally() for _ in range(shared)]
        store.save(*tallies)
        return [t.id for t in tallies]

    tallies = store.run_command(ctx, open_tallies)
    before = store.max_id()
    groups_before = (recorder.groups_written, recorder.commands_written)
    commands = [(tuple(t % shared for t in targets), fails, f"c{n}") for n, (targets, fails) in enumerate(mix)]
    start = threading.Barrier(threads)

    def run(chunk: list[tuple[tuple[int, ...], bool, str]]) -> dict[str, Any]:
        start.wait()
        outcome: dict[str, Any] = {}
        for targets, fails, name in chunk:
            try:
                outcome[name] = _command(store, tallies, tuple(sorted(set(targets))), fails, name)
            except (Conflict, Invalid) as e:
                outcome[name] = e
        return outcome

    chunks = [commands[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        outcomes: dict[str, Any] = {}
        for result in pool.map(run, chunks):
            outcomes.update(result)

    committed = {name for name, o in outcomes.items() if isinstance(o, list)}
    for _, fails, name in commands:
        if fails:
            assert isinstance(outcomes[name], Invalid), (name, outcomes[name])  # its own error, nothing else's
    # The log holds each committed command's marks once, on every tally it named, and nothing else.
    written = [e for page in envelopes(store, before + 1) for e in page]
    marks: dict[str, list[uuid.UUID]] = {}
    for e in written:
        assert e.type == "Marked"
        marks.setdefault(e.data["command"], []).append(e.aggregate_id)
    assert set(marks) == committed
    for targets, _, name in commands:
        if name in committed:
            assert sorted(marks[name]) == sorted(tallies[i] for i in set(targets))
            assert outcomes[name] == [e.id for e in written if e.data["command"] == name]
    # Gapless and in order, and each tally's versions follow one another.
    ids = [e.id for e in written]
    assert ids == list(range(before + 1, before + 1 + len(ids)))
    for tally_id in tallies:
        versions = [e.aggregate_version for e in written if e.aggregate_id == tally_id]
        assert versions == list(range(2, 2 + len(versions)))
        assert store.get(Tally, tally_id).marks == [e.data["command"] for e in written if e.aggregate_id == tally_id]
    groups = recorder.groups_written - groups_before[0]
    assert recorder.commands_written - groups_before[1] == len(committed)
    assert groups <= len(committed)


async def test_concurrent_commands_share_transactions(container: Container) -> None:
    """With many callers at once, groups form: fewer transactions than commands."""
    await asyncio.to_thread(_concurrent_commands_share_transactions, container.store)


def _concurrent_commands_share_transactions(store: EventStore) -> None:
    recorder = store.recorder
    ctx = CommandContext(tenant_id="t", actor="test")
    groups, commands = recorder.groups_written, recorder.commands_written

    def open_one(_: int) -> None:
        store.run_command(ctx, lambda: store.save(Tally()))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(open_one, range(400)))
    assert recorder.commands_written - commands == 400
    assert recorder.groups_written - groups < 400


async def test_kill_9_mid_group_loses_nothing_acknowledged_and_half_writes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    """A real ``parley api`` takes SendMessage from 24 clients at once (each a chat message and a
    generation: two aggregates) and is killed with SIGKILL while groups are being written."""
    port = free_port()
    settings = msgspec.structs.replace(settings, port=port)
    api = Part(settings, tmp_path / "logs", "api").start()
    acknowledged: set[str] = set()
    sent: set[str] = set()
    try:
        await api.wait_for_log("api_listening")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await serving(client)
            admin = await sign_up(client, "admin@example.com")
            await add_echo_model(client, admin)
            lifted = {"user_per_minute": 100_000, "api_key_per_minute": 100_000}
            r = await client.put("/api/v1/quotas/rate-limits", json=lifted, headers=bearer(admin))
            assert r.status_code == 200, r.text
            r = await client.put(f"/api/v1/quotas/users/{admin['id']}", json={"limit": 10**9}, headers=bearer(admin))
            assert r.status_code == 200, r.text
            chats = [await new_chat(client, admin, f"chat {n}") for n in range(24)]
            killed, enough = asyncio.Event(), asyncio.Event()

            async def talk(chat: str) -> None:
                n = 0
                while not killed.is_set():
                    content = f"{chat}:{n}"
                    n += 1
                    sent.add(content)
                    try:
                        r = await send(client, admin, chat, content, params={"max_tokens": 4})
                    except httpx.TransportError:
                        return
                    assert r.status_code == 202, r.text
                    acknowledged.add(content)
                    if len(acknowledged) >= 150:
                        enough.set()

            talkers = [asyncio.create_task(talk(chat)) for chat in chats]
            await asyncio.wait_for(enough.wait(), 60)
            api.kill9()
            killed.set()
            await asyncio.gather(*talkers)
    finally:
        api.stop()

    store = EventStore(settings.database_url, secret_key=settings.secret_key, pool_size=2, max_overflow=0)
    try:
        events = [e for page in envelopes(store, 1) for e in store.open_envelopes(page)]
    finally:
        store.close()
    posted = {e.data["message_id"]: e.data["content"] for e in events if e.type == "MessagePosted"}
    requested = {e.data["user_message_id"] for e in events if e.type == "GenerationRequested"}
    recorded = {content for message_id, content in posted.items() if content in sent}
    assert acknowledged <= recorded, f"{len(acknowledged - recorded)} acknowledged messages lost"
    # Each SendMessage recorded its message and its generation together, or neither.
    for message_id, content in posted.items():
        if content in sent:
            assert message_id in requested, f"{content} has a message but no generation"
    assert len(sent) > len(acknowledged)  # the kill did land in the middle of the traffic
