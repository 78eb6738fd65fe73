"""The threads Django runs each HTTP request's sync code in.

Under ASGI, Django runs a request's sync code (``request_started`` receivers,
``MiddlewareMixin`` hooks, ORM calls through ``sync_to_async``) in a thread of the
request's own. asgiref starts that thread at the request's first such call and, at its
end, starts another thread to join it: two thread starts a request, the first on the way
to the first byte, and a database connection kept by ``CONN_MAX_AGE`` dies with its
thread. :class:`RequestThreads` lends each request a thread from a pool instead (through
asgiref's ``ThreadSensitiveContext(executor=...)``): still one thread for the whole
request, as Django needs, and back to the pool at its end with its connection, as a WSGI
server's threads keep theirs.

A streamed answer keeps its thread (idle) until its response ends, as under Django's own
handler.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.db import connections

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


_numbers = itertools.count(1)


class _Lent(ThreadPoolExecutor):
    """A pooled request thread; it knows the pool to go back to."""

    def __init__(self, pool: ThreadPool) -> None:
        super().__init__(max_workers=1, thread_name_prefix=f"copilotedge-request-{next(_numbers)}")
        self.pool = pool


class ThreadPool:
    """Single-thread executors lent one per request, and kept (up to ``idle``) when
    given back. It needs no lock: each step is one atomic list or set operation."""

    def __init__(self, idle: int) -> None:
        self.idle = idle
        self._idle: list[_Lent] = []
        self._lent: set[Executor] = set()

    def lend(self) -> ThreadPoolExecutor:
        try:
            executor = self._idle.pop()
        except IndexError:
            executor = _Lent(self)
        self._lent.add(executor)
        return executor

    def give_back(self, executor: Executor) -> None:
        """Take ``executor`` back; again (or one never lent) does nothing."""
        try:
            self._lent.remove(executor)
        except KeyError:
            return
        assert isinstance(executor, _Lent)  # only those are lent
        if len(self._idle) < self.idle:
            # A job of a cancelled request may still run there: the next one queues behind.
            self._idle.append(executor)
        else:
            # Its connection (kept by CONN_MAX_AGE) closes now, not when it is collected.
            executor.submit(connections.close_all)
            executor.shutdown(wait=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(lent, idle)``."""
        return len(self._lent), len(self._idle)


class RequestThreads:
    """Lend each HTTP request a thread from a pool for its sync code.

    ``application = ProtocolTypeRouter({"http": RequestThreads(get_asgi_application()),
    ...})``. At most ``idle`` threads wait in the pool between requests; under a burst,
    as many more as there are requests at once are started, as Django would. Other scope
    types pass through.
    """

    def __init__(self, app: ASGIApp, *, idle: int = 32) -> None:
        self.app = app
        self.pool = ThreadPool(idle)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        executor = self.pool.lend()
        try:
            # Django's own ThreadSensitiveContext, inside, finds this one and keeps it.
            async with ThreadSensitiveContext(executor=executor):
                await self.app(scope, receive, send)
        finally:
            self.pool.give_back(executor)
