"""One attempt at one candidate, under the time limits: a stream or a whole answer.

:mod:`copilotedge.upstream.resilience` decides which candidate to try and when (cache, breakers,
retries, fallbacks); an attempt here opens the stream and waits for its first meaningful
delta within ``FIRST_TOKEN_TIMEOUT`` (or what is left of the retry deadline), or fetches
the whole answer within the turn's ``TOTAL_TIMEOUT``. A timeout becomes
:class:`~copilotedge.exceptions.UpstreamTimeout`, which the caller may retry. Once handed
back, a :class:`TimedStream` keeps the between-token and overall limits, so a stalled
stream ends with an error, never a hang; and the overall limit holds for a client that
stops reading too (its upstream connection is let go at the deadline).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from copilotedge import exceptions
from copilotedge.chat.deltas import Delta
from copilotedge.conf import settings
from copilotedge.upstream import client as cloudflare

if TYPE_CHECKING:
    from copilotedge.chat.types import ChatRequest
    from copilotedge.upstream.fallbacks import Candidate


class TimedStream:
    """An opened upstream stream whose first meaningful delta is already in hand.

    ``batches()`` enforces the between-token (``READ_TIMEOUT``) and overall
    (``TOTAL_TIMEOUT``) limits, and calls ``on_end`` once with how it ended. The overall
    limit does not wait for a read: if the consumer is not reading at the deadline (a
    client that stopped reading holds its writer up), upstream is hung up on then, and
    the next read ends the stream with :class:`~copilotedge.exceptions.UpstreamTimeout`.
    """

    def __init__(
        self,
        stream: cloudflare.UpstreamStream,
        iterator: AsyncIterator[list[Delta]],
        head: list[list[Delta]],
        deadline: float,
    ) -> None:
        self._stream = stream
        self._iterator = iterator
        self._head = head
        self._deadline = deadline
        self._read_timeout = settings.READ_TIMEOUT
        self.on_end: Callable[[BaseException | None], Awaitable[None]] | None = None
        self._reading = False
        self._expired = False
        self._hangup: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(deadline - time.monotonic(), 0), self._expire)

    def _expire(self) -> None:
        # A read in progress has its own timeout at the deadline: closing the response
        # under it would race it.
        if self._reading:
            return
        self._expired = True
        self._hangup = asyncio.get_running_loop().create_task(self._stream.aclose())

    async def batches(self) -> AsyncIterator[list[Delta]]:
        ended: BaseException | None = None
        try:
            while self._head:
                yield self._head.pop(0)
            while True:
                if self._expired:
                    raise exceptions.UpstreamTimeout("The answer took longer than allowed.")
                remaining = self._deadline - time.monotonic()
                self._reading = True
                try:
                    async with asyncio.timeout(min(self._read_timeout, max(remaining, 0))):
                        batch = await anext(self._iterator)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    message = (
                        "The answer took longer than allowed."
                        if remaining <= self._read_timeout
                        else "The model provider stalled mid-answer."
                    )
                    raise exceptions.UpstreamTimeout(message) from None
                finally:
                    self._reading = False
                yield batch
        except BaseException as error:
            ended = error
            raise
        finally:
            await self.aclose()
            if self.on_end is not None:
                on_end, self.on_end = self.on_end, None
                await on_end(ended)

    async def aclose(self) -> None:
        self._timer.cancel()
        if self._hangup is not None:
            await self._hangup
        await self._stream.aclose()

    async def abort(self, error: BaseException) -> None:
        await self.aclose()
        if self.on_end is not None:
            on_end, self.on_end = self.on_end, None
            await on_end(error)


async def open_attempt(
    request: ChatRequest, candidate: Candidate, remaining: float, *, started: float
) -> TimedStream:
    """Open ``candidate``'s stream and read it up to its first meaningful delta, in time.

    ``started`` is when the turn started (its overall limit counts from there).
    """
    limit = min(settings.FIRST_TOKEN_TIMEOUT, remaining)
    stream: cloudflare.UpstreamStream | None = None
    try:
        async with asyncio.timeout(limit):
            stream = await cloudflare.open_stream(
                candidate.model, request.messages, request.params, candidate.upstream
            )
            iterator = stream.batches()
            head = await _first_batches(iterator)
    except TimeoutError:
        if stream is not None:
            await stream.aclose()
        raise exceptions.UpstreamTimeout(
            f"The model provider sent nothing within {limit:.0f} s."
        ) from None
    except BaseException:
        if stream is not None:
            await stream.aclose()
        raise
    return TimedStream(stream, iterator, head, started + settings.TOTAL_TIMEOUT)


async def _first_batches(iterator: AsyncIterator[list[Delta]]) -> list[list[Delta]]:
    """Batches up to the first delta that carries something (a role-only frame does not)."""
    head: list[list[Delta]] = []
    async for batch in iterator:
        head.append(batch)
        if any(d.text or d.tool_calls or d.finish_reason or d.usage for d in batch):
            break
    return head


async def complete_attempt(
    request: ChatRequest, candidate: Candidate, remaining: float, *, started: float
) -> Delta:
    """``candidate``'s whole answer, within what is left of the turn's overall limit."""
    # The whole answer is "before the first byte" here, so only the connect and first-token
    # limits differ from the streamed case: the overall limit bounds the rest.
    limit = max(0.0, started + settings.TOTAL_TIMEOUT - time.monotonic())
    try:
        async with asyncio.timeout(limit):
            return await cloudflare.complete(
                candidate.model, request.messages, request.params, candidate.upstream
            )
    except TimeoutError:
        raise exceptions.UpstreamTimeout("The answer took longer than allowed.") from None
