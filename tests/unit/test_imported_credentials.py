"""Credentials that come from Open WebUI (no I/O): its bcrypt password hashes verify and ask to be
replaced by argon2id; its ``sk-`` API keys find their imported key by an id from their hash."""

from __future__ import annotations

import uuid

import bcrypt
import pytest

from adapters.security import Passwords
from application.credentials import imported_api_key_id, new_api_key, parse_api_key
from domain.errors import Unauthenticated

# A hash Open WebUI 0.12.4 wrote (the fixture's Maya Lindqvist, password Tundra-Lantern-42).
OPENWEBUI_HASH = "$2b$12$nqCOYpZrPK.mcQ9/WW6caeDyxWacc55UMW/bqLtSTDiIFCtmEcecC"


def test_a_bcrypt_hash_from_open_webui_verifies_and_asks_to_be_replaced() -> None:
    passwords = Passwords()
    assert passwords.verify(OPENWEBUI_HASH, "Tundra-Lantern-42")
    assert not passwords.verify(OPENWEBUI_HASH, "Tundra-Lantern-43")
    assert passwords.needs_rehash(OPENWEBUI_HASH)
    ours = passwords.hash("Tundra-Lantern-42")
    assert ours.startswith("$argon2id$") and passwords.verify(ours, "Tundra-Lantern-42")
    assert not passwords.needs_rehash(ours)


def test_a_broken_or_foreign_hash_never_verifies() -> None:
    passwords = Passwords()
    assert not passwords.verify("$2b$12$not-a-real-hash", "anything")
    assert not passwords.verify(None, "anything")
    assert not passwords.verify("$2y$04$" + "a" * 53, "anything")
    # bcrypt reads 72 bytes: a longer password is checked on those, as Open WebUI's bcrypt did.
    long = "x" * 80
    assert passwords.verify(bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(4)).decode(), long)


def test_an_open_webui_key_finds_its_imported_key_and_nothing_else_passes_for_one() -> None:
    key = "sk-c553aea9386c4a73a21d688cd3976adc"
    assert parse_api_key(key) == imported_api_key_id(key)
    assert imported_api_key_id(key) != imported_api_key_id("sk-c553aea9386c4a73a21d688cd3976add")
    for bad in ("sk-short", "sk-C553AEA9386C4A73A21D688CD3976ADC", "sk-" + "g" * 32, "xk-" + "a" * 32):
        with pytest.raises(Unauthenticated):
            parse_api_key(bad)
    key_id = uuid.uuid4()
    assert parse_api_key(new_api_key(key_id)) == key_id
