"""One conversation turn: the one orchestrator, shared by every face (OpenAI, /ai/run,
AG-UI, GraphQL, WebSocket, the Python API).

A :class:`Turn` asks each service in this order and gets values back; none of them knows
the turn:

1. :func:`copilotedge.conversations.history.aplan`: preferences and stored history applied,
   fitted to the budget (the request as it goes upstream);
2. :meth:`Turn.admit`: the key's models and the limiter's reservation
   (:func:`copilotedge.ratelimit.areserve`), on the prompt that goes upstream;
3. :func:`copilotedge.conversations.history.astore`: the turn's rows, and the
   :class:`~copilotedge.conversations.transcript.Transcript` that saves the answer as it grows;
4. :func:`copilotedge.upstream.resilience.open_stream` (or ``complete``): the answer, from the
   cache or upstream, with what was served in a :class:`~copilotedge.upstream.resilience.Served`;
5. at the end, one :class:`~copilotedge.chat.types.TurnRecord` for the stored answer
   (``history.finish``), the ledger (:func:`copilotedge.usage.ledger.record`) and the
   limiter's settlement, all scheduled, never waited for.

A face runs the steps (:mod:`copilotedge.chat.faces` does it for every face): ``await
prepare()`` does the database and limit work, then the face lets go of what its request
holds, then ``await open()`` (upstream errors raise here, before any byte is sent) and
``async for delta in deltas()``, or ``await complete()`` when not streaming. Faces only
translate the request in and the deltas out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction

from copilotedge import exceptions, lifecycle, ratelimit
from copilotedge.auth import check_model
from copilotedge.chat.deltas import Delta
from copilotedge.chat.types import Answer, ChatRequest, ToolCall, TurnRecord
from copilotedge.conf import settings
from copilotedge.conversations import history
from copilotedge.upstream import resilience
from copilotedge.usage import ledger, metrics

if TYPE_CHECKING:
    from copilotedge.auth import Principal
    from copilotedge.conversations.transcript import Transcript

logger = logging.getLogger(__name__)


def _chunk_callback() -> Callable[[str], Any] | None:
    return settings.ON_CHUNK


class Turn:
    """One request upstream and everything recorded about it.

    Streaming: ``await prepare()``, ``await open()``, then ``async for delta in
    deltas()``. Not streaming: ``await prepare()``, then ``await complete()``. (``open``
    and ``complete`` prepare a turn that is not yet.)
    """

    def __init__(self, request: ChatRequest, principal: Principal, protocol: str) -> None:
        self.request = request
        self.principal = principal
        self.protocol = protocol
        self.id = uuid.uuid4()
        self.created = int(time.time())
        self.answer = Answer()
        #: The model that answered, the attempts upstream and the cache's part.
        self.served = resilience.Served(request.model)
        self.outcome = "ok"
        self.error: exceptions.CopilotEdgeError | None = None
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        #: How the turn ended, once it did (what bookkeeping was given).
        self.record: TurnRecord | None = None
        self._stream: resilience.DeltaStream | None = None
        self.reservation: ratelimit.Reservation | None = None
        self.prepared = False
        #: The stored answer, when the turn is stored.
        self.transcript: Transcript | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.request.messages

    @property
    def model_served(self) -> str:
        return self.served.model

    @property
    def attempts(self) -> int:
        return self.served.attempts

    @property
    def cache_status(self) -> str:
        """HIT, MISS or BYPASS (the ``X-CopilotEdge-Cache`` response header)."""
        return self.served.cache_status

    @property
    def finished(self) -> bool:
        return self.record is not None

    async def prepare(self) -> None:
        """Plan the history, admit the turn, then store it (once).

        History and preferences come first so admission sees the model and prompt that
        go upstream; storing comes last so a refused turn leaves nothing stored.
        """
        if self.prepared:
            return
        self.prepared = True
        plan = await history.aplan(self.principal, self.request)
        self.request = plan.request
        self.served = resilience.Served(self.request.model)
        await self.admit()
        self.transcript = await history.astore(self.principal, plan, self.answer)
        if self.transcript is not None:
            self.request.conversation_id = self.transcript.conversation_id

    async def astart(self) -> None:
        """Prepare, then wait until a new conversation is stored (for a face that
        announces its id before the answer starts)."""
        await self.prepare()
        try:
            await history.astarted(self.transcript)
        except BaseException as error:
            self._fail(error)
            self.finish()
            raise

    async def admit(self) -> None:
        """Refuse a model the key may not use (403), a spent budget or too many tokens (429).

        Every face passes here first, so none of them checks these itself. A refused
        turn never reached upstream and records no usage.
        """
        if self.reservation is None:
            lifecycle.accepting()  # none once the server is stopping (503)
            check_model(self.principal, self.request.model)
            self.reservation = await ratelimit.areserve(self.principal, self.request)

    async def open(self) -> None:
        """Open the answer: from the cache, or upstream once it sent a first delta."""
        await self.prepare()
        await self.admit()
        try:
            # Cache, retries, circuit breakers and fallbacks; self.served counts attempts.
            with lifecycle.reading(self):  # a stop past its grace may interrupt it
                stream = await resilience.open_stream(
                    self.request, self.answer, self.served, started=self.started
                )
        except BaseException as error:
            self._fail(error)
            self.finish()
            raise
        try:
            # A new conversation was being saved meanwhile: stored before a byte goes out.
            await history.astarted(self.transcript)
        except BaseException as error:
            self._fail(error)
            await stream.abort(error)
            self.finish()
            raise
        self._stream = stream

    async def deltas(self) -> AsyncIterator[Delta]:
        batches = self.batches()
        try:
            async for batch in batches:
                for delta in batch:
                    yield delta
        finally:
            # Closing this generator must hang up now, not when the inner one is collected.
            await batches.aclose()

    async def batches(self) -> AsyncGenerator[list[Delta], None]:
        """The deltas of each upstream read together (faces write each batch at once)."""
        if self._stream is None:
            await self.open()
        assert self._stream is not None
        on_chunk = _chunk_callback()
        try:
            with metrics.track_stream(self.protocol):
                async for batch in lifecycle.interruptible(self, self._stream.batches()):
                    if self.first_token_at is None:
                        self.first_token_at = time.monotonic()
                    for delta in batch:
                        self.answer.add(delta)
                        if self.transcript is not None:
                            self.transcript.grow(delta.text)
                        if delta.text and on_chunk is not None:
                            await self._call(on_chunk, delta.text)
                    yield batch
                    # Let the face's writer send what it made of that batch before reading
                    # on: upstream data already buffered would be read and encoded first.
                    # (Here, not in the face: a stop from elsewhere must land in a read.)
                    await asyncio.sleep(0)
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            await self._stream.aclose()
            self.finish()

    async def complete(self) -> Answer:
        await self.prepare()
        await self.admit()
        try:
            with lifecycle.reading(self):
                delta = await resilience.complete(self.request, self.served, started=self.started)
            await history.astarted(self.transcript)
            self.first_token_at = time.monotonic()
            self.answer.add(delta)
            on_chunk = _chunk_callback()
            if delta.text and on_chunk is not None:
                await self._call(on_chunk, delta.text)
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            self.finish()
        await self.asaved()
        return self.answer

    async def asaved(self) -> None:
        """Wait until the stored answer is final (a face says "done" after it: what the
        client sends or fetches next sees the whole answer)."""
        await history.asaved(self.transcript)

    async def _call(self, callback: Callable[[str], Any], text: str) -> None:
        try:
            if iscoroutinefunction(callback):
                await callback(text)
            else:
                callback(text)
        except Exception:
            logger.exception("COPILOTEDGE_ON_CHUNK raised; the stream goes on.")

    def _fail(self, error: BaseException) -> None:
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            self.outcome = "cancelled"
        elif isinstance(error, exceptions.CopilotEdgeError):
            self.error = error
            started = bool(self.answer.text or self.answer.tool_calls)
            interrupted = isinstance(error, exceptions.ShuttingDown)  # by a stop: not its fault
            self.outcome = "incomplete" if started or interrupted else "error"
        else:
            self.error = exceptions.CopilotEdgeError()
            self.outcome = "error"

    def as_record(self) -> TurnRecord:
        """The turn as it stands: its final record once it ended, else one made now."""
        if self.record is not None:
            return self.record
        answer = self.answer
        return TurnRecord(
            id=self.id,
            principal=self.principal,
            protocol=self.protocol,
            model_requested=self.request.model,
            model_served=self.served.model,
            messages=self.request.messages,
            params=self.request.params,
            conversation_id=self.request.conversation_id,
            outcome=self.outcome,
            error=self.error,
            attempts=self.served.attempts,
            cache_status=self.served.cache_status,
            started=self.started,
            first_token_at=self.first_token_at,
            ended=time.monotonic(),
            text=answer.text,
            tool_calls=tuple(
                ToolCall(call.id, call.name, call.arguments) for call in answer.tool_calls.values()
            ),
            finish_reason=answer.finish_reason,
            usage=answer.usage,
        )

    def finish(self) -> None:
        """Record the turn once, without waiting for the database."""
        if self.record is not None:
            return
        transcript = self.transcript
        if transcript is not None and transcript.deleted:
            self.request.conversation_id = None  # the usage record must not point at it
        self.record = self.as_record()
        history.finish(transcript, self.record)
        lifecycle.finished(self)
        created = transcript.created if transcript is not None else None
        if created is not None and not created.done():
            # Cancelled while its conversation was being saved: the ledger row points at
            # the conversation, so it is queued once that is settled.
            created.add_done_callback(lambda _: self._account())
        else:
            self._account()

    def _account(self) -> None:
        """The ledger row and the limiter's settlement (both off the hot path)."""
        assert self.record is not None
        transcript = self.transcript
        if transcript is not None and transcript.created is not None:
            created = transcript.created
            if created.cancelled() or created.exception() is not None:
                transcript.deleted = True
        if transcript is not None and transcript.deleted:
            self.request.conversation_id = None  # the usage record must not point at it
            self.record = dataclasses.replace(self.record, conversation_id=None)
        row = ledger.record(self.record)
        if self.reservation is not None:
            # The window is charged what the turn really used, off the hot path like the write.
            ratelimit.settle(self.reservation, row.total_tokens, row.cost)
