"""Fixtures that put the real Open WebUI 0.12.4 in front of parley.

``open_webui`` starts one Open WebUI per test module (its own virtual environment ``.venv-openwebui``,
made by ``make openwebui``; a temporary data dir; a free port) with its admin and two users. Each test
gets its own parley (``live``, fresh database), so ``gateway`` makes parley's tenant admin, an ``echo``
model and a gateway API key there, and points Open WebUI's OpenAI connection at that parley with the key,
as an admin does in Admin > Settings > Connections.

Nothing is downloaded: Open WebUI runs with ``OFFLINE_MODE`` and its embeddings on the OpenAI engine, and
every proxy variable points at a closed local port (``NO_PROXY`` for 127.0.0.1), so an attempt to reach
the internet fails at once instead of hanging (see capture.md).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Pipeline
from tests.openwebui.driver import Account, OpenWebUI

REPO = Path(__file__).resolve().parents[2]
OPEN_WEBUI_BIN = Path(os.environ.get("PARLEY_OPEN_WEBUI", REPO / ".venv-openwebui" / "bin" / "open-webui"))
START_TIMEOUT_S = 300  # a first start runs ~60 migrations: ~40 s on 2 cores, more on a busy machine
PASSWORD = "Gateway-Test-pw-1"
PARLEY_PASSWORD = "correct horse 9"
CLOSED_PORT_URL = "http://127.0.0.1:9"  # discard: nothing listens, a connect fails at once


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies, however it dies (Linux)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenWebUIProcess:
    """``open-webui serve`` as a child process in its own process group."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "open-webui.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_", "RAG_"))}
        env.update(
            DATA_DIR=str(data),
            WEBUI_SECRET_KEY="open-webui-test-secret-" + "x" * 32,
            OFFLINE_MODE="true",
            HF_HUB_OFFLINE="1",
            ENABLE_VERSION_UPDATE_CHECK="false",
            ANONYMIZED_TELEMETRY="false",
            SCARF_NO_ANALYTICS="true",
            DO_NOT_TRACK="true",
            ENABLE_OLLAMA_API="false",
            WEBUI_AUTH="true",
            ENABLE_FORWARD_USER_INFO_HEADERS="true",
            # Users see and use the connection's models without the admin publishing each one.
            BYPASS_MODEL_ACCESS_CONTROL="true",
            # Each test points the connection at its own parley (gateway fixture); until then, nowhere.
            OPENAI_API_BASE_URL=f"{CLOSED_PORT_URL}/v1",
            OPENAI_API_KEY="not-configured-yet",
            RAG_EMBEDDING_ENGINE="openai",
            RAG_OPENAI_API_BASE_URL=f"{CLOSED_PORT_URL}/v1",
            RAG_OPENAI_API_KEY="not-configured-yet",
            RAG_EMBEDDING_MODEL="all-minilm-l6-v2",
            RAG_EMBEDDING_MODEL_AUTO_UPDATE="false",
            GLOBAL_LOG_LEVEL="WARNING",
            HTTP_PROXY=CLOSED_PORT_URL,
            HTTPS_PROXY=CLOSED_PORT_URL,
            http_proxy=CLOSED_PORT_URL,
            https_proxy=CLOSED_PORT_URL,
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        return env

    def start(self) -> None:
        workdir = self.home / "cwd"
        workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(OPEN_WEBUI_BIN), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=workdir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
            preexec_fn=_die_with_parent,
        )
        log.close()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> float:
        """Poll ``GET /health`` until it answers 200; returns the seconds it took."""
        assert self.proc is not None
        started = time.monotonic()
        deadline = started + timeout
        with httpx.Client(timeout=5) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"open-webui exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if http.get(f"{self.url}/health").status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"open-webui not ready after {timeout}s:\n{self.log_tail()}")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


@dataclass
class OpenWebUISite:
    """A running Open WebUI with its admin (the first sign-up) and two users the admin added."""

    process: OpenWebUIProcess
    ui: OpenWebUI
    admin: Account
    alice: Account
    bob: Account

    @property
    def url(self) -> str:
        return self.process.url


@pytest.fixture(scope="module")
def open_webui_process() -> Iterator[OpenWebUIProcess]:
    if not OPEN_WEBUI_BIN.exists():
        pytest.skip(f"Open WebUI is not installed at {OPEN_WEBUI_BIN}: run `make openwebui`")
    home = Path(tempfile.mkdtemp(prefix="parley-openwebui-", dir="/tmp"))
    process = OpenWebUIProcess(home)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
async def open_webui(open_webui_process: OpenWebUIProcess) -> AsyncIterator[OpenWebUISite]:
    open_webui_process.wait_ready()
    async with OpenWebUI(open_webui_process.url) as ui:
        admin = await ui.sign_up("Ada Admin", "ada.admin@example.com", PASSWORD)
        assert admin.role == "admin"
        # A non-ASCII name: Open WebUI percent-encodes it in X-OpenWebUI-User-Name.
        alice = await ui.add_user(admin, "Alice Ållberg", "alice@example.com", PASSWORD)
        bob = await ui.add_user(admin, "Bob Brown", "bob@example.com", PASSWORD)
        yield OpenWebUISite(open_webui_process, ui, admin, alice, bob)


# --- parley's side -------------------------------------------------------------------------------------
def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


@dataclass
class Gateway:
    """parley with an ``echo`` model and a gateway key, and Open WebUI connected to it with that key, for
    chat completions and for embeddings (parley's local ``all-minilm-l6-v2``)."""

    site: OpenWebUISite
    parley: httpx.AsyncClient
    admin_tokens: dict[str, Any]
    tenant_id: str
    key_id: str
    key: str

    @property
    def ui(self) -> OpenWebUI:
        return self.site.ui

    @property
    def admin_headers(self) -> dict[str, str]:
        return bearer(self.admin_tokens)


async def _parley_admin(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.post(
        "/api/v1/auths/register",
        json={"email": "ops@parley.example.com", "password": PARLEY_PASSWORD, "name": "Parley Ops"},
    )
    assert r.status_code == 201, r.text
    r = await http.post("/api/v1/auths/login", json={"email": "ops@parley.example.com", "password": PARLEY_PASSWORD})
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
async def gateway(
    request: pytest.FixtureRequest, open_webui: OpenWebUISite, live: str, pipeline: Pipeline
) -> AsyncIterator[Gateway]:
    """``pipeline`` runs parley's workers: the echo model answers, projections follow."""
    async with httpx.AsyncClient(base_url=live, timeout=30) as http:
        admin = await _parley_admin(http)
        r = await http.post("/api/v1/providers", json={"name": "echoes", "kind": "echo"}, headers=bearer(admin))
        assert r.status_code == 201, r.text
        r = await http.post(
            "/api/v1/models",
            json={"name": "echo", "provider": "echoes", "upstream_model": "echo"},
            headers=bearer(admin),
        )
        assert r.status_code == 201, r.text
        await pipeline.settle()  # the model list is a read model: the echo model is listed once projected
        r = await http.post(
            "/api/v1/auths/api-keys",
            json={
                "name": "open-webui",
                "scopes": ["read", "write", "gateway"],
                "role_map": {"user": "user", "admin": "user"},
            },
            headers=bearer(admin),
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["key"].startswith("pk_")
        me = (await http.get("/api/v1/auths/me", headers=bearer(admin))).json()

        site = open_webui
        await site.ui.update_openai_connection(site.admin, f"{live}/v1", created["key"])
        await site.ui.update_embedding_connection(site.admin, f"{live}/v1", created["key"], "all-minilm-l6-v2")
        for who in (site.alice, site.bob):
            assert "echo" in [m["id"] for m in await site.ui.models(who, refresh=True)], f"{who.email} sees no echo"
        yield Gateway(site, http, admin, str(me["tenant_id"]), str(created["id"]), created["key"])
        if request.node.stash.get(_FAILED, False):
            print(f"--- Open WebUI's log (tail) ---\n{site.process.log_tail()}")
        # The next test's parley is another server: leave Open WebUI pointing nowhere meanwhile.
        await site.ui.update_openai_connection(site.admin, f"{CLOSED_PORT_URL}/v1", "not-configured")
        await site.ui.update_embedding_connection(
            site.admin, f"{CLOSED_PORT_URL}/v1", "not-configured", "all-minilm-l6-v2"
        )
