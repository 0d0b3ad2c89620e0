"""Large multipart uploads for tests, made on the fly: the body is generated piece by piece (so a 400 MB
request costs the test process a megabyte), sent over a plain socket with its exact ``Content-Length``,
while the response is read concurrently, so a test can see how much it had sent when the answer came."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["BOUNDARY", "Answer", "TextFile", "multipart_body", "multipart_length", "post_streaming"]

BOUNDARY = "parley-test-boundary-7d1f"
_TIMEOUT_S = 120
_BLOCK = (b"The quick brown fox jumps over the lazy dog; parley keeps what it was sent. " * 14_000)[: 1 << 20]


@dataclass(frozen=True)
class TextFile:
    """A plain-text file of exactly ``size`` bytes, distinct from every other by its first line."""

    name: str
    size: int
    field: str = "files"

    def head(self) -> bytes:
        return (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{self.field}"; filename="{self.name}"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()

    def pieces(self) -> Iterator[bytes]:
        first = f"{self.name}: generated for the upload tests.\n".encode()[: self.size]
        yield first
        left = self.size - len(first)
        while left > 0:
            piece = _BLOCK[: min(left, len(_BLOCK))]
            left -= len(piece)
            yield piece


def _tail() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def multipart_length(files: Sequence[TextFile]) -> int:
    return sum(len(f.head()) + f.size + 2 for f in files) + len(_tail())


def multipart_body(files: Sequence[TextFile]) -> Iterator[bytes]:
    for f in files:
        yield f.head()
        yield from f.pieces()
        yield b"\r\n"
    yield _tail()


@dataclass
class Answer:
    status: int
    body: Any
    sent_when_answered: int
    """Body bytes the client had handed to the socket when the status line arrived."""
    length: int


async def post_streaming(
    base_url: str, path: str, files: Sequence[TextFile], headers: dict[str, str]
) -> Answer:
    """POST ``files`` as multipart/form-data to ``base_url + path``; sending stops once the answer has come."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    length = multipart_length(files)
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {url.netloc}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"Content-Length: {length}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    sent = 0
    answered_at: list[int] = []

    async def read_answer() -> tuple[int, Any]:
        status_line = await reader.readline()
        answered_at.append(sent)
        fields = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(fields.get("content-length", "0")))
        return int(status_line.split()[1]), json.loads(body) if body else None

    answer = asyncio.create_task(read_answer())
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            for piece in multipart_body(files):
                if answer.done():
                    break
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
            status, body = await answer
    except (ConnectionResetError, BrokenPipeError):
        status, body = await asyncio.wait_for(answer, _TIMEOUT_S)  # the server closed after answering
    finally:
        answer.cancel()
        writer.close()
    return Answer(status=status, body=body, sent_when_answered=answered_at[0], length=length)
