"""The one settings object, read from ``PARLEY_*`` environment variables and validated at start."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import msgspec

__all__ = ["SENTINEL_SCHEME", "Settings", "SettingsError", "parse_sentinel_url", "sentinel_url"]

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_SENTINEL_MASTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SENTINEL_SCHEME = "redis+sentinel"


N = TypeVar("N", int, float)


class SettingsError(ValueError):
    """Raised with one line per bad value, so an operator can fix them all at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


WEBHOOK_RETRY_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Standard Webhooks' schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (27.6 hours in all)."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    home: Path
    database_url: str | None = None
    nats_url: str | None = None
    # Redis: a plain URL (PARLEY_REDIS_URL), or a master found through Sentinel (PARLEY_REDIS_SENTINELS,
    # PARLEY_REDIS_SENTINEL_MASTER), held here as redis+sentinel://host:port,host:port/master so that it
    # travels like any engine URL (child processes, engines.json); see ``sentinel_url``.
    redis_url: str | None = None
    # How many servers of the NATS cluster keep a copy of each stream (3 in production: a node may be lost).
    nats_replicas: int = 1
    # Prefix of every stream, subject, table-free resource and Redis key this deployment owns.
    # Production keeps "parley" (streams PARLEY_EVENTS, subjects parley.events.>); tests use their own.
    namespace: str = "parley"
    secret_key: str = ""
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    default_tenant: str = "default"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_json: bool = True
    max_request_bytes: int = 1_048_576
    # Embedded Postgres only: trade durability of the last commits for speed (tests, benchmarks).
    embedded_fast: bool = False
    # The "echo" engine (fixed text at full speed, no model): for pipeline tests and benchmarks.
    enable_echo_engine: bool = False
    # Generation workers: how many generations one worker runs at once, and where the local model runs.
    worker_concurrency: int = 4
    # A generation worker serves its Prometheus metrics on this port (0: not served).
    worker_metrics_port: int = 0
    local_device: str = "auto"
    # `parley worker` (and so `parley serve`) loads the local model at start, so the first answer does not
    # wait for it. PARLEY_PRELOAD_LOCAL_MODEL defaults to true; settings built in code (tests, benchmarks,
    # which start many workers) default to false and load a model only where a request asks for one.
    preload_local_model: bool = False
    # Knowledge: where uploaded bytes go (None: the Postgres table; "file:///dir"; "s3://bucket/prefix?..."),
    # upload and per-tenant storage limits, fetching web pages by URL (off: outbound requests are a risk
    # an operator opts into), and how many chunks an answer retrieves.
    blob_store: str | None = None
    max_upload_bytes: int = 25 * 1024 * 1024
    tenant_storage_bytes: int = 2 * 1024**3
    allow_url_fetch: bool = False
    url_fetch_private: bool = False
    rag_top_k: int = 4
    rag_min_similarity: float = 0.3  # cosine similarity a retrieved chunk needs to go into the prompt
    ingest_concurrency: int = 2
    # The edge (api/server.py). Forwarded headers (X-Forwarded-For, X-Forwarded-Proto) are believed only
    # from these peers (addresses or networks); none by default, so a client cannot name its own address.
    trusted_proxies: tuple[str, ...] = ()
    # How long a request may take to arrive: its request line and headers in all, the longest pause
    # within its body, and how long an idle keep-alive connection is kept.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    # Longer than the idle expiry of the clients and proxies in front (httpx 5 s, aiohttp 15 s, AWS ALB and
    # nginx upstreams 60 s): the client must always be the one to close an idle connection. A server that
    # closes it first races the client's next request on it, which then fails without an answer
    # (httpx.ReadError) - with both at 5 s, a few requests in a thousand under load.
    keep_alive_timeout_s: int = 75
    # Signed audit checkpoints (adapters/checkpoints.py): where they go (an absolute directory,
    # "file:///dir" or "s3://bucket/prefix?..."; None: <home>/checkpoints) and how often heads that moved
    # are signed.
    audit_checkpoints: str | None = None
    audit_checkpoint_interval_s: int = 300
    # How often the retention sweep (application/retention.py) applies every tenant's policy, where the
    # audit projector runs.
    retention_sweep_interval_s: int = 3600
    # Webhooks (workers/webhooks.py). Endpoints on private or loopback addresses are refused unless allowed
    # (link-local and cloud-metadata addresses always are); the delays between a message's attempts (the
    # default spans 27.6 hours: Standard Webhooks' schedule), after which it is failed; how long an endpoint
    # may fail without a success before it is disabled; how long a dispatcher holds a message it is sending
    # (another takes it over after that, e.g. after kill -9); one attempt's time limit; how many requests one
    # dispatcher has in flight in all, per endpoint and per tenant.
    webhooks_allow_private: bool = False
    webhook_retry_schedule_s: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE_S
    webhook_disable_after_s: float = 5 * 86_400.0
    webhook_lease_s: float = 120.0
    webhook_timeout_s: float = 15.0
    webhook_concurrency: int = 256
    webhook_endpoint_concurrency: int = 8
    webhook_tenant_concurrency: int = 64
    # How long delivered, failed and cancelled messages (and their attempts) stay in the delivery log.
    webhook_log_retention_s: float = 30 * 86_400.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        problems: list[str] = []

        def get(name: str) -> str | None:
            value = env.get(f"PARLEY_{name}")
            return value if value not in (None, "") else None

        def bounded(name: str, default: N, low: N, high: N, parse: Callable[[str], N], kind: str) -> N:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = parse(raw)
            except ValueError:
                problems.append(f"PARLEY_{name}={raw!r} is not {kind}")
                return default
            if not low <= value <= high:
                problems.append(f"PARLEY_{name}={value} must be between {low} and {high}")
            return value

        def integer(name: str, default: int, low: int, high: int) -> int:
            return bounded(name, default, low, high, int, "an integer")

        def number(name: str, default: float, low: float, high: float) -> float:
            return bounded(name, default, low, high, float, "a number")

        def boolean(name: str, default: bool) -> bool:
            raw = get(name)
            if raw is None:
                return default
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            problems.append(f"PARLEY_{name}={raw!r} is not a boolean (use true or false)")
            return default

        def url(name: str, schemes: tuple[str, ...]) -> str | None:
            raw = get(name)
            if raw is None:
                return None
            parts = urlsplit(raw)
            if parts.scheme not in schemes:
                problems.append(f"PARLEY_{name} must start with one of {', '.join(s + '://' for s in schemes)}")
            return raw

        def nats_servers(name: str) -> str | None:
            raw = get(name)
            if raw is None:
                return None
            for part in raw.split(","):
                if urlsplit(part.strip()).scheme not in ("nats", "tls"):
                    problems.append(
                        f"PARLEY_{name}: {part.strip()!r} must start with nats:// or tls:// "
                        "(a cluster's servers are comma-separated)"
                    )
            return raw

        def networks(name: str) -> tuple[str, ...]:
            found: list[str] = []
            for item in (part.strip() for part in (get(name) or "").split(",")):
                if not item:
                    continue
                try:
                    found.append(str(ipaddress.ip_network(item)))
                except ValueError:
                    problems.append(f"PARLEY_{name}: {item!r} is not an IP address or network (10.0.0.5, 10.0.0.0/8)")
            return tuple(found)

        def delays(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
            raw = get(name)
            if raw is None:
                return default
            try:
                found = tuple(float(part) for part in raw.split(",") if part.strip())
            except ValueError:
                found = ()
            if not 1 <= len(found) <= 50 or not all(0 < d <= 7 * 86_400 for d in found):
                problems.append(f"PARLEY_{name} must be 1-50 comma-separated delays in seconds, each up to a week")
                return default
            return found

        def checkpoint_sink(name: str) -> str | None:
            raw = get(name)
            if raw is not None and not raw.startswith("/") and urlsplit(raw).scheme not in ("file", "s3"):
                problems.append(f"PARLEY_{name} must be an absolute directory, file:///dir or s3://bucket/prefix")
            return raw

        def redis() -> str | None:
            plain = url("REDIS_URL", ("redis", "rediss", "unix"))
            sentinels, master = get("REDIS_SENTINELS"), get("REDIS_SENTINEL_MASTER")
            if sentinels is None:
                if master is not None:
                    problems.append("PARLEY_REDIS_SENTINEL_MASTER is set but PARLEY_REDIS_SENTINELS is not")
                return plain
            if plain is not None:
                problems.append("set PARLEY_REDIS_URL or PARLEY_REDIS_SENTINELS, not both")
            try:
                return sentinel_url(_sentinel_addresses(sentinels), master or "parley")
            except ValueError as exc:
                problems.append(str(exc))
                return None

        home = Path(get("HOME") or Path.cwd() / ".parley").expanduser().resolve()
        namespace = get("NAMESPACE") or "parley"
        if not _NAMESPACE.match(namespace):
            problems.append(f"PARLEY_NAMESPACE={namespace!r} must match {_NAMESPACE.pattern}")
        default_tenant = get("DEFAULT_TENANT") or "default"
        if not _SLUG.match(default_tenant):
            problems.append(f"PARLEY_DEFAULT_TENANT={default_tenant!r} must match {_SLUG.pattern}")
        log_level = (get("LOG_LEVEL") or "info").lower()
        if log_level not in _LOG_LEVELS:
            problems.append(f"PARLEY_LOG_LEVEL={log_level!r} must be one of {', '.join(_LOG_LEVELS)}")
        secret = get("SECRET_KEY")
        if secret is not None and len(secret) < 32:
            problems.append("PARLEY_SECRET_KEY must be at least 32 characters")

        values: dict[str, object] = dict(
            home=home,
            database_url=url("DATABASE_URL", ("postgresql", "postgres", "postgresql+psycopg")),
            nats_url=nats_servers("NATS_URL"),
            nats_replicas=integer("NATS_REPLICAS", 1, 1, 5),
            redis_url=redis(),
            namespace=namespace,
            secret_key=secret or "",
            access_token_ttl_s=integer("ACCESS_TOKEN_TTL", 900, 30, 86_400),
            refresh_token_ttl_s=integer("REFRESH_TOKEN_TTL", 30 * 24 * 3600, 300, 365 * 24 * 3600),
            default_tenant=default_tenant,
            host=get("HOST") or "127.0.0.1",
            port=integer("PORT", 8000, 0, 65_535),
            log_level=log_level,
            log_json=boolean("LOG_JSON", True),
            max_request_bytes=integer("MAX_REQUEST_BYTES", 1_048_576, 1024, 1 << 30),
            embedded_fast=boolean("EMBEDDED_FAST", False),
            enable_echo_engine=boolean("ENABLE_ECHO_ENGINE", False),
            worker_concurrency=integer("WORKER_CONCURRENCY", 4, 1, 1024),
            worker_metrics_port=integer("WORKER_METRICS_PORT", 0, 0, 65_535),
            local_device=get("LOCAL_DEVICE") or "auto",
            preload_local_model=boolean("PRELOAD_LOCAL_MODEL", True),
            blob_store=None if get("BLOB_STORE") in (None, "postgres") else url("BLOB_STORE", ("file", "s3")),
            max_upload_bytes=integer("MAX_UPLOAD_BYTES", 25 * 1024 * 1024, 1024, 1 << 31),
            tenant_storage_bytes=integer("TENANT_STORAGE_BYTES", 2 * 1024**3, 1024, 1 << 50),
            allow_url_fetch=boolean("ALLOW_URL_FETCH", False),
            url_fetch_private=boolean("URL_FETCH_PRIVATE", False),
            rag_top_k=integer("RAG_TOP_K", 4, 1, 50),
            rag_min_similarity=number("RAG_MIN_SIMILARITY", 0.3, -1.0, 1.0),
            ingest_concurrency=integer("INGEST_CONCURRENCY", 2, 1, 256),
            trusted_proxies=networks("TRUSTED_PROXIES"),
            header_timeout_s=number("HEADER_TIMEOUT_S", 10.0, 0.1, 600.0),
            body_timeout_s=number("BODY_TIMEOUT_S", 30.0, 0.1, 3600.0),
            keep_alive_timeout_s=integer("KEEP_ALIVE_TIMEOUT_S", 75, 1, 3600),
            audit_checkpoints=checkpoint_sink("AUDIT_CHECKPOINTS"),
            audit_checkpoint_interval_s=integer("AUDIT_CHECKPOINT_INTERVAL", 300, 1, 86_400),
            retention_sweep_interval_s=integer("RETENTION_SWEEP_INTERVAL", 3600, 1, 7 * 86_400),
            webhooks_allow_private=boolean("WEBHOOKS_ALLOW_PRIVATE", False),
            webhook_retry_schedule_s=delays("WEBHOOK_RETRY_SCHEDULE", WEBHOOK_RETRY_SCHEDULE_S),
            webhook_disable_after_s=number("WEBHOOK_DISABLE_AFTER_S", 5 * 86_400.0, 1.0, 365 * 86_400.0),
            webhook_lease_s=number("WEBHOOK_LEASE_S", 120.0, 1.0, 3600.0),
            webhook_timeout_s=number("WEBHOOK_TIMEOUT_S", 15.0, 0.1, 300.0),
            webhook_concurrency=integer("WEBHOOK_CONCURRENCY", 256, 1, 10_000),
            webhook_endpoint_concurrency=integer("WEBHOOK_ENDPOINT_CONCURRENCY", 8, 1, 1000),
            webhook_tenant_concurrency=integer("WEBHOOK_TENANT_CONCURRENCY", 64, 1, 10_000),
            webhook_log_retention_s=number("WEBHOOK_LOG_RETENTION_S", 30 * 86_400.0, 60.0, 3650 * 86_400.0),
        )
        if problems:
            raise SettingsError(problems)
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        if not settings.secret_key:
            settings = msgspec.structs.replace(settings, secret_key=_persisted_secret(settings.home))
        return settings

    def with_urls(self, *, database_url: str, nats_url: str, redis_url: str) -> Settings:
        return msgspec.structs.replace(self, database_url=database_url, nats_url=nats_url, redis_url=redis_url)

    def child_env(self) -> dict[str, str]:
        """The environment a child process needs to rebuild these exact settings."""
        env = {
            "PARLEY_HOME": str(self.home),
            "PARLEY_NATS_REPLICAS": str(self.nats_replicas),
            "PARLEY_NAMESPACE": self.namespace,
            "PARLEY_SECRET_KEY": self.secret_key,
            "PARLEY_ACCESS_TOKEN_TTL": str(self.access_token_ttl_s),
            "PARLEY_REFRESH_TOKEN_TTL": str(self.refresh_token_ttl_s),
            "PARLEY_DEFAULT_TENANT": self.default_tenant,
            "PARLEY_HOST": self.host,
            "PARLEY_PORT": str(self.port),
            "PARLEY_LOG_LEVEL": self.log_level,
            "PARLEY_LOG_JSON": "true" if self.log_json else "false",
            "PARLEY_MAX_REQUEST_BYTES": str(self.max_request_bytes),
            "PARLEY_EMBEDDED_FAST": "true" if self.embedded_fast else "false",
            "PARLEY_ENABLE_ECHO_ENGINE": "true" if self.enable_echo_engine else "false",
            "PARLEY_WORKER_CONCURRENCY": str(self.worker_concurrency),
            "PARLEY_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            "PARLEY_LOCAL_DEVICE": self.local_device,
            "PARLEY_PRELOAD_LOCAL_MODEL": "true" if self.preload_local_model else "false",
            "PARLEY_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
            "PARLEY_TENANT_STORAGE_BYTES": str(self.tenant_storage_bytes),
            "PARLEY_ALLOW_URL_FETCH": "true" if self.allow_url_fetch else "false",
            "PARLEY_URL_FETCH_PRIVATE": "true" if self.url_fetch_private else "false",
            "PARLEY_RAG_TOP_K": str(self.rag_top_k),
            "PARLEY_RAG_MIN_SIMILARITY": str(self.rag_min_similarity),
            "PARLEY_INGEST_CONCURRENCY": str(self.ingest_concurrency),
            "PARLEY_TRUSTED_PROXIES": ",".join(self.trusted_proxies),
            "PARLEY_HEADER_TIMEOUT_S": str(self.header_timeout_s),
            "PARLEY_BODY_TIMEOUT_S": str(self.body_timeout_s),
            "PARLEY_KEEP_ALIVE_TIMEOUT_S": str(self.keep_alive_timeout_s),
            "PARLEY_AUDIT_CHECKPOINT_INTERVAL": str(self.audit_checkpoint_interval_s),
            "PARLEY_RETENTION_SWEEP_INTERVAL": str(self.retention_sweep_interval_s),
            "PARLEY_WEBHOOKS_ALLOW_PRIVATE": "true" if self.webhooks_allow_private else "false",
            "PARLEY_WEBHOOK_RETRY_SCHEDULE": ",".join(repr(d) for d in self.webhook_retry_schedule_s),
            "PARLEY_WEBHOOK_DISABLE_AFTER_S": repr(self.webhook_disable_after_s),
            "PARLEY_WEBHOOK_LEASE_S": repr(self.webhook_lease_s),
            "PARLEY_WEBHOOK_TIMEOUT_S": repr(self.webhook_timeout_s),
            "PARLEY_WEBHOOK_CONCURRENCY": str(self.webhook_concurrency),
            "PARLEY_WEBHOOK_ENDPOINT_CONCURRENCY": str(self.webhook_endpoint_concurrency),
            "PARLEY_WEBHOOK_TENANT_CONCURRENCY": str(self.webhook_tenant_concurrency),
            "PARLEY_WEBHOOK_LOG_RETENTION_S": repr(self.webhook_log_retention_s),
        }
        if self.redis_url and self.redis_url.startswith(f"{SENTINEL_SCHEME}://"):
            sentinels, master = parse_sentinel_url(self.redis_url)
            env["PARLEY_REDIS_SENTINELS"] = _sentinel_list(sentinels)
            env["PARLEY_REDIS_SENTINEL_MASTER"] = master
        elif self.redis_url:
            env["PARLEY_REDIS_URL"] = self.redis_url
        for name, value in (
            ("DATABASE_URL", self.database_url),
            ("NATS_URL", self.nats_url),
            ("BLOB_STORE", self.blob_store),
            ("AUDIT_CHECKPOINTS", self.audit_checkpoints),
        ):
            if value:
                env[f"PARLEY_{name}"] = value
        return env

    @property
    def audit_checkpoint_sink(self) -> str:
        """Where signed audit checkpoints go: ``audit_checkpoints``, else ``<home>/checkpoints``."""
        return self.audit_checkpoints or str(self.home / "checkpoints")

    def __repr__(self) -> str:  # never print the secret
        return f"Settings(home={str(self.home)!r}, namespace={self.namespace!r}, secret_key='***')"


def _sentinel_addresses(raw: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` (``[v6]:port`` for an IPv6 address) as pairs, or ValueError saying which is bad."""
    found = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, _, port = item.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port.isdigit() or not 0 < int(port) < 65_536 or any(c in host for c in "/@ ,"):
            raise ValueError(f"PARLEY_REDIS_SENTINELS: {item!r} is not host:port (e.g. sentinel-1:26379)")
        found.append((host, int(port)))
    if not found:
        raise ValueError("PARLEY_REDIS_SENTINELS names no sentinel (host:port,host:port,...)")
    return found


def _sentinel_list(sentinels: list[tuple[str, int]]) -> str:
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in sentinels)


def sentinel_url(sentinels: list[tuple[str, int]], master: str) -> str:
    """How parley holds a Sentinel deployment in ``redis_url``: the sentinels, then the master's name."""
    if not _SENTINEL_MASTER.match(master):
        raise ValueError(f"PARLEY_REDIS_SENTINEL_MASTER={master!r} must match {_SENTINEL_MASTER.pattern}")
    return f"{SENTINEL_SCHEME}://{_sentinel_list(sentinels)}/{master}"


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """The sentinels and the master's name of a ``sentinel_url``."""
    prefix = f"{SENTINEL_SCHEME}://"
    if not url.startswith(prefix):
        raise ValueError(f"not a {prefix} URL")
    hosts, _, master = url[len(prefix) :].partition("/")
    sentinels = _sentinel_addresses(hosts)
    sentinel_url(sentinels, master)  # the same checks as when it was made
    return sentinels, master


def _persisted_secret(home: Path) -> str:
    """A generated secret survives restarts (tokens stay valid) and is readable by its owner only."""
    path = home / "secret_key"
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this deployment won the race
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return secret
