"""Fixtures for the integration tests that want a Postgres of their own rather than the session's engines
(the audit log's chain and its anchoring: they build one database per module)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from adapters.embedded import EmbeddedEngines


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A running Postgres: ``PARLEY_TEST_DATABASE_URL`` if set, else an embedded one for this module.

    Not under pytest's tmp_path: run as root, Postgres runs as another user, and every pytest that
    starts takes that user's access to /tmp/pytest-of-root away again (chmod 700)."""
    if url := os.environ.get("PARLEY_TEST_DATABASE_URL"):
        yield url
        return
    home = Path(tempfile.mkdtemp(prefix="parley-audit-test-"))
    engines = EmbeddedEngines(home, fast=True)
    try:
        yield engines.start_postgres()
    finally:
        engines.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def database_url(server_url: str) -> Iterator[str]:
    name = f"module_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
