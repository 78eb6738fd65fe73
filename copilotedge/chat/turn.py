"""One conversation turn: the one orchestrator, shared by every face (OpenAI, /ai/run,
AG-UI, GraphQL, WebSocket, the Python API).

A :class:`Turn` asks each service in this order and gets values back; none of them knows
the turn:

1. :func:`copilotedge.conversations.history.plan_turn`: preferences and stored history applied,
   fitted to the budget (the request as it goes upstream);
2. :meth:`Turn.admit`: the key's models and the limiter's reservation
   (:func:`copilotedge.ratelimit.reserve`), on the prompt that goes upstream;
3. :func:`copilotedge.conversations.history.astore`: the turn's rows, and the
   :class:`~copilotedge.conversations.transcript.Transcript` that saves the answer as it grows;
4. :func:`copilotedge.upstream.resilience.open_stream` (or ``complete``): the answer, from the
   cache or upstream, with what was served in a :class:`~copilotedge.upstream.resilience.Served`;
5. with server tools (an agent's, :mod:`copilotedge.tools`): the model's calls of them run
   here, as the turn's user, and their results go back upstream in a further call (a
   step), until the model answers, up to ``COPILOTEDGE_MAX_TOOL_STEPS``; each step is
   reserved against the limits like the first. A ``confirm=True`` call whose approval the
   face defers to a later request (:class:`~copilotedge.tools.ApprovalDeferred`) ends the
   turn after its step, without going upstream again: the answer carries the step's calls
   and :attr:`Turn.deferred` names the waiting ones. The next turn gives every server tool
   call of its history still without a result one before it goes upstream: the calls a
   person approved since (``approvals``) run then, the others are denied;
6. at the end, one :class:`~copilotedge.chat.types.TurnRecord` for the stored answer
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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction

from copilotedge import exceptions, lifecycle, ratelimit, tools
from copilotedge.auth import check_model
from copilotedge.chat import token_estimates
from copilotedge.chat.deltas import (
    TOOL_CALL,
    TOOL_CONFIRM,
    TOOL_RESULT,
    Delta,
    ToolCallDelta,
    ToolStep,
    Usage,
)
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

    ``server_tools`` are offered to the model and run here when it calls them;
    ``approve`` asks a person about a ``confirm=True`` tool's call (none: denied; it may
    defer the answer to a later request). ``approvals`` gives the answers given since
    about deferred calls of the history (called once, when the turn answers those calls,
    after it was admitted): approved ones run before the first upstream call.
    """

    def __init__(
        self,
        request: ChatRequest,
        principal: Principal,
        protocol: str,
        *,
        server_tools: Sequence[tools.Tool] = (),
        approve: tools.Approver | None = None,
        approvals: Callable[[], Awaitable[Sequence[tools.Approval]]] | None = None,
    ) -> None:
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
        self.server_tools = {tool.name: tool for tool in server_tools}
        self.approve = approve
        self._approvals = approvals
        #: The answers about the history's deferred calls, by call id, once taken.
        self.approvals: dict[str, tools.Approval] = {}
        #: Server tool calls of the history without a result, answered before upstream.
        self._unanswered: list[ToolCall] = []
        #: The calls whose approval was deferred to a later request (the turn ended there).
        self.deferred: list[ToolCall] = []
        #: Upstream calls made, server tool steps run and server tool calls made.
        self.steps = 0
        self.tool_steps = 0
        self.tool_calls_run = 0
        #: The answer of the current upstream call (the turn's own, without server tools).
        self._step = self.answer
        self._usage: Usage | None = None
        self._more_reservations: list[ratelimit.Reservation] = []
        #: The estimated prompt of the next upstream call (kept up to date as the steps add
        #: messages, never made again from the whole prompt), and of all calls answered.
        self._prompt: token_estimates.PromptEstimate | None = None
        self._prompt_tokens_sent = 0
        if self.server_tools:
            self._offer_tools()

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
        plan = await history.plan_turn(self.principal, self.request)
        self.request = plan.request
        self.served = resilience.Served(self.request.model)
        await self.admit()
        self.transcript = await history.astore(self.principal, plan, self.answer)
        if self.transcript is not None:
            self.request.conversation_id = self.transcript.conversation_id
        if self.server_tools:
            self._unanswered = self._unanswered_calls()

    async def astart(self) -> None:
        """Prepare (for a face that announces the ids before the answer starts: a new
        conversation's rows are on their way, and a reader of its id waits for them)."""
        await self.prepare()

    async def admit(self) -> None:
        """Refuse a model the key may not use (403), a spent budget or too many tokens (429).

        Every face passes here first, so none of them checks these itself. A refused
        turn never reached upstream and records no usage.
        """
        if self.reservation is None:
            lifecycle.accepting()  # none once the server is stopping (503)
            check_model(self.principal, self.request.model)
            request = self.request
            self._prompt = token_estimates.PromptEstimate(request.messages, request.params)
            self.reservation = await ratelimit.reserve(self.principal, request, self._prompt.tokens)

    @property
    def _prompt_tokens(self) -> int | None:
        return None if self._prompt is None else self._prompt.tokens

    def _answered(self) -> None:
        """Count an upstream call that answered (or the cache for it): its prompt was
        billed (a refused or unreachable call is not)."""
        self._prompt_tokens_sent += self._prompt_tokens or 0

    def _add_messages(self, messages: list[dict[str, Any]]) -> None:
        """Append ``messages`` to what goes upstream next, and to its prompt's estimate."""
        self.request.messages = [*self.request.messages, *messages]
        if self._prompt is not None:
            self._prompt.add(messages)

    async def open(self) -> None:
        """Open the answer: from the cache, or upstream once it sent a first delta."""
        await self.prepare()
        await self.admit()
        if self._unanswered:
            # Their results go upstream with the first call: batches() answers them first.
            return
        try:
            self._stream = await self._open_step(self.started)
        except BaseException as error:
            self._fail(error)
            self.finish()
            raise

    async def _open_step(self, started: float) -> resilience.DeltaStream:
        """One upstream call: cache, retries, circuit breakers and fallbacks
        (``self.served`` counts the attempts of every step)."""
        self.steps += 1
        self._step = Answer() if self.server_tools else self.answer
        with lifecycle.reading(self):  # a stop past its grace may interrupt it
            stream = await resilience.open_stream(
                self.request, self._step, self.served, started=started
            )
        self._answered()
        return stream

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

        With server tools, the model's calls of them run here and the answer goes on in
        a further upstream call (a step); each step's calls, approvals and results come
        as deltas carrying a :class:`~copilotedge.chat.deltas.ToolStep`. Like upstream
        reads, running tools are interrupted by a stop past its grace.
        """
        if self._stream is None:
            await self.open()
        on_chunk = _chunk_callback()
        try:
            with metrics.track_stream(self.protocol):
                if self._unanswered:
                    answering = self._answer_calls()
                    async for batch in lifecycle.interruptible(self, answering):
                        yield batch
                    self._stream = await self._open_step(time.monotonic())
                while True:
                    assert self._stream is not None
                    async for batch in lifecycle.interruptible(self, self._stream.batches()):
                        if self.first_token_at is None:
                            self.first_token_at = time.monotonic()
                        if self.server_tools:
                            batch = self._fold_step(batch)
                        else:
                            for delta in batch:
                                self.answer.add(delta)
                        for delta in batch:
                            if self.transcript is not None:
                                self.transcript.grow(delta.text)
                            if delta.text and on_chunk is not None:
                                await self._call(on_chunk, delta.text)
                        if batch or not self.server_tools:
                            yield batch
                        # Let the face's writer send what it made of that batch before
                        # reading on: upstream data already buffered would be read and
                        # encoded first. (Here, not in the face: a stop from elsewhere
                        # must land in a read.)
                        await asyncio.sleep(0)
                    if not self.server_tools:
                        break
                    step = self._step
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
                        running = self._run_tools(step, ours)
                        async for batch in lifecycle.interruptible(self, running):
                            yield batch
                    if self.deferred or not ours or theirs:
                        # The answer, the client's own tools, or calls waiting for a
                        # person's answer in a later request: the client's turn now.
                        yield [self._hand_over(step, theirs, counted=bool(ours))]
                        break
                    await self._aclose_stream()
                    self._stream = await self._open_next_step()
                # The answer is whole: record it now (a new conversation's rows go with
                # its save, the ledger row in the same transaction). The id went out
                # with the first byte: if the rows could not be written, the client
                # hears it here.
                self.finish()
                await history.wait_until_stored(self.transcript)
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            await self._aclose_stream()
            self.finish()

    async def _open_next_step(self) -> resilience.DeltaStream:
        """The next upstream call, with the tool results; it counts against the token
        limit and the budget like the first (a spent budget ends the turn in-band)."""
        reservation = await ratelimit.reserve(self.principal, self.request, self._prompt_tokens)
        self._more_reservations.append(reservation)
        # Its own time limits: a tool or an approval may have taken long.
        return await self._open_step(time.monotonic())

    async def _aclose_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

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

    def _fold_step(self, batch: list[Delta]) -> list[Delta]:
        """Fold a step's deltas; pass on only their text (tool calls wait for the step's
        end, when it is known whose they are; usage is summed over the steps)."""
        shown = []
        for delta in batch:
            self._step.add(delta)
            if delta.text:
                text = Delta(text=delta.text)
                self.answer.add(text)
                shown.append(text)
        return shown

    def _sum_usage(self, usage: Usage | None) -> None:
        if usage is None:
            return
        total = self._usage or Usage()
        total.prompt_tokens += usage.prompt_tokens
        total.completion_tokens += usage.completion_tokens
        total.total_tokens += usage.total_tokens
        if usage.neurons is not None:
            total.neurons = (total.neurons or 0.0) + usage.neurons
        self._usage = total
        self.answer.usage = total

    def _hand_over(self, step: Answer, client_calls: list[ToolCall], *, counted: bool) -> Delta:
        """The last step's end as one delta: the client's tool calls, finish and usage
        (``counted``: the step's usage is already summed)."""
        if not counted:
            self._sum_usage(step.usage)
        first = len(self.answer.tool_calls)
        pieces = [
            ToolCallDelta(first + i, call.id, call.name, call.arguments)
            for i, call in enumerate(client_calls)
        ]
        end = Delta(
            tool_calls=pieces,
            finish_reason="tool_calls" if client_calls or self.deferred else step.finish_reason,
            usage=self._usage,
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
            context = self._context(call.id)
            result = await tools.arun(self.server_tools[call.name], request, context, approve)
            if result.outcome != tools.DEFERRED:  # no result yet: a person answers later
                ended = ToolStep(
                    TOOL_RESULT, call.id, call.name, call.arguments, result.content,
                    result.outcome, step=number,
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
                if not running.cancelled():
                    running.exception()  # the calls' CancelledError, told already
        deferred = [c for c, r in zip(calls, results, strict=True) if r.outcome == tools.DEFERRED]
        if deferred:
            # The turn ends here: the step's calls are the answer's own (stored as its tool
            # calls, the results of those that ran right after it).
            self.deferred = deferred
            self.tool_calls_run -= len(deferred)  # counted when they are answered
            first = len(self.answer.tool_calls)
            pieces = [
                ToolCallDelta(first + i, c.id, c.name, c.arguments) for i, c in enumerate(calls)
            ]
            self.answer.add(Delta(tool_calls=pieces))
            ran = [r.message() for r in results if r.outcome != tools.DEFERRED]
            history.save_steps(self.transcript, [], after=ran)
            return
        assistant = {
            "role": "assistant",
            "content": step.text,
            "tool_calls": [call.as_openai() for call in calls],
        }
        results_messages = [result.message() for result in results]
        self._add_messages([assistant, *results_messages])
        # Stored before the answer, which holds the text of every step.
        history.save_steps(self.transcript, [{**assistant, "content": ""}, *results_messages])

    def _context(self, tool_call_id: str) -> tools.ToolContext:
        return tools.ToolContext(
            user=self.principal.user,
            principal=self.principal,
            tool_call_id=tool_call_id,
            conversation_id=self.request.conversation_id,
        )

    def _unanswered_calls(self) -> list[ToolCall]:
        """The history's calls of this turn's server tools that have no result."""
        messages = self.request.messages
        answered = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
        calls = []
        for message in messages:
            if message.get("role") != "assistant":
                continue
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or call.get("id") in answered:
                    continue
                if function.get("name") in self.server_tools:
                    arguments = function.get("arguments")
                    calls.append(ToolCall(str(call["id"]), function["name"], str(arguments or "")))
                    answered.add(call.get("id"))
        return calls

    async def _answer_calls(self) -> AsyncGenerator[list[Delta], None]:
        """Give the history's server tool calls without a result one, before upstream.

        A call a person approved since runs now, as the turn's user (its permission
        checked again), with the call kept server-side, never the client's copy of it;
        any other (denied, cancelled, expired, unknown) is denied without running. Each
        result follows the assistant message that made its call.
        """
        calls, self._unanswered = self._unanswered, []
        self.tool_calls_run += len(calls)
        if self._approvals is not None:
            self.approvals = {a.call.id: a for a in await self._approvals()}

        async def answer(call: ToolCall) -> tools.ToolResult:
            tool = self.server_tools[call.name]
            approval = self.approvals.get(call.id)
            if approval is None or not approval.approved or approval.call.name != call.name:
                return tools.deny(tool, tools.ToolCallRequest(call.id, call.name, call.arguments))

            async def approved(_: tools.ToolCallRequest) -> bool:
                return True

            return await tools.arun(tool, approval.call, self._context(call.id), approved)

        results = await asyncio.gather(*(answer(call) for call in calls))
        yield [
            Delta(tool_step=ToolStep(
                TOOL_RESULT, r.tool_call_id, r.name, self._arguments(call), r.content, r.outcome
            ))
            for call, r in zip(calls, results, strict=True)
        ]  # fmt: skip
        by_call = {result.tool_call_id: result for result in results}
        messages: list[dict[str, Any]] = []
        for message in self.request.messages:
            if message.get("role") != "assistant" or not message.get("tool_calls"):
                messages.append(message)
                continue
            made = [
                {**c, "function": {**c["function"], "arguments": self._arguments(c)}}
                if isinstance(c, dict)
                and isinstance(c.get("function"), dict)
                and c.get("id") in self.approvals
                else c
                for c in message["tool_calls"]
            ]
            messages.append({**message, "tool_calls": made})
            messages += [
                by_call.pop(c["id"]).message()
                for c in made
                if isinstance(c, dict) and c.get("id") in by_call
            ]
        self.request.messages = messages
        answers = [result.message() for result in results]
        # The calls' arguments may have changed too (the server's copy of approved ones).
        self._prompt = token_estimates.PromptEstimate(messages, self.request.params)
        # Stored before the answer, after the stored call they answer.
        history.save_steps(self.transcript, answers)

    def _arguments(self, call: ToolCall | dict[str, Any]) -> str:
        """The arguments the model gave: kept server-side when approved, else as sent."""
        call_id = call.id if isinstance(call, ToolCall) else call.get("id")
        approval = self.approvals.get(str(call_id))
        if approval is not None:
            return approval.call.arguments
        if isinstance(call, ToolCall):
            return call.arguments
        return str(call["function"].get("arguments") or "")

    async def complete(self) -> Answer:
        if self.server_tools:
            # The steps are streamed from upstream; the client gets the whole answer.
            async for _ in self.batches():
                pass
            await self.wait_until_saved()
            return self.answer
        await self.prepare()
        await self.admit()
        try:
            self.steps += 1
            with lifecycle.reading(self):
                delta = await resilience.complete(self.request, self.served, started=self.started)
            self._answered()
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
        await history.wait_until_stored(self.transcript)  # a new conversation's rows
        await self.wait_until_saved()
        return self.answer

    async def wait_until_saved(self) -> None:
        """Wait until the stored answer is final (a face says "done" after it: what the
        client sends or fetches next sees the whole answer)."""
        await history.wait_until_saved(self.transcript)

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
            started = bool(
                self.answer.text or self.answer.tool_calls or self.tool_steps or self.tool_calls_run
            )
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
            steps=max(1, self.steps),
            tool_calls_run=self.tool_calls_run,
            prompt_tokens_estimate=self._prompt_tokens_sent or self._prompt_tokens,
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
        # After the answer's save: the writer keeps their order, so the ledger row comes
        # after a new conversation's rows it points at (if those fail, the writer saves
        # the row without the link).
        self._account()

    def _account(self) -> None:
        """The ledger row and the limiter's settlement (both off the hot path)."""
        assert self.record is not None
        transcript = self.transcript
        if transcript is not None and transcript.created is not None:
            created = transcript.created
            if created.done() and (created.cancelled() or created.exception() is not None):
                transcript.deleted = True
        if transcript is not None and transcript.deleted:
            self.request.conversation_id = None  # the usage record must not point at it
            self.record = dataclasses.replace(self.record, conversation_id=None)
        row = ledger.record(self.record)
        if self.reservation is not None:
            # The window is charged what the turn really used, off the hot path like the write.
            ratelimit.settle(self.reservation, row.total_tokens, row.cost)
        for reservation in self._more_reservations:
            ratelimit.settle(reservation, 0)  # the first settlement charged every step


def _tool_name(definition: dict[str, Any]) -> Any:
    function = definition.get("function")
    return (function if isinstance(function, dict) else definition).get("name")
