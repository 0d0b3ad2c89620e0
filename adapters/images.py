"""Images handed to a chat (OpenAI ``image_url`` content parts): a ``data:`` URL decoded, or an http(s) URL
fetched under the rules of document URL fetching (off unless the deployment allows it; public addresses
only unless it allows private ones; every redirect checked; the body capped). The type is read from the
bytes, never from what the client declared."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from adapters.web import fetch_url
from application.engines import Image
from domain.errors import Forbidden, Invalid, TooLarge, UnsupportedType

__all__ = ["MAX_IMAGE_BYTES", "image_from_url", "sniff_image_type"]

MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""OpenAI's own limit for one image."""
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<base64>;base64)?,(?P<data>.*)$", re.S)


def sniff_image_type(data: bytes) -> str | None:
    """The media type of PNG, JPEG, GIF and WebP bytes (what vision models take); None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _decode_data_url(url: str) -> bytes:
    match = _DATA_URL.match(url)
    if match is None or not match.group("base64"):
        raise Invalid("INVALID_IMAGE_URL", "an image data URL is data:<type>;base64,<data>", field="messages")
    payload = match.group("data")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise TooLarge("IMAGE_TOO_LARGE", f"an image is at most {MAX_IMAGE_BYTES} bytes", limit=MAX_IMAGE_BYTES)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("INVALID_IMAGE_URL", "the image data is not valid base64", field="messages") from None


async def image_from_url(url: str, *, allow_fetch: bool, allow_private: bool) -> Image:
    """The image an ``image_url`` names, with its bytes and their SHA-256."""
    if url.startswith("data:"):
        data = _decode_data_url(url)
    elif url.startswith(("http://", "https://")):
        if not allow_fetch:
            raise Forbidden(
                "URL_FETCH_DISABLED", "this deployment does not fetch images by URL; send them as data URLs", field="messages"
            )
        data = (await fetch_url(url, max_bytes=MAX_IMAGE_BYTES, allow_private=allow_private)).data
    else:
        raise Invalid("INVALID_IMAGE_URL", "an image URL is a data: URL or an http(s) URL", field="messages")
    if len(data) > MAX_IMAGE_BYTES:
        raise TooLarge("IMAGE_TOO_LARGE", f"an image is at most {MAX_IMAGE_BYTES} bytes", limit=MAX_IMAGE_BYTES)
    media_type = sniff_image_type(data)
    if media_type is None:
        raise UnsupportedType("UNSUPPORTED_IMAGE_TYPE", "images are PNG, JPEG, GIF or WebP", field="messages")
    return Image(sha256=hashlib.sha256(data).hexdigest(), media_type=media_type, data=data)
