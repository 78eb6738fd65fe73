"""Running AG-UI runs, so ``agent/stop`` can stop one, in this process or in another.

Each process keeps a registry (thread id -> running runs). A stop sets the matching runs'
events here and, when a channel layer is configured, is also published to a per-thread
group. Each process (each event loop) has one listener on one channel, which joins the
group of every thread it has a run of while that run streams, so a stop reaching
process A stops a run streaming from process B. Only the caller who started a run may
stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from channels.layers import get_channel_layer

from copilotedge.conf import settings

logger = logging.getLogger(__name__)

STOP_MESSAGE = "agui.stop"
_RETRY_SECONDS = 1.0


@dataclass(eq=False)
class RunningRun:
    thread_id: str
    run_id: str
    owner: str
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, owner: str, run_id: str | None) -> bool:
        return self.owner == owner and run_id in (None, self.run_id)


@dataclass
class _Listener:
    """This loop's receiver of stops published by other processes."""

    layer: Any
    channel: str
    task: asyncio.Task[None]


_running: dict[str, set[RunningRun]] = {}
_listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Listener] = (
    weakref.WeakKeyDictionary()
)
_starting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def stop_group(thread_id: str) -> str:
    # Thread ids are client strings; group names allow only [A-Za-z0-9._-] under 100 chars.
    digest = hashlib.sha256(thread_id.encode()).hexdigest()[:32]
    return f"{settings.AGUI_STOP_GROUP}.{digest}"


def stop_local(thread_id: str, owner: str, run_id: str | None = None) -> int:
    """Stop this process's runs of the thread; returns how many were running."""
    count = 0
    for run in _running.get(thread_id, set()):
        if run.matches(owner, run_id) and not run.stopped.is_set():
            run.stopped.set()
            count += 1
    return count


async def astop(thread_id: str, owner: str, run_id: str | None = None) -> int:
    """Stop the thread's runs here and publish the stop to other processes."""
    count = stop_local(thread_id, owner, run_id)
    layer = get_channel_layer()
    if layer is not None:
        message = {"type": STOP_MESSAGE, "thread_id": thread_id, "owner": owner, "run_id": run_id}
        try:
            await layer.group_send(stop_group(thread_id), message)
        except Exception:  # a down layer must not turn a stop into a 500
            logger.warning("Could not publish an AG-UI stop on the channel layer.", exc_info=True)
    return count


async def _listen(layer: Any, channel: str) -> None:
    while True:
        try:
            message = await layer.receive(channel)
        except Exception:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # redis-py turns a cancelled read into its TimeoutError
            logger.warning("Receiving AG-UI stops failed; retrying.", exc_info=True)
            await asyncio.sleep(_RETRY_SECONDS)
            continue
        if message.get("type") == STOP_MESSAGE:
            run_id = message.get("run_id")
            stop_local(
                str(message.get("thread_id")),
                str(message.get("owner")),
                run_id if isinstance(run_id, str) else None,
            )


async def _listener(layer: Any) -> _Listener:
    loop = asyncio.get_running_loop()
    async with _starting.setdefault(loop, asyncio.Lock()):
        listener = _listeners.get(loop)
        if listener is None or listener.layer is not layer or listener.task.done():
            channel = await layer.new_channel()
            task = asyncio.ensure_future(_listen(layer, channel))
            listener = _listeners[loop] = _Listener(layer, channel, task)
        return listener


async def aclose() -> None:
    """Stop this loop's listener (tests between event loops; shutdown)."""
    listener = _listeners.pop(asyncio.get_running_loop(), None)
    if listener is not None:
        listener.task.cancel()
        await asyncio.gather(listener.task, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(thread_id: str, run_id: str, owner: str) -> AsyncIterator[RunningRun]:
    """Register a run for as long as it streams (and listen for stops from other processes)."""
    run = RunningRun(thread_id, run_id, owner)
    _running.setdefault(thread_id, set()).add(run)
    layer = get_channel_layer()
    listener: _Listener | None = None
    if layer is not None:
        try:
            listener = await _listener(layer)
            await layer.group_add(stop_group(thread_id), listener.channel)
        except Exception:
            logger.warning("Cannot listen for AG-UI stops on the channel layer.", exc_info=True)
            listener = None
    try:
        yield run
    finally:
        runs = _running.get(thread_id)
        if runs is not None:
            runs.discard(run)
            if not runs:
                del _running[thread_id]
        if listener is not None and thread_id not in _running:
            with contextlib.suppress(Exception):
                await listener.layer.group_discard(stop_group(thread_id), listener.channel)
