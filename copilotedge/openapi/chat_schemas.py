"""The OpenAPI components of the OpenAI-compatible faces: errors, messages, requests, answers.

``Error`` is the OpenAI error object every route answers with; the fuzz tests generate
request bodies from ``ChatRequest`` and ``ChatCompletionRequest``.
"""

from __future__ import annotations

from typing import Any

from copilotedge.openapi.common import ref


def _number(low: float, high: float) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high}


_CONTENT: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"$ref": "#/components/schemas/TextPart"}},
    ]
}

CHAT_SCHEMAS: dict[str, Any] = {
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
        "oneOf": [ref("InstructionMessage"), ref("AssistantMessage"), ref("ToolMessage")],
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
            "messages": {"type": "array", "items": ref("Message"), "minItems": 1},
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
        "allOf": [ref("ChatRequest")],
        "properties": {
            "model": {"type": "string", "description": "One of `GET v1/models`."},
            "stream_options": {
                "type": "object",
                "properties": {
                    "include_usage": {"type": "boolean"},
                    "include_tool_steps": {
                        "type": "boolean",
                        "description": 'Extension: with `model: "agent:<id>"`, each '
                        "server tool step as a chunk with `choices: []` and a "
                        "`copilotedge_tool_step` object.",
                    },
                },
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
            "usage": ref("Usage"),
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
                    "usage": ref("Usage"),
                    "tool_calls": {"type": "array"},
                },
            },
            "success": {"type": "boolean"},
            "errors": {"type": "array"},
            "messages": {"type": "array"},
        },
    },
}
