"""The outbound guard on real sockets: a small HTTP server on 127.0.0.1 stands in for the internal
service an attacker wants reached; name resolution is steered through the event loop's getaddrinfo where
a test needs a name to answer something else (nothing here needs the internet)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest

from adapters.outbound import AddressPolicy, check_url, guarded_client, read_capped, refusal
from adapters.web import fetch_url
from domain.errors import Forbidden, Invalid, TooLarge

TIMEOUT = httpx.Timeout(5.0)
METADATA_URL = "http://169.254.169.254/latest/meta-data/"


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.paths: list[str] = []

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _RecordingServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path == "/to-metadata":
            self.send_response(302)
            self.send_header("Location", METADATA_URL)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"x" * 100_000 if self.path == "/big" else b"hello"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_RecordingServer]:
    server = _RecordingServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def connected(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hosts the guarded backend hands to httpcore's own backend, in order (a spy, the connect is real)."""
    hosts: list[str] = []
    real_connect = httpcore.AnyIOBackend.connect_tcp

    async def spy(self: httpcore.AnyIOBackend, host: str, port: int, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        hosts.append(host)
        return await real_connect(self, host, port, **kwargs)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", spy)
    return hosts


def _steer_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Make the running loop's resolver answer ``answers[name]`` (one list of addresses per lookup, the
    last repeated) for the names given; returns the names looked up, in order."""
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo
    looked_up: list[str] = []

    async def steered(host: Any, port: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        if host not in answers:
            return await real_getaddrinfo(host, port, **kwargs)
        round_ = answers[host][min(looked_up.count(host), len(answers[host])) - 1]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0)) for a in round_
        ]

    monkeypatch.setattr(loop, "getaddrinfo", steered)
    return looked_up


async def test_loopback_is_refused_before_any_byte_reaches_the_server(
    server: _RecordingServer, connected: list[str]
) -> None:
    async with guarded_client(policy=AddressPolicy(), timeout=TIMEOUT) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"{server.url}/")
    refused = refusal(info.value)
    assert refused is not None and refused.address == ipaddress.ip_address("127.0.0.1")
    assert str(refused) == "refused: 127.0.0.1 is a loopback address"
    assert server.connections == 0 and server.paths == [] and connected == []


async def test_loopback_is_reached_when_private_addresses_are_allowed(server: _RecordingServer) -> None:
    async with guarded_client(policy=AddressPolicy(allow_private=True), timeout=TIMEOUT) as client:
        response = await client.get(f"{server.url}/")
    assert response.status_code == 200 and response.text == "hello"
    assert server.paths == ["/"]


async def test_an_ordinary_connect_failure_is_not_a_refusal() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    async with guarded_client(policy=AddressPolicy(allow_private=True), timeout=TIMEOUT) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"http://127.0.0.1:{closed_port}/")
    assert refusal(info.value) is None


async def test_a_name_is_resolved_once_and_the_connection_goes_to_the_address_judged(
    server: _RecordingServer, connected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the second answer would be the metadata service. There is no second lookup.
    looked_up = _steer_dns(monkeypatch, {"rebind.test": [["127.0.0.1"], ["169.254.169.254"]]})
    async with guarded_client(policy=AddressPolicy(allow_private=True), timeout=TIMEOUT) as client:
        response = await client.get(f"http://rebind.test:{server.port}/")
    assert response.status_code == 200
    assert looked_up == ["rebind.test"]
    assert connected == ["127.0.0.1"]


async def test_localhost_is_refused_by_what_it_resolves_to(
    server: _RecordingServer, connected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up = _steer_dns(monkeypatch, {})
    async with guarded_client(policy=AddressPolicy(), timeout=TIMEOUT) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"http://localhost:{server.port}/")
    refused = refusal(info.value)
    assert refused is not None and refused.host == "localhost" and refused.address.is_loopback
    assert looked_up == ["localhost"] and connected == [] and server.connections == 0


async def test_one_refused_answer_among_public_ones_refuses_the_name(
    connected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _steer_dns(monkeypatch, {"mixed.test": [["93.184.215.14", "127.0.0.1"]]})
    async with guarded_client(policy=AddressPolicy(), timeout=TIMEOUT) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get("http://mixed.test/")
    refused = refusal(info.value)
    assert refused is not None and refused.address == ipaddress.ip_address("127.0.0.1")
    assert connected == []


async def test_tls_is_asked_for_the_hostname_while_the_socket_goes_to_the_pinned_address(
    server: _RecordingServer, connected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from httpcore._backends.anyio import AnyIOStream

    server_hostnames: list[str | None] = []
    real_start_tls = AnyIOStream.start_tls

    async def spy(self: AnyIOStream, ssl_context: Any, server_hostname: str | None = None, **kwargs: Any) -> Any:
        server_hostnames.append(server_hostname)
        return await real_start_tls(self, ssl_context, server_hostname=server_hostname, **kwargs)

    monkeypatch.setattr(AnyIOStream, "start_tls", spy)
    async with guarded_client(policy=AddressPolicy(allow_private=True), timeout=TIMEOUT) as client:
        with pytest.raises(httpx.ConnectError):  # the local server speaks plain HTTP: the handshake fails
            await client.get(f"https://localhost:{server.port}/")
    assert connected == ["127.0.0.1"] and server_hostnames == ["localhost"]


async def test_fetch_url_refuses_a_redirect_to_cloud_metadata_even_with_private_addresses_allowed(
    server: _RecordingServer, connected: list[str]
) -> None:
    with pytest.raises(Forbidden) as info:
        await fetch_url(f"{server.url}/to-metadata", max_bytes=1_000, allow_private=True, timeout_s=5)
    assert info.value.code == "URL_FORBIDDEN"
    assert server.paths == ["/to-metadata"]
    assert connected == ["127.0.0.1"]  # nothing went to 169.254.169.254


async def test_fetch_url_refuses_private_addresses_unless_allowed(server: _RecordingServer) -> None:
    with pytest.raises(Forbidden) as info:
        await fetch_url(f"{server.url}/", max_bytes=1_000, timeout_s=5)
    assert info.value.code == "URL_FORBIDDEN" and server.connections == 0
    page = await fetch_url(f"{server.url}/", max_bytes=1_000, allow_private=True, timeout_s=5)
    assert page.data == b"hello" and page.content_type == "text/plain"


async def test_fetch_url_stops_reading_at_the_limit(server: _RecordingServer) -> None:
    with pytest.raises(TooLarge):
        await fetch_url(f"{server.url}/big", max_bytes=10_000, allow_private=True, timeout_s=5)
    assert (
        len((await fetch_url(f"{server.url}/big", max_bytes=100_000, allow_private=True, timeout_s=5)).data) == 100_000
    )


async def test_fetch_url_says_an_unresolvable_name_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Invalid) as info:
        await fetch_url("http://no-such-host.invalid/", max_bytes=1_000, timeout_s=5)
    assert info.value.code == "URL_UNREACHABLE"


async def test_read_capped_says_whether_the_body_was_cut(server: _RecordingServer) -> None:
    async with guarded_client(policy=AddressPolicy(allow_private=True), timeout=TIMEOUT) as client:
        async with client.stream("GET", f"{server.url}/big") as response:
            assert await read_capped(response, 1_000) == (b"x" * 1_000, True)
        async with client.stream("GET", f"{server.url}/big") as response:
            assert await read_capped(response, 100_000) == (b"x" * 100_000, False)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1/", "URL_FORBIDDEN"),
        ("http://[::1]/", "URL_FORBIDDEN"),
        ("http://2130706433/", "URL_FORBIDDEN"),
        ("http://0x7f.1/", "URL_FORBIDDEN"),
        ("http://[::ffff:127.0.0.1]/", "URL_FORBIDDEN"),
        ("http://169.254.169.254/", "URL_FORBIDDEN"),
        ("http://localhost/", "URL_FORBIDDEN"),
        ("ftp://x", "INVALID_URL"),
        ("http:///hook", "INVALID_URL"),
        ("http://u:p@example.com/", "URL_CREDENTIALS"),
        ("http://evil.example\\@127.0.0.1/", "URL_CREDENTIALS"),
    ],
)
async def test_check_url_refuses_what_parley_must_not_call(url: str, code: str) -> None:
    with pytest.raises(Invalid) as info:
        await check_url(url, policy=AddressPolicy(), field="endpoint")
    assert info.value.code == code and info.value.detail == {"field": "endpoint"}


async def test_check_url_refuses_metadata_even_with_private_addresses_allowed() -> None:
    with pytest.raises(Invalid):
        await check_url("http://169.254.169.254/latest/meta-data/", policy=AddressPolicy(allow_private=True))
    assert await check_url("http://127.0.0.1:8080/hook", policy=AddressPolicy(allow_private=True))


async def test_check_url_accepts_public_addresses_and_names_that_do_not_resolve_yet() -> None:
    assert await check_url("https://93.184.215.14/hook", policy=AddressPolicy()) == "https://93.184.215.14/hook"
    # The connect-time guard judges the name when it does resolve.
    assert await check_url("https://no-such-host.invalid/", policy=AddressPolicy()) == "https://no-such-host.invalid/"
