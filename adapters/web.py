"""Fetching a web page to ingest it, for deployments that allow outbound requests (off by default).

Only http(s); the host must resolve to public addresses unless the operator also allows private ones
(otherwise any user could make the server read its own network: cloud metadata, internal admin pages);
redirects are followed by hand so every hop is checked the same way; the body is read up to the upload
limit and no further.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx

from domain.errors import Forbidden, Invalid, TooLarge, Unavailable

__all__ = ["Fetched", "fetch_url"]

MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str | None
    filename: str
    url: str


async def _check_host(host: str, allow_private: bool) -> None:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise Invalid("URL_UNREACHABLE", f"cannot resolve {host}", field="url") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not allow_private and not address.is_global:
            raise Forbidden("URL_FORBIDDEN", "this deployment fetches only public addresses", field="url")


def _filename(url: str) -> str:
    path = unquote(urlsplit(url).path).rstrip("/")
    return path.rsplit("/", 1)[-1] or urlsplit(url).hostname or "page"


async def fetch_url(url: str, *, max_bytes: int, allow_private: bool = False, timeout_s: float = 20.0) -> Fetched:
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise Invalid("INVALID_URL", "only http and https URLs can be fetched", field="url")
            await _check_host(parts.hostname, allow_private)
            try:
                async with client.stream("GET", url, headers={"User-Agent": "parley-ingest/1"}) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    if response.status_code >= 400:
                        raise Invalid("URL_FETCH_FAILED", f"the page answered HTTP {response.status_code}", field="url")
                    body = bytearray()
                    async for piece in response.aiter_bytes():
                        body += piece
                        if len(body) > max_bytes:
                            raise TooLarge("FILE_TOO_LARGE", f"the page is over {max_bytes} bytes", limit=max_bytes)
                    content_type = response.headers.get("content-type", "").split(";")[0].strip() or None
                    return Fetched(data=bytes(body), content_type=content_type, filename=_filename(url), url=url)
            except httpx.TimeoutException:
                raise Unavailable("URL_TIMEOUT", "the page did not answer in time") from None
            except httpx.HTTPError as exc:
                raise Invalid("URL_UNREACHABLE", f"cannot fetch the page: {type(exc).__name__}", field="url") from None
        raise Invalid("URL_FETCH_FAILED", "too many redirects", field="url")
