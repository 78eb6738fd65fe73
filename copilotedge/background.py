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
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, cast

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections, models, transaction

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

    New rows queued with :meth:`insert` go first in their batch, all of a model in one
    statement (a model's after those it points to): a batch of turns writes their
    conversations, messages and ledger rows in three statements, not a few per turn.
    Inserts depend on nothing that jobs do (only jobs on inserts), so running them first
    keeps every dependency's order. A job type that can run several of its jobs as one
    (a :class:`Combinable`, such as the saves of growing answers) runs all of a batch's
    at the first one's place.

    If a batch fails, each of its jobs (and inserts) runs again in a transaction of its
    own, so one bad job (say, of a row deleted meanwhile) fails alone.
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

    def insert(self, rows: Sequence[models.Model]) -> asyncio.Future[None]:
        """Queue inserting ``rows`` (new model instances), with the batch's other rows."""
        return self.submit(_Insert(rows))

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


class Combinable(Protocol):
    """A job type whose jobs of one batch may run together, at the first one's place
    (so only one whose jobs' order among the batch's other jobs does not matter)."""

    combinable: ClassVar[bool]

    def __call__(self) -> Any: ...

    @classmethod
    def run_together(cls, jobs: list[Any]) -> list[Any]:
        """Run ``jobs`` (two or more of this type) at once; their results, in order."""
        ...


class _Insert:
    """A job that inserts new rows; in a batch, all its inserts go together first."""

    def __init__(self, rows: Sequence[models.Model]) -> None:
        self.rows = list(rows)
        # Ids the database gives: a failed batch leaves those of rows it rolled back.
        self.numbered_here = [row for row in self.rows if row.pk is None]

    def __call__(self) -> None:
        _insert_rows(self.rows_to_insert())

    def rows_to_insert(self) -> list[models.Model]:
        for row in self.numbered_here:
            row.pk = None
        return self.rows


def _insert_rows(rows: Iterable[models.Model]) -> None:
    """One bulk insert per model, each model's rows after those of models it points to."""
    by_model: dict[type[models.Model], list[models.Model]] = {}
    for row in rows:
        by_model.setdefault(type(row), []).append(row)
    for model in _parents_first(list(by_model)):
        model._default_manager.bulk_create(by_model[model])


def _parents_first(found: list[type[models.Model]]) -> list[type[models.Model]]:
    ordered: list[type[models.Model]] = []

    def visit(model: type[models.Model], path: set[type[models.Model]]) -> None:
        if model in ordered or model in path:
            return
        for field in model._meta.concrete_fields:
            related = field.related_model
            if field.is_relation and related in found and related is not model:
                visit(related, path | {model})
        ordered.append(model)

    for model in found:
        visit(model, set())
    return ordered


def _run_jobs(jobs: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    inserts = [job for job in jobs if isinstance(job, _Insert)]
    if inserts:
        _insert_rows(row for insert in inserts for row in insert.rows_to_insert())
    kinds: dict[type[Any], list[int]] = {}
    for place, job in enumerate(jobs):
        if getattr(job, "combinable", False):
            kinds.setdefault(type(job), []).append(place)
    results: dict[int, Any] = {}
    for place, job in enumerate(jobs):
        if place in results or isinstance(job, _Insert):
            continue
        together = kinds.get(type(job), ())
        if len(together) > 1:
            kind = cast("type[Combinable]", type(job))
            ran = kind.run_together([jobs[other] for other in together])
            results.update(zip(together, ran, strict=True))
        else:
            results[place] = job()
    return [(True, results.get(place)) for place in range(len(jobs))]


def _run_batch(jobs: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    try:
        with transaction.atomic():
            return _run_jobs(jobs)
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
