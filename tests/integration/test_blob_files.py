"""``put_file``: every blob store takes what a file holds, a piece at a time (an upload spooled to disk),
with the same guarantees as ``put``: the same bytes back, idempotent, refused when they are not those
of their hash (and nothing left behind), the key checked."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import uuid

import pytest

from adapters.blobs import BlobStore
from tests.integration.test_blobs import s3_endpoint, store  # noqa: F401 - the fixtures, over all three stores


def spooled(data: bytes) -> tempfile.SpooledTemporaryFile[bytes]:
    file = tempfile.SpooledTemporaryFile(max_size=64 * 1024)
    file.write(data)
    file.seek(len(data) // 2)  # put_file reads from the start, wherever the file was left
    return file


def tenant() -> str:
    return str(uuid.uuid4())


async def test_a_file_larger_than_a_piece_roundtrips(store: BlobStore) -> None:  # noqa: F811
    t = tenant()
    data = bytes(range(256)) * 10_000 + b"tail"  # 2.4 MB: several pieces, every byte value
    sha = hashlib.sha256(data).hexdigest()
    with spooled(data) as file:
        await store.put_file(t, sha, file)
        await store.put_file(t, sha, file)  # idempotent
    assert await store.get(t, sha) == data


async def test_a_small_file_and_an_empty_one_roundtrip(store: BlobStore) -> None:  # noqa: F811
    t = tenant()
    for data in (b"a few words", b""):
        sha = hashlib.sha256(data).hexdigest()
        with spooled(data) as file:
            await store.put_file(t, sha, file)
        assert await store.get(t, sha) == data


async def test_a_file_put_after_the_same_bytes_is_one_blob(store: BlobStore) -> None:  # noqa: F811
    t = tenant()
    data = b"uploaded twice, once as bytes"
    sha = hashlib.sha256(data).hexdigest()
    await store.put(t, sha, data)
    with spooled(data) as file:
        await store.put_file(t, sha, file)
    assert await store.get(t, sha) == data


async def test_a_file_that_is_not_its_hash_is_refused_and_leaves_nothing(store: BlobStore) -> None:  # noqa: F811
    t = tenant()
    sha = hashlib.sha256(b"what was hashed").hexdigest()
    with spooled(b"something else entirely" * 100_000) as file:
        with pytest.raises(ValueError, match="SHA-256"):
            await store.put_file(t, sha, file)
        assert not await store.exists(t, sha)
        with pytest.raises(ValueError):
            await store.put_file(t, "not-a-hash", file)
        with pytest.raises(ValueError):
            await store.put_file("../other", sha, file)


async def test_the_same_file_put_twice_at_once_is_one_blob(store: BlobStore) -> None:  # noqa: F811
    t = tenant()
    data = b"two uploads of the same file, at the same moment " * 50_000
    sha = hashlib.sha256(data).hexdigest()
    with spooled(data) as first, spooled(data) as second:
        await asyncio.gather(store.put_file(t, sha, first), store.put_file(t, sha, second))
    assert await store.get(t, sha) == data
