"""Settings are read from PARLEY_* variables and every bad value is reported clearly at start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from adapters.settings import Settings, SettingsError


def test_defaults_need_no_environment_and_persist_a_generated_secret(tmp_path: Path) -> None:
    s = Settings.from_env({"PARLEY_HOME": str(tmp_path)})
    assert s.database_url is None and s.namespace == "parley" and s.port == 8000
    assert len(s.secret_key) >= 32
    secret_file = tmp_path / "secret_key"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert Settings.from_env({"PARLEY_HOME": str(tmp_path)}).secret_key == s.secret_key
    assert s.secret_key not in repr(s)


def test_every_bad_value_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {
                "PARLEY_HOME": str(tmp_path),
                "PARLEY_DATABASE_URL": "mysql://x",
                "PARLEY_NATS_URL": "http://x",
                "PARLEY_REDIS_URL": "memcached://x",
                "PARLEY_PORT": "eighty",
                "PARLEY_ACCESS_TOKEN_TTL": "5",
                "PARLEY_NAMESPACE": "Bad Name",
                "PARLEY_SECRET_KEY": "short",
                "PARLEY_LOG_LEVEL": "loud",
                "PARLEY_LOG_JSON": "maybe",
                "PARLEY_BLOB_STORE": "ftp://files",
                "PARLEY_RAG_MIN_SIMILARITY": "close",
                "PARLEY_RAG_TOP_K": "0",
                "PARLEY_ALLOW_URL_FETCH": "sometimes",
            }
        )
    text = str(info.value)
    for name in (
        "DATABASE_URL", "NATS_URL", "REDIS_URL", "PORT", "ACCESS_TOKEN_TTL", "NAMESPACE", "SECRET_KEY", "LOG_LEVEL", "LOG_JSON",
        "BLOB_STORE", "RAG_MIN_SIMILARITY", "RAG_TOP_K", "ALLOW_URL_FETCH",
    ):  # fmt: skip
        assert f"PARLEY_{name}" in text, name
    assert len(info.value.problems) == 13


def test_a_nats_cluster_is_its_servers_comma_separated_with_a_replica_count(tmp_path: Path) -> None:
    cluster = "nats://a:4222,nats://b:4222, tls://c:4222"
    s = Settings.from_env({"PARLEY_HOME": str(tmp_path), "PARLEY_NATS_URL": cluster, "PARLEY_NATS_REPLICAS": "3"})
    assert (s.nats_url, s.nats_replicas) == (cluster, 3)
    assert Settings.from_env(s.child_env()) == s
    assert Settings.from_env({"PARLEY_HOME": str(tmp_path)}).nats_replicas == 1
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {"PARLEY_HOME": str(tmp_path), "PARLEY_NATS_URL": "nats://a:4222,b:4222", "PARLEY_NATS_REPLICAS": "7"}
        )
    assert info.value.problems == [
        "PARLEY_NATS_URL: 'b:4222' must start with nats:// or tls:// (a cluster's servers are comma-separated)",
        "PARLEY_NATS_REPLICAS=7 must be between 1 and 5",
    ]


def test_child_env_round_trips(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "PARLEY_HOME": str(tmp_path),
            "PARLEY_DATABASE_URL": "postgresql://u:p@db/parley",
            "PARLEY_NATS_URL": "nats://n:4222",
            "PARLEY_REDIS_URL": "redis://r:6379/0",
            "PARLEY_NAMESPACE": "prod2",
            "PARLEY_BLOB_STORE": "s3://docs/parley?endpoint=http://minio:9000&region=eu-west-1",
            "PARLEY_RAG_MIN_SIMILARITY": "0.45",
            "PARLEY_ALLOW_URL_FETCH": "true",
        }
    )
    assert s.blob_store and s.rag_min_similarity == 0.45 and s.allow_url_fetch
    assert Settings.from_env(s.child_env()) == s
