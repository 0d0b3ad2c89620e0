"""Signed checkpoints of the audit chain: the key that signs them, where they are kept, and the loop that
writes them.

The audit chain (``projections/audit.py``) shows an edited, inserted or deleted row, but whoever can rewrite
every row *and* ``audit_heads`` can forge a consistent chain. A checkpoint closes that: every tenant's head
(tenant, seq, hash), when it was signed and by which key, signed with an Ed25519 key and written outside the
database (a directory, or an S3-compatible bucket, ideally with object lock or write-only credentials). A
rewrite of the rows a checkpoint covers no longer matches the hash it signed.

The key is derived from the deployment secret (``PARLEY_SECRET_KEY``) with HKDF-SHA256 under its own purpose
label, so there is nothing more to keep, rotate or back up, and no other use of the secret yields it. The
public key (``parley audit public-key``, ``GET /api/v1/audit/public-key``) is what an auditor keeps; checking
against a copy kept elsewhere also rules out someone who holds the secret.

A checkpoint document is the canonical JSON (sorted keys, no spaces, ASCII) of the signed fields and the
base64 signature; what is signed is the canonical JSON of the signed fields alone (``signed_bytes``). One
document per (tenant, seq), ``<tenant>/<seq, 20 digits>.json``, written once and never overwritten.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import msgspec
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from adapters.blobs import S3Blobs, s3_blobs

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointKey",
    "CheckpointSink",
    "Checkpointer",
    "DirectoryCheckpoints",
    "Rejected",
    "S3Checkpoints",
    "check_checkpoint",
    "checkpoint_key",
    "key_id_of",
    "load_public_key",
    "open_checkpoint_sink",
    "parse_checkpoint",
    "read_checkpoints",
    "signed_bytes",
]

log = structlog.get_logger("parley.audit.checkpoints")

CHECKPOINT_FORMAT = "parley.audit.checkpoint.v1"
"""Signed with the rest, so a signature over another kind of document can never pass for a checkpoint."""
_PURPOSE = b"parley audit checkpoint v1"
"""HKDF info: the secret's other uses (tokens, Fernet) can never yield this key, nor this key theirs."""
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # as adapters/blobs.py: no climbing out of a directory
_HASH = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"(\d{20})\.json")
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


# --- the document ------------------------------------------------------------------------------------------
class Checkpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One tenant's chain head, signed. ``signed_at`` is ISO 8601 UTC with microseconds."""

    format: str
    tenant_id: str
    seq: int
    hash: str
    signed_at: str
    key_id: str
    signature: str = ""

    def document(self) -> bytes:
        """The bytes a sink stores: canonical JSON of every field, then a newline."""
        return (_CANONICAL.encode(msgspec.structs.asdict(self)) + "\n").encode()


def signed_bytes(checkpoint: Checkpoint) -> bytes:
    """What the signature covers: the canonical JSON of every field but ``signature``."""
    fields = msgspec.structs.asdict(checkpoint)
    del fields["signature"]
    return _CANONICAL.encode(fields).encode()


def parse_checkpoint(document: bytes) -> Checkpoint:
    """A stored document as a ``Checkpoint``; ValueError when it is not one (unknown or missing fields,
    wrong types, a malformed tenant or hash)."""
    try:
        checkpoint = msgspec.json.decode(document, type=Checkpoint)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a checkpoint document: {exc}") from None
    if checkpoint.format != CHECKPOINT_FORMAT:
        raise ValueError(f"unknown checkpoint format {checkpoint.format!r}")
    if not _TENANT.fullmatch(checkpoint.tenant_id) or ".." in checkpoint.tenant_id:
        raise ValueError(f"{checkpoint.tenant_id!r} is not a tenant id")
    if checkpoint.seq < 1 or not _HASH.fullmatch(checkpoint.hash):
        raise ValueError("a checkpoint names a seq from 1 and a lower-case hex SHA-256")
    return checkpoint


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of the SHA-256 of its raw 32 bytes."""
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


def check_checkpoint(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> str | None:
    """None when ``public_key`` signed exactly this checkpoint, else what is wrong with it."""
    expected = key_id_of(public_key)
    if checkpoint.key_id != expected:
        return f"signed by key {checkpoint.key_id!r}, not by the expected key {expected}"
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
        public_key.verify(signature, signed_bytes(checkpoint))
    except (binascii.Error, ValueError, InvalidSignature):
        return "the signature does not verify: the checkpoint was forged or edited"
    return None


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_public_key(text: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM block (anywhere in ``text``: the whole output of ``parley audit
    public-key`` will do) or from the base64 of its raw 32 bytes. ValueError otherwise."""
    if block := _PEM_BLOCK.search(text):
        key = serialization.load_pem_public_key(block.group())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM public key is not an Ed25519 key")
        return key
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError):
        raise ValueError("expected an Ed25519 public key: a PEM block, or the base64 of its 32 raw bytes") from None


# --- the key -----------------------------------------------------------------------------------------------
class CheckpointKey:
    """The deployment's checkpoint signing key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    @classmethod
    def from_secret(cls, secret: str) -> CheckpointKey:
        if not secret:
            raise ValueError("the checkpoint key is derived from PARLEY_SECRET_KEY, which is empty")
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(secret.encode())
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def public_base64(self) -> str:
        return base64.b64encode(_raw(self.public_key)).decode()

    def sign(self, tenant_id: str, seq: int, hash: str, signed_at: datetime | None = None) -> Checkpoint:
        moment = (signed_at or datetime.now(UTC)).astimezone(UTC)
        unsigned = Checkpoint(
            format=CHECKPOINT_FORMAT,
            tenant_id=tenant_id,
            seq=seq,
            hash=hash,
            signed_at=moment.isoformat(timespec="microseconds"),
            key_id=self.key_id,
        )
        signature = base64.b64encode(self._private.sign(signed_bytes(unsigned))).decode()
        return msgspec.structs.replace(unsigned, signature=signature)


@lru_cache(maxsize=4)
def checkpoint_key(secret: str) -> CheckpointKey:
    """``CheckpointKey.from_secret``, derived once per secret (the API serves the public key per request)."""
    return CheckpointKey.from_secret(secret)


# --- where checkpoints are kept ----------------------------------------------------------------------------
class CheckpointSink(Protocol):
    async def put(self, checkpoint: Checkpoint) -> bool:
        """Store the checkpoint unless one for its (tenant, seq) is there: True when written, False when
        it was there already (what is there is never replaced)."""
        ...

    async def documents(self, tenant_id: str | None = None) -> list[tuple[str, int, bytes]]:
        """Every stored document (of ``tenant_id``, or of all tenants) as (tenant, seq, bytes) as its name
        says, in (tenant, seq) order."""
        ...


def _name(seq: int) -> str:
    return f"{seq:020d}.json"


def _check_tenant(tenant_id: str) -> None:
    if not _TENANT.fullmatch(tenant_id) or ".." in tenant_id:
        raise ValueError(f"{tenant_id!r} is not a tenant id")


class DirectoryCheckpoints:
    """Checkpoints as files ``root/<tenant>/<seq>.json``.

    A document is written to a temporary file, flushed to disk, then hard-linked to its name: ``link``
    fails when the name exists, atomically, so a checkpoint is never overwritten (not even by a second
    checkpointer racing this one) and a reader never sees half a document. The file system must support
    hard links (local disks and NFS do)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, tenant_id: str, seq: int) -> Path:
        _check_tenant(tenant_id)
        return self.root / tenant_id / _name(seq)

    async def put(self, checkpoint: Checkpoint) -> bool:
        return await asyncio.to_thread(
            self._write, self.path(checkpoint.tenant_id, checkpoint.seq), checkpoint.document()
        )

    @staticmethod
    def _write(path: Path, document: bytes) -> bool:
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(staging, "xb") as file:
                file.write(document)
                file.flush()
                os.fsync(file.fileno())
            os.link(staging, path)
        except FileExistsError:
            return False
        finally:
            staging.unlink(missing_ok=True)
        return True

    async def documents(self, tenant_id: str | None = None) -> list[tuple[str, int, bytes]]:
        return await asyncio.to_thread(self._read, tenant_id)

    def _read(self, tenant_id: str | None) -> list[tuple[str, int, bytes]]:
        if tenant_id is not None:
            _check_tenant(tenant_id)
            folders = [self.root / tenant_id]
        else:
            folders = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        found = []
        for folder in folders:
            if not folder.is_dir():
                continue
            for file in sorted(folder.iterdir()):
                if match := _NAME.fullmatch(file.name):
                    found.append((folder.name, int(match.group(1)), file.read_bytes()))
        return found


class S3Checkpoints:
    """Checkpoints as objects ``<prefix>/<tenant>/<seq>.json`` through the blob store's S3 client (the same
    URL form, endpoint and credentials as ``PARLEY_BLOB_STORE``).

    Written with ``If-None-Match: *``: the store itself refuses to replace an object (AWS S3 since 2024,
    MinIO, R2, Ceph). For an attacker with the bucket's credentials, give the checkpointer a write-only
    policy and turn on object lock (compliance mode)."""

    def __init__(self, store: S3Blobs) -> None:
        self.store = store

    def key(self, tenant_id: str, seq: int) -> str:
        _check_tenant(tenant_id)
        return f"{self._folder()}{tenant_id}/{_name(seq)}"

    def _folder(self) -> str:
        return f"{self.store.prefix}/" if self.store.prefix else ""

    async def put(self, checkpoint: Checkpoint) -> bool:
        key, body = self.key(checkpoint.tenant_id, checkpoint.seq), checkpoint.document()

        def write() -> bool:
            try:
                self.store.client.put_object(
                    Bucket=self.store.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*"
                )
            except Exception as exc:
                if _status(exc) == 412:  # PreconditionFailed: the object is there
                    return False
                raise
            return True

        return await asyncio.to_thread(write)

    async def documents(self, tenant_id: str | None = None) -> list[tuple[str, int, bytes]]:
        prefix = self._folder() + (f"{tenant_id}/" if tenant_id is not None else "")
        if tenant_id is not None:
            _check_tenant(tenant_id)

        def read() -> list[tuple[str, int, bytes]]:
            client, found = self.store.client, []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.store.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    tenant, _, name = item["Key"][len(self._folder()) :].partition("/")
                    if (match := _NAME.fullmatch(name)) and _TENANT.fullmatch(tenant):
                        body = client.get_object(Bucket=self.store.bucket, Key=item["Key"])["Body"]
                        try:
                            found.append((tenant, int(match.group(1)), body.read()))
                        finally:
                            body.close()
            return sorted(found)

        return await asyncio.to_thread(read)


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def open_checkpoint_sink(location: str) -> CheckpointSink:
    """The sink ``location`` names: a directory (a path, or ``file:///abs/dir``), or
    ``s3://bucket/prefix?endpoint=http://host:port&region=us-east-1``."""
    parsed = urlparse(location)
    if parsed.scheme == "s3":
        return S3Checkpoints(s3_blobs(location))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ValueError(f"a checkpoint directory URL is file:///absolute/path, not {location!r}")
        return DirectoryCheckpoints(Path(unquote(parsed.path)))
    if parsed.scheme:
        raise ValueError(
            f"unknown checkpoint sink {location!r}: expected a directory, file:///dir or s3://bucket/prefix"
        )
    return DirectoryCheckpoints(Path(location).expanduser().resolve())


# --- reading them back -------------------------------------------------------------------------------------
class Rejected(msgspec.Struct, frozen=True):
    """A stored checkpoint that cannot be trusted, and why."""

    tenant_id: str
    seq: int
    problem: str


async def read_checkpoints(
    sink: CheckpointSink, public_key: Ed25519PublicKey, tenant_id: str | None = None
) -> tuple[list[Checkpoint], list[Rejected]]:
    """The checkpoints in ``sink`` that ``public_key`` signed, and those rejected (unreadable, signed by
    another key, edited, forged, or stored under another name than their own tenant and seq)."""
    trusted: list[Checkpoint] = []
    rejected: list[Rejected] = []
    for tenant, seq, document in await sink.documents(tenant_id):
        try:
            checkpoint = parse_checkpoint(document)
        except ValueError as exc:
            rejected.append(Rejected(tenant, seq, f"checkpoint unreadable: {exc}"))
            continue
        if (checkpoint.tenant_id, checkpoint.seq) != (tenant, seq):
            named = f"tenant {checkpoint.tenant_id} seq {checkpoint.seq}"
            rejected.append(Rejected(tenant, seq, f"checkpoint stored as {tenant}/{seq} names {named}"))
            continue
        if (wrong := check_checkpoint(checkpoint, public_key)) is not None:
            rejected.append(Rejected(tenant, seq, f"checkpoint rejected: {wrong}"))
            continue
        trusted.append(checkpoint)
    return trusted, rejected


# --- writing them ------------------------------------------------------------------------------------------
Heads = Callable[[], Awaitable[Mapping[str, tuple[int, str]]]]
"""Every tenant's chain head, (seq, hash) by tenant id (``projections.audit.chain_heads``)."""


class Checkpointer:
    """Signs and stores a checkpoint for every tenant whose head moved since its last one, every
    ``interval_s``. What it has stored is remembered; after a restart the sink's refusal to overwrite says
    which heads are anchored already, so two checkpointers (or a restart) never write a second document
    for one (tenant, seq)."""

    def __init__(self, key: CheckpointKey, sink: CheckpointSink, heads: Heads, *, interval_s: float = 300) -> None:
        self.key = key
        self.sink = sink
        self.heads = heads
        self.interval_s = interval_s
        self._anchored: dict[str, int] = {}

    async def checkpoint_once(self) -> list[Checkpoint]:
        """One round: the checkpoints written (heads already anchored are left alone)."""
        written = []
        for tenant_id, (seq, hash) in sorted((await self.heads()).items()):
            if self._anchored.get(tenant_id) == seq:
                continue
            checkpoint = self.key.sign(tenant_id, seq, hash)
            if await self.sink.put(checkpoint):
                written.append(checkpoint)
            self._anchored[tenant_id] = seq
        return written

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                written = await self.checkpoint_once()
                if written:
                    log.info("audit_checkpoints_written", count=len(written), key_id=self.key.key_id)
            except Exception as exc:  # noqa: BLE001 - a sink down for a while must not stop the projectors
                log.warning("audit_checkpoint_failed", error=str(exc), error_type=type(exc).__name__)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
