"""Postgres advisory-lock keys: the one place that turns a lock's name into the 64-bit key every process
must agree on (the relay's leadership, a vector space's creation, an index build, a re-embedding)."""

from __future__ import annotations

import hashlib

__all__ = ["advisory_key"]


def advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
