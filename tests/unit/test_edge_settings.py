"""The edge's settings: trusted proxies and request timeouts, read, checked and handed to child processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.settings import Settings, SettingsError


def test_no_proxy_is_trusted_and_requests_are_bounded_by_default(tmp_path: Path) -> None:
    s = Settings.from_env({"PARLEY_HOME": str(tmp_path)})
    assert s.trusted_proxies == ()
    assert (s.header_timeout_s, s.body_timeout_s, s.keep_alive_timeout_s) == (10.0, 30.0, 75)


def test_trusted_proxies_are_addresses_and_networks(tmp_path: Path) -> None:
    s = Settings.from_env(
        {"PARLEY_HOME": str(tmp_path), "PARLEY_TRUSTED_PROXIES": " 127.0.0.1, 10.0.0.0/8,,fd00::/8 ,::1"}
    )
    assert s.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8", "fd00::/8", "::1/128")


def test_bad_edge_values_are_all_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {
                "PARLEY_HOME": str(tmp_path),
                "PARLEY_TRUSTED_PROXIES": "*,10.0.0.1/8,proxy.internal",
                "PARLEY_HEADER_TIMEOUT_S": "0",
                "PARLEY_BODY_TIMEOUT_S": "soon",
                "PARLEY_KEEP_ALIVE_TIMEOUT_S": "1.5",
            }
        )
    problems = info.value.problems
    assert sum("PARLEY_TRUSTED_PROXIES" in p for p in problems) == 3  # "*", host bits set, a name
    for name in ("HEADER_TIMEOUT_S", "BODY_TIMEOUT_S", "KEEP_ALIVE_TIMEOUT_S"):
        assert any(f"PARLEY_{name}" in p for p in problems), name
    assert len(problems) == 6


def test_child_processes_get_the_edge_settings(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "PARLEY_HOME": str(tmp_path),
            "PARLEY_TRUSTED_PROXIES": "10.0.0.0/8,192.0.2.7",
            "PARLEY_HEADER_TIMEOUT_S": "2.5",
            "PARLEY_BODY_TIMEOUT_S": "12",
            "PARLEY_KEEP_ALIVE_TIMEOUT_S": "90",
        }
    )
    assert s.trusted_proxies == ("10.0.0.0/8", "192.0.2.7/32") and s.keep_alive_timeout_s == 90
    assert Settings.from_env(s.child_env()) == s


def test_idle_connections_outlast_the_pools_in_front() -> None:
    """The server must never be the one to close an idle kept-alive connection: a request sent on it just
    as the server closes fails with no answer (httpx.ReadError). With parley's and httpx's both at 5 s, a
    few requests in a thousand failed so under load. Idle expiry of pools in front: httpx 5 s, aiohttp 15 s,
    AWS ALB and nginx upstreams 60 s."""
    import httpx

    pools = [httpx.Limits().keepalive_expiry or 0, 15, 60]
    assert Settings(home=Path("/tmp")).keep_alive_timeout_s > max(pools)
