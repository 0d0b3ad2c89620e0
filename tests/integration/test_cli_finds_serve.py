"""The command line finds what ``make run`` started: with ``parley serve`` running, an operator's command
from another terminal in the same project (only ``PARLEY_HOME`` in common) uses the engines it runs; a
second ``parley serve`` on the same home refuses to start; once it stops, or if it was killed and left its
record behind, commands say plainly that nothing runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.embedded import RECORD_FILE
from tests.integration.procs import REPO_ROOT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path, **extra: str) -> dict[str, str]:
    """Another terminal: none of the PARLEY_* variables a test session may have, only the project's home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return {**env, "PARLEY_HOME": str(home), "PARLEY_LOG_LEVEL": "warning", "PARLEY_LOG_JSON": "false", **extra}


def parley(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env=_env(home),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def home() -> Iterator[Path]:
    # Not pytest's tmp_path: run as root, Postgres runs as another user (see tests/integration/test_audit_chain.py).
    path = Path(tempfile.mkdtemp(prefix="parley-serve-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_commands_use_the_engines_parley_serve_runs_and_say_plainly_when_nothing_runs(home: Path) -> None:
    output = home / "serve.out"
    with output.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve", "--port", str(_free_port())],
            env=_env(home, PARLEY_EMBEDDED_FAST="true", PARLEY_PRELOAD_LOCAL_MODEL="false"),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while "parley ready at http://127.0.0.1:" not in output.read_text(errors="replace"):
            assert serve.poll() is None, f"parley serve exited with {serve.returncode}:\n{output.read_text()}"
            assert time.monotonic() < deadline, f"parley serve not ready in 180 s:\n{output.read_text()}"
            time.sleep(0.2)

        record = home / RECORD_FILE
        assert stat.S_IMODE(record.stat().st_mode) == 0o600, "the URLs may carry a password"
        assert json.loads(record.read_text())["pid"] == serve.pid

        verified = parley(home, "audit", "verify")
        assert (verified.returncode, verified.stdout.strip()) == (0, "audit chain verified: intact"), verified.stderr
        rebuilt = parley(home, "rebuild", "identity")
        assert rebuilt.returncode == 0 and rebuilt.stdout.startswith("rebuilt identity: "), rebuilt.stderr

        second = parley(home, "serve", "--port", str(_free_port()))
        assert second.returncode == 2
        assert f"parley is already running under {home} (pid {serve.pid})" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    assert serve.returncode == 0, output.read_text()
    assert not (home / RECORD_FILE).exists()

    stopped = parley(home, "audit", "verify")
    assert stopped.returncode == 2
    assert stopped.stderr.startswith(f"parley: nothing is running under {home}: start it with 'make run'")
    assert "Traceback" not in stopped.stderr and stopped.stdout == ""

    # A launcher killed with SIGKILL leaves its record behind: a dead pid means nothing runs.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (home / RECORD_FILE).write_text(
        json.dumps({"pid": gone.pid, "database_url": "postgresql://x/y", "nats_url": "nats://x", "redis_url": "redis://x"})
    )
    stale = parley(home, "rebuild", "identity")
    assert stale.returncode == 2 and "nothing is running under" in stale.stderr, stale.stderr
