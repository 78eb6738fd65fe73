"""One conversation turn, shared by every face (OpenAI, /ai/run, AG-UI, GraphQL, WebSocket).

A :class:`Turn` sends the request upstream, yields normalised deltas while folding them
into a complete answer, and when it ends (finished, failed or cancelled) records usage.
Faces only translate the request in and the deltas out.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction

from copilotedge import admission, exceptions, lifecycle, ratelimit
from copilotedge import background as db
from copilotedge.auth import check_model
from copilotedge.chat.deltas import Delta, ToolCallDelta, Usage
from copilotedge.conf import settings
from copilotedge.conversations import history
from copilotedge.upstream import resilience
from copilotedge.usage import ledger as usage
from copilotedge.usage import metrics

if TYPE_CHECKING:
    from copilotedge.auth import Principal
    from copilotedge.conversations.transcript import Transcript

logger = logging.getLogger(__name__)


@dataclass
class ChatRequest:
    """A validated request, whatever protocol it came in on."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    conversation_id: uuid.UUID | None = None
    #: False when the client named no model (a user's preferred model may then apply).
    model_given: bool = True
    #: Start a conversation with ``conversation_id`` if none has it (AG-UI threadIds).
    create_conversation: bool = False
    cache: str = (
        ""  # the client's X-CopilotEdge-Cache directive (see copilotedge.upstream.response_cache)
    )


@dataclass
class ToolCall:
    id: str
    name: str = ""
    arguments: str = ""

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


class Answer:
    """Folds deltas into the complete answer: text, tool calls, finish reason, usage."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.tool_calls: dict[int, ToolCall] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def add(self, delta: Delta) -> None:
        if delta.text:
            self._parts.append(delta.text)
        for piece in delta.tool_calls:
            self._add_tool_call(piece)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.usage is not None:
            self.usage = delta.usage

    def _add_tool_call(self, piece: ToolCallDelta) -> None:
        call = self.tool_calls.get(piece.index)
        if call is None:
            call = ToolCall(id=piece.id or f"call_{uuid.uuid4().hex[:24]}")
            self.tool_calls[piece.index] = call
        if piece.name:
            call.name = piece.name
        call.arguments += piece.arguments

    def final_finish_reason(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [call.as_openai() for call in self.tool_calls.values()]
        return message


def _chunk_callback() -> Callable[[str], Any] | None:
    return settings.ON_CHUNK


class Turn:
    """One request upstream and everything recorded about it.

    Streaming: ``await open()`` (upstream errors raise here, before any byte is sent),
    then ``async for delta in deltas()``. Not streaming: ``await complete()``.
    """

    def __init__(self, request: ChatRequest, principal: Principal, protocol: str) -> None:
        self.request = request
        self.principal = principal
        self.protocol = protocol
        self.id = uuid.uuid4()
        self.created = int(time.time())
        self.answer = Answer()
        self.model_served = request.model
        self.outcome = "ok"
        self.error: exceptions.CopilotEdgeError | None = None
        self.attempts = 0
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self.finished = False
        self.cache_status = "BYPASS"  # HIT, MISS or BYPASS (copilotedge.upstream.response_cache)
        self.cache_hit = False
        self._stream: resilience.DeltaStream | None = None
        self.reservation: ratelimit.Reservation | None = None
        # Conversation state (history.py): the stored answer, when there is one.
        self.prepared = False
        self.transcript: Transcript | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.request.messages

    async def prepare(self) -> None:
        """Apply preferences and stored history, admit the turn, then save it (once).

        History and preferences come first so admission sees the model and prompt that
        go upstream; saving comes last so a refused turn leaves nothing stored.
        """
        if not self.prepared:
            self.prepared = True
            await history.aprepare(self, self.admit)

    async def astart(self) -> None:
        """Prepare, then wait until a new conversation is stored (for a face that
        announces its id before the answer starts)."""
        await self.prepare()
        try:
            await history.astarted(self)
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
        await self.prepare()
        await self.admit()
        await db.arelease_connections()  # not held for the whole stream
        admission.release()  # from here it waits for upstream: let the next request in
        try:
            # Cache, retries, circuit breakers and fallbacks; counts self.attempts.
            with lifecycle.reading(self):  # a stop past its grace may interrupt it
                stream = await resilience.open_stream(self)
        except BaseException as error:
            self._fail(error)
            self.finish()
            raise
        try:
            # A new conversation was being saved meanwhile: stored before a byte goes out.
            await history.astarted(self)
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
        await db.arelease_connections()  # not held while upstream thinks
        admission.release()
        try:
            with lifecycle.reading(self):
                delta = await resilience.complete(self)
            await history.astarted(self)
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
        await history.asaved(self)

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

    def finish(self) -> None:
        """Record the turn once, without waiting for the database."""
        if self.finished:
            return
        self.finished = True
        history.finish(self)
        lifecycle.finished(self)
        created = self.transcript.created if self.transcript is not None else None
        if created is not None and not created.done():
            # Cancelled while its conversation was being saved: the ledger row points at
            # the conversation, so it is queued once that is settled.
            created.add_done_callback(lambda _: self._record())
        else:
            self._record()

    def _record(self) -> None:
        transcript = self.transcript
        if transcript is not None and transcript.created is not None:
            created = transcript.created
            if created.cancelled() or created.exception() is not None:
                transcript.deleted = True
        if transcript is not None and transcript.deleted:
            self.request.conversation_id = None  # the usage record must not point at it
        record = usage.record_turn(self)
        if self.reservation is not None:
            # The window is charged what the turn really used, off the hot path like the write.
            ratelimit.settle(self.reservation, record.total_tokens, record.cost)
