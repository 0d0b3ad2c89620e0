"""No Docker engine runs here, so the production topology is checked for structure: every parley
process in compose.yaml runs a real `parley` subcommand, reaches each engine by its service name, and
waits for the engines to be healthy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workers.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
PARLEY = {name: s for name, s in SERVICES.items() if s.get("image") == "parley:latest"}


def test_compose_runs_the_engines_parley_needs() -> None:
    assert SERVICES["postgres"]["image"].startswith("pgvector/pgvector:pg1")
    for node in ("nats", "nats2", "nats3"):  # a JetStream cluster: each node routes to the others
        command = SERVICES[node]["command"]
        assert "-js" in command and command[command.index("--server_name") + 1] == node
        assert command[command.index("--routes") + 1] == "nats://nats:6222,nats://nats2:6222,nats://nats3:6222"
    assert SERVICES["redis"]["image"].startswith("redis:")
    for engine in ("postgres", "nats", "redis"):
        assert "healthcheck" in SERVICES[engine], engine


def test_compose_runs_each_parley_process() -> None:
    assert {"api", "relay", "projector", "worker", "ingest"} <= set(PARLEY)
    assert SERVICES["relay"]["deploy"]["replicas"] >= 2, "a standby relay must be described"


@pytest.mark.parametrize("name", ["api", "relay", "projector", "worker", "ingest"])
def test_each_parley_service_runs_a_real_cli_command_against_the_engines(name: str) -> None:
    service = PARLEY[name]
    args = build_parser().parse_args(service["command"])
    assert args.command in ("api", "relay", "project", "worker", "ingest")
    env = service["environment"]
    assert "@postgres:5432/" in env["PARLEY_DATABASE_URL"]
    assert env["PARLEY_NATS_URL"] == "nats://nats:4222,nats://nats2:4222,nats://nats3:4222"
    assert env["PARLEY_NATS_REPLICAS"] == "3"
    assert env["PARLEY_REDIS_URL"].startswith("redis://redis:6379")
    assert env["PARLEY_SECRET_KEY"].startswith("${PARLEY_SECRET_KEY:?"), "no default secret in production"
    for engine in ("postgres", "nats", "redis"):
        assert service["depends_on"][engine]["condition"] == "service_healthy"


def test_the_image_copies_every_package_the_processes_import() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("domain", "application", "schema", "projections", "adapters", "api", "workers"):
        assert f"COPY {package} ./{package}" in dockerfile


def test_workers_get_a_gpu_each() -> None:
    worker = PARLEY["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["environment"]["PARLEY_LOCAL_DEVICE"] == "cuda"


def test_open_webui_fronts_parley_with_a_gateway_key_and_forwards_its_users() -> None:
    webui = SERVICES["open-webui"]
    assert webui["image"].endswith(":v0.12.4")
    env = webui["environment"]
    assert env["OPENAI_API_BASE_URL"] == env["RAG_OPENAI_API_BASE_URL"] == "http://api:8000/v1"
    assert env["OPENAI_API_KEY"].startswith("${PARLEY_GATEWAY_KEY:?"), "the gateway key is the operator's, never a default"
    assert env["RAG_OPENAI_API_KEY"] == env["OPENAI_API_KEY"]
    assert env["ENABLE_FORWARD_USER_INFO_HEADERS"] == "true", "without it every call is the key owner's"
    assert env["RAG_EMBEDDING_ENGINE"] == "openai" and env["RAG_EMBEDDING_MODEL"] == "all-minilm-l6-v2"
    assert env["OFFLINE_MODE"] == "true" and env["WEBUI_SECRET_KEY"].startswith("${OPEN_WEBUI_SECRET_KEY:?")
    assert webui["depends_on"]["api"]["condition"] == "service_healthy"
    assert "openwebui" in COMPOSE["volumes"]
