"""Fetching a web page to ingest it, for deployments that allow outbound requests (off by default).

Only http(s); requests go through the guarded outbound client (``adapters.outbound``), which connects only
to public addresses unless the operator also allows private ones (otherwise any user could make the
server read its own network: cloud metadata, internal admin pages), and judges the very address it
connects to, so DNS rebinding cannot slip a private address past the check. Redirects are followed by
hand so every hop's URL is checked and every hop's connection guarded; the body is read up to the
upload limit and no further.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx

from adapters.outbound import AddressPolicy, guarded_client, read_capped, refusal
from domain.errors import Forbidden, Invalid, TooLarge, Unavailable

__all__ = ["Fetched", "fetch_url"]

MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str | None
    filename: str
    url: str


def _filename(url: str) -> str:
    path = unquote(urlsplit(url).path).rstrip("/")
    return path.rsplit("/", 1)[-1] or urlsplit(url).hostname or "page"


def _refused_message(policy: AddressPolicy) -> str:
    # Which address was refused stays out of the message: it would tell a user how internal names resolve.
    if policy.allow_private:
        return "this deployment never fetches link-local, cloud metadata or reserved addresses"
    return "this deployment fetches only public addresses"


async def fetch_url(url: str, *, max_bytes: int, allow_private: bool = False, timeout_s: float = 20.0) -> Fetched:
    policy = AddressPolicy(allow_private=allow_private)
    headers = {"User-Agent": "parley-ingest/1"}
    async with guarded_client(policy=policy, timeout=httpx.Timeout(timeout_s), headers=headers) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise Invalid("INVALID_URL", "only http and https URLs can be fetched", field="url")
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    if response.status_code >= 400:
                        raise Invalid("URL_FETCH_FAILED", f"the page answered HTTP {response.status_code}", field="url")
                    body, cut = await read_capped(response, max_bytes)
                    if cut:
                        raise TooLarge("FILE_TOO_LARGE", f"the page is over {max_bytes} bytes", limit=max_bytes)
                    content_type = response.headers.get("content-type", "").split(";")[0].strip() or None
                    return Fetched(data=body, content_type=content_type, filename=_filename(url), url=url)
            except httpx.TimeoutException:
                raise Unavailable("URL_TIMEOUT", "the page did not answer in time") from None
            except httpx.HTTPError as exc:
                if refusal(exc) is not None:
                    raise Forbidden("URL_FORBIDDEN", _refused_message(policy), field="url") from None
                raise Invalid("URL_UNREACHABLE", f"cannot fetch the page: {type(exc).__name__}", field="url") from None
        raise Invalid("URL_FETCH_FAILED", "too many redirects", field="url")
