"""Processes of one deployment start together (parley serve, compose): building the event store at the
same moment must not race on creating its tables."""

from __future__ import annotations

import subprocess
import sys

from adapters.embedded import EngineUrls
from tests.conftest import create_database
from tests.integration.procs import REPO_ROOT

SCRIPT = "import sys; from adapters.eventstore import EventStore; EventStore(sys.argv[1], secret_key=\"x\" * 32).close()"


def test_event_stores_built_at_once_by_many_processes_all_start(engines: EngineUrls) -> None:
    url = create_database(engines)
    procs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT, url], cwd=REPO_ROOT, stderr=subprocess.PIPE) for _ in range(6)
    ]
    results = [(p.wait(60), p.stderr.read().decode() if p.stderr else "") for p in procs]
    assert all(code == 0 for code, _ in results), [err[-400:] for code, err in results if code]
