"""Token streams over real HTTP (uvicorn on a local port, so events arrive as they are sent): the
streamed answer is the stored answer; a client that reconnects with ``Last-Event-ID`` loses and repeats
nothing; cancelling stops a generation within a second, billed for what it wrote; a client that leaves
never stops a generation; a restarted attempt tells the client to drop its text; a finished generation
replays from the event store once its tokens have expired."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import api.sse
from adapters.engines import EchoEngine
from application.context import CommandContext
from application.conversations import Outcome
from domain.chats import Generation
from schema.tokens import TokenChunk, encode_chunk
from tests.conftest import Pipeline
from workers.bootstrap import Container

PASSWORD = "correct horse 9"
FINISHED = ("completed", "failed", "cancelled")


# --- helpers -------------------------------------------------------------------------------------------
@pytest.fixture
def echo_delay(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Makes the echo engine pause before each word, like a model (set before the first generation)."""

    def set_delay(delay_s: float) -> None:
        import adapters.engines

        build = adapters.engines.build_engine

        def build_slow_echo(kind: str, **options: Any) -> Any:
            return EchoEngine(delay_s=delay_s) if kind == "echo" else build(kind, **options)

        monkeypatch.setattr(adapters.engines, "build_engine", build_slow_echo)

    return set_delay


@dataclass
class Event:
    event: str | None
    id: str | None
    data: Any
    comment: bool = False

    @property
    def position(self) -> tuple[int, int]:
        assert self.id is not None
        attempt, _, seq = self.id.partition(":")
        return int(attempt), int(seq)


async def events_of(response: httpx.Response) -> AsyncIterator[Event]:
    """Server-sent events as the spec parses them (comments included, as events of their own)."""
    import json

    event: str | None = None
    event_id: str | None = None
    data: list[str] = []
    comment = False
    async for line in response.aiter_lines():
        if line == "":
            if event or data or event_id or comment:
                yield Event(event, event_id, json.loads("\n".join(data)) if data else None, comment)
            event, event_id, data, comment = None, None, [], False
        elif line.startswith(":"):
            comment = True
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def sign_up(http: httpx.AsyncClient, email: str) -> dict[str, Any]:
    r = await http.post(
        "/api/v1/auths/register", json={"email": email, "password": PASSWORD, "name": "Someone"}
    )
    assert r.status_code == 201, r.text
    r = await http.post("/api/v1/auths/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def echo_user(http: httpx.AsyncClient) -> dict[str, Any]:
    """A user of a tenant whose admin registered an open ``echo`` model."""
    admin = await sign_up(http, "admin@example.com")
    r = await http.post("/api/v1/providers", json={"name": "echoes", "kind": "echo"}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    r = await http.post(
        "/api/v1/models",
        json={"name": "echo", "provider": "echoes", "upstream_model": "echo"},
        headers=bearer(admin),
    )
    assert r.status_code == 201, r.text
    return await sign_up(http, "user@example.com")


async def ask(http: httpx.AsyncClient, user: dict[str, Any], content: str, **params: Any) -> dict[str, Any]:
    r = await http.post("/api/v1/chats", json={"title": "Talk"}, headers=bearer(user))
    assert r.status_code == 201, r.text
    r = await http.post(
        f"/api/v1/chats/{r.json()['id']}/messages",
        json={"content": content, "model": "echo", "params": params},
        headers=bearer(user),
    )
    assert r.status_code == 202, r.text
    return dict(r.json())


async def finished(http: httpx.AsyncClient, user: dict[str, Any], generation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        r = await http.get(f"/api/v1/generations/{generation_id}", headers=bearer(user))
        if r.json()["status"] in FINISHED:
            return dict(r.json())
        assert time.monotonic() < deadline, r.json()
        await asyncio.sleep(0.05)


async def read_stream(
    http: httpx.AsyncClient,
    user: dict[str, Any],
    generation_id: str,
    *,
    last_event_id: str | None = None,
    stop_after: int | None = None,
) -> list[Event]:
    """The events of one connection: all of them, or the first ``stop_after`` tokens (then it hangs up)."""
    headers = bearer(user) | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    events: list[Event] = []
    async with http.stream("GET", f"/api/v1/generations/{generation_id}/stream", headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for e in events_of(r):
            events.append(e)
            if stop_after is not None and sum(x.event == "token" for x in events) >= stop_after:
                break
    return events


def text_of(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


WORDS = [f"w{i}" for i in range(1, 301)]


# --- tests ---------------------------------------------------------------------------------------------
async def test_the_streamed_answer_is_the_stored_answer(
    live: str, container: Container, pipeline: Pipeline
) -> None:
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        user = await echo_user(http)
        sent = await ask(http, user, " ".join(WORDS[:80]))
        events = await read_stream(http, user, sent["generation_id"])

        tokens = [e for e in events if e.event == "token"]
        assert tokens and [e.event for e in events if not e.comment][-1] == "done"
        assert [e.position for e in tokens] == sorted({e.position for e in tokens})
        done = events[-1].data
        assert done["status"] == "completed" and done["finish_reason"] == "stop"
        assert done["usage"]["completion_tokens"] == 80
        assert done["usage"]["total_tokens"] == done["usage"]["prompt_tokens"] + 80
        assert tokens[-1].data["completion_tokens"] == 80

        stored = await finished(http, user, sent["generation_id"])
        assert text_of(events) == stored["text"] == " ".join(WORDS[:80])
        assert stored["usage"] == done["usage"]
        await pipeline.settle()
        chat = (await http.get(f"/api/v1/chats/{sent['chat_id']}", headers=bearer(user))).json()
        answer = next(m for m in chat["messages"] if m["id"] == sent["answer_message_id"])
        assert answer["content"] == text_of(events)
        # Streaming it again, after the end, replays the same.
        assert text_of(await read_stream(http, user, sent["generation_id"])) == stored["text"]


async def test_a_client_that_reconnects_with_last_event_id_misses_and_repeats_nothing(
    live: str, container: Container, pipeline: Pipeline, echo_delay: Callable[[float], None]
) -> None:
    echo_delay(0.008)
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        user = await echo_user(http)
        sent = await ask(http, user, " ".join(WORDS[:120]))
        first = await read_stream(http, user, sent["generation_id"], stop_after=3)
        assert (await http.get(f"/api/v1/generations/{sent['generation_id']}", headers=bearer(user))).json()[
            "status"
        ] == "running"
        second = await read_stream(http, user, sent["generation_id"], last_event_id=first[-1].id)

        tokens = [e for e in first + second if e.event == "token"]
        assert [e.position for e in tokens] == sorted({e.position for e in tokens})  # no repeat, in order
        assert [e.event for e in second if not e.comment][-1] == "done"
        assert "restart" not in [e.event for e in second]
        stored = await finished(http, user, sent["generation_id"])
        assert text_of(first) + text_of(second) == stored["text"] == " ".join(WORDS[:120])
        # Once finished, resuming from the same point still gives exactly the rest.
        again = await read_stream(http, user, sent["generation_id"], last_event_id=first[-1].id)
        assert text_of(again) == text_of(second)


async def test_cancelling_mid_stream_stops_within_a_second_and_keeps_the_partial_text_and_usage(
    live: str, container: Container, pipeline: Pipeline, echo_delay: Callable[[float], None]
) -> None:
    echo_delay(0.02)
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        user = await echo_user(http)
        sent = await ask(http, user, " ".join(WORDS))
        events: list[Event] = []
        cancelled_at = 0.0
        headers = bearer(user)
        async with http.stream(
            "GET", f"/api/v1/generations/{sent['generation_id']}/stream", headers=headers
        ) as r:
            async for e in events_of(r):
                events.append(e)
                if not cancelled_at and sum(x.event == "token" for x in events) >= 3:
                    r2 = await http.post(
                        f"/api/v1/generations/{sent['generation_id']}/cancel", headers=headers
                    )
                    assert r2.status_code == 202 and r2.json()["cancel_requested"] is True
                    cancelled_at = time.monotonic()
        ended_after = time.monotonic() - cancelled_at
        assert ended_after < 1.0, ended_after

        done = events[-1]
        assert done.event == "done" and done.data["status"] == "cancelled"
        stored = await finished(http, user, sent["generation_id"])
        assert stored["status"] == "cancelled"
        partial = text_of(events)
        assert (
            partial == stored["text"]
            and " ".join(WORDS).startswith(partial)
            and 0 < len(partial.split()) < 300
        )
        assert 0 < stored["usage"]["completion_tokens"] == done.data["usage"]["completion_tokens"] < 300
        assert stored["usage"]["prompt_tokens"] == 300
        r = await http.post(f"/api/v1/generations/{sent['generation_id']}/cancel", headers=headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "GENERATION_FINISHED"
        await pipeline.settle()
        chat = (await http.get(f"/api/v1/chats/{sent['chat_id']}", headers=headers)).json()
        answer = next(m for m in chat["messages"] if m["id"] == sent["answer_message_id"])
        assert (answer["status"], answer["content"]) == ("cancelled", partial)


async def test_a_client_that_leaves_does_not_stop_the_generation(
    live: str, container: Container, pipeline: Pipeline, echo_delay: Callable[[float], None]
) -> None:
    echo_delay(0.01)
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        user = await echo_user(http)
        # One answer first: the pipeline's workers subscribe as they start, after the test has begun.
        await finished(http, user, (await ask(http, user, "warm up"))["generation_id"])
        subscriptions = len(container.nc._subs)  # nats-py has no public count of them
        sent = await ask(http, user, " ".join(WORDS[:60]))
        left = await read_stream(http, user, sent["generation_id"], stop_after=2)
        assert len([e for e in left if e.event == "token"]) == 2
        stored = await finished(http, user, sent["generation_id"])
        assert (stored["status"], stored["text"]) == ("completed", " ".join(WORDS[:60]))
        # The reader of the stream that was left went away with it.
        assert len(container.nc._subs) == subscriptions


async def test_a_finished_generation_replays_from_the_event_store_once_its_tokens_expired(
    live: str, container: Container, pipeline: Pipeline
) -> None:
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        user = await echo_user(http)
        sent = await ask(http, user, "short and sweet answer")
        await finished(http, user, sent["generation_id"])
        js = await container.connect_nats("test")
        await js.purge_stream(
            container.subjects.tokens_stream, subject=container.subjects.tokens(sent["generation_id"])
        )

        fresh = await read_stream(http, user, sent["generation_id"])
        assert [(e.event, e.id) for e in fresh] == [("token", f"1:{api.sse.FINAL_SEQ}"), ("done", None)]
        assert fresh[0].data["text"] == "short and sweet answer"
        assert fresh[1].data == {
            "status": "completed",
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8},
        }
        resumed = await read_stream(http, user, sent["generation_id"], last_event_id="1:1")
        assert [e.event for e in resumed] == ["restart", "token", "done"]  # drop the piece, take the whole
        assert resumed[1].data["text"] == "short and sweet answer"
        complete = await read_stream(http, user, sent["generation_id"], last_event_id=fresh[0].id)
        assert [e.event for e in complete] == ["done"]


# --- the reader alone (no worker: the test plays the worker's part on the token stream) ---------------
async def worker_context(container: Container, generation_id: str) -> CommandContext:
    generation = await container.store.call(container.store.get, Generation, uuid.UUID(generation_id))
    return CommandContext(tenant_id=generation.tenant_id, actor="worker:test")


async def publish(container: Container, generation_id: str, *chunks: TokenChunk) -> None:
    js = await container.connect_nats("test")
    for chunk in chunks:
        await js.publish(container.subjects.tokens(generation_id), encode_chunk(chunk))


async def test_a_restarted_attempt_tells_the_client_to_drop_its_text(live: str, container: Container) -> None:
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        user = await echo_user(http)
        sent = await ask(http, user, "hello")
        gid = sent["generation_id"]
        await publish(
            container,
            gid,
            TokenChunk(generation_id=gid, attempt=1, seq=1, text="Hel"),
            TokenChunk(generation_id=gid, attempt=1, seq=2, text="lo"),
            TokenChunk(generation_id=gid, attempt=2, seq=1, text="Hi"),
            TokenChunk(generation_id=gid, attempt=2, seq=2, text=" there"),
        )
        outcome = Outcome(
            status="completed", text="Hi there", prompt_tokens=1, completion_tokens=2, attempt=2
        )
        ctx = await worker_context(container, gid)
        assert await container.generations.finish(ctx, uuid.UUID(gid), outcome)
        await publish(
            container,
            gid,
            TokenChunk(
                generation_id=gid, attempt=2, seq=1_000_000, done=True, status="completed", finish_reason="stop",
                prompt_tokens=1, completion_tokens=2,
            ),
        )  # fmt: skip

        events = await read_stream(http, user, gid)
        assert [(e.event, e.id) for e in events] == [
            ("token", "1:1"),
            ("token", "1:2"),
            ("restart", "2:0"),
            ("token", "2:1"),
            ("token", "2:2"),
            ("done", None),
        ]
        assert events[2].data == {"attempt": 2}
        resumed = await read_stream(http, user, gid, last_event_id="1:1")
        assert [(e.event, e.id) for e in resumed] == [
            ("token", "1:2"),
            ("restart", "2:0"),
            ("token", "2:1"),
            ("token", "2:2"),
            ("done", None),
        ]
        assert [e.id for e in await read_stream(http, user, gid, last_event_id="2:1")] == ["2:2", None]
        assert [e.id for e in await read_stream(http, user, gid, last_event_id="2:0")] == ["2:1", "2:2", None]


async def test_a_silent_stream_sends_heartbeats_and_ends_when_the_outcome_is_recorded_without_a_done_chunk(
    live: str, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.sse, "HEARTBEAT_S", 0.2)
    async with httpx.AsyncClient(base_url=live, timeout=15) as http:
        user = await echo_user(http)
        sent = await ask(http, user, "hello")
        gid = sent["generation_id"]
        events: list[Event] = []
        headers = bearer(user)
        async with http.stream("GET", f"/api/v1/generations/{gid}/stream", headers=headers) as r:
            async for e in events_of(r):
                events.append(e)
                if e.comment and sum(x.comment for x in events) == 2:
                    # The worker records the outcome, then dies before it says so on the token stream.
                    outcome = Outcome(
                        status="failed",
                        text="hel",
                        prompt_tokens=1,
                        completion_tokens=1,
                        attempt=1,
                        error_code="UPSTREAM_TIMEOUT",
                        error_message="the upstream stopped answering",
                    )
                    ctx = await worker_context(container, gid)
                    await container.generations.finish(ctx, uuid.UUID(gid), outcome)
        assert [e.event for e in events if not e.comment] == ["token", "error", "done"]
        token, error, done = (e for e in events if not e.comment)
        assert token.data["text"] == "hel"
        assert error.data == {"code": "UPSTREAM_TIMEOUT", "message": "the upstream stopped answering"}
        assert done.data["status"] == "failed" and done.data["usage"]["completion_tokens"] == 1
