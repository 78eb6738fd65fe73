"""The AG-UI face: a ``RunAgentInput`` in, a turn run, AG-UI events out.

Event models and their SSE encoding come from the ``ag-ui-protocol`` package. The order
is the one AG-UI clients verify: ``RUN_STARTED``, then text messages and tool calls
(each opened, filled and closed), then exactly one of ``RUN_FINISHED``/``RUN_ERROR``.
A run whose ``confirm=True`` server tool calls wait for a person ends with
``RUN_FINISHED`` whose outcome is an interrupt per call
(:mod:`copilotedge.copilotkit.agui.interrupts`).

This module streams the events; the input side (``RunAgentInput`` to ``ChatRequest``) is
:mod:`copilotedge.copilotkit.agui.input` and threads as stored conversations are
:mod:`copilotedge.copilotkit.agui.threads`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ag_ui.core import (
    BaseEvent,
    MessagesSnapshotEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)
from ag_ui.encoder import EventEncoder

from copilotedge import tools
from copilotedge.chat import wire
from copilotedge.chat.deltas import TOOL_CALL, TOOL_RESULT, ToolStep
from copilotedge.chat.turn import Turn
from copilotedge.copilotkit.agui.input import (
    chat_request,
    context_message,
    openai_messages,
    parse_run_input,
)
from copilotedge.copilotkit.agui.interrupts import interrupt
from copilotedge.copilotkit.agui.threads import (
    owned_thread,
    snapshot_message,
    thread_conversation_id,
)
from copilotedge.exceptions import CopilotEdgeError
from copilotedge.models import Message

# The input and thread helpers were defined here; the views and tests still use them here.
__all__ = [
    "PROTOCOL_VERSION",
    "PROVIDER",
    "chat_request",
    "connect_events",
    "context_message",
    "encode",
    "openai_messages",
    "owned_thread",
    "parse_run_input",
    "run_error",
    "run_events",
    "snapshot_message",
    "thread_conversation_id",
    "token_usage",
]

logger = logging.getLogger(__name__)

PROVIDER = "workers-ai"
# The AG-UI protocol version this face speaks (sent on RUN_STARTED).
PROTOCOL_VERSION = "1.0"
_ENCODER = EventEncoder()


def encode(event: BaseEvent) -> bytes:
    return _ENCODER.encode(event).encode()


def token_usage(turn: Turn) -> TokenUsage:
    counts = wire.usage_of(turn)
    return TokenUsage(
        provider=PROVIDER,
        model=turn.model_served,
        input_tokens=counts["prompt_tokens"],
        output_tokens=counts["completion_tokens"],
        total_tokens=counts["total_tokens"],
    )


def run_error(error: CopilotEdgeError) -> RunErrorEvent:
    return RunErrorEvent(message=error.message, code=error.code or error.type)


class _Events:
    """Turns deltas into AG-UI events, opening and closing messages and tool calls in order."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.message_id: str | None = None  # the open text message
        self.parent_id = str(uuid.uuid4())  # the assistant message tool calls belong to
        self.open_calls: dict[int, str] = {}
        self.pending_args: dict[int, str] = {}
        self.started_calls: set[int] = set()

    def text(self, text: str) -> list[BaseEvent]:
        events: list[BaseEvent] = self.close_calls()
        if self.message_id is None:
            self.message_id = str(uuid.uuid4())
            self.parent_id = self.message_id
            events.append(TextMessageStartEvent(message_id=self.message_id, role="assistant"))
        events.append(TextMessageContentEvent(message_id=self.message_id, delta=text))
        return events

    def tool_call(self, index: int, name: str | None, arguments: str) -> list[BaseEvent]:
        events: list[BaseEvent] = self.close_text()
        call = self.turn.answer.tool_calls[index]
        if index not in self.started_calls:
            if not (name or call.name):  # the name comes first; hold arguments until it does
                self.pending_args[index] = self.pending_args.get(index, "") + arguments
                return events
            self.started_calls.add(index)
            self.open_calls[index] = call.id
            events.append(
                ToolCallStartEvent(
                    tool_call_id=call.id, tool_call_name=call.name, parent_message_id=self.parent_id
                )
            )
            arguments = self.pending_args.pop(index, "") + arguments
        if arguments and index in self.open_calls:
            events.append(ToolCallArgsEvent(tool_call_id=call.id, delta=arguments))
        return events

    def tool_step(self, step: ToolStep) -> list[BaseEvent]:
        """A server tool's call (shown whole: it runs here) or its result. A call waiting
        for approval has no further event: the run's interrupt outcome asks for it."""
        events: list[BaseEvent] = self.close()
        if step.kind == TOOL_CALL:
            events += [
                ToolCallStartEvent(
                    tool_call_id=step.tool_call_id,
                    tool_call_name=step.name,
                    parent_message_id=self.parent_id,
                ),
                ToolCallArgsEvent(tool_call_id=step.tool_call_id, delta=step.arguments or "{}"),
                ToolCallEndEvent(tool_call_id=step.tool_call_id),
            ]
        elif step.kind == TOOL_RESULT:
            events.append(
                ToolCallResultEvent(
                    message_id=str(uuid.uuid4()),
                    tool_call_id=step.tool_call_id,
                    content=step.content,
                    role="tool",
                )
            )
            # What the model says next is a new assistant message.
            self.parent_id = str(uuid.uuid4())
        return events

    def close_text(self) -> list[BaseEvent]:
        if self.message_id is None:
            return []
        message_id, self.message_id = self.message_id, None
        return [TextMessageEndEvent(message_id=message_id)]

    def close_calls(self) -> list[BaseEvent]:
        events: list[BaseEvent] = [
            ToolCallEndEvent(tool_call_id=i) for i in self.open_calls.values()
        ]
        self.open_calls.clear()
        return events

    def close(self) -> list[BaseEvent]:
        return self.close_text() + self.close_calls()


async def run_events(
    turn: Turn,
    run_input: RunAgentInput,
    stopped: asyncio.Event,
    *,
    opened: bool,
    waiting: Sequence[tools.PendingApproval] = (),
) -> AsyncIterator[bytes]:
    """The run's event stream. ``opened`` is false when ``turn.open()`` failed upstream.

    A stop (``stopped`` set) hangs up upstream and ends the run with ``RUN_FINISHED``
    whose result says ``stopped``; any failure ends it with ``RUN_ERROR``. When the turn
    ended on calls waiting for approval (kept in ``waiting`` by the turn's approver),
    ``RUN_FINISHED``'s outcome is an interrupt per call.
    """
    thread_id, run_id = run_input.thread_id, run_input.run_id
    yield encode(
        RunStartedEvent(thread_id=thread_id, run_id=run_id, protocol_version=PROTOCOL_VERSION)
    )
    if not opened:
        assert turn.error is not None
        yield encode(run_error(turn.error))
        return
    events = _Events(turn)
    batches = aiter(turn.batches())
    was_stopped = False
    try:
        while True:
            batch = await _next_or_stop(batches, stopped)
            if batch is None:
                was_stopped = stopped.is_set()
                break
            out: list[BaseEvent] = []  # one write for everything one upstream read brought
            for delta in batch:
                if delta.tool_step is not None:
                    out += events.tool_step(delta.tool_step)
                if delta.text:
                    out += events.text(delta.text)
                for piece in delta.tool_calls:
                    out += events.tool_call(piece.index, piece.name, piece.arguments)
            if out:
                yield b"".join(encode(event) for event in out)
    except CopilotEdgeError as error:
        yield encode(run_error(error))
        return
    except Exception:
        logger.exception("AG-UI run %s failed", run_id)
        yield encode(run_error(CopilotEdgeError()))
        return
    finally:
        await batches.aclose()  # type: ignore[attr-defined]
    await turn.wait_until_saved()  # a connect right after the run replays the whole answer
    for event in events.close():
        yield encode(event)
    result: dict[str, Any] = {"usage": wire.usage_of(turn)}
    if was_stopped:
        result["stopped"] = True
    outcome = None
    deferred = [call.id for call in turn.deferred]
    if deferred and not was_stopped:
        by_call = {pending.call.id: pending for pending in waiting}
        interrupts = [interrupt(by_call[i]) for i in deferred if i in by_call]
        outcome = RunFinishedInterruptOutcome(interrupts=interrupts) if interrupts else None
    yield encode(
        RunFinishedEvent(
            thread_id=thread_id,
            run_id=run_id,
            result=result,
            outcome=outcome,
            usage=[token_usage(turn)],
        )
    )


async def _next_or_stop(deltas: AsyncIterator[Any], stopped: asyncio.Event) -> Any:
    """The next batch of deltas, or ``None`` at the end or when a stop arrives first.

    On a stop (or if this task is cancelled) the pending ``anext`` is cancelled, which
    cancels the turn: upstream is hung up and usage is recorded as ``cancelled``.
    """
    following = asyncio.ensure_future(anext(deltas, None))
    waiter = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({following, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if following.done():
            return following.result()
        return None
    finally:
        waiter.cancel()
        if not following.done():
            following.cancel()
        await asyncio.gather(following, waiter, return_exceptions=True)


async def connect_events(run_input: RunAgentInput, messages: list[Message]) -> AsyncIterator[bytes]:
    """A stored thread replayed as one run carrying a ``MESSAGES_SNAPSHOT``."""
    thread_id, run_id = run_input.thread_id, run_input.run_id
    yield encode(
        RunStartedEvent(thread_id=thread_id, run_id=run_id, protocol_version=PROTOCOL_VERSION)
    )
    yield encode(MessagesSnapshotEvent(messages=[snapshot_message(m) for m in messages]))
    yield encode(RunFinishedEvent(thread_id=thread_id, run_id=run_id))
