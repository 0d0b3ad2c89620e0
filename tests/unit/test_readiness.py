"""What ``/health/ready`` concludes from the workers' records, whether a worker preloads the local model,
and how a command tells a running ``parley serve`` from a record it left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from adapters.embedded import RECORD_FILE, EngineUrls, running_engines
from adapters.readiness import EngineStatus, WorkerStatus, readiness
from adapters.settings import Settings

NO_SUCH_PID = 2**31 - 1  # above any pid_max


def worker(*states: str) -> WorkerStatus:
    return WorkerStatus(
        name="w",
        concurrency=4,
        kinds=["local"],
        engines=[EngineStatus(kind="local", model=f"m{i}", state=s) for i, s in enumerate(states)],  # type: ignore[arg-type]
        started_at=0.0,
        heartbeat_at=0.0,
    )


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        ([worker("ready")], ("ready", "ok")),
        ([worker()], ("ready", "ok")),  # nothing preloaded: nothing to wait for
        ([worker("loading")], ("not_ready", "loading")),
        ([worker("ready", "loading")], ("not_ready", "loading")),
        ([worker("loading"), worker("loading", "failed")], ("not_ready", "loading")),
        ([worker("ready"), worker("loading")], ("degraded", "loading")),  # a worker joins a running deployment
        ([worker("failed")], ("degraded", "failed")),  # waiting will not mend it; other engines still answer
        ([worker("ready"), worker("ready", "failed")], ("degraded", "failed")),
        ([], ("degraded", "no_workers")),  # generations wait in the queue; the API itself serves
        (None, ("not_ready", "unknown")),  # the records could not be read
    ],
)
def test_readiness_follows_the_workers(workers: list[WorkerStatus] | None, expected: tuple[str, str]) -> None:
    assert readiness(True, workers) == expected


def test_failing_infrastructure_is_never_ready() -> None:
    assert readiness(False, [worker("ready")]) == ("not_ready", "ok")
    assert readiness(False, []) == ("not_ready", "no_workers")


def test_a_worker_is_loading_while_any_engine_loads_and_failed_when_one_failed() -> None:
    assert worker("ready", "loading", "failed").state == "loading"
    assert worker("ready", "failed").state == "failed"
    assert worker("ready").state == worker().state == "ready"


def test_workers_started_from_the_environment_preload_the_local_model_settings_built_in_code_do_not(
    tmp_path: Path,
) -> None:
    from_env = Settings.from_env({"PARLEY_HOME": str(tmp_path)})
    assert from_env.preload_local_model
    assert not Settings.from_env({"PARLEY_HOME": str(tmp_path), "PARLEY_PRELOAD_LOCAL_MODEL": "false"}).preload_local_model
    in_code = Settings(home=tmp_path)
    assert not in_code.preload_local_model
    assert Settings.from_env(in_code.child_env()).preload_local_model is False  # children of a test stay so


def _record(home: Path, pid: int) -> None:
    urls = {"database_url": "postgresql://u:p@h/db", "nats_url": "nats://h:4222", "redis_url": "unix:///r.sock"}
    (home / RECORD_FILE).write_text(json.dumps({"pid": pid, **urls}))


def test_a_record_is_the_running_engines_while_its_process_lives(tmp_path: Path) -> None:
    assert running_engines(tmp_path) is None
    _record(tmp_path, os.getpid())
    assert running_engines(tmp_path) == EngineUrls(
        database_url="postgresql://u:p@h/db", nats_url="nats://h:4222", redis_url="unix:///r.sock"
    )
    _record(tmp_path, NO_SUCH_PID)  # killed before it could remove its record
    assert running_engines(tmp_path) is None
    (tmp_path / RECORD_FILE).write_text("{not json")
    assert running_engines(tmp_path) is None
