"""The one guarded HTTP client for everything parley sends to URLs a user gave it (pages and images to
fetch, webhook endpoints to call).

Threat model: server-side request forgery. A user who can name a URL can make the server send a request
from inside its own network: to cloud metadata (169.254.169.254 hands out instance credentials), to
admin pages on loopback, to databases and dashboards on private addresses. Checking the URL's host is not
enough on its own: with DNS rebinding the attacker's name server answers a public address to the check
and a private one when the HTTP client resolves the name again to connect. So the name is resolved once,
inside the connection pool's network backend, every answer is judged, and the connection goes to the
very addresses that were judged (the name is never resolved a second time). TLS still verifies the
certificate against the hostname of the URL.

What is refused (``AddressPolicy``): link-local (cloud metadata), unspecified, multicast, reserved and
broadcast addresses and the known metadata addresses always; every other address that is not globally
routable (loopback, RFC 1918, shared 100.64/10, ULA, documentation ranges) unless the deployment allows
private addresses. IPv6 forms that carry an IPv4 address are judged as that address.

A refusal reaches the caller as an ``httpx.ConnectError``; ``refusal(exc)`` tells it apart from an
ordinary connection failure and says what was refused. ``check_url`` is the quick check for a URL being
accepted from a user (a webhook being registered); the check at connect time is the real guard.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

import httpcore
import httpx

from domain.errors import Invalid

__all__ = [
    "AddressPolicy",
    "OutboundRefused",
    "PinningNetworkBackend",
    "check_url",
    "guarded_client",
    "read_capped",
    "refusal",
]

IPAddress: typing.TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

CHECK_URL_DNS_TIMEOUT_S = 5.0
"""How long ``check_url`` waits for DNS before accepting the URL (the connect-time guard still holds)."""

_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud; inside 100.64/10, so "private" would let it by
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6; a ULA, same reason
    }
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.0.0.0 to the host itself
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # DNS64/NAT64 gateways forward to the embedded IPv4 address


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, where it stands for one.

    These forms reach the IPv4 address they carry (the kernel connects ``::ffff:127.0.0.1`` to 127.0.0.1;
    NAT64 and 6to4 gateways forward to theirs), so judging them as IPv6 would let loopback and metadata
    through."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    # IPv4-compatible (::a.b.c.d, deprecated but still parsed); :: and ::1 are IPv6's own.
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses parley may connect to on a user's behalf."""

    allow_private: bool = False

    def allows(self, address: IPAddress) -> bool:
        return self.reason(address) is None

    def reason(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused ("a loopback address"), or None where it is allowed."""
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                why = self._reason(embedded)
                return None if why is None else f"{why} (it carries the IPv4 address {embedded})"
            # Judged without its zone (fe80::1%eth0): Python counts the zone in equality, so a zoned
            # fd00:ec2::254 would not match the metadata set.
            address = ipaddress.IPv6Address(int(address))
        return self._reason(address)

    def _reason(self, address: IPAddress) -> str | None:
        # Refused whatever the deployment allows: none of these is a server a user could mean.
        if address in _METADATA_ADDRESSES:
            return "a cloud metadata address"
        if address.is_link_local:
            return "a link-local address (where cloud metadata services live)"
        if address.is_unspecified or (isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK):
            return "an unspecified address"
        if address.is_multicast:
            return "a multicast address"
        if address == _BROADCAST:
            return "the broadcast address"
        # Loopback before reserved: ::1 lies in ::/8, which Python counts as reserved.
        if address.is_loopback:
            return None if self.allow_private else "a loopback address"
        if address.is_reserved:
            return "a reserved address"
        if address.is_global or self.allow_private:
            return None
        if address.is_private:
            return "a private address"
        return "not a public address"  # 100.64/10 (carrier-grade NAT) is neither global nor "private"


class OutboundRefused(Exception):
    """A connection the policy did not allow: ``host`` (as the URL named it) resolved to ``address``."""

    def __init__(self, host: str, address: IPAddress, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        named = str(address) if host.strip("[]") == str(address) else f"{host} ({address})"
        super().__init__(f"refused: {named} is {reason}")


class _RefusedConnect(httpcore.ConnectError):
    """How a refusal travels through httpcore and httpx: as a connect error, so every caller that handles
    those handles this; the refusal rides as an attribute because httpcore's pool re-raises with
    ``raise exc from None``, which drops ``__cause__``."""

    def __init__(self, refused: OutboundRefused) -> None:
        super().__init__(str(refused))
        self.refused = refused


def refusal(exc: BaseException) -> OutboundRefused | None:
    """The policy refusal behind ``exc`` (an ``httpx.ConnectError`` from a guarded client), or None when
    it is an ordinary failure. httpx re-raises httpcore's errors as its own with ``from``, so the chain is
    searched."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OutboundRefused):
            return current
        if isinstance(current, _RefusedConnect):
            return current.refused
        pending += [current.__cause__, current.__context__]
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions
    return None


class PinningNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the DNS answer pinned: resolve once, judge every address, connect
    to those addresses and no others.

    It wraps ``httpcore.AnyIOBackend``, which is what httpcore's default ``AutoBackend`` picks under
    asyncio (the resolver here is asyncio's, so trio is not served). It is handed IP literals only, so
    it never resolves a name itself."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._connector = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        addresses = await self._resolve(host, port, timeout)
        # Judge every answer before connecting to any: a hostile name server may mix a public address
        # with a private one and count on the client trying the second when the first fails.
        for address in addresses:
            if (why := self.policy.reason(address)) is not None:
                raise _RefusedConnect(OutboundRefused(host, address, why))
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                # The address, not the name: httpcore asks for TLS separately, with
                # start_tls(server_hostname=<the URL's host>) (httpcore/_async/connection.py, _connect),
                # so certificates are still checked against the hostname.
                return await self._connector.connect_tcp(
                    str(address), port, timeout=remaining, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None  # _resolve never answers an empty list
        raise failure

    async def _resolve(self, host: str, port: int, within_s: float | None) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            async with asyncio.timeout(within_s):
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took too long") from None
        except OSError as exc:  # socket.gaierror among them
            raise httpcore.ConnectError(f"cannot resolve {host}") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}")
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # A unix socket is a local service by definition; guarded clients never configure one.
        raise httpcore.ConnectError("guarded clients do not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._connector.sleep(seconds)


def guarded_client(
    *,
    policy: AddressPolicy,
    timeout: httpx.Timeout,
    max_connections: int = 100,
    max_keepalive: int = 20,
    follow_redirects: bool = False,
    headers: Mapping[str, str] | None = None,
) -> httpx.AsyncClient:
    """An httpx client whose every connection goes through ``PinningNetworkBackend`` under ``policy``.

    No proxies from the environment (a proxy would resolve the name itself, out of the guard's sight).
    With ``follow_redirects`` each hop's connection is guarded too, but its URL is not otherwise checked."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive)
    ssl_context = httpx.create_ssl_context(trust_env=False)
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits, trust_env=False)
    # AsyncHTTPTransport takes no network backend, so its pool is replaced with one built the way
    # httpx 0.28's _transports/default.py builds it (same SSL context and limits; HTTP/1.1 only and no
    # retries, its defaults), plus the pinning backend. httpx then treats it as its own pool, mapping
    # httpcore's errors to httpx's.
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("httpx.AsyncHTTPTransport changed shape; the outbound guard cannot be installed")
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        retries=0,
        network_backend=PinningNetworkBackend(policy),
    )
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, follow_redirects=follow_redirects, headers=headers, trust_env=False
    )


def _literal_address(host: str) -> IPAddress | None:
    """The address a host that is an IP literal in any form names (``2130706433``, ``0x7f.1``, ``127.1``,
    ``::ffff:127.0.0.1``), judged the way the C library will read it when connecting."""
    host = unquote(host)  # httpx keeps an IPv6 zone as %25
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None  # not a literal: a name
    return ipaddress.ip_address(infos[0][4][0])


async def check_url(url: str, *, policy: AddressPolicy, field: str = "url") -> str:
    """``url`` as httpx will send it, if parley may send requests there; ``Invalid`` if not.

    For a URL taken from a user (a webhook endpoint), so that a bad one is refused when it is given rather
    than at every delivery. A name that does not resolve now is accepted: DNS changes, and the check at
    connect time is the guard that counts."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise Invalid("INVALID_URL", "this is not a URL", field=field) from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise Invalid("INVALID_URL", "only http and https URLs with a host are accepted", field=field)
    if parsed.userinfo:
        # user:pass@ would be copied into events, logs and delivery records.
        raise Invalid("URL_CREDENTIALS", "a URL may not carry a user name or password", field=field)
    host = parsed.raw_host.decode("ascii")
    literal = _literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            async with asyncio.timeout(CHECK_URL_DNS_TIMEOUT_S):
                infos = await asyncio.get_running_loop().getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, TimeoutError):
            return str(parsed)
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if (why := policy.reason(address)) is not None:
            raise Invalid("URL_FORBIDDEN", f"parley does not send requests there: {why}", field=field)
    return str(parsed)


async def read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """The body of a streamed ``response``, at most ``max_bytes`` of it, and whether there was more
    (reading stops there: a hostile server can send forever)."""
    body = bytearray()
    async for piece in response.aiter_bytes():
        room = max_bytes - len(body)
        if len(piece) > room:
            body += piece[:room]
            return bytes(body), True
        body += piece
    return bytes(body), False
