"""compose.sentinel.yaml, laid over compose.yaml, is checked for structure (no Docker engine runs here): every
parley process finds Redis through the three sentinels, which watch the `redis` master with a quorum of two,
and every Redis data node stops taking writes when cut off from its replicas."""

from __future__ import annotations

from pathlib import Path

import yaml

from adapters.settings import Settings, parse_sentinel_url

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
OVERRIDE = yaml.safe_load((ROOT / "compose.sentinel.yaml").read_text())["services"]
SENTINELS = ("sentinel1", "sentinel2", "sentinel3")


def test_every_parley_process_asks_the_three_sentinels_for_the_master(tmp_path: Path) -> None:
    parley = [name for name, s in BASE.items() if s.get("image") == "parley:latest"]
    assert parley and set(parley) <= set(OVERRIDE)
    for name in parley:
        env = {**BASE[name]["environment"], **OVERRIDE[name]["environment"], "PARLEY_HOME": str(tmp_path)}
        redis_url = Settings.from_env(env).redis_url
        assert redis_url is not None, name
        sentinels, master = parse_sentinel_url(redis_url)
        assert sentinels == [(s, 26379) for s in SENTINELS] and master == "parley", name
        for s in SENTINELS:
            assert OVERRIDE[name]["depends_on"][s]["condition"] == "service_healthy", name


def test_the_sentinels_watch_the_master_with_a_quorum_of_two() -> None:
    for name in SENTINELS:
        script = OVERRIDE[name]["command"][-1]
        assert "'sentinel monitor parley redis 6379 2'" in script, name
        assert "exec redis-server /data/sentinel.conf --sentinel" in script
        assert "[ -f /data/sentinel.conf ] ||" in script, "a rewritten configuration must not be overwritten"
        assert OVERRIDE[name]["hostname"] == name


def test_each_data_node_refuses_writes_without_a_replica_and_the_replicas_follow_the_master() -> None:
    for name in ("redis", "redis-replica1", "redis-replica2"):
        command = OVERRIDE[name]["command"]
        assert command[command.index("--min-replicas-to-write") + 1] == "1", name
        assert command[command.index("--replica-announce-ip") + 1] == name
    for name in ("redis-replica1", "redis-replica2"):
        command = OVERRIDE[name]["command"]
        assert command[command.index("--replicaof") + 1 :] == ["redis", "6379"]
