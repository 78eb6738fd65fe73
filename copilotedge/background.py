"""Database connections and long-lived requests.

Django runs an ASGI request's queries in a thread of the request's own, and that thread
keeps its connection until the response ends. For a streamed answer that is a
connection held for the whole answer, and a few hundred streams use up PostgreSQL's
``max_connections``. So a turn hands its connection back once the queries before the
stream are done, and the writes during and after it run outside the request's thread.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections, transaction

T = TypeVar("T")


#: Set in a context whose thread opened a database connection (``connection_created``).
_opened: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "copilotedge_connection_opened", default=False
)


def note_connection(sender: Any, **kwargs: Any) -> None:
    """Signal receiver for ``connection_created``: this context now holds a connection.

    Each ASGI request runs its queries in a thread of its own, so a connection opened in
    the request's context is one that :func:`release_connections` should hand back.
    """
    _opened.set(True)


def _release() -> bool:
    """Close what CONN_MAX_AGE says to; whether a connection is still open."""
    held = False
    for connection in connections.all(initialized_only=True):
        # Never inside a transaction (a test's, or a caller's atomic block).
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
        held = held or connection.connection is not None
    return held


async def release_connections() -> None:
    """Close this request thread's connections (as CONN_MAX_AGE says, as at a request's end).

    A request that opened none (an API key and preferences from the cache, a new
    conversation saved by the writer) skips the trip to its thread.
    """
    if _opened.get():
        _opened.set(await sync_to_async(_release)())


def detached() -> contextvars.Context:
    """A context for background work whose queries must not use the request's thread."""
    return contextvars.Context()


class GroupCommit:
    """One event loop's queue of small writes, run in batches of one transaction each.

    A job is a function that runs queries (in the worker thread); :meth:`submit` queues it
    and returns a future of its result. A job queued while the writer is idle runs at
    once; jobs queued while a batch is under way go together in the next one. Under load
    that is one thread hop and one commit per batch instead of per job, with no delay
    added when idle. Jobs run in the order they were queued, so a row is created before
    a later job updates it.

    If a batch fails, each of its jobs runs again in a transaction of its own, so one bad
    job (say, of a row deleted meanwhile) fails alone.
    """

    def __init__(self, batch_size: int = 200) -> None:
        self.batch_size = batch_size
        self._queue: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((job, future))
        if self._task is None or self._task.done():
            # A fresh context: the writer outlives the request that started it, so it
            # must not run its queries in that request's thread.
            self._task = loop.create_task(self._run(), context=detached())
        return future

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch under way."""
        return not self._queue and (self._task is None or self._task.done())

    async def drain(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while self._queue:
            batch = self._queue[: self.batch_size]
            del self._queue[: self.batch_size]
            jobs = [job for job, _ in batch]
            try:
                outcomes = await sync_to_async(_run_batch)(jobs)
            except BaseException as error:  # cancelled with the loop: nobody waits long
                outcomes = [(False, error)] * len(jobs)
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)


def _run_batch(jobs: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    try:
        with transaction.atomic():
            return [(True, job()) for job in jobs]
    except Exception as error:
        close_old_connections()  # a broken connection must not poison the next try
        if len(jobs) == 1:
            return [(False, error)]
    outcomes: list[tuple[bool, Any]] = []
    for job in jobs:
        try:
            # Foreign keys are checked at COMMIT: the job is only done once it is out.
            with transaction.atomic():
                value = job()
        except Exception as error:
            close_old_connections()
            outcomes.append((False, error))
        else:
            outcomes.append((True, value))
    return outcomes
