"""Ready when it says so: a generation worker that preloads the local model (SmolLM2-135M-Instruct on CPU)
reports it ``loading`` and ``/health/ready`` answers 503 until the model is loaded; then 200 with the
engine ``ready``, and the first question is answered by the engine loaded at start, with no load of its
own. Without a live worker the API still answers, ``degraded``."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from adapters.engines import LocalEngine
from adapters.settings import Settings
from application.conversations import EngineTarget
from projections.runtime import ProjectorRunner
from tests.conftest import wait_projected
from tests.sse import sse_events
from workers.bootstrap import Container, all_projectors
from workers.generate import GenerationWorker
from workers.relay import Relay

PASSWORD = "correct horse 9"
# The GGUF is converted once per machine, as in tests/integration/test_engines.py, not once per test.
MODEL_HOME = Path(os.environ.get("PARLEY_TEST_MODEL_HOME", Path(tempfile.gettempdir()) / "parley-test-models"))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, home=MODEL_HOME)


@pytest.fixture
async def preloading_worker(container: Container) -> AsyncIterator[GenerationWorker]:
    """The relay, the projectors and one generation worker that preloads the local model, in-process."""
    stop = asyncio.Event()
    js = await container.connect_nats("test-readiness")
    worker = GenerationWorker(container, js=js, nc=container.nc, name="preloading-worker", preload_local=True)
    relay = Relay(store=container.store, engine=container.engine, js=js, subjects=container.subjects)
    tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(worker.run(stop))]
    for projector in all_projectors(container):
        runner = ProjectorRunner(projector, engine=container.engine, store=container.store, idle_check_s=0.2)
        tasks.append(asyncio.create_task(runner.run(js, container.subjects, stop)))
    yield worker
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _readiness(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    r = await client.get("/health/ready")
    return r.status_code, r.json()


async def test_without_a_live_worker_the_api_is_up_but_degraded(client: httpx.AsyncClient) -> None:
    status, body = await _readiness(client)
    assert status == 200
    assert body == {
        "status": "degraded",
        "checks": {"event_store": "ok", "nats": "ok", "redis": "ok", "engines": "no_workers"},
        "workers": [],
    }


async def _sign_in(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    await client.post("/api/v1/auths/register", json={"email": "ann@example.com", "password": PASSWORD, "name": "Ann"})
    tokens = (await client.post("/api/v1/auths/login", json={"email": "ann@example.com", "password": PASSWORD})).json()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    chat = (await client.post("/api/v1/chats", json={"title": "geography"}, headers=auth)).json()
    return auth, chat["id"]


async def _ask(client: httpx.AsyncClient, auth: dict[str, str], chat_id: str) -> str:
    r = await client.post(
        f"/api/v1/chats/{chat_id}/messages",
        json={"content": "What is the capital of France?", "model": "smollm2", "params": {"max_tokens": 12}},
        headers=auth,
    )
    assert r.status_code == 202, r.text
    return str(r.json()["generation_id"])


async def _answer(client: httpx.AsyncClient, auth: dict[str, str], generation_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/generations/{generation_id}/stream", headers=auth, timeout=300)
    done = [data for name, data in sse_events(r.text) if name == "done"]
    assert done and done[-1]["status"] == "completed", r.text
    return done[-1]


async def test_ready_only_once_the_preloaded_model_is_loaded_and_the_first_answer_does_not_load_it(
    client: httpx.AsyncClient, preloading_worker: GenerationWorker
) -> None:
    seen: list[tuple[int, str, str | None]] = []  # (HTTP status, checks.engines, the local engine's state)
    early: tuple[dict[str, str], str, str] | None = None  # (auth, chat, generation) of a question asked early
    deadline = time.monotonic() + 300
    while True:
        status, body = await _readiness(client)
        local = next((e for w in body["workers"] for e in w["engines"] if e["kind"] == "local"), None)
        seen.append((status, body["checks"]["engines"], local and local["state"]))
        if status == 200 and body["status"] == "ready":
            break
        if local is not None and early is None:  # a question while the model loads waits for that load
            auth, chat_id = await _sign_in(client)
            early = auth, chat_id, await _ask(client, auth, chat_id)
        assert time.monotonic() < deadline, f"not ready in 300 s: {seen[-1]}"
        await asyncio.sleep(0.05)

    # Until the worker's first heartbeat there is no worker (degraded: no reason to wait); then 503.
    with_worker = [s for s in seen if s[2] is not None]
    assert with_worker[0] == (503, "loading", "loading"), with_worker[:3]
    assert set(with_worker[:-1]) == {(503, "loading", "loading")}
    assert with_worker[-1] == (200, "ok", "ready")
    [worker] = body["workers"]
    assert worker["name"] == "preloading-worker" and worker["state"] == "ready"
    assert "local" in worker["kinds"] and "echo" in worker["kinds"]  # the test settings allow echo
    [engine] = worker["engines"]
    assert engine["model"] == "smollm2-135m-instruct" and engine["load_seconds"] > 0 and engine["error"] is None

    # The engine that serves requests is the one loaded at start, once: answering loads nothing more.
    local_engine: Any = await preloading_worker.engines.get(EngineTarget("local", None, None, "SmolLM2-135M-Instruct"))
    assert isinstance(local_engine, LocalEngine)
    loads = dict(local_engine.load_seconds)
    assert list(loads) == ["smollm2-135m-instruct"]
    assert early is not None
    auth, chat_id, early_id = early
    await _answer(client, auth, early_id)
    generation_id = await _ask(client, auth, chat_id)
    await _answer(client, auth, generation_id)
    assert local_engine.load_seconds == loads

    await wait_projected(preloading_worker.c)
    generation = (await client.get(f"/api/v1/generations/{generation_id}", headers=auth)).json()
    ttft_ms = generation["timings"]["ttft_ms"]
    assert 0 < ttft_ms < engine["load_seconds"] * 1000, (ttft_ms, engine["load_seconds"])
