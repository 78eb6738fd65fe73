"""Running AG-UI runs, so ``agent/stop`` can stop one, in this process or in another.

Each process keeps its own registry (thread id -> running runs). A stop sets the matching
runs' events here and, when a channel layer is configured, is also published to a
per-thread group that every run of that thread listens on while it streams, so a stop
reaching process A stops a run streaming from process B. Only the caller who started a
run may stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from channels.layers import get_channel_layer

from .conf import settings

logger = logging.getLogger(__name__)

STOP_MESSAGE = "agui.stop"


@dataclass(eq=False)
class RunningRun:
    thread_id: str
    run_id: str
    owner: str
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, owner: str, run_id: str | None) -> bool:
        return self.owner == owner and run_id in (None, self.run_id)


_running: dict[str, set[RunningRun]] = {}


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


async def _listen(run: RunningRun, layer: Any, channel: str) -> None:
    while not run.stopped.is_set():
        message = await layer.receive(channel)
        if message.get("type") == STOP_MESSAGE and run.matches(
            str(message.get("owner")), message.get("run_id")
        ):
            run.stopped.set()


@contextlib.asynccontextmanager
async def running(thread_id: str, run_id: str, owner: str) -> AsyncIterator[RunningRun]:
    """Register a run for as long as it streams (and listen for stops from other processes)."""
    run = RunningRun(thread_id, run_id, owner)
    _running.setdefault(thread_id, set()).add(run)
    layer = get_channel_layer()
    listener: asyncio.Task[None] | None = None
    channel = ""
    if layer is not None:
        try:
            channel = await layer.new_channel()
            await layer.group_add(stop_group(thread_id), channel)
            listener = asyncio.ensure_future(_listen(run, layer, channel))
        except Exception:
            logger.warning("Cannot listen for AG-UI stops on the channel layer.", exc_info=True)
    try:
        yield run
    finally:
        runs = _running.get(thread_id)
        if runs is not None:
            runs.discard(run)
            if not runs:
                del _running[thread_id]
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        if layer is not None and channel:
            with contextlib.suppress(Exception):
                await layer.group_discard(stop_group(thread_id), channel)
