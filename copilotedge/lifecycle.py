"""The process's background work, and a stop that loses none of it.

One :class:`Background` per event loop owns everything that outlives a request's
response or must end before the process does:

- the turns in flight (:func:`reading`, :func:`interruptible`, :func:`finished`) and
  their upstream reads, which a stop can interrupt;
- the WebSocket chats, attached or detached (:func:`track_chat`);
- the HTTP requests being served, counted by :class:`copilotedge.routing.Lifespan`;
- background tasks (:func:`spawn`): conversation saves and live publications, limiter
  settlements, circuit-breaker counts, API-key touches, ledger announcements;
- the group-commit writer (:func:`writer`) the database writes are batched through.

:func:`drain` waits for all of it, in the order one feeds the next: the turns and
chats (their ends schedule saves and ledger rows), then the background tasks, then the
writer, and round again until nothing is left, so work added during the drain is
drained too.

A stop (:func:`shut_down`: the ASGI lifespan's shutdown, or SIGTERM/SIGINT through
:func:`handle_signals`) refuses new turns at once (503, code ``shutting_down``), gives
the turns in flight ``COPILOTEDGE_SHUTDOWN_GRACE`` seconds to finish, then interrupts
the upstream read of each one still running. The turn ends with
:class:`~copilotedge.exceptions.ShuttingDown`, which every face already renders in band
(an error frame and ``[DONE]``, ``RUN_ERROR``, a WebSocket ``error``), and is recorded
like any other: its ledger row and its stored answer (``incomplete``) are written
before the drain ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import FrameType
from typing import Any, Generic, TypeVar

from django.core.checks import CheckMessage, Error

from copilotedge.background import GroupCommit
from copilotedge.conf import settings
from copilotedge.exceptions import ShuttingDown

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long turns interrupted at the end of the grace period get to say so and end.
INTERRUPT_MARGIN = 2.0
#: How often the drain looks whether the turns and requests in flight are done.
POLL_SECONDS = 0.02


class _Read:
    """A turn's upstream reads: the task awaiting one now, which a stop may cancel."""

    __slots__ = ("__weakref__", "cancelled", "state", "stopped", "task")

    def __init__(self, state: Background) -> None:
        self.state = state
        self.task: asyncio.Task[Any] | None = None
        self.stopped = False
        #: The task :meth:`stop` cancelled, so only that cancellation becomes ShuttingDown.
        self.cancelled: asyncio.Task[Any] | None = None
        state.reads.add(self)

    def start(self) -> None:
        """A read begins in the current task (refused once the grace period is over)."""
        if self.stopped or self.state.interrupting:
            self.stopped = True
            raise ShuttingDown()
        self.task = asyncio.current_task()

    def stop(self) -> None:
        self.stopped = True
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            self.cancelled = task

    def interrupted(self) -> bool:
        """Whether the ``CancelledError`` being handled is this read's stop, and only that.

        If so its cancellation is taken back, so the turn can end with ``ShuttingDown``
        and record itself; a cancellation from anyone else too (the client left) stands.
        """
        task = asyncio.current_task()
        if not self.stopped or task is None:
            return False
        ours = 1 if self.cancelled is task else 0
        if task.cancelling() > ours:
            return False
        if ours:
            task.uncancel()
            self.cancelled = None
        return True


class _Batches(Generic[T]):
    """An async iterator over a turn's upstream reads, each interruptible by a stop."""

    __slots__ = ("batches", "read")

    def __init__(self, read: _Read, batches: AsyncIterator[T]) -> None:
        self.read = read
        self.batches = batches

    def __aiter__(self) -> _Batches[T]:
        return self

    async def __anext__(self) -> T:
        read = self.read
        read.start()
        try:
            return await anext(self.batches)
        except asyncio.CancelledError:
            if read.interrupted():
                raise ShuttingDown() from None
            raise
        finally:
            read.task = None


class Background:
    """One event loop's background work (see the module docstring)."""

    def __init__(self) -> None:
        self.turns: weakref.WeakSet[Any] = weakref.WeakSet()
        self.reads: weakref.WeakSet[_Read] = weakref.WeakSet()
        self.chats: set[asyncio.Task[Any]] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.requests = 0
        self.writer = GroupCommit()
        #: Set once a stop began: new turns are refused.
        self.stopping = False
        #: Set once the grace period is over: every read is interrupted.
        self.interrupting = False
        self.stop: asyncio.Task[None] | None = None

    def in_flight(self) -> int:
        """Turns, chats and HTTP requests not finished yet."""
        return len(self.turns) + len(self.chats) + self.requests

    def interrupt(self) -> None:
        self.interrupting = True
        for read in list(self.reads):
            read.stop()


_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Background] = (
    weakref.WeakKeyDictionary()
)


def background() -> Background:
    """This event loop's :class:`Background`."""
    loop = asyncio.get_running_loop()
    found = _states.get(loop)
    if found is None:
        found = _states[loop] = Background()
    return found


def writer() -> GroupCommit:
    """This event loop's :class:`~copilotedge.background.GroupCommit` for background writes."""
    return background().writer


def spawn(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``coroutine`` in the background until it is done; :func:`drain` waits for it.

    In a fresh context: the work outlives the request that started it, so its queries
    must not run in that request's thread (see :mod:`copilotedge.background`).
    """
    tasks = background().tasks
    task = asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


def track_chat(task: asyncio.Task[Any]) -> None:
    """Count a WebSocket chat as in flight until its task ends (attached or detached)."""
    chats = background().chats
    chats.add(task)
    task.add_done_callback(chats.discard)


@contextlib.contextmanager
def serving() -> Iterator[None]:
    """Count an HTTP request as in flight for the duration of the block."""
    state = background()
    state.requests += 1
    try:
        yield
    finally:
        state.requests -= 1


def stopping() -> bool:
    """Whether a stop has begun on this event loop."""
    state = _states.get(asyncio.get_running_loop())
    return state is not None and state.stopping


def accepting() -> None:
    """Refuse a new turn once a stop has begun (:class:`ShuttingDown`, 503)."""
    if stopping():
        raise ShuttingDown()


# Turns ---------------------------------------------------------------------------------


@contextlib.contextmanager
def reading(turn: object) -> Iterator[None]:
    """A turn's one await on upstream (opening a stream, a whole answer): counts the turn
    as in flight until :func:`finished`, and lets a stop past its grace interrupt the
    await with :class:`ShuttingDown`."""
    state = background()
    state.turns.add(turn)
    read = _Read(state)
    try:
        read.start()
        yield
    except asyncio.CancelledError:
        if read.interrupted():
            raise ShuttingDown() from None
        raise
    finally:
        state.reads.discard(read)


def interruptible(turn: object, batches: AsyncIterator[T]) -> AsyncIterator[T]:
    """``batches`` (a turn's upstream reads), each of which a stop past its grace may
    interrupt with :class:`ShuttingDown`. Counts the turn as in flight until :func:`finished`.

    The task reading is noted at each read, not once: a face may read each batch in a
    task of its own.
    """
    state = background()
    state.turns.add(turn)
    return _Batches(_Read(state), batches)


def finished(turn: object) -> None:
    """The turn has ended and scheduled its records (its saves and ledger row)."""
    state = _states.get(asyncio.get_running_loop())
    if state is not None:
        state.turns.discard(turn)


# The drain -----------------------------------------------------------------------------


async def _await_in_flight(state: Background, until: float | None) -> None:
    loop = asyncio.get_running_loop()
    while state.in_flight():
        if until is not None and loop.time() >= until:
            return
        if state.chats:
            timeout = None if until is None else max(0.0, until - loop.time())
            # asyncio.wait, not gather: a timeout must leave the chats running.
            await asyncio.wait(set(state.chats), timeout=timeout)
        else:
            await asyncio.sleep(POLL_SECONDS)


async def drain(*, until: float | None = None) -> None:
    """Wait until this event loop's background work is done: turns, chats and requests
    in flight (at most until loop time ``until``, when given), then background tasks,
    then the writer, and again until none of them has anything left."""
    state = _states.get(asyncio.get_running_loop())
    if state is None:
        return
    while True:
        await _await_in_flight(state, until)
        if state.tasks:
            await asyncio.gather(*state.tasks, return_exceptions=True)
            continue
        if not state.writer.idle:
            await state.writer.drain()
            continue
        if state.tasks:
            continue  # scheduled by the writes just done (ledger announcements)
        return


async def shut_down() -> None:
    """Stop: refuse new turns, give those in flight the grace period, interrupt the rest,
    then drain. Safe to call more than once (the ASGI lifespan after a signal)."""
    state = background()
    if state.stop is None:
        state.stop = asyncio.get_running_loop().create_task(_astop(state))
    await asyncio.shield(state.stop)
    await drain(until=asyncio.get_running_loop().time() + INTERRUPT_MARGIN)


async def _astop(state: Background) -> None:
    loop = asyncio.get_running_loop()
    state.stopping = True
    grace = settings.SHUTDOWN_GRACE
    if state.in_flight():
        logger.info(
            "Stopping: %d turn(s), %d chat(s) and %d request(s) in flight get %g s to finish.",
            len(state.turns),
            len(state.chats),
            state.requests,
            grace,
        )
    await _await_in_flight(state, loop.time() + grace)
    if state.turns or state.chats:
        logger.warning(
            "Stopping: interrupting %d turn(s) still running after %g s.", len(state.turns), grace
        )
    state.interrupt()
    await drain(until=loop.time() + INTERRUPT_MARGIN)
    if state.in_flight():
        logger.warning(
            "Stopping with %d turn(s), %d chat(s) and %d request(s) unfinished.",
            len(state.turns),
            len(state.chats),
            state.requests,
        )
    logger.info("Stopped: background work is written.")


# Signals -------------------------------------------------------------------------------

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Handler = Callable[[int, FrameType | None], Any]


class _Chained:
    """A signal handler that stops and drains, then calls the server's own handler."""

    def __init__(self, previous: Handler) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        global _signalled_loop
        loop = _signal_loop()
        if loop is None or loop is _signalled_loop() or loop.is_closed() or not loop.is_running():
            # A second signal (or no loop to drain on): the server's own handling, now.
            self.previous(signum, frame)
            return
        _signalled_loop = weakref.ref(loop)
        loop.call_soon_threadsafe(_begin_stop, self.previous, signum)


def _no_loop() -> asyncio.AbstractEventLoop | None:
    return None


#: The event loop serving requests (the last one that did), and the one a signal stopped.
_signal_loop: Callable[[], asyncio.AbstractEventLoop | None] = _no_loop
_signalled_loop: Callable[[], asyncio.AbstractEventLoop | None] = _no_loop
_stopping_tasks: set[asyncio.Task[None]] = set()


def handle_signals() -> None:
    """Put a stop and drain in front of the server's own SIGTERM/SIGINT handlers.

    Called on each request (it does its work once per event loop), never at import or in
    ``ready()``: only the serving process's running loop can drain. A signal the server
    does not handle itself (no Python handler, or Python's default SIGINT) is left alone.
    """
    global _signal_loop
    loop = asyncio.get_running_loop()
    if _signal_loop() is loop or threading.current_thread() is not threading.main_thread():
        return
    _signal_loop = weakref.ref(loop)
    for signum in _SIGNALS:
        previous = signal.getsignal(signum)
        if isinstance(previous, _Chained) or not callable(previous):
            continue
        if previous is signal.default_int_handler:
            continue
        signal.signal(signum, _Chained(previous))


def _begin_stop(previous: Handler, signum: int) -> None:
    name = signal.Signals(signum).name
    logger.info("%s received: finishing the work in flight before the server stops.", name)
    task = asyncio.get_running_loop().create_task(_astop_then(previous, signum))
    _stopping_tasks.add(task)
    task.add_done_callback(_stopping_tasks.discard)


async def _astop_then(previous: Handler, signum: int) -> None:
    try:
        await shut_down()
    except Exception:
        logger.exception("The drain before stopping failed.")
    finally:
        previous(signum, None)


# Checks --------------------------------------------------------------------------------


def check_lifecycle() -> list[CheckMessage]:
    """copilotedge.E070: ``COPILOTEDGE_SHUTDOWN_GRACE`` is a number of seconds, 0 or more."""
    try:
        grace = settings.SHUTDOWN_GRACE
        valid = grace >= 0
    except (TypeError, ValueError):
        valid = False
    if valid:
        return []
    return [
        Error(
            "COPILOTEDGE_SHUTDOWN_GRACE must be a number of seconds, 0 or more.",
            hint="Set COPILOTEDGE_SHUTDOWN_GRACE to how long answers in flight at a stop "
            "may take to finish, e.g. 10.",
            id="copilotedge.E070",
        )
    ]
