"""Faults the emulator can inject: parsing their spec strings, queueing them, combining them.

A spec is ``kind[:arg…]``; several specs joined with ``,`` apply to one request together:

- ``error:STATUS:CODE[:RETRY_AFTER]`` answer HTTP STATUS with Cloudflare's error envelope
- ``hang:SECONDS`` wait before the response headers
- ``stall:N:SECONDS`` stall after N tokens, then go on
- ``drop:N`` end the response after N tokens, without ``[DONE]``
- ``malformed:N`` send ``data: {not json`` after N tokens
- ``nousage`` leave usage out
- ``slow:SECONDS`` per-token delay for this request
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

# A fault asked for from inside a conversation: ``[[fault:drop:3]]`` in the last user message.
MARKER = re.compile(r"\[\[fault:([^\]]*)\]\]")

_ARITY = {
    "error": (1, 3),
    "hang": (1, 1),
    "stall": (2, 2),
    "drop": (1, 1),
    "malformed": (1, 1),
    "nousage": (0, 0),
    "slow": (1, 1),
}


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError(f"not a duration: {text!r}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"not a count: {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class Fault:
    """One misbehaviour for one request; build it with :meth:`parse`."""

    kind: str
    status: int = 0
    code: int = 0
    after: int = 0
    seconds: float = 0.0
    retry_after: float | None = None

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Parse one spec such as ``error:429:3040`` or ``stall:3:0.5``; ``ValueError`` if bad."""
        kind, *args = spec.strip().split(":")
        low, high = _ARITY.get(kind, (-1, -1))
        if not low <= len(args) <= high:
            raise ValueError(f"bad fault spec: {spec!r}")
        try:
            if kind == "error":
                status = int(args[0])
                if not 400 <= status <= 599:
                    raise ValueError(f"not an error status: {status}")
                code = int(args[1]) if len(args) > 1 else 0
                retry_after = _seconds(args[2]) if len(args) > 2 else None
                return cls(kind, status=status, code=code, retry_after=retry_after)
            if kind in ("hang", "slow"):
                return cls(kind, seconds=_seconds(args[0]))
            if kind == "stall":
                return cls(kind, after=_count(args[0]), seconds=_seconds(args[1]))
            if kind in ("drop", "malformed"):
                return cls(kind, after=_count(args[0]))
        except ValueError as error:
            raise ValueError(f"bad fault spec {spec!r}: {error}") from None
        return cls(kind)

    def __str__(self) -> str:
        if self.kind == "error":
            tail = "" if self.retry_after is None else f":{self.retry_after:g}"
            return f"error:{self.status}:{self.code}{tail}"
        if self.kind in ("hang", "slow"):
            return f"{self.kind}:{self.seconds:g}"
        if self.kind == "stall":
            return f"stall:{self.after}:{self.seconds:g}"
        if self.kind in ("drop", "malformed"):
            return f"{self.kind}:{self.after}"
        return self.kind


def parse_faults(specs: str) -> list[Fault]:
    """Parse ``,``-separated specs."""
    return [Fault.parse(spec) for spec in specs.split(",") if spec.strip()]


def faults_in(text: str) -> list[Fault]:
    """The faults asked for by ``[[fault:…]]`` markers in a message."""
    return [fault for match in MARKER.finditer(text) for fault in parse_faults(match[1])]


@dataclass(slots=True)
class Effects:
    """What a request's faults add up to; a later fault of the same kind wins."""

    error: Fault | None = None
    hang: float = 0.0
    stall: Fault | None = None
    drop: int | None = None
    malformed: int | None = None
    nousage: bool = False
    slow: float | None = None

    @classmethod
    def of(cls, faults: Iterable[Fault]) -> Effects:
        effects = cls()
        for fault in faults:
            if fault.kind == "error":
                effects.error = fault
            elif fault.kind == "hang":
                effects.hang = fault.seconds
            elif fault.kind == "stall":
                effects.stall = fault
            elif fault.kind == "drop":
                effects.drop = fault.after
            elif fault.kind == "malformed":
                effects.malformed = fault.after
            elif fault.kind == "nousage":
                effects.nousage = True
            elif fault.kind == "slow":
                effects.slow = fault.seconds
        return effects


@dataclass(slots=True)
class QueuedFault:
    """Faults waiting for the next ``remaining`` requests whose path contains ``path_contains``."""

    faults: tuple[Fault, ...]
    remaining: int = 1
    path_contains: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": ",".join(str(fault) for fault in self.faults),
            "count": self.remaining,
            "path_contains": self.path_contains,
        }


@dataclass
class FaultQueue:
    """Queued faults, consumed first in, first out by matching requests.

    Tests add faults from their own thread while the server thread takes them, hence the lock.
    """

    entries: list[QueuedFault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(
        self,
        faults: Sequence[Fault],
        *,
        count: int = 1,
        path_contains: str | None = None,
        retry_after: float | None = None,
    ) -> QueuedFault:
        if count < 1 or not faults:
            raise ValueError("a queued fault needs at least one fault and a count of at least 1")
        if retry_after is not None:
            faults = [
                replace(fault, retry_after=retry_after) if fault.kind == "error" else fault
                for fault in faults
            ]
        entry = QueuedFault(tuple(faults), count, path_contains)
        with self._lock:
            self.entries.append(entry)
        return entry

    def take(self, path: str) -> tuple[Fault, ...]:
        """The faults for a request to ``path``, used up from the first matching entry."""
        if not self.entries:  # the common case, without the lock
            return ()
        with self._lock:
            for position, entry in enumerate(self.entries):
                if entry.path_contains is None or entry.path_contains in path:
                    entry.remaining -= 1
                    if entry.remaining <= 0:
                        del self.entries[position]
                    return entry.faults
        return ()

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [entry.as_dict() for entry in self.entries]
