"""GCRA, the limiter's algorithm, on plain numbers: no Django, no I/O, no clock of its own.

A bucket of ``limit`` per ``period`` is one stored number, the *theoretical arrival
time* (TAT): the moment the bucket would be full again. Taking ``cost`` moves it
``cost * period / limit`` later; the take is allowed while the TAT stays within one
period of now. So a full bucket lets ``limit`` through at once, then refills steadily,
and no boundary ever lets two bursts through back to back.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

#: Slack for float rounding in bucket arithmetic (seconds); far below any interval in use.
EPSILON = 1e-6

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_UNITS |= {"d": 86400.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Rate:
    """``limit`` units per ``period`` seconds."""

    limit: int
    period: float

    @property
    def interval(self) -> float:
        return self.period / self.limit

    def __str__(self) -> str:
        return f"{self.limit} per {format_duration(self.period)}"


@functools.lru_cache(maxsize=64)
def parse_rate(text: str) -> Rate:
    """``"60/m"``, ``"1000/h"``, ``"10/s"``, ``"5000/d"`` (also ``"100/5m"``, ``"9/min"``)."""
    match = _RATE.match(str(text).lower())
    if match is None or match.group(3) not in _UNITS:
        raise ValueError(f"{text!r} is not a rate like '60/m' (units s, m, h, d)")
    limit, multiple = int(match.group(1)), int(match.group(2) or 1)
    if limit < 1 or multiple < 1:
        raise ValueError(f"{text!r} must allow at least 1 per period")
    return Rate(limit, multiple * _UNITS[match.group(3)])


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes its reset headers: ``"250ms"``, ``"1s"``, ``"6m0s"``."""
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


@dataclass(frozen=True)
class Op:
    """One bucket operation: take ``cost`` from ``key`` (``force``: even past the limit)."""

    key: str
    rate: Rate
    cost: int
    force: bool = False


@dataclass(frozen=True)
class Bucket:
    """A bucket after an operation, as the headers report it."""

    limit: int
    remaining: int
    reset: float  # seconds until the bucket is full again
    retry_after: float = 0.0  # seconds until the refused cost would fit
    allowed: bool = True


def apply_gcra(
    tats: Sequence[float | None], ops: Sequence[Op], now: float
) -> tuple[list[float | None] | None, list[Bucket]]:
    """The algorithm on stored arrival times; the Redis script mirrors it line by line.

    Returns the arrival times to store (``None`` for a full bucket: delete it), or ``None``
    when an op is refused (then nothing changes), and one :class:`Bucket` per op.
    """
    steps: list[tuple[Op, float, float, bool]] = []
    for op, stored in zip(ops, tats, strict=True):
        tat = max(stored if stored is not None else now, now)
        new_tat = max(tat + op.cost * op.rate.interval, now)
        ok = op.force or op.cost <= 0 or new_tat - now <= op.rate.period + EPSILON
        steps.append((op, tat, new_tat, ok))
    refused = not all(ok for *_, ok in steps)
    buckets = []
    for op, tat, new_tat, ok in steps:
        after = tat if refused else new_tat
        room = (op.rate.period + EPSILON - (after - now)) / op.rate.interval
        buckets.append(
            Bucket(
                limit=op.rate.limit,
                remaining=min(op.rate.limit, max(0, math.floor(room))),
                reset=_micro(after - now),
                retry_after=0.0 if ok else _micro(new_tat - op.rate.period - now),
                allowed=ok,
            )
        )
    if refused:
        return None, buckets
    return [new_tat if new_tat > now else None for _, _, new_tat, _ in steps], buckets


def _micro(seconds: float) -> float:
    # Both stores report whole microseconds, so their answers compare equal.
    return max(0, math.ceil(seconds * 1_000_000 - 1e-3)) / 1_000_000


class Store(Protocol):
    """Applies a list of :class:`Op` atomically; raises :class:`StoreUnavailable`."""

    def apply(self, ops: Sequence[Op], now: float) -> list[Bucket]: ...

    async def aapply(self, ops: Sequence[Op], now: float) -> list[Bucket]: ...


class StoreUnavailable(Exception):
    """The store (Redis) could not be reached or answered with an error."""
