"""The legacy CopilotKit face: ``generateCopilotResponse`` over GraphQL, resolved over a Turn.

The request is parsed and validated by graphql-core against :mod:`.graphql_schema`, then
executed with incremental delivery: ``messages`` and ``content`` are async streams fed by
one pump task reading the turn, and ``status`` resolves when the turn ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from graphql import GraphQLError

from . import agui
from .agents import Agent, all_agents, get_agent
from .auth import Principal
from .chat import ChatRequest, Turn
from .exceptions import CopilotEdgeError, InvalidRequest, UpstreamError
from .validation import parse_messages, parse_model, parse_params

logger = logging.getLogger(__name__)
_END = object()


class Feed:
    """An async stream one task writes and the executor reads (``messages``, ``content``)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    def put(self, item: Any) -> None:
        self._queue.put_nowait(item)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(_END)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (item := await self._queue.get()) is not _END:
            yield item


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def message_status(error: CopilotEdgeError | None) -> dict[str, Any]:
    if error is None:
        return {"__typename": "SuccessMessageStatus", "code": "Success"}
    return {"__typename": "FailedMessageStatus", "code": "Failed", "reason": error.message}


def response_status(error: CopilotEdgeError | None, *, interrupted: bool) -> dict[str, Any]:
    if error is None:
        return {"__typename": "SuccessResponseStatus", "code": "Success"}
    return {
        "__typename": "FailedResponseStatus",
        "code": "Failed",
        "reason": "MESSAGE_STREAM_INTERRUPTED" if interrupted else "UNKNOWN_ERROR",
        "details": {"code": error.code, "type": error.type, "message": error.message},
    }


class _Output:
    """One message being streamed out: its output object, its feed and its status."""

    def __init__(self, typename: str, message_id: str, stream_field: str, **fields: Any) -> None:
        self.feed = Feed()
        self.status: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def status(info: Any) -> dict[str, Any]:
            return await self.status

        self.output = {
            "__typename": typename,
            "id": message_id,
            "createdAt": _now(),
            "status": status,
            stream_field: aiter(self.feed),
            **fields,
        }

    def close(self, error: CopilotEdgeError | None) -> None:
        self.feed.close()
        if not self.status.done():
            self.status.set_result(message_status(error))


class CopilotRun:
    """The turn behind one ``generateCopilotResponse``, pumped into message feeds."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.messages = Feed()
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._outputs: list[_Output] = []

    async def status(self, info: Any) -> dict[str, Any]:
        return await self.done

    def fail_early(self, error: CopilotEdgeError) -> None:
        self.messages.close()
        self.done.set_result(response_status(error, interrupted=False))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._pump())

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _open(self, output: _Output) -> _Output:
        self._outputs.append(output)
        self.messages.put(output.output)
        return output

    async def _pump(self) -> None:
        text: _Output | None = None
        parent_id = str(uuid.uuid4())
        calls: dict[int, _Output] = {}
        error: CopilotEdgeError | None = None
        try:
            async for delta in self.turn.deltas():
                if delta.text:
                    if text is None:
                        parent_id = str(uuid.uuid4())
                        text = self._open(
                            _Output(
                                "TextMessageOutput",
                                parent_id,
                                "content",
                                role="assistant",
                                parentMessageId=None,
                            )
                        )
                    text.feed.put(delta.text)
                for piece in delta.tool_calls:
                    if text is not None:
                        text.close(None)
                        text = None
                    call = self.turn.answer.tool_calls[piece.index]
                    if piece.index not in calls:
                        calls[piece.index] = self._open(
                            _Output(
                                "ActionExecutionMessageOutput",
                                call.id,
                                "arguments",
                                name=call.name,
                                parentMessageId=parent_id,
                            )
                        )
                    if piece.arguments:
                        calls[piece.index].feed.put(piece.arguments)
            await self.turn.asaved()  # the thread is whole before the client hears "done"
        except CopilotEdgeError as failure:
            error = failure
        except Exception:
            logger.exception("generateCopilotResponse failed")
            error = CopilotEdgeError()
        except asyncio.CancelledError:
            error = CopilotEdgeError("The request was cancelled.", code="cancelled")
            raise
        finally:
            for output in self._outputs:
                output.close(error)
            self.messages.close()
            if not self.done.done():
                interrupted = bool(self.turn.answer.text or self.turn.answer.tool_calls)
                self.done.set_result(response_status(error, interrupted=interrupted))


class Context:
    """What resolvers share: the caller, and the runs to cancel if the client goes away."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.runs: list[CopilotRun] = []

    async def cancel(self) -> None:
        for run in self.runs:
            await run.cancel()


def _actions(frontend: dict[str, Any]) -> list[dict[str, Any]]:
    tools = []
    for i, action in enumerate(frontend.get("actions") or []):
        if action.get("available") == "disabled":
            continue
        try:
            parameters = json.loads(action["jsonSchema"])
        except ValueError:
            parameters = None
        if not isinstance(parameters, dict):
            raise InvalidRequest(
                "'jsonSchema' must be a JSON object.",
                param=f"data.frontend.actions[{i}].jsonSchema",
            )
        function = {"name": action["name"], "description": action["description"]}
        tools.append({"type": "function", "function": {**function, "parameters": parameters}})
    return tools


def _conversation(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The input messages in OpenAI form; action executions join their assistant message."""
    messages: list[dict[str, Any]] = []
    last_assistant_id: str | None = None
    for i, message in enumerate(data["messages"]):
        if text := message.get("textMessage"):
            messages.append({"role": text["role"], "content": text["content"]})
            last_assistant_id = message["id"] if text["role"] == "assistant" else None
        elif action := message.get("actionExecutionMessage"):
            function = {"name": action["name"], "arguments": action["arguments"]}
            call = {"id": message["id"], "type": "function", "function": function}
            previous = messages[-1] if messages else None
            joins = (
                previous is not None
                and previous["role"] == "assistant"
                and ("tool_calls" in previous or action.get("parentMessageId") == last_assistant_id)
            )
            if joins and previous is not None:
                previous.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif result := message.get("resultMessage"):
            tool_call_id = result["actionExecutionId"]
            messages.append(
                {"role": "tool", "content": result["result"], "tool_call_id": tool_call_id}
            )
        elif message.get("imageMessage"):
            raise InvalidRequest(
                "Image messages are not supported.", param=f"data.messages[{i}].imageMessage"
            )
    return messages


def _forwarded(data: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    forwarded = data.get("forwardedParameters") or {}
    body: dict[str, Any] = {
        "temperature": forwarded.get("temperature"),
        "stop": forwarded.get("stop"),
    }
    if forwarded.get("maxTokens") is not None:
        body["max_tokens"] = int(forwarded["maxTokens"])
    choice = forwarded.get("toolChoice")
    if choice == "function" and forwarded.get("toolChoiceFunctionName"):
        body["tool_choice"] = {
            "type": "function",
            "function": {"name": forwarded["toolChoiceFunctionName"]},
        }
    elif choice in ("auto", "none", "required"):
        body["tool_choice"] = choice
    return forwarded.get("model"), parse_params(body)


def chat_request(agent: Agent, data: dict[str, Any]) -> ChatRequest:
    messages: list[dict[str, Any]] = []
    if agent.system_prompt:
        messages.append({"role": "system", "content": agent.system_prompt})
    context = agui.context_message(
        [(c["description"], c["value"]) for c in data.get("context") or []]
    )
    if context is not None:
        messages.append(context)
    messages += _conversation(data)
    model, forwarded = _forwarded(data)
    params = {**agent.params, **forwarded}
    tools = _actions(data["frontend"])
    if tools:
        params["tools"] = tools
    return ChatRequest(
        model=parse_model(model) if model else agent.model,
        messages=parse_messages(messages, param="data.messages"),
        params=params,
        stream=True,
    )


async def generate_copilot_response(
    info: Any, data: dict[str, Any], properties: dict[str, Any] | None = None
) -> dict[str, Any]:
    context: Context = info.context
    agent = get_agent((data.get("agentSession") or {}).get("agentName"))
    request = chat_request(agent, data)
    thread_id = data.get("threadId") or str(uuid.uuid4())
    request.conversation_id = agui.thread_conversation_id(context.principal, thread_id)
    request.create_conversation = True
    run = CopilotRun(Turn(request, context.principal, protocol="graphql"))
    context.runs.append(run)
    try:
        await run.turn.open()
    except UpstreamError as error:
        run.fail_early(error)  # a FailedResponseStatus, as the client expects
    else:
        run.start()
    return {
        "threadId": thread_id,
        "runId": data.get("runId") or str(uuid.uuid4()),
        "extensions": None,
        "status": run.status,
        "messages": aiter(run.messages),
        "metaEvents": [],
    }


def available_agents(info: Any) -> dict[str, Any]:
    agents = [
        {"id": agent.id, "name": agent.name, "description": agent.description}
        for agent in all_agents().values()
    ]
    return {"agents": agents}


async def load_agent_state(info: Any, data: dict[str, Any]) -> dict[str, Any]:
    conversation = await agui.aowned_conversation(info.context.principal, data["threadId"])
    messages: list[dict[str, Any]] = []
    if conversation is not None:
        messages = [m.as_openai() | {"id": str(m.id)} async for m in conversation.messages.all()]
    return {
        "threadId": data["threadId"],
        "threadExists": conversation is not None,
        "state": "{}",
        "messages": json.dumps(messages),
    }


ROOT = {
    "hello": "Hello World",
    "availableAgents": available_agents,
    "loadAgentState": load_agent_state,
    "generateCopilotResponse": generate_copilot_response,
}


def format_error(error: GraphQLError) -> dict[str, Any]:
    formatted = dict(error.formatted)
    original = error.original_error
    if isinstance(original, CopilotEdgeError):
        formatted["extensions"] = {
            "code": original.code,
            "type": original.type,
            "status": original.status_code,
            **({"param": original.param} if original.param else {}),
        }
    return formatted
