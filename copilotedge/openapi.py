"""The OpenAPI 3.1 description of the app's HTTP API, served at ``openapi.json``.

Hand-written to match :mod:`copilotedge.validation` and :mod:`copilotedge.views`; paths
are reversed from the URLconf at call time, so they are right wherever a site mounts
the app. The fuzz tests generate requests from what this describes.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from . import __version__, cache

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
_MODEL_PLACEHOLDER = "MODEL-PLACEHOLDER"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _number(low: float, high: float) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high}


_ERROR_STATUSES = {
    "400": "Invalid request (the `param` names the field), or a request the model refused.",
    "401": "No valid API key or session.",
    "403": "CSRF failure for a session-authenticated request.",
    "404": "Unknown model.",
    "413": "Body larger than `COPILOTEDGE_MAX_BODY_BYTES`.",
    "429": "Rate limited, or the model provider is out of capacity or quota (`Retry-After`).",
    "502": "The model provider failed.",
    "503": "The model provider's circuit is open: failing fast (`Retry-After`).",
    "504": "The model provider did not answer in time.",
}

_CACHE_REQUEST_HEADER = {
    "name": cache.HEADER,
    "in": "header",
    "required": False,
    "description": "Response cache: `use` (read and store even when not deterministic), "
    "`refresh` (ask upstream, store), `bypass` (neither). Default: used only when "
    "`temperature` is 0 or a `seed` is given.",
    "schema": {"type": "string", "enum": sorted(cache.DIRECTIVES)},
}

_CACHE_RESPONSE_HEADER = {
    "description": "HIT: answered from the cache; MISS: answered upstream; BYPASS: not used.",
    "schema": {"type": "string", "enum": [cache.HIT, cache.MISS, cache.BYPASS]},
}


def _errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {
            "description": _ERROR_STATUSES[status],
            "content": {JSON: {"schema": _ref("Error")}},
        }
        for status in statuses
    }


_CHAT_ERRORS = ("400", "401", "403", "404", "413", "429", "502", "503", "504")

_CONTENT: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"$ref": "#/components/schemas/TextPart"}},
    ]
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "TextPart": {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    },
    "Message": {
        "oneOf": [_ref("InstructionMessage"), _ref("AssistantMessage"), _ref("ToolMessage")],
    },
    "InstructionMessage": {
        "type": "object",
        "required": ["role", "content"],
        "description": "`developer` is sent upstream as `system`.",
        "properties": {
            "role": {"type": "string", "enum": ["developer", "system", "user"]},
            "content": _CONTENT,
        },
    },
    "AssistantMessage": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"const": "assistant"},
            "content": {"anyOf": [*_CONTENT["anyOf"], {"type": "null"}]},
            "tool_calls": {"type": "array"},
        },
    },
    "ToolMessage": {
        "type": "object",
        "required": ["role", "tool_call_id"],
        "properties": {
            "role": {"const": "tool"},
            "content": {"anyOf": [*_CONTENT["anyOf"], {"type": "null"}]},
            "tool_call_id": {"type": "string"},
        },
    },
    "ChatRequest": {
        "type": "object",
        "description": "Either `messages` or a `prompt` string. Unknown fields are ignored.",
        "anyOf": [{"required": ["messages"]}, {"required": ["prompt"]}],
        "properties": {
            "messages": {"type": "array", "items": _ref("Message"), "minItems": 1},
            "prompt": {"type": "string"},
            "temperature": _number(0, 5),
            "top_p": _number(0, 1),
            "frequency_penalty": _number(-2, 2),
            "presence_penalty": _number(-2, 2),
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "seed": {"type": "integer"},
            "stop": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                ]
            },
            "tools": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["function"],
                    "properties": {"function": {"type": "object"}},
                },
            },
            "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]},
            "response_format": {"type": "object"},
            "stream": {"type": "boolean"},
            "conversation_id": {"type": "string", "format": "uuid"},
        },
    },
    "ChatCompletionRequest": {
        "allOf": [_ref("ChatRequest")],
        "properties": {
            "model": {"type": "string", "description": "One of `GET v1/models`."},
            "stream_options": {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
            },
        },
    },
    "Usage": {
        "type": "object",
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string", "description": "The model that actually answered."},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {"type": "object"},
                        "finish_reason": {"type": "string"},
                    },
                },
            },
            "usage": _ref("Usage"),
        },
    },
    "ModelList": {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                    },
                },
            },
        },
    },
    "RunEnvelope": {
        "type": "object",
        "properties": {
            "result": {
                "type": ["object", "null"],
                "properties": {
                    "response": {"type": "string"},
                    "usage": _ref("Usage"),
                    "tool_calls": {"type": "array"},
                },
            },
            "success": {"type": "boolean"},
            "errors": {"type": "array"},
            "messages": {"type": "array"},
        },
    },
}


def _chat_operation() -> dict[str, Any]:
    return {
        "operationId": "createChatCompletion",
        "summary": "OpenAI Chat Completions (streamed with `stream: true`).",
        "parameters": [_CACHE_REQUEST_HEADER],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": _ref("ChatCompletionRequest")}},
        },
        "responses": {
            "200": {
                "description": "The answer; with `stream: true` an event stream of "
                "`chat.completion.chunk` frames ending with `data: [DONE]` (a failure "
                'mid-stream is a `data: {"error": …}` frame before it).',
                "headers": {
                    cache.HEADER: _CACHE_RESPONSE_HEADER,
                    CONVERSATION_HEADER: _CONVERSATION_RESPONSE_HEADER,
                },
                "content": {
                    JSON: {"schema": _ref("ChatCompletion")},
                    EVENT_STREAM: {"schema": {"type": "string"}},
                },
            },
            **_errors(*_CHAT_ERRORS),
        },
    }


def _run_operation() -> dict[str, Any]:
    return {
        "operationId": "runModel",
        "summary": "Workers AI `/ai/run` compatible.",
        "parameters": [
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
            _CACHE_REQUEST_HEADER,
        ],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ChatRequest")}}},
        "responses": {
            "200": {
                "description": 'The envelope; with `stream: true` `data: {"response": …}` '
                "frames, a usage frame, then `data: [DONE]`.",
                "headers": {cache.HEADER: _CACHE_RESPONSE_HEADER},
                "content": {
                    JSON: {"schema": _ref("RunEnvelope")},
                    EVENT_STREAM: {"schema": {"type": "string"}},
                },
            },
            **{
                status: {
                    "description": _ERROR_STATUSES[status] + " Both error shapes at once.",
                    "content": {JSON: {"schema": {"allOf": [_ref("Error"), _ref("RunEnvelope")]}}},
                }
                for status in _CHAT_ERRORS
            },
        },
    }


# -- CopilotKit (AG-UI and the legacy GraphQL runtime) -------------------------------

MULTIPART = 'multipart/mixed; boundary="-"'
_AGENT_ID = {"name": "agent_id", "in": "path", "required": True, "schema": {"type": "string"}}
_AGUI_ERRORS = ("400", "401", "403", "413", "429")

SCHEMAS.update(
    {
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
)


def _agui_stream(summary: str, operation_id: str) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [_AGENT_ID],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("RunAgentInput")}}},
        "responses": {
            "200": {
                "description": "AG-UI events (`RUN_STARTED` … `RUN_FINISHED`, or `RUN_ERROR` "
                "when anything fails, the model provider included).",
                "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
            },
            "404": {
                "description": "No such agent.",
                "content": {JSON: {"schema": _ref("Error")}},
            },
            **_errors(*_AGUI_ERRORS),
        },
    }


def _copilotkit_paths() -> dict[str, Any]:
    agent = _MODEL_PLACEHOLDER
    stop = reverse("copilotedge:copilotkit-stop", kwargs={"agent_id": agent, "thread_id": "T"})
    info_response = {
        "description": "The runtime and its agents.",
        "content": {JSON: {"schema": _ref("RuntimeInfo")}},
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
                            "schema": {
                                "oneOf": [_ref("SingleRouteEnvelope"), _ref("GraphQLRequest")]
                            }
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
                    **_errors(*_AGUI_ERRORS),
                },
            }
        },
        reverse("copilotedge:copilotkit-info"): {
            "get": {
                "operationId": "copilotkitInfo",
                "responses": {"200": info_response, **_errors("401")},
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
                        "content": {JSON: {"schema": _ref("StopResult")}},
                    },
                    **_errors("400", "401", "403"),
                },
            }
        },
    }


def _health_operation() -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["status", "live"],
        "properties": {
            "status": {"enum": ["ok", "degraded", "unavailable"]},
            "live": {"type": "boolean"},
            "ready": {"type": "boolean"},
            "checks": {"type": "object"},
        },
    }
    return {
        "operationId": "health",
        "summary": "Liveness and readiness (database, cache, upstream circuits); no auth.",
        "security": [],
        "parameters": [
            {
                "name": "probe",
                "in": "query",
                "required": False,
                "description": "`liveness` answers without checking dependencies.",
                "schema": {"enum": ["liveness"]},
            }
        ],
        "responses": {
            "200": {"description": "Ready.", "content": {JSON: {"schema": body}}},
            "503": {"description": "Not ready.", "content": {JSON: {"schema": body}}},
        },
    }


def _metrics_operation() -> dict[str, Any]:
    return {
        "operationId": "metrics",
        "summary": "Prometheus metrics, for staff sessions or the metrics token.",
        "security": [{"metricsToken": []}, {"session": []}],
        "responses": {
            "200": {
                "description": "The Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "401": {
                "description": "Neither a staff session nor the metrics token.",
                "content": {JSON: {"schema": _ref("Error")}},
            },
            "403": {
                "description": "Signed in, but not staff.",
                "content": {JSON: {"schema": _ref("Error")}},
            },
        },
    }


def describe() -> dict[str, Any]:
    """The description, with the paths where this site serves the app."""
    run_path = reverse("copilotedge:ai-run", kwargs={"model": _MODEL_PLACEHOLDER})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "copilotedge",
            "version": __version__,
            "description": "Cloudflare Workers AI for OpenAI SDKs, CopilotKit and WebSocket "
            "clients. Errors are always the OpenAI error object.",
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            reverse("copilotedge:chat-completions"): {"post": _chat_operation()},
            reverse("copilotedge:models"): {
                "get": {
                    "operationId": "listModels",
                    "responses": {
                        "200": {
                            "description": "The models clients may ask for.",
                            "content": {JSON: {"schema": _ref("ModelList")}},
                        },
                        **_errors("401"),
                    },
                }
            },
            run_path.replace(_MODEL_PLACEHOLDER, "{model}"): {"post": _run_operation()},
            **_conversation_paths(),
            **_copilotkit_paths(),
            reverse("copilotedge:health"): {"get": _health_operation()},
            reverse("copilotedge:metrics"): {"get": _metrics_operation()},
            reverse("copilotedge:openapi"): {
                "get": {
                    "operationId": "describeApi",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "This document.",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key."},
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "COPILOTEDGE_METRICS_TOKEN (GET metrics only).",
                },
            },
        },
    }


# --- Conversations and preferences (issue 5) ----------------------------------------------

CONVERSATION_HEADER = "X-CopilotEdge-Conversation"
_CONVERSATION_RESPONSE_HEADER = {
    "description": "The stored conversation this turn belongs to (new when the request named "
    "none); absent when nothing is stored (anonymous callers, storing turned off).",
    "schema": {"type": "string", "format": "uuid"},
}
_CONVERSATION_ID = {
    "name": "conversation_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _conversation_errors(**statuses: str) -> dict[str, Any]:
    return {
        status: {"description": text, "content": {JSON: {"schema": _ref("Error")}}}
        for status, text in statuses.items()
    }


_NOT_YOURS = "No such conversation, or not the caller's (never 403: ids leak nothing)."
_UNAUTHENTICATED = _ERROR_STATUSES["401"]

SCHEMAS.update(
    {
        "Conversation": {
            "type": "object",
            "required": ["id", "object", "title", "model", "created_at", "updated_at"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "object": {"const": "conversation"},
                "title": {"type": "string"},
                "model": {"type": "string"},
                "metadata": {"type": "object"},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
        },
        "ConversationList": {
            "type": "object",
            "required": ["object", "data", "has_more", "next_cursor"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Conversation")},
                "has_more": {"type": "boolean"},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "StoredMessage": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "sequence": {"type": "integer"},
                "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
                "content": {"type": "string"},
                "tool_calls": {"type": ["array", "null"]},
                "tool_call_id": {"type": ["string", "null"]},
                "status": {
                    "type": "string",
                    "enum": ["streaming", "complete", "cancelled", "incomplete", "error"],
                },
                "finish_reason": {"type": ["string", "null"]},
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"},
                "created_at": {"type": "string", "format": "date-time"},
            },
        },
        "ConversationDetail": {
            "allOf": [_ref("Conversation")],
            "properties": {"messages": {"type": "array", "items": _ref("StoredMessage")}},
        },
        "Preferences": {
            "type": "object",
            "description": "Defaults applied when a request does not say otherwise. PUT changes "
            "the fields it names; an unknown field is a 400.",
            "additionalProperties": False,
            "properties": {
                "agent": {"type": "string", "description": "Empty or a configured agent."},
                "model": {"type": "string", "description": "Empty or one of `GET v1/models`."},
                "system_prompt": {"type": "string", "maxLength": 20_000},
                "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 5},
                "max_tokens": {"type": ["integer", "null"], "minimum": 1},
                "store_conversations": {"type": "boolean"},
            },
        },
    }
)


def _conversation_paths() -> dict[str, Any]:
    detail = reverse(
        "copilotedge:conversation",
        kwargs={"conversation_id": "00000000-0000-0000-0000-000000000000"},
    ).replace("00000000-0000-0000-0000-000000000000", "{conversation_id}")
    preferences = {JSON: {"schema": _ref("Preferences")}}
    return {
        reverse("copilotedge:conversations"): {
            "get": {
                "operationId": "listConversations",
                "summary": "The caller's conversations, most recently active first.",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "`next_cursor` of the previous page.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "One page.",
                        "content": {JSON: {"schema": _ref("ConversationList")}},
                    },
                    **_conversation_errors(
                        **{"400": "A bad `limit` or `cursor`.", "401": _UNAUTHENTICATED}
                    ),
                },
            }
        },
        detail: {
            "get": {
                "operationId": "getConversation",
                "parameters": [_CONVERSATION_ID],
                "responses": {
                    "200": {
                        "description": "The conversation with its messages, in order.",
                        "content": {JSON: {"schema": _ref("ConversationDetail")}},
                    },
                    **_conversation_errors(**{"401": _UNAUTHENTICATED, "404": _NOT_YOURS}),
                },
            },
            "delete": {
                "operationId": "deleteConversation",
                "parameters": [_CONVERSATION_ID],
                "responses": {
                    "204": {"description": "Deleted (an answer still generated in it stops)."},
                    **_conversation_errors(
                        **{"401": _UNAUTHENTICATED, "403": "CSRF failure.", "404": _NOT_YOURS}
                    ),
                },
            },
        },
        reverse("copilotedge:preferences"): {
            "get": {
                "operationId": "getPreferences",
                "responses": {
                    "200": {"description": "The caller's defaults.", "content": preferences},
                    **_conversation_errors(**{"401": _UNAUTHENTICATED}),
                },
            },
            "put": {
                "operationId": "updatePreferences",
                "requestBody": {"required": True, "content": preferences},
                "responses": {
                    "200": {
                        "description": "The defaults after the change.",
                        "content": preferences,
                    },
                    **_conversation_errors(
                        **{
                            "400": "A bad value (the `param` names the field).",
                            "401": _UNAUTHENTICATED,
                            "403": "CSRF failure.",
                            "413": _ERROR_STATUSES["413"],
                        }
                    ),
                },
            },
        },
    }
