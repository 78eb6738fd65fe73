"""The AG-UI face: a ``RunAgentInput`` in, a :class:`~copilotedge.chat.Turn` run, AG-UI events out.

Event models and their SSE encoding come from the ``ag-ui-protocol`` package. The order
is the one AG-UI clients verify: ``RUN_STARTED``, then text messages and tool calls
(each opened, filled and closed), then exactly one of ``RUN_FINISHED``/``RUN_ERROR``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ag_ui.core import (
    AssistantMessage,
    BaseEvent,
    FunctionCall,
    MessagesSnapshotEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    SystemMessage,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCall,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallStartEvent,
    ToolMessage,
    UserMessage,
)
from ag_ui.encoder import EventEncoder
from pydantic import ValidationError

from . import wire
from .agents import Agent
from .auth import Principal
from .chat import ChatRequest, Turn
from .exceptions import CopilotEdgeError, InvalidRequest
from .models import Conversation, Message
from .validation import parse_messages

logger = logging.getLogger(__name__)

PROVIDER = "workers-ai"
# The AG-UI protocol version this face speaks (sent on RUN_STARTED).
PROTOCOL_VERSION = "1.0"
_ENCODER = EventEncoder()


def encode(event: BaseEvent) -> bytes:
    return _ENCODER.encode(event).encode()


def _param(location: tuple[int | str, ...]) -> str:
    param = ""
    for part in location:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else part)
    return param


def parse_run_input(body: Any) -> RunAgentInput:
    """Validate a ``RunAgentInput`` body, or a 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be an AG-UI RunAgentInput object.", code="invalid_json")
    try:
        return RunAgentInput.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = _param(tuple(first["loc"]))
        raise InvalidRequest(
            f"Invalid RunAgentInput at {param or 'body'}: {first['msg']}.",
            param=param or None,
            code="invalid_run_input",
        ) from None


def _text(content: Any, param: str) -> str:
    """AG-UI content (a string or a list of parts) as plain text; only text parts are served."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for i, part in enumerate(content):
        if getattr(part, "type", None) != "text":
            raise InvalidRequest("Only text content parts are supported.", param=f"{param}[{i}]")
        texts.append(part.text)
    return "".join(texts)


def context_message(entries: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The application's context entries as one system message, or ``None``."""
    if not entries:
        return None
    lines = ["The application provides this context:"]
    lines += [f"\n{description}:\n{value}" for description, value in entries]
    return {"role": "system", "content": "\n".join(lines)}


def openai_messages(run_input: RunAgentInput) -> list[dict[str, Any]]:
    """The conversation in OpenAI form; activity and reasoning messages are not sent upstream."""
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(run_input.messages):
        where = f"messages[{i}].content"
        role = message.role
        if role in ("system", "developer", "user"):
            messages.append({"role": role, "content": _text(message.content, where)})
        elif isinstance(message, AssistantMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
            if message.tool_calls:
                entry["tool_calls"] = [
                    call.model_dump(by_alias=True) for call in message.tool_calls
                ]
            messages.append(entry)
        elif isinstance(message, ToolMessage):
            content = _text(message.content, where) or (message.error or "")
            messages.append(
                {"role": "tool", "content": content, "tool_call_id": message.tool_call_id}
            )
    return messages


def chat_request(
    agent: Agent, run_input: RunAgentInput, conversation_id: uuid.UUID | None = None
) -> ChatRequest:
    """What the agent sends upstream for this run: its prompt, the context, the messages."""
    messages: list[dict[str, Any]] = []
    if agent.system_prompt:
        messages.append({"role": "system", "content": agent.system_prompt})
    context = context_message([(c.description, c.value) for c in run_input.context or []])
    if context is not None:
        messages.append(context)
    messages += openai_messages(run_input)
    params = dict(agent.params)
    if run_input.tools:
        params["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters or {"type": "object", "properties": {}},
                },
            }
            for tool in run_input.tools
        ]
    return ChatRequest(
        model=agent.model,
        messages=parse_messages(messages),
        params=params,
        stream=True,
        conversation_id=conversation_id,
    )


_THREADS = uuid.UUID("1c8c7d1e-6f0b-4b8e-9a52-2f4a6d1b3c77")


def thread_conversation_id(principal: Principal, thread_id: str) -> uuid.UUID | None:
    """The conversation a thread is stored as (None for anonymous callers, who store none).

    A UUID threadId (CopilotKit makes them) is the conversation's id; any other is mapped
    to a UUID derived from it and the caller, so two callers' "thread-1" never meet.
    """
    if principal.user_id is None:
        return None
    try:
        return uuid.UUID(thread_id)
    except ValueError:
        return uuid.uuid5(_THREADS, f"{principal.user_id}:{thread_id}")


async def aowned_conversation(principal: Principal, thread_id: str) -> Conversation | None:
    """The caller's stored conversation of ``thread_id``, if there is one."""
    conversation_id = thread_conversation_id(principal, thread_id)
    if conversation_id is None:
        return None
    return await Conversation.objects.filter(id=conversation_id, user=principal.user).afirst()


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
    turn: Turn, run_input: RunAgentInput, stopped: asyncio.Event, *, opened: bool
) -> AsyncIterator[bytes]:
    """The run's event stream. ``opened`` is false when ``turn.open()`` failed upstream.

    A stop (``stopped`` set) hangs up upstream and ends the run with ``RUN_FINISHED``
    whose result says ``stopped``; any failure ends it with ``RUN_ERROR``.
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
    await turn.asaved()  # a connect right after the run replays the whole answer
    for event in events.close():
        yield encode(event)
    result: dict[str, Any] = {"usage": wire.usage_of(turn)}
    if was_stopped:
        result["stopped"] = True
    yield encode(
        RunFinishedEvent(
            thread_id=thread_id, run_id=run_id, result=result, usage=[token_usage(turn)]
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


def snapshot_message(message: Message) -> Any:
    """A stored message as an AG-UI message."""
    message_id = str(message.id)
    if message.role == Message.Role.USER:
        return UserMessage(id=message_id, content=message.content)
    if message.role == Message.Role.SYSTEM:
        return SystemMessage(id=message_id, content=message.content)
    if message.role == Message.Role.TOOL:
        return ToolMessage(
            id=message_id, content=message.content, tool_call_id=message.tool_call_id
        )
    calls = [
        ToolCall(id=call["id"], function=FunctionCall(**call["function"]))
        for call in message.tool_calls or []
        if isinstance(call, dict) and isinstance(call.get("function"), dict)
    ]
    return AssistantMessage(
        id=message_id, content=message.content or None, tool_calls=calls or None
    )


async def connect_events(run_input: RunAgentInput, messages: list[Message]) -> AsyncIterator[bytes]:
    """A stored thread replayed as one run carrying a ``MESSAGES_SNAPSHOT``."""
    thread_id, run_id = run_input.thread_id, run_input.run_id
    yield encode(
        RunStartedEvent(thread_id=thread_id, run_id=run_id, protocol_version=PROTOCOL_VERSION)
    )
    yield encode(MessagesSnapshotEvent(messages=[snapshot_message(m) for m in messages]))
    yield encode(RunFinishedEvent(thread_id=thread_id, run_id=run_id))
