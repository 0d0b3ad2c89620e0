"""Signed audit checkpoints without I/O: the key derived from the secret, the canonical form that is signed,
and what verification accepts and refuses."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointKey,
    check_checkpoint,
    load_public_key,
    parse_checkpoint,
    signed_bytes,
)
from adapters.settings import Settings, SettingsError

SECRET = "unit-test-secret-" + "s" * 40
HEAD = "ab" * 32
AT = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def key() -> CheckpointKey:
    return CheckpointKey.from_secret(SECRET)


def test_the_signed_form_is_canonical_json_of_every_field_but_the_signature(key: CheckpointKey) -> None:
    checkpoint = key.sign("acme", 42, HEAD, AT)
    assert (
        signed_bytes(checkpoint)
        == (
            '{"format":"parley.audit.checkpoint.v1","hash":"' + HEAD + '","key_id":"' + key.key_id + '",'
            '"seq":42,"signed_at":"2025-03-01T12:30:15.123456+00:00","tenant_id":"acme"}'
        ).encode()
    )
    document = json.loads(checkpoint.document())
    assert document.pop("signature") == checkpoint.signature
    assert json.dumps(document, sort_keys=True, separators=(",", ":")).encode() == signed_bytes(checkpoint)
    assert checkpoint.document().endswith(b"}\n")


def test_the_key_is_derived_from_the_secret_alone(key: CheckpointKey) -> None:
    again = CheckpointKey.from_secret(SECRET)
    assert (again.public_base64(), again.key_id) == (key.public_base64(), key.key_id)
    other = CheckpointKey.from_secret(SECRET + "!")
    assert other.public_base64() != key.public_base64() and other.key_id != key.key_id
    assert len(base64.b64decode(key.public_base64())) == 32 and len(key.key_id) == 16
    with pytest.raises(ValueError, match="SECRET_KEY"):
        CheckpointKey.from_secret("")


def test_a_signed_checkpoint_verifies_after_a_round_trip_through_its_document(key: CheckpointKey) -> None:
    checkpoint = key.sign("acme", 42, HEAD, AT)
    assert parse_checkpoint(checkpoint.document()) == checkpoint
    assert check_checkpoint(parse_checkpoint(checkpoint.document()), key.public_key) is None


@pytest.mark.parametrize(
    "edit",
    [{"seq": 41}, {"hash": "cd" * 32}, {"tenant_id": "globex"}, {"signed_at": "2026-01-01T00:00:00.000000+00:00"}],
    ids=["seq", "hash", "tenant", "signed_at"],
)
def test_an_edited_field_breaks_the_signature(key: CheckpointKey, edit: dict[str, object]) -> None:
    forged = msgspec.structs.replace(key.sign("acme", 42, HEAD, AT), **edit)
    assert "does not verify" in (check_checkpoint(forged, key.public_key) or "")


def test_a_checkpoint_signed_by_another_key_is_refused(key: CheckpointKey) -> None:
    mallory = CheckpointKey(Ed25519PrivateKey.generate())
    forged = mallory.sign("acme", 42, HEAD, AT)
    assert "not by the expected key" in (check_checkpoint(forged, key.public_key) or "")
    # Naming our key id does not help: the signature is still Mallory's.
    renamed = msgspec.structs.replace(forged, key_id=key.key_id)
    assert "does not verify" in (check_checkpoint(renamed, key.public_key) or "")
    garbled = msgspec.structs.replace(key.sign("acme", 42, HEAD, AT), signature="not base64!")
    assert "does not verify" in (check_checkpoint(garbled, key.public_key) or "")


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b'{"format":"parley.audit.checkpoint.v1","tenant_id":"acme","seq":1}',
        b'{"format":"something.else","tenant_id":"acme","seq":1,"hash":"'
        + HEAD.encode()
        + b'","signed_at":"x","key_id":"k"}',
        b'{"format":"parley.audit.checkpoint.v1","tenant_id":"../etc","seq":1,"hash":"'
        + HEAD.encode()
        + b'","signed_at":"x","key_id":"k"}',
        b'{"format":"parley.audit.checkpoint.v1","tenant_id":"acme","seq":"1","hash":"'
        + HEAD.encode()
        + b'","signed_at":"x","key_id":"k"}',
        b'{"format":"parley.audit.checkpoint.v1","tenant_id":"acme","seq":1,"hash":"'
        + HEAD.encode()
        + b'","signed_at":"x","key_id":"k","extra":1}',
    ],
    ids=["not-json", "missing-fields", "format", "tenant", "seq-type", "unknown-field"],
)
def test_what_is_not_a_checkpoint_is_refused(document: bytes) -> None:
    with pytest.raises(ValueError):
        parse_checkpoint(document)


def test_the_public_key_loads_from_pem_raw_base64_or_the_commands_whole_output(key: CheckpointKey) -> None:
    printed = f"audit checkpoint key {key.key_id} (Ed25519)\n{key.public_pem()}raw (base64): {key.public_base64()}\n"
    for text in (key.public_pem(), key.public_base64(), printed):
        assert load_public_key(text.encode()).public_bytes_raw() == key.public_key.public_bytes_raw()
    with pytest.raises(ValueError):
        load_public_key(b"neither")


def test_the_checkpoint_settings_default_under_home_and_refuse_what_is_not_a_sink(tmp_path: Path) -> None:
    env = {"PARLEY_HOME": str(tmp_path), "PARLEY_SECRET_KEY": SECRET}
    settings = Settings.from_env(env)
    assert settings.audit_checkpoint_sink == str(tmp_path / "checkpoints")
    assert settings.audit_checkpoint_interval_s == 300
    for sink in ("/srv/anchors", "file:///srv/anchors", "s3://bucket/audit?region=eu-west-1"):
        chosen = Settings.from_env({**env, "PARLEY_AUDIT_CHECKPOINTS": sink, "PARLEY_AUDIT_CHECKPOINT_INTERVAL": "60"})
        assert (chosen.audit_checkpoint_sink, chosen.audit_checkpoint_interval_s) == (sink, 60)
        assert Settings.from_env(chosen.child_env()) == chosen
    with pytest.raises(SettingsError, match="AUDIT_CHECKPOINTS"):
        Settings.from_env({**env, "PARLEY_AUDIT_CHECKPOINTS": "relative/dir"})
    assert CHECKPOINT_FORMAT == "parley.audit.checkpoint.v1"  # part of what is signed: never change it
