"""Stable seeds from ids, identical in every process (Python's ``hash()`` is salted per process)."""

from __future__ import annotations

import hashlib

__all__ = ["stable_seed"]


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' string forms, joined by an ASCII unit separator."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
