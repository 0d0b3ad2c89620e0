"""Redis is named by a plain URL or found through Sentinel; either way it reaches child processes, and every
bad Sentinel setting is reported at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.settings import Settings, SettingsError, parse_sentinel_url


def test_sentinels_and_a_master_name_become_the_redis_address_and_reach_child_processes(tmp_path: Path) -> None:
    env = {
        "PARLEY_HOME": str(tmp_path),
        "PARLEY_REDIS_SENTINELS": "s1:26379, s2:26380,[::1]:26381",
        "PARLEY_REDIS_SENTINEL_MASTER": "main-cache",
    }
    s = Settings.from_env(env)
    assert s.redis_url == "redis+sentinel://s1:26379,s2:26380,[::1]:26381/main-cache"
    assert parse_sentinel_url(s.redis_url) == ([("s1", 26379), ("s2", 26380), ("::1", 26381)], "main-cache")
    child = s.child_env()
    assert "PARLEY_REDIS_URL" not in child
    assert child["PARLEY_REDIS_SENTINELS"] == "s1:26379,s2:26380,[::1]:26381"
    assert Settings.from_env(child) == s


def test_the_master_name_defaults_to_parley_and_a_plain_url_still_works(tmp_path: Path) -> None:
    home = {"PARLEY_HOME": str(tmp_path)}
    assert (
        Settings.from_env({**home, "PARLEY_REDIS_SENTINELS": "s1:26379"}).redis_url
        == "redis+sentinel://s1:26379/parley"
    )
    plain = Settings.from_env({**home, "PARLEY_REDIS_URL": "redis://cache:6379/0"})
    assert plain.redis_url == "redis://cache:6379/0"
    assert plain.child_env()["PARLEY_REDIS_URL"] == "redis://cache:6379/0"


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"PARLEY_REDIS_SENTINELS": "s1"}, "'s1' is not host:port"),
        ({"PARLEY_REDIS_SENTINELS": "s1:0"}, "'s1:0' is not host:port"),
        ({"PARLEY_REDIS_SENTINELS": "s1:26379,:26380"}, "':26380' is not host:port"),
        ({"PARLEY_REDIS_SENTINELS": " , "}, "names no sentinel"),
        (
            {"PARLEY_REDIS_SENTINELS": "s1:26379", "PARLEY_REDIS_SENTINEL_MASTER": "my master"},
            "SENTINEL_MASTER='my master'",
        ),
        ({"PARLEY_REDIS_SENTINEL_MASTER": "parley"}, "PARLEY_REDIS_SENTINELS is not"),
        ({"PARLEY_REDIS_SENTINELS": "s1:26379", "PARLEY_REDIS_URL": "redis://x"}, "not both"),
    ],
)
def test_bad_sentinel_settings_are_refused_with_what_is_wrong(
    tmp_path: Path, env: dict[str, str], problem: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"PARLEY_HOME": str(tmp_path), **env})
    assert problem in str(info.value)
