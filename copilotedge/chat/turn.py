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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction

from copilotedge import admission, exceptions, ratelimit, tools
from copilotedge import background as db
from copilotedge.auth import check_model
from copilotedge.chat.deltas import (
    TOOL_CALL,
    TOOL_CONFIRM,
    TOOL_RESULT,
    Delta,
    ToolCallDelta,
    ToolStep,
    Usage,
)
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

    def __init__(
        self,
        request: ChatRequest,
        principal: Principal,
        protocol: str,
        *,
        server_tools: Sequence[tools.Tool] = (),
        approve: tools.Approver | None = None,
    ) -> None:
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
        # Server-side tools (the agent's): the model may call them, the turn runs them.
        self.server_tools = {tool.name: tool for tool in server_tools}
        self.approve = approve
        #: Upstream answers asked for, tool steps run and tool calls made (the ledger's).
        self.steps = 0
        self.tool_steps = 0
        self.tool_calls_run = 0
        #: The assistant tool-call and ``role: tool`` messages of the steps, in order.
        self.tool_messages: list[dict[str, Any]] = []
        self._usage_so_far: Usage | None = None
        self._more_reservations: list[ratelimit.Reservation] = []
        if self.server_tools:
            self._offer_tools()

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
            check_model(self.principal, self.request.model)
            self.reservation = await ratelimit.areserve(self.principal, self.request)

    async def open(self) -> None:
        await self.prepare()
        await self.admit()
        await db.arelease_connections()  # not held for the whole stream
        admission.release()  # from here it waits for upstream: let the next request in
        try:
            # Cache, retries, circuit breakers and fallbacks; counts self.attempts.
            self.steps += 1
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
        """The deltas of each upstream read together (faces write each batch at once).

        With server tools, the model's calls of them are run here and the answer goes on
        in a further upstream call (a step), up to ``COPILOTEDGE_MAX_TOOL_STEPS``; each
        step's calls, approvals and results come as deltas carrying a :class:`ToolStep`.
        """
        if self._stream is None:
            await self.open()
        assert self._stream is not None
        on_chunk = _chunk_callback()
        try:
            with metrics.track_stream(self.protocol):
                while True:
                    step = Answer() if self.server_tools else self.answer
                    async for batch in self._stream.batches():
                        if self.first_token_at is None:
                            self.first_token_at = time.monotonic()
                        if self.server_tools:
                            batch = self._fold_step(batch, step)
                        for delta in batch:
                            if not self.server_tools:
                                self.answer.add(delta)
                            if self.transcript is not None:
                                self.transcript.grow(delta.text)
                            if delta.text and on_chunk is not None:
                                await self._call(on_chunk, delta.text)
                        if batch:
                            yield batch
                        # Let the face's writer send what it made of that batch before
                        # reading on: upstream data already buffered would be read and
                        # encoded first. (Here, not in the face: a stop from elsewhere
                        # must land in a read.)
                        await asyncio.sleep(0)
                    if not self.server_tools:
                        break
                    calls = list(step.tool_calls.values())
                    ours = [call for call in calls if call.name in self.server_tools]
                    theirs = [call for call in calls if call.name not in self.server_tools]
                    if ours:
                        if self.tool_steps >= settings.MAX_TOOL_STEPS:
                            raise exceptions.ToolStepsExceeded(
                                "The model asked for tools again after "
                                f"{settings.MAX_TOOL_STEPS} tool steps "
                                "(COPILOTEDGE_MAX_TOOL_STEPS); the turn ends here."
                            )
                        async for batch in self._run_tools(step, ours):
                            yield batch
                    if not ours or theirs:
                        # The answer, or the client's own tools: the client's turn now.
                        yield [self._hand_over(step, theirs)]
                        break
                    await self._aclose_stream()
                    self._stream = await self._open_next_step()
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            await self._aclose_stream()
            self.finish()

    async def _open_next_step(self) -> resilience.DeltaStream:
        """The next upstream call, with the tool results; it counts against the token
        limit and the budget like the first (a spent budget ends the turn in-band)."""
        self._more_reservations.append(await ratelimit.areserve(self.principal, self.request))
        self.steps += 1
        return await resilience.open_stream(self)

    async def _aclose_stream(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()

    # Server tools ---------------------------------------------------------------------

    def _offer_tools(self) -> None:
        """Add the server tools' definitions to what the client offers the model."""
        params = dict(self.request.params)
        offered = [
            t
            for t in params.get("tools") or []
            if not (isinstance(t, dict) and _tool_name(t) in self.server_tools)
        ]
        params["tools"] = offered + [tool.definition() for tool in self.server_tools.values()]
        self.request.params = params
        # An answer built from one user's tool results is nobody else's.
        self.request.cache = "bypass"

    def _fold_step(self, batch: list[Delta], step: Answer) -> list[Delta]:
        """Fold a step's deltas; pass on only their text (tool calls wait for the step's
        end, when it is known whose they are; usage is summed over the steps)."""
        shown = []
        for delta in batch:
            step.add(delta)
            if delta.text:
                text = Delta(text=delta.text)
                self.answer.add(text)
                shown.append(text)
        return shown

    def _sum_usage(self, usage: Usage | None) -> None:
        if usage is None:
            return
        total = self._usage_so_far or Usage()
        total.prompt_tokens += usage.prompt_tokens
        total.completion_tokens += usage.completion_tokens
        total.total_tokens += usage.total_tokens
        if usage.neurons is not None:
            total.neurons = (total.neurons or 0.0) + usage.neurons
        self._usage_so_far = total
        self.answer.usage = total

    def _hand_over(self, step: Answer, client_calls: list[ToolCall]) -> Delta:
        """The last step's end as one delta: the client's tool calls, finish and usage."""
        self._sum_usage(step.usage)
        first = len(self.answer.tool_calls)
        pieces = [
            ToolCallDelta(first + i, call.id, call.name, call.arguments)
            for i, call in enumerate(client_calls)
        ]
        end = Delta(
            tool_calls=pieces,
            finish_reason="tool_calls" if client_calls else step.finish_reason,
            usage=self._usage_so_far,
        )
        self.answer.add(end)
        return end

    async def _run_tools(
        self, step: Answer, calls: list[ToolCall]
    ) -> AsyncGenerator[list[Delta], None]:
        """Run one step's server tool calls at once, as the turn's user; a delta for each
        call, approval asked and result, as they happen. Closing this cancels the tools."""
        self._sum_usage(step.usage)
        self.tool_steps += 1
        self.tool_calls_run += len(calls)
        number = self.tool_steps
        yield [
            Delta(tool_step=ToolStep(TOOL_CALL, c.id, c.name, c.arguments, step=number))
            for c in calls
        ]
        events: asyncio.Queue[Delta | None] = asyncio.Queue()

        async def approve(call: tools.ToolCallRequest) -> bool:
            confirm = ToolStep(TOOL_CONFIRM, call.id, call.name, call.arguments, step=number)
            events.put_nowait(Delta(tool_step=confirm))
            return self.approve is not None and await self.approve(call)

        async def run(call: ToolCall) -> tools.ToolResult:
            request = tools.ToolCallRequest(call.id, call.name, call.arguments)
            context = tools.ToolContext(
                user=self.principal.user,
                principal=self.principal,
                tool_call_id=call.id,
                conversation_id=self.request.conversation_id,
            )
            result = await tools.arun(self.server_tools[call.name], request, context, approve)
            ended = ToolStep(
                TOOL_RESULT, call.id, call.name, call.arguments, result.content, result.outcome,
                step=number,
            )  # fmt: skip
            events.put_nowait(Delta(tool_step=ended))
            return result

        running = asyncio.ensure_future(asyncio.gather(*(run(call) for call in calls)))
        running.add_done_callback(lambda _: events.put_nowait(None))
        try:
            # Results arrive before the end marker: it is queued once all calls ended.
            while (event := await events.get()) is not None:
                yield [event]
            results = running.result()
        finally:
            if not running.done():
                running.cancel()
                await asyncio.wait({running})
        assistant = {
            "role": "assistant",
            "content": step.text,
            "tool_calls": [call.as_openai() for call in calls],
        }
        messages = [assistant, *(result.message() for result in results)]
        self.tool_messages += messages
        self.request.messages = [*self.request.messages, *messages]

    async def complete(self) -> Answer:
        if self.server_tools:
            # The steps are streamed from upstream; the client gets the whole answer.
            async for _ in self.batches():
                pass
            await self.asaved()
            return self.answer
        await self.prepare()
        await self.admit()
        await db.arelease_connections()  # not held while upstream thinks
        admission.release()
        try:
            self.steps += 1
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
            self.outcome = "incomplete" if started else "error"
        else:
            self.error = exceptions.CopilotEdgeError()
            self.outcome = "error"

    def finish(self) -> None:
        """Record the turn once, without waiting for the database."""
        if self.finished:
            return
        self.finished = True
        history.finish(self)
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
        for reservation in self._more_reservations:
            ratelimit.settle(reservation, 0)  # the first settlement charged every step


def _tool_name(definition: dict[str, Any]) -> Any:
    function = definition.get("function")
    return (function if isinstance(function, dict) else definition).get("name")
