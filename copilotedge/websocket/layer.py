"""The channel layer as a socket sees it: an outage degrades resume and cancel, nothing more.

A consumer reads its channel for as long as it lives, and channels ends the consumer when
that read fails: with Redis unreachable, every socket would die at connect. Through
:class:`OutageTolerantLayer` a failed read is retried with a growing pause (the socket
goes on chatting meanwhile), and a failed ``group_add``/``group_discard``/``send`` is
logged and skipped: a resume then follows its answer by reading the stored row (the
watchdog in :mod:`copilotedge.websocket.resume`). Each failure is counted in the
``copilotedge_channel_layer_errors`` metric; everything works again once Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from copilotedge.log_limits import Throttle
from copilotedge.usage import metrics

logger = logging.getLogger(__name__)

#: Pauses between attempts to read a socket's channel while the layer is unreachable.
RETRY_FIRST, RETRY_MAX = 0.1, 2.0

_warnings = Throttle()


def _failed(operation: str) -> None:
    metrics.observe_channel_layer_error(operation)
    if _warnings.ready():
        logger.warning(
            "The channel layer failed (%s); live resume and remote cancel are degraded.",
            operation,
            exc_info=True,
        )


class OutageTolerantLayer:
    """Wraps a channel layer: reads retry, group changes and sends are best effort."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.layer, name)

    async def receive(self, channel: str) -> dict[str, Any]:
        pause = RETRY_FIRST
        while True:
            try:
                message: dict[str, Any] = await self.layer.receive(channel)
            except Exception:
                _failed("receive")
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
            else:
                return message

    async def _tolerated(self, operation: str, *args: Any) -> None:
        try:
            await getattr(self.layer, operation)(*args)
        except Exception:
            _failed(operation)

    async def group_add(self, group: str, channel: str) -> None:
        await self._tolerated("group_add", group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        await self._tolerated("group_discard", group, channel)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._tolerated("send", channel, message)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._tolerated("group_send", group, message)
