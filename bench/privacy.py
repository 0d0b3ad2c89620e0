"""Benchmark of privacy: what crypto-shredding costs commands and rebuilds, how long an erasure and an export take.

Run ``python -m bench.privacy`` (``--quick`` for a smoke run under a minute, ``--fast`` to turn fsync off).
It starts its own embedded Postgres, NATS and Redis in a temporary directory (durable commits by default)
and measures in one run, so the figures it compares share a machine and a moment:

1. Commands per second with encryption on and off. Two commands that write personal fields, each through
   ``EventStore.execute`` from 1 and 16 asyncio tasks (one command at a time each), as bench/spine.py runs
   its identity command: ``CreateChat`` (a new ``Chat`` and its first ``MessagePosted`` of 500 characters,
   one save: the title and the content are sealed, and the new chat's data key is created, one INSERT) and
   ``SendMessage`` (get the caller's chat, post a 500-character message, save: one sealed event on a key
   already cached; every hundredth version a snapshot of the whole chat, sealed too). No generation is
   requested: a chat's ``GenerationRequested`` has nothing to seal. Encryption off is the same event store
   with ``store.mapper.keys = None`` (nothing sealed or opened); each side posts into chats of its own. The
   sides take turns in short slices on the same Postgres, the side that goes first alternating, so that other
   load on the machine hits both alike; a rate is all of a side's commands over all its time.
2. Rebuild rate of the chats projector (``projections.runtime.rebuild`` of ``ChatsProjector``) with
   encryption on and off: the same history written twice, in two databases of the same server, once sealed
   and once with sealing off. Per chat ``ChatCreated``, then 4 turns of ``MessagePosted`` (a question of 500
   characters), ``GenerationRequested``, ``GenerationStarted``, ``GenerationCompleted`` and ``AnswerRecorded``
   (an answer of 500 characters, in both). The rebuilds alternate, each by a fresh container (no data key
   cached, as ``parley rebuild`` starts); the rate counts every event read, and the note the CPU time this
   process spent. ``append events/s`` is how fast each history was written: 210 events a save, of 50 new
   aggregates (10 chats, 40 generations), each of which needs a data key when sealing is on.
3. Time to erase a user with many messages (10,000; ``--quick`` 1,000, half questions, half answers, 50 turns
   a chat, each answer with its generation), a document of theirs in one of the chats, all projected by every
   projector ``workers.bootstrap.all_projectors`` knows (``ProjectorRunner.catch_up``). Then
   ``Identity.erase_user`` as an admin calls it (gather what goes, store ``UserErased``, destroy the keys,
   delete snapshots and blobs, erase token chunks on JetStream), timed as the request, and its parts (the
   shredder's ``gather``, ``shred`` and the token chunks' erasure within it, timed by wrapping them on the
   instance; the rest is storing ``UserErased``); then every projector catches up, concurrently, timed
   until the last has committed: the read models are purged. Checked afterwards: no chat, message,
   generation or document of the user left in the read models, and a chat of theirs and the generation of
   one of its answers, loaded from the event store, open as erased.
4. Export throughput, before the erasure, of the same user plus a multi-MB document (a PDF of random bytes,
   so that compression does not shrink it): ``application.privacy.Privacy.export`` as the HTTP route calls
   it, the zip's chunks consumed and counted as they come, not stored (only the last MiB is kept, to read
   the central directory: what the archive holds, by kind of entry). MB/s is the zip's bytes over the time
   from the call to the last chunk.

Failures are counted, not raised: a command that fails, a check that does not hold. Any of them makes the
exit status 1.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from adapters.crypto import ERASED
from adapters.embedded import EngineUrls
from adapters.eventstore import EventStore
from application.context import CommandContext
from application.identity import Principal
from application.privacy import Privacy
from bench.spine import (
    RebuildProgress,
    Report,
    cli,
    new_user,
    progress,
    settings_for,
    start_container,
    stopwatch,
)
from domain.chats import Chat, Generation
from projections.conversations import ChatsProjector
from projections.export import ReadModelExport
from projections.runtime import ProjectorRunner, rebuild
from schema.tables import chats, documents, generations, messages
from workers.bootstrap import Container, all_projectors

__all__ = ["FULL", "QUICK", "Scale", "main"]

MESSAGE_CHARS = 500
WORDS = (
    "the of and to in is that it for was on are with as his they be at one have this from or had by word but "
    "what some we can out other were all there when up use your how said an each she which do their time if "
    "will way about many then them write would like so these her long make thing see him two has look more day "
    "could go come did number sound no most people my over know water than call first who may down side been "
    "now find any new work part take get place made live where after back little only round man year came show"
).split()
TURNS_PER_CHAT = 4
"""Rebuild history: turns per chat."""
ERASE_TURNS_PER_CHAT = 50
"""The erased user's chats: 50 turns, 100 messages each."""


@dataclass(frozen=True)
class Scale:
    measure_s: float
    """Per side, command and concurrency, split into ``rounds`` alternating slices."""
    rounds: int
    warmup_s: float
    concurrency: tuple[int, ...]
    rebuild_events: int
    """Per history (sealed, plain)."""
    rebuild_rounds: int
    erase_messages: int
    document_mb: int
    exports: int


FULL = Scale(
    measure_s=4.0,
    rounds=4,
    warmup_s=0.5,
    concurrency=(1, 16),
    rebuild_events=100_000,
    rebuild_rounds=2,
    erase_messages=10_000,
    document_mb=16,
    exports=3,
)
QUICK = Scale(
    measure_s=1.0,
    rounds=2,
    warmup_s=0.2,
    concurrency=(1, 16),
    rebuild_events=20_000,
    rebuild_rounds=1,
    erase_messages=1_000,
    document_mb=4,
    exports=1,
)


@dataclass
class Errors:
    """Failures counted through the run; the table prints them and any makes the exit status 1."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def count(self, what: str, detail: str = "") -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        self.first.setdefault(what, detail)
        if self.counts[what] == 1:
            progress(f"FAILED: {what}: {detail}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def text(rng: random.Random, chars: int = MESSAGE_CHARS) -> str:
    """Words of English, ``chars`` long: compresses about as prose does."""
    return " ".join(rng.choices(WORDS, k=chars // 3))[:chars]


def message_id() -> str:
    return f"m-{uuid.uuid4().hex}"


def encryption(store: EventStore, on: bool) -> None:
    """Sealing and opening on or off for every command after this (none may be in flight)."""
    store.mapper.keys = store.keys if on else None


# --- 1. commands ------------------------------------------------------------------------------------------
@dataclass
class Side:
    """One side of the comparison: encryption on or off, and the chat each caller posts into."""

    name: str
    sealed: bool
    chat_of: dict[int, uuid.UUID] = field(default_factory=dict)
    commands: int = 0
    seconds: float = 0.0

    @property
    def per_s(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0


def create_chat(store: EventStore, tenant_id: str, owner: uuid.UUID, content: str) -> uuid.UUID:
    """CreateChat with its first message: ``ChatCreated`` and ``MessagePosted`` in one save."""
    chat = Chat(tenant_id=tenant_id, owner_id=owner, title=content[:60], source="api")
    chat.post(message_id(), "user", content, None)
    store.save(chat)
    return chat.id


def send_message(store: EventStore, chat_id: uuid.UUID, content: str) -> None:
    """SendMessage without the generation: load the chat, post, save."""
    chat = store.get(Chat, chat_id)
    chat.post(message_id(), "user", content, chat.head)
    store.save(chat)


async def command_slice(
    store: EventStore, tenant_id: str, owner: uuid.UUID, side: Side, kind: str, callers: int, seconds: float,
    errors: Errors,
) -> tuple[int, float]:  # fmt: skip
    """Commands completed by ``callers`` tasks in ``seconds``, on ``side``."""
    encryption(store, side.sealed)
    deadline = time.perf_counter() + seconds
    done = [0] * callers

    async def caller(i: int) -> None:
        rng = random.Random(i)
        while time.perf_counter() < deadline:
            ctx = CommandContext(tenant_id=tenant_id, actor=f"user:{owner}")
            content = text(rng)
            try:
                if kind == "CreateChat" or i not in side.chat_of:
                    side.chat_of[i] = await store.execute(ctx, partial(create_chat, store, tenant_id, owner, content))
                else:
                    await store.execute(ctx, partial(send_message, store, side.chat_of[i], content))
            except Exception as exc:  # noqa: BLE001 - counted, and the run goes on
                errors.count(f"{kind} failed, encryption {side.name}", f"{type(exc).__name__}: {exc}")
                continue
            done[i] += 1

    try:
        with stopwatch() as elapsed:
            await asyncio.gather(*(caller(i) for i in range(callers)))
            return sum(done), elapsed()
    finally:
        encryption(store, True)


async def first_chats(store: EventStore, tenant_id: str, owner: uuid.UUID, side: Side, callers: int) -> None:
    encryption(store, side.sealed)
    try:
        for i in range(callers):
            ctx = CommandContext(tenant_id=tenant_id, actor=f"user:{owner}")
            content = text(random.Random(i))
            side.chat_of[i] = await store.execute(ctx, partial(create_chat, store, tenant_id, owner, content))
    finally:
        encryption(store, True)


async def measure_commands(urls: EngineUrls, home: Path, scale: Scale, report: Report, errors: Errors) -> None:
    container, tenant_id = await start_container(settings_for(urls, home, "bench_privacy_commands"))
    store = container.store
    owner = uuid.uuid4()
    slice_s = scale.measure_s / scale.rounds
    try:
        for kind in ("CreateChat", "SendMessage"):
            for callers in scale.concurrency:
                on, off = Side("on", sealed=True), Side("off", sealed=False)
                if kind == "SendMessage":  # each caller's chat exists before the clock starts
                    for side in (on, off):
                        await first_chats(store, tenant_id, owner, side, callers)
                for side in (on, off):
                    await command_slice(store, tenant_id, owner, side, kind, callers, scale.warmup_s, errors)
                ratios = []
                for r in range(scale.rounds):
                    rates = {}
                    for side in (on, off) if r % 2 == 0 else (off, on):
                        n, seconds = await command_slice(store, tenant_id, owner, side, kind, callers, slice_s, errors)
                        side.commands, side.seconds = side.commands + n, side.seconds + seconds
                        rates[side.name] = n / seconds if seconds else 0.0
                    ratios.append(rates["on"] / rates["off"] if rates["off"] else 0.0)
                ratio = on.per_s / off.per_s if off.per_s else 0.0
                spread = f"rounds {min(ratios):.2f}..{max(ratios):.2f}"
                progress(
                    f"{kind}, {callers:>2} caller(s): encryption on {on.per_s:7.1f}/s, off {off.per_s:7.1f}/s, "
                    f"on/off {ratio:.2f} ({spread})"
                )
                report.add(f"{kind}/s, {callers} caller(s), encryption on", f"{on.per_s:.1f}", "EventStore.execute")
                report.add(f"{kind}/s, {callers} caller(s), encryption off", f"{off.per_s:.1f}", "mapper.keys = None")
                report.add(f"{kind} on/off, {callers} caller(s)", f"{ratio:.2f}", f"cost {1 - ratio:+.0%}; {spread}")
    finally:
        await container.close()


# --- 2. rebuild -------------------------------------------------------------------------------------------
def new_turn(
    chat: Chat, tenant_id: str, owner: uuid.UUID, model_id: uuid.UUID, question: str, answer: str
) -> Generation:
    """One answered question: the question posted, its generation requested, started and completed, the
    answer recorded in the chat. Returns the generation (saved with the chat)."""
    asked, answered = message_id(), message_id()
    chat.post(asked, "user", question, chat.head)
    generation = Generation(
        tenant_id=tenant_id,
        chat_id=chat.id,
        user_id=owner,
        model_id=model_id,
        model="bench-model",
        user_message_id=asked,
        answer_message_id=answered,
        params={"temperature": 0.7},
        reserved_tokens=256,
    )
    generation.start(attempt=1, worker="bench")
    generation.complete(
        text=answer, thinking="", prompt_tokens=120, completion_tokens=110, finish_reason="stop",
        ttft_ms=5.0, tokens_per_s=100.0, duration_ms=1100.0, attempt=1,
    )  # fmt: skip
    chat.record_answer(
        answered, asked, generation.id, "bench-model", answer, "", "completed", 120, 110,
        {"ttft_ms": 5.0, "tokens_per_s": 100.0, "duration_ms": 1100.0},  # as the service records them
    )  # fmt: skip
    return generation


def append_history(
    store: EventStore, tenant_id: str, owner: uuid.UUID, events: int, *, chats_per_save: int, turns: int, what: str
) -> tuple[int, list[uuid.UUID]]:
    """At least ``events`` events of ``owner``'s conversations, ``chats_per_save`` chats of ``turns``
    answered questions per append. Returns the count and the chats' ids."""
    ctx = CommandContext(tenant_id=tenant_id, actor=f"user:{owner}")
    rng = random.Random(7)
    model_id = uuid.uuid4()
    appended, chat_ids = 0, []
    per_save = chats_per_save * (1 + 5 * turns)
    shown = 0

    def batch() -> int:
        aggregates: list[Chat | Generation] = []
        for _ in range(chats_per_save):
            chat = Chat(tenant_id=tenant_id, owner_id=owner, title=text(rng, 40), source="api")
            for _ in range(turns):
                aggregates.append(new_turn(chat, tenant_id, owner, model_id, text(rng), text(rng)))
            aggregates.append(chat)
            chat_ids.append(chat.id)
        return len(store.save(*aggregates))

    while appended < events:
        appended += store.run_command(ctx, batch)
        if appended * 5 // max(events, per_save) > shown:
            shown = appended * 5 // max(events, per_save)
            progress(f"{what}: appended {appended:,} events")
    return appended, chat_ids


async def measure_rebuild(urls: EngineUrls, home: Path, scale: Scale, report: Report) -> None:
    """Each history written by one container; each rebuild by a fresh one on its database, so that it
    starts with no data key cached, as ``parley rebuild`` in a new process does."""
    settings = {name: settings_for(urls, home, f"bench_privacy_{name}") for name in ("on", "off")}
    for name, side_settings in settings.items():
        container, tenant_id = await start_container(side_settings)
        encryption(container.store, name == "on")
        try:
            with stopwatch() as elapsed:
                appended, _ = await asyncio.to_thread(
                    append_history, container.store, tenant_id, uuid.uuid4(), scale.rebuild_events,
                    chats_per_save=10, turns=TURNS_PER_CHAT, what=f"history, encryption {name}",
                )  # fmt: skip
                seconds = elapsed()
        finally:
            await container.close()
        report.add(
            f"append events/s, encryption {name}", f"{appended / seconds:,.0f}",
            f"{appended:,} events, 210 per save, 50 new aggregates each",
        )  # fmt: skip
    totals = {name: [0, 0.0, 0.0] for name in settings}  # events, seconds, CPU seconds
    for r in range(scale.rebuild_rounds):
        for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
            container, _ = await start_container(settings[name])
            encryption(container.store, name == "on")
            try:
                tracker = RebuildProgress(f"rebuild chats, encryption {name}")
                await rebuild(ChatsProjector(), engine=container.engine, store=container.store, progress=tracker)
            finally:
                await container.close()
            seconds, cpu = tracker.at - tracker.started, tracker.cpu_at - tracker.cpu_started
            progress(f"rebuild chats, encryption {name}: {tracker.position:,} events in {seconds:.1f} s")
            total = totals[name]
            total[0], total[1], total[2] = total[0] + tracker.position, total[1] + seconds, total[2] + cpu
    rate = {name: events / seconds for name, (events, seconds, _) in totals.items()}
    for name, (events, seconds, cpu) in totals.items():
        note = f"{events:,} events in {seconds:.1f} s ({cpu:.1f} s CPU here), {scale.rebuild_rounds} rebuild(s)"
        report.add(f"rebuild chats events/s, encryption {name}", f"{rate[name]:,.0f}", note)
    ratio = rate["on"] / rate["off"]
    report.add("rebuild chats on/off", f"{ratio:.2f}", f"cost {1 - ratio:+.0%}; keys not cached at the start")


# --- 3. and 4. erasure and export -------------------------------------------------------------------------
async def catch_up_all(container: Container) -> int:
    """Every projector caught up, each by its own runner, concurrently (``parley project`` runs them
    concurrently too, some of them grouped); returns the most events one of them read."""
    runners = [ProjectorRunner(p, engine=container.engine, store=container.store) for p in all_projectors(container)]
    return max(await asyncio.gather(*(r.catch_up() for r in runners)))


async def people(container: Container, tenant_id: str) -> tuple[Principal, Principal]:
    """An admin of the tenant and the user who will be exported and erased, registered and projected."""
    admin, admin_index = new_user(tenant_id, f"admin-{uuid.uuid4().hex[:8]}@bench.example")
    admin.change_role("admin")
    user, index = new_user(tenant_id, f"subject-{uuid.uuid4().hex[:8]}@bench.example")
    ctx = CommandContext(tenant_id=tenant_id, actor="system")
    await container.store.execute(ctx, lambda: container.store.save(admin, admin_index, user, index))
    return (
        Principal(tenant_id=tenant_id, user_id=admin.id, role="admin", via="token"),
        Principal(tenant_id=tenant_id, user_id=user.id, role="user", via="token"),
    )


async def left_of(
    container: Container, tenant_id: str, user_id: uuid.UUID, chat_ids: list[uuid.UUID]
) -> dict[str, int]:
    """Rows of the user still in the read models."""
    owned = select(chats.c.chat_id).where(chats.c.owner_id == str(user_id))
    ids = [str(c) for c in chat_ids]
    queries = {
        "chats": select(func.count()).select_from(chats).where(chats.c.chat_id.in_(ids)),
        "messages": select(func.count())
        .select_from(messages)
        .where(messages.c.chat_id.in_(ids) | messages.c.chat_id.in_(owned)),
        "generations": select(func.count()).select_from(generations).where(generations.c.user_id == str(user_id)),
        "documents": select(func.count())
        .select_from(documents)
        .where(documents.c.tenant_id == tenant_id, documents.c.owner_id == str(user_id)),
    }
    async with container.engine.connect() as conn:
        return {name: int((await conn.execute(q)).scalar() or 0) for name, q in queries.items()}


@dataclass
class Exported:
    size: int
    chunks: int
    seconds: float
    entries: dict[str, tuple[int, int]]
    """Kind of entry (the path up to its first ``/``) -> (bytes before, after compression)."""


ZIP_TAIL = 1024 * 1024
"""What is kept of an export's stream: enough for its central directory."""


def central_directory(tail: bytes) -> dict[str, tuple[int, int]]:
    """The entries an archive's central directory lists (it ends the stream, after the entries), summed by
    kind; empty if ``tail`` does not end as a zip does."""
    eocd = len(tail) - 22  # the end of central directory record; the archive has no comment
    if eocd < 0 or tail[eocd : eocd + 4] != b"PK\x05\x06":
        return {}
    (directory_size,) = struct.unpack_from("<I", tail, eocd + 12)
    end = eocd
    if tail[eocd - 20 : eocd - 16] == b"PK\x06\x07":  # zip64: its locator, after its 56-byte record
        end = eocd - 20 - 56
        (directory_size,) = struct.unpack_from("<Q", tail, end + 40)
    entries: dict[str, tuple[int, int]] = {}
    at = end - directory_size
    while 0 <= at < end and tail[at : at + 4] == b"PK\x01\x02":
        compressed, size = struct.unpack_from("<II", tail, at + 20)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", tail, at + 28)
        name = tail[at + 46 : at + 46 + name_len].decode()
        extra = tail[at + 46 + name_len : at + 46 + name_len + extra_len]
        if 0xFFFFFFFF in (compressed, size) and extra[:2] == b"\x01\x00":  # zip64: the sizes are in the extra
            size, compressed = struct.unpack_from("<QQ", extra, 4)
        kind = name.split("/", 1)[0]
        before, after = entries.get(kind, (0, 0))
        entries[kind] = (before + size, after + compressed)
        at += 46 + name_len + extra_len + comment_len
    return entries


async def export_once(privacy: Privacy, subject: Principal) -> Exported:
    """One export, consumed as it comes, only its end kept (to read what it held)."""
    ctx = CommandContext(tenant_id=subject.tenant_id, actor=subject.actor)
    size = chunks = 0
    tail = b""
    with stopwatch() as elapsed:
        export = await privacy.export(ctx, subject, subject.user_id)
        async for chunk in export.chunks:
            size += len(chunk)
            chunks += 1
            tail = (tail + chunk)[-ZIP_TAIL:]
        seconds = elapsed()
    return Exported(size, chunks, seconds, central_directory(tail))


class Stages:
    """Time spent in some of an object's coroutine methods, taken by wrapping them on the instance."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: object, method: str, label: str) -> None:
        inner = getattr(owner, method)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, method, timed)

    def ms(self, label: str) -> float:
        return self.seconds.get(label, 0.0) * 1000


async def measure_erase_and_export(urls: EngineUrls, home: Path, scale: Scale, report: Report, errors: Errors) -> None:
    container, tenant_id = await start_container(settings_for(urls, home, "bench_privacy_erase"))
    try:
        await container.connect_nats("bench-privacy")  # the erasure erases token chunks on JetStream
        admin, subject = await people(container, tenant_id)
        turns = scale.erase_messages // 2
        events = turns // ERASE_TURNS_PER_CHAT * (1 + 5 * ERASE_TURNS_PER_CHAT)
        _, chat_ids = await asyncio.to_thread(
            append_history, container.store, tenant_id, subject.user_id, events,
            chats_per_save=1, turns=ERASE_TURNS_PER_CHAT, what=f"the subject's {scale.erase_messages:,} messages",
        )  # fmt: skip
        document = b"%PDF-1.7\n" + os.urandom(scale.document_mb * 1024 * 1024)
        ctx = CommandContext(tenant_id=tenant_id, actor=subject.actor)
        await container.knowledge.upload(
            ctx, subject, data=document, filename="scan.pdf", declared_type="application/pdf", chat_id=chat_ids[0]
        )
        with stopwatch() as elapsed:
            read = await catch_up_all(container)
            projected = elapsed()
        log_size = await container.store.call(container.store.max_id)
        progress(f"projected: {log_size:,} events by {len(all_projectors(container))} projectors in {projected:.1f} s")
        before = await left_of(container, tenant_id, subject.user_id, chat_ids)
        if before["messages"] != scale.erase_messages or before["documents"] != 1:
            errors.count("the subject's data not projected", str(before))

        # 4. export, before the erasure
        privacy = Privacy(
            store=container.store, data=ReadModelExport(container.engine), blobs=container.knowledge.blobs
        )
        runs = []
        for n in range(scale.exports):
            exported = await export_once(privacy, subject)
            chats_in = exported.entries.get("chats", (0, 0))
            if exported.size < len(document) or not chats_in[0]:
                errors.count("export incomplete", f"{exported.size:,} bytes, entries {exported.entries}")
            runs.append(exported)
            progress(
                f"export {n + 1}: {exported.size / 1e6:.1f} MB in {exported.chunks} chunks, {exported.seconds:.2f} s"
            )
        exported = sorted(runs, key=lambda e: e.seconds)[len(runs) // 2]
        content = ", ".join(
            f"{kind} {after / 1e6:.1f} MB ({before / 1e6:.1f} MB before deflate)"
            for kind, (before, after) in sorted(exported.entries.items(), key=lambda kv: -kv[1][1])
            if after >= 50_000
        )
        report.add(
            "export MB/s", f"{exported.size / 1e6 / exported.seconds:.1f}",
            f"{exported.size / 1e6:.1f} MB zip in {exported.seconds:.2f} s, {exported.chunks} chunks "
            f"(median of {len(runs)}): {scale.erase_messages:,} messages in {len(chat_ids)} chats, "
            f"a {scale.document_mb} MB PDF",
        )  # fmt: skip
        report.add("export holds", "", content)

        # 3. erasure
        ctx = CommandContext(tenant_id=tenant_id, actor=admin.actor)
        stages = Stages()
        stages.wrap(container.shredding, "gather", "gather")
        stages.wrap(container.shredding, "shred", "shred")
        stages.wrap(container.shredding, "_erase_tokens", "tokens")
        with stopwatch() as elapsed:
            await container.identity.erase_user(ctx, admin, subject.user_id)
            request = elapsed()
            read = await catch_up_all(container)
            purged = elapsed()
        progress(f"erased: request {request * 1000:.0f} ms, read models purged at {purged * 1000:.0f} ms")
        note = f"{scale.erase_messages:,} messages, {len(chat_ids)} chats, {scale.erase_messages // 2:,} generations, 1 document"
        report.add("erase_user request (ms)", f"{request * 1000:.0f}", note)
        report.add(
            "erase_user request, parts (ms)", "",
            f"gather {stages.ms('gather'):.0f}, UserErased stored {(request * 1000 - stages.ms('gather') - stages.ms('shred')):.0f}, "
            f"keys+snapshots+blobs {stages.ms('shred') - stages.ms('tokens'):.0f}, token chunks {stages.ms('tokens'):.0f} "
            f"({scale.erase_messages // 2:,} JetStream look-ups)",
        )  # fmt: skip
        report.add(
            "erase -> read models purged (ms)", f"{purged * 1000:.0f}",
            f"request, then {len(all_projectors(container))} projectors' catch-up ({(purged - request) * 1000:.0f} ms, "
            f"{read:,} events read)",
        )  # fmt: skip
        after = await left_of(container, tenant_id, subject.user_id, chat_ids)
        if any(after.values()):
            errors.count("read models not purged", str(after))
        chat = await container.store.call(container.store.get, Chat, chat_ids[-1])
        contents = {m["content"] for m in chat.messages.values()}
        if contents != {ERASED} or chat.title != ERASED:
            errors.count("chat not erased in the event store", f"{len(contents)} distinct contents")
        answered = next(m for m in chat.messages.values() if m.get("generation_id"))
        generation = await container.store.call(container.store.get, Generation, uuid.UUID(answered["generation_id"]))
        if generation.text != ERASED:
            errors.count("generation not erased in the event store", f"its text opens: {generation.text[:40]!r}")
    finally:
        await container.close()


# --- entry point ------------------------------------------------------------------------------------------
async def run(urls: EngineUrls, home: Path, scale: Scale, errors: Errors) -> Report:
    report = Report()
    await measure_commands(urls, home, scale, report, errors)
    await measure_rebuild(urls, home, scale, report)
    await measure_erase_and_export(urls, home, scale, report, errors)
    for what, count in errors.counts.items():
        report.add(f"FAILED: {what}", str(count), errors.first[what][:120])
    report.add("errors", str(errors.total), "failed commands and checks")
    return report


def main(argv: list[str] | None = None) -> None:
    errors = Errors()
    cli("python -m bench.privacy", __doc__ or "", partial(run, errors=errors), QUICK, FULL, argv)
    if errors.total:
        sys.exit(1)


if __name__ == "__main__":
    main()
