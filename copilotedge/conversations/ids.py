"""Ids of new conversations and answers: time-ordered, so an id tells when it was issued.

A new conversation's id goes to the client with the first byte of its answer, while its
rows are still being written (:func:`copilotedge.conversations.store.new_conversation`).
A reader in this process waits for that write; a reader in another process cannot see
it, but it can see from the id that it is new (:func:`issued_within`) and give the write
a moment before it says "not found".

The layout is RFC 9562's version 7: 48 bits of Unix time in milliseconds, then random
bits. Python 3.11 has no ``uuid.uuid7``; this builds the same layout.
"""

from __future__ import annotations

import os
import time
import uuid

_VERSION_7 = 0x7000
_VARIANT = 0x8000000000000000  # RFC 4122/9562: the top two bits of the last 64 are 10


def new_id() -> uuid.UUID:
    """A fresh version-7 UUID: issue time in its first 48 bits, 74 random bits after."""
    milliseconds = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")
    high = (milliseconds << 16) | _VERSION_7 | (random >> 64) & 0x0FFF
    low = _VARIANT | random & 0x3FFFFFFFFFFFFFFF
    return uuid.UUID(int=(high << 64) | low)


def issued_at(value: uuid.UUID) -> float | None:
    """When a version-7 id was issued (Unix seconds); ``None`` for other ids."""
    if value.version != 7:
        return None
    return (value.int >> 80) / 1000


def issued_within(value: uuid.UUID, seconds: float) -> bool:
    """Whether ``value`` is a version-7 id issued in the last ``seconds`` (a little clock
    skew between processes allowed)."""
    issued = issued_at(value)
    if issued is None:
        return False
    age = time.time() - issued
    return -1.0 <= age <= seconds
