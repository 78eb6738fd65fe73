"""Checks of CopilotKit's agents and GraphQL limits: copilotedge.E040-E047, W040-W041."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from copilotedge.chat.agents import AGENT_KEYS, AGENT_PARAMS, DEFAULT_AGENT
from copilotedge.chat.validation import parse_params
from copilotedge.conf import settings
from copilotedge.exceptions import InvalidRequest
from copilotedge.tools import UnknownTool, get_tool

_AGENT_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
# Channel-layer group names: these characters, under 100 of them (we append 33).
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,66}$")


def _agent(agent_id: str, entry: dict[str, Any]) -> Iterable[CheckMessage]:
    where = f"COPILOTEDGE_AGENTS[{agent_id!r}]"
    unknown = sorted(set(entry) - AGENT_KEYS)
    if unknown:
        yield Warning(
            f"{where} has unknown keys: {', '.join(unknown)}.",
            hint=f"Known keys: {', '.join(sorted(AGENT_KEYS))}.",
            id="copilotedge.W040",
        )
    texts = [
        k for k in ("name", "description", "system_prompt") if not isinstance(entry.get(k, ""), str)
    ]
    if texts:
        yield Error(f"{where}: {', '.join(texts)} must be strings.", id="copilotedge.E042")
    model = entry.get("model")
    if model is not None and model not in settings.MODELS:
        yield Error(
            f"{where} uses the model {model!r}, which is not in COPILOTEDGE_MODELS.",
            id="copilotedge.E043",
        )
    yield from _tools(where, entry.get("tools", ()))
    params = entry.get("params", {})
    if not isinstance(params, dict) or set(params) - AGENT_PARAMS:
        yield Error(
            f"{where}['params'] must be a dict of {', '.join(sorted(AGENT_PARAMS))}.",
            id="copilotedge.E044",
        )
        return
    try:
        parse_params(params)
    except InvalidRequest as error:
        yield Error(f"{where}['params']: {error.message}", id="copilotedge.E044")


def _tools(where: str, tools: Any) -> Iterable[CheckMessage]:
    if not isinstance(tools, list | tuple) or not all(isinstance(t, str) for t in tools):
        yield Error(f"{where}['tools'] must be a list of tool names.", id="copilotedge.E047")
        return
    unknown = []
    for reference in tools:
        try:
            get_tool(reference)
        except UnknownTool:
            unknown.append(reference)
    if unknown:
        yield Error(
            f"{where}['tools'] names unknown tools: {', '.join(unknown)}.",
            hint="Give a dotted path to a function decorated with @copilotedge.tool, or the "
            "name of one registered by a module that is imported at startup.",
            id="copilotedge.E047",
        )


def check_agents() -> Iterable[CheckMessage]:
    """CopilotKit's agents (``/info`` lists them, ``agent/<id>/run`` runs them)."""
    try:
        agents = settings.AGENTS
    except (TypeError, ValueError):
        agents = None
    if not isinstance(agents, dict) or not all(isinstance(e, dict) for e in agents.values()):
        yield Error("COPILOTEDGE_AGENTS must be a dict of agent id -> dict.", id="copilotedge.E040")
        return
    bad_ids = sorted(str(i) for i in agents if not isinstance(i, str) or not _AGENT_ID.match(i))
    if bad_ids:
        yield Error(
            "COPILOTEDGE_AGENTS ids must be letters, digits, '_', '.' or '-': "
            f"{', '.join(bad_ids)}.",
            hint="An agent id is a URL segment (copilotkit/agent/<id>/run).",
            id="copilotedge.E041",
        )
    if DEFAULT_AGENT not in agents:
        yield Warning(
            f"COPILOTEDGE_AGENTS has no {DEFAULT_AGENT!r} agent.",
            hint="CopilotKit talks to the 'default' agent unless told otherwise (agent=...).",
            id="copilotedge.W041",
        )
    for agent_id, entry in agents.items():
        yield from _agent(str(agent_id), entry)
    if not _GROUP.match(settings.AGUI_STOP_GROUP):
        yield Error(
            "COPILOTEDGE_AGUI_STOP_GROUP must be 1-66 letters, digits, '_', '.' or '-'.",
            id="copilotedge.E045",
        )


GRAPHQL_LIMITS = (
    "GRAPHQL_MAX_QUERY_LENGTH",
    "GRAPHQL_MAX_TOKENS",
    "GRAPHQL_MAX_FIELDS",
    "GRAPHQL_MAX_ALIASES",
)


def check_graphql_limits() -> Iterable[CheckMessage]:
    """The legacy GraphQL face's limits are positive integers."""
    for name in GRAPHQL_LIMITS:
        try:
            value = getattr(settings, name)
        except (TypeError, ValueError):
            value = 0
        if value < 1:
            yield Error(f"COPILOTEDGE_{name} must be a positive integer.", id="copilotedge.E046")
