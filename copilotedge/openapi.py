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
                "headers": {cache.HEADER: _CACHE_RESPONSE_HEADER},
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
            },
        },
    }
