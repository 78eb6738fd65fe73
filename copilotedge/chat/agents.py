"""Agents: an id mapped to a model, a system prompt, params and server-side tools.

Configured in ``COPILOTEDGE_AGENTS`` (id -> dict). Every face that names an agent (the
CopilotKit faces by id, the OpenAI face and the WebSocket by ``model: "agent:<id>"``)
resolves it here, so they answer alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from copilotedge.chat.types import ChatRequest
from copilotedge.conf import settings
from copilotedge.exceptions import NotFound
from copilotedge.tools import Tool, get_tool

DEFAULT_AGENT = "default"
#: A model name ``agent:<id>`` (OpenAI face, WebSocket) names an agent instead of a model.
AGENT_PREFIX = "agent:"
# The name CopilotKit shows for a runtime-hosted agent; clients only display it.
AGENT_CLASS_NAME = "CopilotEdgeAgent"
# Keys an agent entry may carry; anything else is a typo the system check reports.
AGENT_KEYS = frozenset({"name", "description", "model", "system_prompt", "params", "tools"})
# Upstream parameters an agent may fix (the same names the OpenAI face accepts).
AGENT_PARAMS = frozenset(
    {"temperature", "max_tokens", "top_p", "seed", "frequency_penalty", "presence_penalty", "stop"}
)


@dataclass(frozen=True)
class Agent:
    """One configured agent, with the site defaults filled in."""

    id: str
    name: str
    description: str
    model: str
    system_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    #: The server-side tools it may call: registered names or dotted paths
    #: (:func:`copilotedge.tools.get_tool` finds them).
    tools: tuple[str, ...] = ()

    def server_tools(self) -> tuple[Tool, ...]:
        """Its tools, found (``copilotedge.E047`` reports names that are not)."""
        return tuple(get_tool(reference) for reference in self.tools)

    def info(self) -> dict[str, str]:
        """The entry CopilotKit's ``/info`` lists for this agent."""
        return {"name": self.name, "description": self.description, "className": AGENT_CLASS_NAME}


def _build(agent_id: str, entry: dict[str, Any]) -> Agent:
    return Agent(
        id=agent_id,
        name=str(entry.get("name") or agent_id),
        description=str(entry.get("description") or ""),
        model=str(entry.get("model") or settings.MODEL),
        system_prompt=str(entry.get("system_prompt") or ""),
        params=dict(entry.get("params") or {}),
        tools=tuple(entry.get("tools") or ()),
    )


def all_agents() -> dict[str, Agent]:
    return {agent_id: _build(agent_id, entry) for agent_id, entry in settings.AGENTS.items()}


def get_agent(agent_id: str | None) -> Agent:
    """The agent called ``agent_id`` (the default one when none is named), or 404."""
    agent_id = agent_id or DEFAULT_AGENT
    entry = settings.AGENTS.get(agent_id)
    if not isinstance(entry, dict):
        raise NotFound(f"There is no agent {agent_id!r}.", param="agentId", code="agent_not_found")
    return _build(agent_id, entry)


def named_agent(model: Any) -> Agent | None:
    """The agent a ``model`` of ``agent:<id>`` names (404 if none), else ``None``."""
    if isinstance(model, str) and model.startswith(AGENT_PREFIX):
        return get_agent(model[len(AGENT_PREFIX) :])
    return None


def with_agent(request: ChatRequest, agent: Agent) -> ChatRequest:
    """``request`` as ``agent`` sends it: its model, system prompt first, its params under
    the client's."""
    messages = list(request.messages)
    if agent.system_prompt:
        messages.insert(0, {"role": "system", "content": agent.system_prompt})
    return dataclasses.replace(
        request, model=agent.model, messages=messages, params={**agent.params, **request.params}
    )
