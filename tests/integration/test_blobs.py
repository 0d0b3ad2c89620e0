"""The three blob stores behave alike: Postgres (a fresh database from the test engines), a directory,
and S3 spoken over HTTP to moto's server, a local stand-in that implements the real S3 protocol."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from adapters.blobs import BlobMissing, BlobStore, DirectoryBlobs, PostgresBlobs, S3Blobs, open_blob_store
from adapters.database import create_engine, create_tables
from adapters.settings import Settings

BUCKET = "parley-blobs"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["postgres", "directory", "s3"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[BlobStore]:
    if request.param == "postgres":
        settings: Settings = request.getfixturevalue("settings")
        engine = create_engine(settings.database_url, pool_size=2)
        await create_tables(engine)
        yield open_blob_store(None, engine=engine)
        await engine.dispose()
        return
    engine = create_engine("postgresql://unused@127.0.0.1/unused")  # never connected: only Postgres uses it
    if request.param == "directory":
        yield open_blob_store(f"file://{tmp_path}/blobs", engine=engine)
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    s3 = open_blob_store(f"s3://{BUCKET}/{prefix}?endpoint={endpoint}&region=us-east-1", engine=engine)
    assert isinstance(s3, S3Blobs)
    try:
        s3.client.create_bucket(Bucket=BUCKET)
    except s3.client.exceptions.BucketAlreadyOwnedByYou:
        pass
    yield s3


def blob(text: str) -> tuple[bytes, str]:
    data = text.encode()
    return data, hashlib.sha256(data).hexdigest()


def tenant() -> str:
    return str(uuid.uuid4())


async def test_put_then_get_returns_the_same_bytes(store: BlobStore) -> None:
    t = tenant()
    data, sha = blob("the original upload")
    assert not await store.exists(t, sha)
    await store.put(t, sha, data)
    assert await store.exists(t, sha)
    assert await store.get(t, sha) == data


async def test_large_and_binary_blobs_roundtrip(store: BlobStore) -> None:
    t = tenant()
    data = bytes(range(256)) * 12_000  # ~3 MB, every byte value, hashed off the event loop
    sha = hashlib.sha256(data).hexdigest()
    await store.put(t, sha, data)
    assert await store.get(t, sha) == data


async def test_putting_the_same_blob_twice_is_one_blob(store: BlobStore) -> None:
    t = tenant()
    data, sha = blob("uploaded twice")
    await store.put(t, sha, data)
    await store.put(t, sha, data)
    assert await store.get(t, sha) == data
    await store.delete(t, sha)
    assert not await store.exists(t, sha)


async def test_a_missing_blob_is_blob_missing(store: BlobStore) -> None:
    _, sha = blob("never stored")
    with pytest.raises(BlobMissing) as caught:
        await store.get(tenant(), sha)
    assert isinstance(caught.value, KeyError)
    assert sha in str(caught.value)


async def test_deleting_removes_the_blob_and_is_idempotent(store: BlobStore) -> None:
    t = tenant()
    data, sha = blob("to be erased")
    await store.put(t, sha, data)
    await store.delete(t, sha)
    await store.delete(t, sha)
    assert not await store.exists(t, sha)
    with pytest.raises(BlobMissing):
        await store.get(t, sha)


async def test_data_that_does_not_match_its_hash_is_refused(store: BlobStore) -> None:
    t = tenant()
    data, sha = blob("what was hashed")
    with pytest.raises(ValueError, match="SHA-256"):
        await store.put(t, sha, b"something else")
    assert not await store.exists(t, sha)
    with pytest.raises(ValueError):
        await store.put(t, "not-a-hash", data)


async def test_tenants_do_not_see_each_others_blobs(store: BlobStore) -> None:
    alice, bob = tenant(), tenant()
    data, sha = blob("alice's contract")
    await store.put(alice, sha, data)
    assert not await store.exists(bob, sha)
    with pytest.raises(BlobMissing):
        await store.get(bob, sha)
    await store.delete(bob, sha)  # bob cannot erase alice's copy either
    assert await store.get(alice, sha) == data


async def test_keys_cannot_climb_out_of_the_store(store: BlobStore) -> None:
    data, sha = blob("escape")
    for bad_tenant in ("../other", "a/b", "", ".."):
        with pytest.raises(ValueError):
            await store.put(bad_tenant, sha, data)
    with pytest.raises(ValueError):
        await store.get(tenant(), "../" + sha[3:])


def test_directory_layout_is_tenant_then_hash_prefix(tmp_path: Path) -> None:
    _, sha = blob("layout")
    t = tenant()
    assert DirectoryBlobs(tmp_path).path(t, sha) == tmp_path / t / sha[:2] / sha


async def test_directory_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = DirectoryBlobs(tmp_path)
    t = tenant()
    data, sha = blob("atomic")
    await store.put(t, sha, data)
    await store.put(t, sha, data)
    files = await asyncio.to_thread(lambda: [p.name for p in tmp_path.rglob("*") if p.is_file()])
    assert files == [sha]


def test_urls_pick_the_store() -> None:
    engine = create_engine("postgresql://unused@127.0.0.1/unused")
    assert isinstance(open_blob_store(None, engine=engine), PostgresBlobs)
    assert isinstance(open_blob_store("postgres", engine=engine), PostgresBlobs)
    directory = open_blob_store("file:///var/lib/parley/blobs", engine=engine)
    assert isinstance(directory, DirectoryBlobs) and directory.root == Path("/var/lib/parley/blobs")
    s3 = open_blob_store("s3://bucket/some/prefix?endpoint=http://minio:9000&region=eu-west-1", engine=engine)
    assert isinstance(s3, S3Blobs)
    assert (s3.bucket, s3.prefix, s3.endpoint, s3.region) == ("bucket", "some/prefix", "http://minio:9000", "eu-west-1")
    _, sha = blob("key")
    assert s3.key("t1", sha) == f"some/prefix/t1/{sha}"
    assert S3Blobs("bucket").key("t1", sha) == f"t1/{sha}"
    for bad in ("file://relative/dir", "s3:///no-bucket", "s3://b/p?secret=x", "ftp://host/dir"):
        with pytest.raises(ValueError):
            open_blob_store(bad, engine=engine)
