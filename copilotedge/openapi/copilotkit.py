"""The OpenAPI description of CopilotKit's routes: AG-UI and the legacy GraphQL runtime."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from copilotedge.openapi.common import EVENT_STREAM, JSON, MODEL_PLACEHOLDER, errors, ref

MULTIPART = 'multipart/mixed; boundary="-"'
_AGENT_ID = {"name": "agent_id", "in": "path", "required": True, "schema": {"type": "string"}}
_AGUI_ERRORS = ("400", "401", "403", "413", "429")

COPILOTKIT_SCHEMAS: dict[str, Any] = {
    "RunAgentInput": {
        "type": "object",
        "description": "AG-UI RunAgentInput. `messages` are AG-UI messages (text "
        "content only); `tools` go upstream as function tools; `context` entries and "
        "system/developer messages reach the model.",
        "required": ["threadId", "runId", "messages"],
        "properties": {
            "threadId": {"type": "string"},
            "runId": {"type": "string"},
            "messages": {"type": "array", "items": {"type": "object"}},
            "tools": {"type": "array", "items": {"type": "object"}},
            "context": {"type": "array", "items": {"type": "object"}},
            "state": {},
            "forwardedProps": {},
        },
    },
    "RuntimeInfo": {
        "type": "object",
        "required": ["version", "agents"],
        "properties": {
            "version": {"type": "string"},
            "agents": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "className": {"type": "string"},
                    },
                },
            },
        },
    },
    "SingleRouteEnvelope": {
        "type": "object",
        "required": ["method"],
        "properties": {
            "method": {"enum": ["info", "agent/run", "agent/connect", "agent/stop"]},
            "params": {
                "type": "object",
                "properties": {"agentId": {"type": "string"}, "threadId": {"type": "string"}},
            },
            "body": {"type": "object"},
        },
    },
    "GraphQLRequest": {
        "type": "object",
        "description": "CopilotKit ≤ 1.10's `generateCopilotResponse` (and "
        "`availableAgents`, `loadAgentState`).",
        "required": ["query"],
        "properties": {
            "query": {"type": "string"},
            "operationName": {"type": ["string", "null"]},
            "variables": {"type": ["object", "null"]},
        },
    },
    "StopResult": {
        "type": "object",
        "properties": {"threadId": {"type": "string"}, "stopped": {"type": "boolean"}},
    },
}


def _agui_stream(summary: str, operation_id: str) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [_AGENT_ID],
        "requestBody": {"required": True, "content": {JSON: {"schema": ref("RunAgentInput")}}},
        "responses": {
            "200": {
                "description": "AG-UI events (`RUN_STARTED` … `RUN_FINISHED`, or `RUN_ERROR` "
                "when anything fails, the model provider included).",
                "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
            },
            "404": {
                "description": "No such agent.",
                "content": {JSON: {"schema": ref("Error")}},
            },
            **errors(*_AGUI_ERRORS),
        },
    }


def copilotkit_paths() -> dict[str, Any]:
    agent = MODEL_PLACEHOLDER
    stop = reverse("copilotedge:copilotkit-stop", kwargs={"agent_id": agent, "thread_id": "T"})
    info_response = {
        "description": "The runtime and its agents.",
        "content": {JSON: {"schema": ref("RuntimeInfo")}},
    }
    return {
        reverse("copilotedge:copilotkit"): {
            "post": {
                "operationId": "copilotkitSingleRoute",
                "summary": "The single route: an AG-UI envelope, or a GraphQL operation.",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {"oneOf": [ref("SingleRouteEnvelope"), ref("GraphQLRequest")]}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "As the envelope's method answers; GraphQL with "
                        "`@defer`/`@stream` answers incrementally as multipart/mixed.",
                        "content": {
                            JSON: {"schema": {"type": "object"}},
                            EVENT_STREAM: {"schema": {"type": "string"}},
                            MULTIPART: {"schema": {"type": "string"}},
                        },
                    },
                    **errors(*_AGUI_ERRORS),
                },
            }
        },
        reverse("copilotedge:copilotkit-info"): {
            "get": {
                "operationId": "copilotkitInfo",
                "responses": {"200": info_response, **errors("401")},
            }
        },
        reverse("copilotedge:copilotkit-run", kwargs={"agent_id": agent}).replace(
            agent, "{agent_id}"
        ): {"post": _agui_stream("Run an agent (AG-UI over SSE).", "copilotkitRun")},
        reverse("copilotedge:copilotkit-connect", kwargs={"agent_id": agent}).replace(
            agent, "{agent_id}"
        ): {
            "post": _agui_stream(
                "Replay a stored thread (the caller's conversation) as MESSAGES_SNAPSHOT.",
                "copilotkitConnect",
            )
        },
        stop[: -len("T")].replace(agent, "{agent_id}") + "{thread_id}": {
            "post": {
                "operationId": "copilotkitStop",
                "summary": "Stop the caller's running run(s) of a thread, in any process.",
                "parameters": [
                    _AGENT_ID,
                    {
                        "name": "thread_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "`stopped`: whether a run was stopped in this process.",
                        "content": {JSON: {"schema": ref("StopResult")}},
                    },
                    **errors("400", "401", "403"),
                },
            }
        },
    }
