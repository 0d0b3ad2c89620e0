"""Blob stores for the original bytes of uploaded documents, keyed by (tenant id, SHA-256 of the bytes).

Content addressing makes every write idempotent (the same upload twice is one blob, and a retried ingest
cannot store something different under a key events already point to) and lets a reader check what it
got. Three stores, one interface, picked by URL (``open_blob_store``):

- ``postgres`` (the default): the ``blobs`` table of the read-model database, so the embedded setup and
  small deployments need nothing more, and a database backup holds the originals too;
- ``file:///abs/dir``: a directory tree ``<dir>/<tenant>/<sha[:2]>/<sha>`` (a mounted volume, NFS);
- ``s3://bucket/prefix?endpoint=http://host:9000&region=us-east-1``: any S3-compatible store (AWS, MinIO,
  Ceph, R2), credentials from the usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` environment
  (or whatever else boto3's default chain finds, such as an instance role).

Blocking I/O (files, boto3) runs in worker threads so the event loop never waits on a disk or a socket.
``put_file`` stores what a file holds without ever holding it whole (an upload spooled to disk): piece by
piece into a staging file, as a streamed S3 body, or through a binary ``COPY`` into Postgres.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import struct
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

from psycopg.errors import UniqueViolation
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.tables import blobs

__all__ = [
    "BlobMissing",
    "BlobStore",
    "DirectoryBlobs",
    "PostgresBlobs",
    "S3Blobs",
    "open_blob_store",
    "s3_blobs",
]

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Tenant ids are UUIDs; anything that could climb out of a directory or split an object key is refused.
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_HASH_IN_THREAD_BYTES = 1 << 20  # hashing runs at ~1 GB/s: past a megabyte, keep it off the event loop
_PIECE_BYTES = 1 << 20  # what put_file reads, hashes and sends at a time
_MICROSECOND = timedelta(microseconds=1)


class BlobMissing(KeyError):
    """No blob under this (tenant, sha256)."""

    def __init__(self, tenant_id: str, sha256: str) -> None:
        self.tenant_id = tenant_id
        self.sha256 = sha256
        super().__init__(f"no blob {sha256} for tenant {tenant_id}")

    def __str__(self) -> str:  # KeyError's own str() is the repr of its argument
        return str(self.args[0])


class BlobStore(Protocol):
    async def put(self, tenant_id: str, sha256: str, data: bytes) -> None:
        """Store ``data`` (idempotent). ValueError when ``sha256`` is not the SHA-256 of ``data``."""
        ...

    async def put_file(self, tenant_id: str, sha256: str, file: IO[bytes]) -> None:
        """Store what ``file`` holds from its start (idempotent), a piece at a time. ValueError when
        ``sha256`` is not the SHA-256 of its bytes."""
        ...

    async def get(self, tenant_id: str, sha256: str) -> bytes:
        """The bytes; ``BlobMissing`` when there are none."""
        ...

    def chunks(self, tenant_id: str, sha256: str) -> AsyncIterator[bytes]:
        """The bytes a piece at a time (never whole in memory); ``BlobMissing`` before the first piece
        when there are none."""
        ...

    async def exists(self, tenant_id: str, sha256: str) -> bool: ...

    async def delete(self, tenant_id: str, sha256: str) -> None:
        """Remove the blob; nothing happens when it is already gone."""
        ...


def _check_key(tenant_id: str, sha256: str) -> None:
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"{sha256!r} is not a lower-case hex SHA-256")
    if not _TENANT.fullmatch(tenant_id) or ".." in tenant_id:
        raise ValueError(f"{tenant_id!r} is not a tenant id")


async def _check_content(tenant_id: str, sha256: str, data: bytes) -> None:
    _check_key(tenant_id, sha256)
    if len(data) > _HASH_IN_THREAD_BYTES:
        actual = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    else:
        actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(f"the data's SHA-256 is {actual}, not {sha256}")


def _size_of(file: IO[bytes]) -> int:
    """The size of ``file``, left at its start."""
    size = file.seek(0, os.SEEK_END)
    file.seek(0)
    return size


def _hashed_pieces(file: IO[bytes], sha256: str) -> Callable[[], bytes]:
    """A function that returns ``file``'s next piece (b"" at its end), hashing as it goes: at the end,
    ValueError unless the bytes were those of ``sha256``."""
    digest = hashlib.sha256()

    def next_piece() -> bytes:
        piece = file.read(_PIECE_BYTES)
        digest.update(piece)
        if not piece and digest.hexdigest() != sha256:
            raise ValueError(f"the data's SHA-256 is {digest.hexdigest()}, not {sha256}")
        return piece

    return next_piece


class PostgresBlobs:
    """Blobs as ``bytea`` rows of the ``blobs`` table (``schema.tables``).

    ``put_file`` streams the bytes through ``COPY … FROM STDIN (FORMAT BINARY)``: one row whose ``data``
    field is sent a piece at a time, so neither parley nor the driver's buffers ever hold a whole blob
    (an ``INSERT`` parameter would be copied whole into libpq's output buffer, which keeps its size for
    the life of the connection). ``COPY`` cannot skip a row that exists, so an existing blob is looked
    for first, and one stored meanwhile by a concurrent upload (a unique violation) is the same bytes."""

    _COPY = "COPY blobs (tenant_id, sha256, size, data, created_at) FROM STDIN (FORMAT BINARY)"
    _EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # binary timestamps count microseconds from here

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(self, tenant_id: str, sha256: str, data: bytes) -> None:
        await _check_content(tenant_id, sha256, data)
        row = {"tenant_id": tenant_id, "sha256": sha256, "size": len(data), "data": data}
        statement = insert(blobs).values(**row, created_at=datetime.now(UTC)).on_conflict_do_nothing()
        async with self.engine.begin() as conn:
            await conn.execute(statement)

    async def put_file(self, tenant_id: str, sha256: str, file: IO[bytes]) -> None:
        _check_key(tenant_id, sha256)
        if await self.exists(tenant_id, sha256):
            return
        size = await asyncio.to_thread(_size_of, file)
        next_piece = _hashed_pieces(file, sha256)
        try:
            async with self.engine.begin() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None, "an open connection has its driver's connection"
                async with driver.cursor() as cursor, cursor.copy(self._COPY) as copy:
                    await copy.write(self._row_head(tenant_id, sha256, size))
                    while piece := await asyncio.to_thread(next_piece):
                        await copy.write(piece)
                    await copy.write(self._row_tail())
        except UniqueViolation:
            return  # stored meanwhile: the same key is the same bytes

    @classmethod
    def _row_head(cls, tenant_id: str, sha256: str, size: int) -> bytes:
        """The binary COPY header and the row's fields up to the length of ``data``."""
        header = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
        return (
            header
            + struct.pack("!h", 5)
            + struct.pack("!i", 16)
            + uuid.UUID(tenant_id).bytes
            + struct.pack("!i", 64)
            + sha256.encode()
            + struct.pack("!iq", 8, size)
            + struct.pack("!i", size)
        )

    @classmethod
    def _row_tail(cls) -> bytes:
        """``created_at`` and the end of the COPY data."""
        micros = (datetime.now(UTC) - cls._EPOCH) // _MICROSECOND
        return struct.pack("!iq", 8, micros) + struct.pack("!h", -1)

    async def get(self, tenant_id: str, sha256: str) -> bytes:
        _check_key(tenant_id, sha256)
        async with self.engine.connect() as conn:
            data = await conn.scalar(select(blobs.c.data).where(*self._key(tenant_id, sha256)))
        if data is None:
            raise BlobMissing(tenant_id, sha256)
        return bytes(data)

    async def chunks(self, tenant_id: str, sha256: str) -> AsyncIterator[bytes]:
        """Slices of the ``bytea`` value, one short query each: no connection is held between pieces
        (the reader may be a slow download)."""
        _check_key(tenant_id, sha256)
        async with self.engine.connect() as conn:
            size = await conn.scalar(select(blobs.c.size).where(*self._key(tenant_id, sha256)))
        if size is None:
            raise BlobMissing(tenant_id, sha256)
        for start in range(0, size, _PIECE_BYTES):
            piece = func.substring(blobs.c.data, start + 1, _PIECE_BYTES)  # SQL counts from 1
            async with self.engine.connect() as conn:
                data = await conn.scalar(select(piece).where(*self._key(tenant_id, sha256)))
            if data is None:
                raise BlobMissing(tenant_id, sha256)  # deleted meanwhile
            yield bytes(data)

    async def exists(self, tenant_id: str, sha256: str) -> bool:
        _check_key(tenant_id, sha256)
        async with self.engine.connect() as conn:
            found = await conn.scalar(select(blobs.c.size).where(*self._key(tenant_id, sha256)))
        return found is not None

    async def delete(self, tenant_id: str, sha256: str) -> None:
        _check_key(tenant_id, sha256)
        async with self.engine.begin() as conn:
            await conn.execute(delete(blobs).where(*self._key(tenant_id, sha256)))

    @staticmethod
    def _key(tenant_id: str, sha256: str) -> tuple[Any, Any]:
        return blobs.c.tenant_id == tenant_id, blobs.c.sha256 == sha256


class DirectoryBlobs:
    """Blobs as files ``root/<tenant>/<sha[:2]>/<sha>``; the two-character level keeps directories small.

    A blob is written to a temporary file beside its final name, flushed to disk, then renamed into
    place (``os.replace`` is atomic), so a reader never sees half a blob and a crash leaves at most a
    stray ``.tmp`` file."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, tenant_id: str, sha256: str) -> Path:
        _check_key(tenant_id, sha256)
        return self.root / tenant_id / sha256[:2] / sha256

    async def put(self, tenant_id: str, sha256: str, data: bytes) -> None:
        await _check_content(tenant_id, sha256, data)
        await asyncio.to_thread(self._write, self.path(tenant_id, sha256), lambda file: file.write(data))

    async def put_file(self, tenant_id: str, sha256: str, file: IO[bytes]) -> None:
        path = self.path(tenant_id, sha256)

        def copy(staging: IO[bytes]) -> None:
            file.seek(0)
            next_piece = _hashed_pieces(file, sha256)
            while piece := next_piece():
                staging.write(piece)

        await asyncio.to_thread(self._write, path, copy)

    @staticmethod
    def _write(path: Path, fill: Callable[[IO[bytes]], Any]) -> None:
        """Write the blob at ``path`` through ``fill``, unless it is there already."""
        if path.is_file():
            return  # same name, same bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(staging, "wb") as file:
                fill(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(staging, path)
        finally:
            staging.unlink(missing_ok=True)

    async def get(self, tenant_id: str, sha256: str) -> bytes:
        path = self.path(tenant_id, sha256)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise BlobMissing(tenant_id, sha256) from None

    async def chunks(self, tenant_id: str, sha256: str) -> AsyncIterator[bytes]:
        path = self.path(tenant_id, sha256)
        try:
            file = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise BlobMissing(tenant_id, sha256) from None
        try:
            while piece := await asyncio.to_thread(file.read, _PIECE_BYTES):
                yield piece
        finally:
            file.close()

    async def exists(self, tenant_id: str, sha256: str) -> bool:
        return await asyncio.to_thread(self.path(tenant_id, sha256).is_file)

    async def delete(self, tenant_id: str, sha256: str) -> None:
        await asyncio.to_thread(self.path(tenant_id, sha256).unlink, missing_ok=True)


class S3Blobs:
    """Blobs as objects ``<prefix>/<tenant>/<sha>`` in ``bucket`` of an S3-compatible store.

    ``endpoint`` is for stores other than AWS (MinIO, Ceph, R2, a local test server); they are addressed
    path-style (``endpoint/bucket/key``), which they all serve, rather than by virtual host, which needs
    DNS for each bucket. The boto3 client is made on first use and shared by the worker threads (boto3
    clients are thread-safe)."""

    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint: str | None = None, region: str | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.region = region
        self._client: Any = None
        self._client_lock = threading.Lock()

    def key(self, tenant_id: str, sha256: str) -> str:
        _check_key(tenant_id, sha256)
        return f"{self.prefix}/{tenant_id}/{sha256}" if self.prefix else f"{tenant_id}/{sha256}"

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    s3={"addressing_style": "path" if self.endpoint else "auto"},
                    retries={"mode": "standard", "max_attempts": 3},
                )
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint, region_name=self.region, config=config
                )
            return self._client

    async def put(self, tenant_id: str, sha256: str, data: bytes) -> None:
        await _check_content(tenant_id, sha256, data)
        if await self.exists(tenant_id, sha256):
            return  # an identical object is there already: spare the upload
        key = self.key(tenant_id, sha256)
        await asyncio.to_thread(lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data))

    async def put_file(self, tenant_id: str, sha256: str, file: IO[bytes]) -> None:
        key = self.key(tenant_id, sha256)
        if await self.exists(tenant_id, sha256):
            return

        def upload() -> None:
            file.seek(0)
            next_piece = _hashed_pieces(file, sha256)
            while next_piece():
                pass  # checked before anything is sent: a failed check leaves no object behind
            size = _size_of(file)
            self.client.put_object(Bucket=self.bucket, Key=key, Body=file, ContentLength=size)

        await asyncio.to_thread(upload)

    async def get(self, tenant_id: str, sha256: str) -> bytes:
        key = self.key(tenant_id, sha256)

        def read() -> bytes:
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                if _is_missing(exc):
                    raise BlobMissing(tenant_id, sha256) from None
                raise
            body = answer["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return await asyncio.to_thread(read)

    async def chunks(self, tenant_id: str, sha256: str) -> AsyncIterator[bytes]:
        key = self.key(tenant_id, sha256)

        def open_body() -> Any:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except Exception as exc:
                if _is_missing(exc):
                    raise BlobMissing(tenant_id, sha256) from None
                raise

        body = await asyncio.to_thread(open_body)
        try:
            while piece := await asyncio.to_thread(body.read, _PIECE_BYTES):
                yield bytes(piece)
        finally:
            body.close()

    async def exists(self, tenant_id: str, sha256: str) -> bool:
        key = self.key(tenant_id, sha256)

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                if _is_missing(exc):
                    return False
                raise
            return True

        return await asyncio.to_thread(head)

    async def delete(self, tenant_id: str, sha256: str) -> None:
        key = self.key(tenant_id, sha256)
        await asyncio.to_thread(lambda: self.client.delete_object(Bucket=self.bucket, Key=key))


def _is_missing(exc: Exception) -> bool:
    """Whether a botocore error says "no such key" (GET answers NoSuchKey, HEAD a bare 404)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return error.get("Code") in ("NoSuchKey", "404", "NotFound") or status == 404


def open_blob_store(url: str | None, *, engine: AsyncEngine) -> BlobStore:
    """The blob store a URL names: None or "postgres" (``engine``'s database), ``file:///abs/dir``, or
    ``s3://bucket/prefix?endpoint=http://host:port&region=us-east-1``."""
    if not url or url == "postgres":
        return PostgresBlobs(engine)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ValueError(f"a blob directory URL is file:///absolute/path, not {url!r}")
        return DirectoryBlobs(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        return s3_blobs(url)
    raise ValueError(f"unknown blob store {url!r}: expected postgres, file:///dir or s3://bucket/prefix")


def s3_blobs(url: str) -> S3Blobs:
    """The S3 store ``s3://bucket/prefix?endpoint=http://host:port&region=us-east-1`` names. Its client
    (path-style addressing for other stores, standard retries) also serves the audit checkpoints."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"an S3 URL names its bucket: s3://bucket/prefix, not {url!r}")
    query = parse_qs(parsed.query)
    unknown = set(query) - {"endpoint", "region"}
    if unknown:
        raise ValueError(f"unknown S3 URL parameters: {', '.join(sorted(unknown))}")
    return S3Blobs(
        parsed.netloc,
        unquote(parsed.path),
        endpoint=query.get("endpoint", [None])[-1],
        region=query.get("region", [None])[-1],
    )
