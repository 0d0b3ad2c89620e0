"""Multipart uploads read as they arrive, never whole: the body is parsed incrementally from the request
stream (``multipart``'s push parser, the one Litestar's own form parser uses), and each file is spooled
(``SpooledFile``: counted and hashed while it arrives, in memory while small, then in a temporary file).

The limits hold while reading: the file count, each file's size (past it the file is kept as its first
limit + 1 bytes and reading stops, so the caller can refuse it at once) and the whole body. A request
whose ``Content-Length`` alone proves it too large is refused before anything is read."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from contextlib import aclosing
from dataclasses import dataclass
from typing import IO, Any

from litestar import Request
from multipart import MultipartError, MultipartSegment, ParserLimitReached, PushMultipartParser, parse_options_header

from adapters.memory import hand_back_large_buffers
from domain.errors import BadRequest, TooLarge

__all__ = [
    "FILE_FIELDS",
    "MAX_FILES_PER_REQUEST",
    "MULTIPART_OVERHEAD_BYTES",
    "FilePart",
    "SpooledFile",
    "check_declared_length",
    "read_bounded",
    "receive_files",
    "upload_body_limit",
]

FILE_FIELDS = ("file", "files")
MAX_FILES_PER_REQUEST = 20
MULTIPART_OVERHEAD_BYTES = 1024 * 1024
"""Room for the multipart framing and small form fields, beside the files themselves."""
MAX_PARTS = 1_000  # as Litestar's own form parser allows: fields that are not files are read and dropped
SPOOL_MEMORY_BYTES = 256 * 1024
"""A file stays in memory up to this size, then moves to a temporary file (``TMPDIR``)."""
WRITE_BATCH_BYTES = 1024 * 1024
"""Pieces are gathered to this size, then hashed and written on a worker thread in one go."""


class SpooledFile:
    """One uploaded file, taken piece by piece: counted, hashed (SHA-256) and kept in a temporary file.
    Past ``limit`` bytes it takes no more: it holds the first limit + 1 bytes and is not ``complete``,
    which is all a refusal needs to record."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._hash = hashlib.sha256()
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 - closed by close()
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    @property
    def complete(self) -> bool:
        return self.size <= self.limit

    @property
    def sha256(self) -> str:
        assert not self._pending, "finish() the file first"
        return self._hash.hexdigest()

    async def write(self, piece: bytes) -> bool:
        """Take the next piece; False once the file has gone past its limit (and nothing more is taken)."""
        if not self.complete:
            return False
        piece = piece[: self.limit + 1 - self.size]
        self.size += len(piece)
        self._pending.append(piece)
        self._pending_bytes += len(piece)
        if self._pending_bytes >= WRITE_BATCH_BYTES:
            await self._flush()
        return self.complete

    async def finish(self) -> None:
        """Everything taken has been hashed and written."""
        await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if len(batch) < SPOOL_MEMORY_BYTES:
            self._keep(batch)
        else:  # a disk write and a megabyte of hashing: keep them off the event loop
            await asyncio.to_thread(self._keep, batch)

    def _keep(self, batch: bytes) -> None:
        self._hash.update(batch)
        self._file.write(batch)

    @property
    def file(self) -> IO[bytes]:
        assert not self._pending, "finish() the file first"
        return self._file

    def close(self) -> None:
        self._file.close()


@dataclass
class FilePart:
    filename: str
    declared_type: str | None
    content: SpooledFile


def upload_body_limit(max_file_bytes: int) -> int:
    """The most an upload request may carry: every file at its limit, and the multipart framing."""
    return max_file_bytes * MAX_FILES_PER_REQUEST + MULTIPART_OVERHEAD_BYTES


def check_declared_length(request: Request[Any, Any, Any], limit: int) -> int:
    """The declared ``Content-Length``, which an upload must send; refused at once when it is over
    ``limit`` (the server never reads past a declared length, so the stream cannot be longer)."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise BadRequest("LENGTH_REQUIRED", "an upload must declare its Content-Length")
    if int(declared) > limit:
        raise TooLarge("REQUEST_TOO_LARGE", f"a request may carry at most {limit} bytes", limit=limit)
    return int(declared)


async def read_bounded(request: Request[Any, Any, Any], limit: int) -> bytes:
    """A small body, whole, refused as soon as it passes ``limit`` bytes."""
    pieces: list[bytes] = []
    received = 0
    async with aclosing(request.stream()) as stream:
        async for piece in stream:
            received += len(piece)
            if received > limit:
                raise TooLarge("REQUEST_TOO_LARGE", f"a request may carry at most {limit} bytes", limit=limit)
            pieces.append(piece)
    return b"".join(pieces)


async def receive_files(request: Request[Any, Any, Any], *, max_file_bytes: int) -> list[FilePart]:
    """The files of a multipart upload (fields ``file`` or ``files``), spooled, in the order sent. A file
    past ``max_file_bytes`` ends the reading: it is the last one returned, not ``complete``. More than
    ``MAX_FILES_PER_REQUEST`` files, or none, is a 400; other form fields are read and dropped."""
    hand_back_large_buffers()  # each file is read whole once, to be checked: see adapters.memory
    limit = upload_body_limit(max_file_bytes)
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get("boundary")
    if not boundary:
        raise BadRequest("INVALID_MULTIPART", "the multipart/form-data Content-Type names no boundary")
    files: list[FilePart] = []
    try:
        await _spool_parts(request, boundary, files, max_file_bytes=max_file_bytes, body_limit=limit)
    except BaseException:
        for part in files:
            part.content.close()
        raise
    if not files:
        raise BadRequest("NO_FILE", "the form has no file (use the field name 'file')")
    return files


async def _spool_parts(
    request: Request[Any, Any, Any], boundary: str, files: list[FilePart], *, max_file_bytes: int, body_limit: int
) -> None:
    """Parse the body into ``files`` until it ends or a file passes its limit."""
    received = 0
    current: SpooledFile | None = None  # the file whose bytes are arriving; None inside other fields
    parser = PushMultipartParser(boundary, max_segment_count=MAX_PARTS)
    try:
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:  # ends with b"", which closes the parser (a ParserError if cut short)
                received += len(chunk)
                if received > body_limit:
                    raise TooLarge("REQUEST_TOO_LARGE", f"a request may carry at most {body_limit} bytes", limit=body_limit)
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        current = _start_file(event, files, max_file_bytes)
                    elif event is None:
                        if current is not None:
                            await current.finish()
                        current = None
                    elif current is not None and not await current.write(event):
                        await current.finish()
                        return  # past the limit: answer now, read no further
                if parser.closed:
                    return
        parser.close()
    except ParserLimitReached:
        raise BadRequest("TOO_MANY_PARTS", f"a form may have at most {MAX_PARTS} parts") from None
    except MultipartError as exc:
        raise BadRequest("INVALID_MULTIPART", f"the body is not valid multipart/form-data: {exc}") from None


def _start_file(segment: MultipartSegment, files: list[FilePart], max_file_bytes: int) -> SpooledFile | None:
    if segment.name not in FILE_FIELDS or not segment.filename:
        return None
    if len(files) == MAX_FILES_PER_REQUEST:
        raise BadRequest("TOO_MANY_FILES", f"at most {MAX_FILES_PER_REQUEST} files per request")
    content = SpooledFile(max_file_bytes)
    files.append(FilePart(filename=segment.filename, declared_type=segment.content_type or None, content=content))
    return content
