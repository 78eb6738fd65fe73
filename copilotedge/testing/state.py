"""The emulator's state: its options, the request log, queued faults and open streams.

:class:`~copilotedge.testing.emulator.EmulatorApp` dispatches requests over it; the
exchanges and the control endpoints read and change it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any

from copilotedge.testing.faults import Fault, FaultQueue, QueuedFault, parse_faults


class EmulatorState:
    """What an emulator knows and was told (see :class:`~copilotedge.testing.EmulatorApp`)."""

    def __init__(
        self,
        *,
        tokens: int = 20,
        token_delay: float = 0.0,
        api_token: str | None = None,
        models: Iterable[str] | None = None,
        openai_style_models: Iterable[str] = ("gpt-oss",),
        max_log: int = 10_000,
    ) -> None:
        self.tokens = tokens
        self.token_delay = token_delay
        self.api_token = api_token
        self.models = None if models is None else frozenset(models)
        self.openai_style_models = tuple(openai_style_models)
        self.max_log = max_log
        self.requests: list[dict[str, Any]] = []
        self.open_streams = 0
        self.faults = FaultQueue()
        self.closing = False
        self._ids = itertools.count(1)
        # Set by the exchanges, so close() can wake their pauses from another thread.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wakers: set[asyncio.Event] = set()

    def add_fault(
        self,
        fault: str | Fault | Sequence[Fault],
        *,
        count: int = 1,
        path_contains: str | None = None,
        retry_after: float | None = None,
    ) -> QueuedFault:
        """Queue faults (a spec string, or parsed) for the next ``count`` matching requests."""
        if isinstance(fault, str):
            faults: Sequence[Fault] = parse_faults(fault)
        elif isinstance(fault, Fault):
            faults = [fault]
        else:
            faults = fault
        return self.faults.add(
            faults, count=count, path_contains=path_contains, retry_after=retry_after
        )

    def close(self) -> None:
        """End every pause at once, from any thread; ``EmulatorServer.stop`` calls it.

        Requests still waiting get a 503 and streams end without ``[DONE]``, so the server
        stops without cancelling (and logging) them. ``closing`` stays set until cleared.
        """
        self.closing = True
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                self.loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for wake in self.wakers:
            wake.set()

    def clear_faults(self) -> None:
        self.faults.clear()

    def clear_requests(self) -> None:
        self.requests.clear()

    def token_ok(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return self.api_token is None or token.strip() == self.api_token

    def model_known(self, model: str) -> bool:
        return self.models is None or model in self.models

    def openai_style(self, model: str) -> bool:
        return any(marker in model for marker in self.openai_style_models)

    def log(self, path: str, client: Sequence[Any] | None = None) -> dict[str, Any]:
        """A new request log entry; ``client`` is the caller's ``(host, port)``, which tells
        one connection from another."""
        entry: dict[str, Any] = {
            "id": next(self._ids),
            "path": path,
            "client": list(client) if client else None,
            "model": None,
            "stream": False,
            "messages": [],
            "params": {},
            "faults": [],
            "authorization_ok": False,
            "status": None,
            "tokens_sent": 0,
            "started": time.time(),
            "ended": None,
            "outcome": None,
        }
        self.requests.append(entry)
        if len(self.requests) > self.max_log:
            # Trim in batches so a long benchmark does not pay for a shift on every request.
            del self.requests[: max(1, self.max_log // 10)]
        return entry
