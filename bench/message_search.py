"""Benchmark of search in messages: latency of ``search_messages_of`` (what ``GET /api/v1/chats/search``
runs) over 1,000 users x 100 chats x 20 messages (2,000,000 messages).

Run ``python -m bench.message_search`` (``--quick``: 100 users, 200,000 messages; ``--smoke``: 20 users,
4,000 messages, that it runs; ``--fast``: fsync off). It starts its own embedded Postgres, NATS and Redis
in a temporary directory and builds the read model as ``bootstrap`` does, then loads it directly — not
through commands, which would take hours at this size: the chats into ``rm_search_chats`` and the
messages into ``rm_search_messages`` by ``COPY`` (Postgres computes each row's ``tsv`` as it goes in), with
the GIN index dropped for the load and built after it (timed, ``maintenance_work_mem`` 512MB), then
``ANALYZE``.

Messages are 12 to 40 words drawn from a vocabulary of 30,000 made-up words with a Zipf-like law (the
word of rank r has weight 1/(r + 10)), so a few words are in a large part of every user's messages and
most are rare; every user has the same law, so every user's scope is about 2,000 messages (the full
form). Queries, each by a random user: a common word (ranks 1-20: hundreds to over a thousand of the
user's messages match, past ``CANDIDATES`` for the commonest), a middling one (ranks 200-2,000), a rare one
(ranks 10,000-30,000: mostly no match), two words (common and middling), and a quoted phrase of two common
words. Each kind's p50/p95/p99 and all of them together; the statement of one common-word query is
explained (``EXPLAIN (ANALYZE, BUFFERS)``): the index it used and how many rows it ranked. What is timed
is the query through SQLAlchemy's async engine, as the API runs it; HTTP and the DTO are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import text

from adapters.embedded import EngineUrls
from bench.knowledge import LEXICON
from bench.spine import Report, cli, percentile, progress, settings_for, start_container, stopwatch
from projections.message_search import CANDIDATES, owner_lexeme, search_messages_of

__all__ = ["FULL", "QUICK", "SMOKE", "Scale", "main"]

VOCABULARY = 30_000
BUILD_MEMORY = "512MB"
KINDS = ("common", "middling", "rare", "two words", "phrase")


@dataclass(frozen=True)
class Scale:
    users: int
    chats_per_user: int
    messages_per_chat: int
    queries_per_kind: int


FULL = Scale(users=1_000, chats_per_user=100, messages_per_chat=20, queries_per_kind=200)
QUICK = Scale(users=100, chats_per_user=100, messages_per_chat=20, queries_per_kind=100)
SMOKE = Scale(users=20, chats_per_user=10, messages_per_chat=20, queries_per_kind=10)


def vocabulary() -> list[str]:
    """30,000 made-up words (three and four syllables), none an English stop word."""
    words = list(LEXICON)
    rng = random.Random(7)
    while len(words) < VOCABULARY:
        words.append(rng.choice(LEXICON) + rng.choice(LEXICON)[:3])
    return list(dict.fromkeys(words))[:VOCABULARY]


def word_weights(n: int) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + 10.0)
    return weights / weights.sum()


def texts(rng: np.random.Generator, words: np.ndarray, weights: np.ndarray, n: int) -> list[str]:
    lengths = rng.integers(12, 41, size=n)
    drawn = rng.choice(len(words), size=int(lengths.sum()), p=weights)
    out, at = [], 0
    for length in lengths:
        out.append(" ".join(words[drawn[at : at + length]]).capitalize() + ".")
        at += length
    return out


def load(database_url: str, tenant_id: str, scale: Scale, words: list[str]) -> tuple[list[str], float]:
    """The read model loaded by COPY: the users' ids and the seconds the GIN index took to build."""
    rng = np.random.default_rng(11)
    vocab = np.array(words)
    weights = word_weights(len(words))
    users = [str(uuid.UUID(int=random.Random(u).getrandbits(128), version=4)) for u in range(scale.users)]
    start = datetime(2025, 1, 1, tzinfo=UTC)
    per_user = scale.chats_per_user * scale.messages_per_chat
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP INDEX IF EXISTS ix_rm_search_messages_tsv")
        with stopwatch() as elapsed:
            for n, user in enumerate(users):
                chats = [str(uuid.uuid4()) for _ in range(scale.chats_per_user)]
                bodies = texts(rng, vocab, weights, per_user)
                with conn.transaction(), conn.cursor() as cursor:
                    with cursor.copy("COPY rm_search_chats (chat_id, tenant_id, owner_id, title, archived) FROM STDIN") as copy:
                        for i, chat in enumerate(chats):
                            copy.write_row((chat, tenant_id, user, f"Chat {i}", False))
                    with cursor.copy(
                        "COPY rm_search_messages (message_id, tenant_id, user_id, chat_id, role, archived, created_at, content)"
                        " FROM STDIN"
                    ) as copy:
                        for i, body in enumerate(bodies):
                            chat = chats[i // scale.messages_per_chat]
                            at = start + timedelta(minutes=n * per_user + i)
                            role = "user" if i % 2 == 0 else "assistant"
                            copy.write_row((uuid.uuid4().hex, tenant_id, user, chat, role, False, at, body))
                if (n + 1) % max(1, scale.users // 10) == 0:
                    done = (n + 1) * per_user
                    progress(f"loaded {done:,} messages ({done / elapsed():,.0f}/s)")
        with stopwatch() as elapsed:
            with conn.transaction():
                conn.execute(f"SET LOCAL maintenance_work_mem = '{BUILD_MEMORY}'")
                conn.execute("CREATE INDEX ix_rm_search_messages_tsv ON rm_search_messages USING gin (tsv)")
            built = elapsed()
        conn.execute("ANALYZE rm_search_chats")
        conn.execute("ANALYZE rm_search_messages")
    return users, built


def queries(rng: random.Random, words: Sequence[str], users: Sequence[str], n: int) -> list[tuple[str, str, str]]:
    """(kind, user, q) in a shuffled order."""
    out = []
    for _ in range(n):
        common, middling = words[rng.randint(0, 19)], words[rng.randint(199, 1_999)]
        rare = words[rng.randint(9_999, len(words) - 1)]
        pair = f'"{words[rng.randint(0, 19)]} {words[rng.randint(0, 19)]}"'
        for kind, q in zip(KINDS, (common, middling, rare, f"{common} {middling}", pair), strict=True):
            out.append((kind, rng.choice(users), q))
    rng.shuffle(out)
    return out


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


async def run(urls: EngineUrls, home: Path, scale: Scale) -> Report:
    report = Report()
    settings = settings_for(urls, home, "message_search")
    container, tenant_id = await start_container(settings)
    words = vocabulary()
    total = scale.users * scale.chats_per_user * scale.messages_per_chat
    try:
        with stopwatch() as elapsed:
            users, built = await asyncio.to_thread(load, settings.database_url, tenant_id, scale, words)
            loaded = elapsed()
        report.add("messages loaded", f"{total:,}", f"{scale.users:,} users x {scale.chats_per_user} chats x {scale.messages_per_chat}")
        report.add("load (COPY, tsv computed) s", f"{loaded - built:.0f}", f"{total / (loaded - built):,.0f} messages/s")
        report.add("GIN index build s", f"{built:.1f}")
        async with container.engine.connect() as conn:
            sizes = (
                await conn.execute(
                    text(
                        "SELECT pg_size_pretty(pg_table_size('rm_search_messages')),"
                        " pg_size_pretty(pg_relation_size('ix_rm_search_messages_tsv'))"
                    )
                )
            ).one()
        report.add("table / GIN index size", f"{sizes[0]} / {sizes[1]}")

        rng = random.Random(5)
        for _kind, user, q in queries(rng, words, users, 3):  # warm the caches and the connection pool
            await search_messages_of(container.engine, tenant_id, user, q)
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        hits: dict[str, list[int]] = {kind: [] for kind in KINDS}
        planned = queries(rng, words, users, scale.queries_per_kind)
        progress(f"{len(planned)} queries")
        for kind, user, q in planned:
            started = time.perf_counter()
            found = await search_messages_of(container.engine, tenant_id, user, q, limit=20)
            times[kind].append(time.perf_counter() - started)
            hits[kind].append(len(found))
        every = [t for kind in KINDS for t in times[kind]]
        report.add(
            "search p50/p95/p99 ms, all",
            f"{ms(statistics.median(every))}/{ms(percentile(every, 0.95))}/{ms(percentile(every, 0.99))}",
            f"{len(every)} queries, 20 results each at most; target p95 <= 50 ms",
        )
        for kind in KINDS:
            t = times[kind]
            report.add(
                f"  {kind} p50/p95/p99 ms",
                f"{ms(statistics.median(t))}/{ms(percentile(t, 0.95))}/{ms(percentile(t, 0.99))}",
                f"mean hits returned {statistics.mean(hits[kind]):.1f}",
            )
        report.add(*await explained(container.engine, tenant_id, users[0], words[0]))
    finally:
        await container.close()
    return report


async def explained(engine: Any, tenant_id: str, user: str, word: str) -> tuple[str, str, str]:
    """The plan of one common-word query: whether the GIN index was used and how many rows it ranked."""
    from projections.message_search import _SEARCH

    params = {
        "q": word, "owner": owner_lexeme(user), "user": user, "tenant": tenant_id, "archived": False,
        "pool": CANDIDATES, "limit": 20, "offset": 0, "marks": "\x01\x02", "start": "\x01", "stop": "\x02",
    }  # fmt: skip
    async with engine.connect() as conn:
        plan = [r[0] for r in await conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {_SEARCH.text}"), params)]
        matches = await conn.scalar(
            text(
                "SELECT count(*) FROM rm_search_messages WHERE user_id = :user"
                " AND tsv @@ websearch_to_tsquery('english', :q)"
            ),
            {"user": user, "q": word},
        )
    index = "bitmap scan of the GIN index" if any("ix_rm_search_messages_tsv" in line for line in plan) else "NO index"
    total = next((line.strip() for line in plan if line.startswith("Execution Time")), "")
    return (f"plan of '{word}' (commonest word)", index, f"{matches} of the user's messages match, {min(matches or 0, CANDIDATES)} ranked; {total}")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="20 users, 4,000 messages: that it runs")


def _scale(scale: Scale, args: argparse.Namespace) -> Scale:
    return replace(SMOKE) if args.smoke else scale


def main(argv: list[str] | None = None) -> None:
    cli("python -m bench.message_search", __doc__ or "", run, QUICK, FULL, argv, options=(_options, _scale))


if __name__ == "__main__":
    main()
