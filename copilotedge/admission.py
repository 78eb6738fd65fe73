"""``AdmissionLimit``: an ASGI middleware that admits HTTP requests a few at a time.

A burst of streamed requests (a thousand at once) is all CPU on arrival: Django's
request setup and middleware, authentication, validation, the conversation's rows. An
event loop interleaves every arrived request step by step, so each one finishes its setup
only when all of them do: the first token of every stream waits for the whole burst,
the loop stalls for as long as one round over all of them takes, and each request
holds one of Django's per-request threads the whole while.

Wrapped around the Django ASGI app, this lets ``COPILOTEDGE_ADMISSION_LIMIT`` requests
per process do that setup at once; the others wait their turn, first come first
served. A request gives its place up as soon as it waits on something slow (a turn
calls :func:`release` before it waits for upstream), or when its response starts.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from copilotedge.conf import settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
# Loose on purpose: ASGI servers and Django type the callables a little differently.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_release: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "copilotedge_admission_release", default=None
)


def release() -> None:
    """Give up this request's place: from here on it waits rather than computes."""
    give_up = _release.get()
    if give_up is not None:
        give_up()


class AdmissionLimit:
    """Let at most ``COPILOTEDGE_ADMISSION_LIMIT`` HTTP requests be admitted at once.

    ``application = ProtocolTypeRouter({"http": AdmissionLimit(get_asgi_application()),
    ...})``. Other scope types (WebSocket, lifespan) pass through.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._gates: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[int, asyncio.Semaphore]
        ] = weakref.WeakKeyDictionary()

    def _gate(self, limit: int) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        found = self._gates.get(loop)
        if found is None or found[0] != limit:
            found = self._gates[loop] = (limit, asyncio.Semaphore(limit))
        return found[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = settings.ADMISSION_LIMIT
        if scope["type"] != "http" or limit <= 0:
            await self.app(scope, receive, send)
            return
        gate = self._gate(limit)
        await gate.acquire()
        admitted = True

        def give_up() -> None:
            nonlocal admitted
            if admitted:
                admitted = False
                gate.release()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                give_up()
            await send(message)

        token = _release.set(give_up)
        try:
            await self.app(scope, receive, sending)
        finally:
            _release.reset(token)
            give_up()
