"""The Workers AI emulator as a pure ASGI app: options, dispatch, faults and the request log."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any

from copilotedge.testing import asgi, control
from copilotedge.testing.asgi import Receive, Scope, Send
from copilotedge.testing.exchange import Exchange
from copilotedge.testing.faults import Fault, FaultQueue, QueuedFault, parse_faults


class EmulatorApp:
    """An ASGI app that answers like Cloudflare Workers AI, deterministically and fast.

    ``tokens`` is the answer length and ``token_delay`` the pause before each token (both
    overridable per request with ``X-Emulator-Tokens`` / ``X-Emulator-Token-Delay``).
    ``api_token`` set: only that bearer token is accepted; unset: any non-empty one.
    ``models`` set: other models are unknown (404, code 5007); unset: every model exists.
    Models containing one of ``openai_style_models`` stream OpenAI frames on ``/ai/run``.
    ``requests`` is the request log (newest last, at most ``max_log`` entries) and
    ``open_streams`` the number of event streams being sent right now.
    """

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if control.PREFIX in scope["path"]:
                await control.handle(self, scope, receive, send)
            else:
                await Exchange(self, scope, receive, send).run()
        elif scope["type"] == "lifespan":
            await asgi.lifespan(receive, send)

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
