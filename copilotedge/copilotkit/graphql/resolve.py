"""The legacy CopilotKit face: ``generateCopilotResponse`` over GraphQL, resolved over a Turn.

The request is parsed and validated by graphql-core against :mod:`.graphql_schema`, then
executed with incremental delivery: ``messages`` and ``content`` are async streams fed by
one pump task reading the turn, and ``status`` resolves when the turn ends.

The resolvers are here; the pump is :mod:`copilotedge.copilotkit.graphql.run` and the input
(``data`` to ``ChatRequest``) is :mod:`copilotedge.copilotkit.graphql.input`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from graphql import GraphQLError

from copilotedge.auth import Principal
from copilotedge.chat import faces
from copilotedge.chat.agents import all_agents, get_agent
from copilotedge.chat.turn import Turn
from copilotedge.copilotkit.agui.threads import owned_thread, thread_conversation_id
from copilotedge.copilotkit.graphql.input import chat_request
from copilotedge.copilotkit.graphql.run import CopilotRun, Feed, message_status, response_status
from copilotedge.exceptions import CopilotEdgeError, UpstreamError

# The run and the input were defined here; these names stay importable from this module.
__all__ = [
    "ROOT",
    "Context",
    "CopilotRun",
    "Feed",
    "available_agents",
    "chat_request",
    "format_error",
    "generate_copilot_response",
    "load_agent_state",
    "message_status",
    "response_status",
]


class Context:
    """What resolvers share: the caller, and the runs to cancel if the client goes away."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.runs: list[CopilotRun] = []

    async def cancel(self) -> None:
        for run in self.runs:
            await run.cancel()


async def generate_copilot_response(
    info: Any, data: dict[str, Any], properties: dict[str, Any] | None = None
) -> dict[str, Any]:
    context: Context = info.context
    agent = get_agent((data.get("agentSession") or {}).get("agentName"))
    request = chat_request(agent, data)
    thread_id = data.get("threadId") or str(uuid.uuid4())
    request.conversation_id = thread_conversation_id(context.principal, thread_id)
    request.create_conversation = True
    turn = Turn(request, context.principal, protocol="graphql", server_tools=agent.server_tools())
    run = CopilotRun(turn)
    context.runs.append(run)
    try:
        await faces.aopen(run.turn)
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
    conversation = await owned_thread(info.context.principal, data["threadId"])
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
