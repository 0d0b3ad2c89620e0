"""Shared fixtures. One set of real engines (Postgres, NATS, Redis) per test session, started by the
project's own embedded launcher; each test gets its own database and its own NATS/Redis namespace."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from argon2 import PasswordHasher as Argon2Hasher

from adapters.embedded import EmbeddedEngines, EngineUrls
from adapters.logging import configure_logging
from adapters.security import Passwords
from adapters.settings import Settings
from projections.group import ProjectorGroup, split_for_groups
from projections.runtime import ProjectorRunner, read_position
from workers.bootstrap import PROJECTOR_NAMES, Container, all_projectors, bootstrap
from workers.generate import GenerationWorker
from workers.ingest import IndexBuilder, IngestionWorker, ReEmbedder
from workers.relay import Relay

os.environ.setdefault("HF_HUB_OFFLINE", "1")
configure_logging("warning", json=False)

# argon2id still, with a test-sized cost so hundreds of sign-ups stay fast.
FAST_PASSWORDS = Passwords(Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1))


ENGINES_HOME: list[Path] = []
"""The session's engines' home (its ``nats`` directory is the JetStream store), for tests that search it."""


@pytest.fixture(scope="session")
def engines() -> Iterator[EngineUrls]:
    home = Path(tempfile.mkdtemp(prefix="parley-test-", dir="/tmp"))
    ENGINES_HOME[:] = [home]
    with EmbeddedEngines(home, fast=True) as e:
        yield e.start()
    shutil.rmtree(home, ignore_errors=True)


def create_database(urls: EngineUrls) -> str:
    """A fresh database for one test; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(urls.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = urls.database_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def settings(engines: EngineUrls, tmp_path: Path) -> Settings:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    return Settings(
        home=tmp_path,
        database_url=create_database(engines),
        nats_url=engines.nats_url,
        redis_url=engines.redis_url,
        namespace=namespace,
        secret_key="test-secret-" + "x" * 40,
        log_level="warning",
        log_json=False,
        enable_echo_engine=True,
    )


@pytest.fixture
async def container(settings: Settings) -> AsyncIterator[Container]:
    c = await bootstrap(settings, passwords=FAST_PASSWORDS)
    tenant = await c.identity.ensure_tenant(settings.default_tenant, "Default")
    await c.models.ensure_local(str(tenant.id))  # as `parley api` does at start
    yield c
    await c.close()


class Pipeline:
    """The relay, every projector, a generation worker and an ingestion worker (with the re-embedder and
    the index builder), running in-process as tasks against the real NATS."""

    def __init__(self, c: Container) -> None:
        self.c = c
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> Pipeline:
        js = await self.c.connect_nats("test-pipeline")
        relay = Relay(store=self.c.store, engine=self.c.engine, js=js, subjects=self.c.subjects)
        self.tasks.append(asyncio.create_task(relay.run(self.stop)))
        shared, alone = split_for_groups(all_projectors(self.c))
        runners: list[ProjectorGroup | ProjectorRunner] = [
            ProjectorRunner(p, engine=self.c.engine, store=self.c.store, idle_check_s=0.2) for p in alone
        ]
        runners.append(ProjectorGroup(shared, engine=self.c.engine, store=self.c.store, idle_check_s=0.2))
        for runner in runners:
            self.tasks.append(asyncio.create_task(runner.run(js, self.c.subjects, self.stop)))
        self.worker = GenerationWorker(self.c, js=js, nc=self.c.nc, name="test-worker", concurrency=8)
        self.tasks.append(asyncio.create_task(self.worker.run(self.stop)))
        self.ingester = IngestionWorker(self.c, js=js, name="test-ingester")
        self.tasks.append(asyncio.create_task(self.ingester.run(self.stop)))
        self.tasks.append(asyncio.create_task(ReEmbedder(self.c, name="test-reembedder", poll_s=0.2).run(self.stop)))
        self.tasks.append(asyncio.create_task(IndexBuilder(self.c, poll_s=0.2).run(self.stop)))
        return self

    async def settle(self, timeout: float = 15) -> None:
        """Wait until every projector has applied everything in the event store."""
        await wait_projected(self.c, timeout)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def wait_projected(c: Container, timeout: float = 15, names: list[str] | None = None) -> None:
    names = names or list(PROJECTOR_NAMES)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        target = await c.store.call(c.store.max_id)
        positions = [await read_position(c.engine, n) for n in names]
        if all(p >= target for p in positions):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"projectors {names} at {positions}, event store at {target}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def pipeline(container: Container) -> AsyncIterator[Pipeline]:
    p = await Pipeline(container).start()
    yield p
    await p.close()


@pytest.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    from api.app import create_app

    app = create_app(container)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4242))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@asynccontextmanager
async def served(app: Any, settings: Settings) -> AsyncIterator[str]:
    """``app`` served by uvicorn as ``parley api`` serves it (api/server.py), on a free local port: its base URL."""
    import socket

    import uvicorn

    from api.server import server_config

    # IPPROTO_TCP named, so asyncio sets TCP_NODELAY on each connection (it checks the protocol): without it
    # every response waits out the client's delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = server_config(app, settings, lifespan="off", log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def live(container: Container) -> AsyncIterator[str]:
    """The app served by uvicorn on a free local port (streams arrive as they are sent): its base URL."""
    from api.app import create_app

    async with served(create_app(container), container.settings) as url:
        yield url
