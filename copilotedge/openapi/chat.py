"""The OpenAPI operations of the OpenAI-compatible faces: chat completions and ``/ai/run``."""

from __future__ import annotations

from typing import Any

from copilotedge.openapi.common import ERROR_STATUSES, EVENT_STREAM, JSON, errors, ref
from copilotedge.openapi.conversations import CONVERSATION_HEADER, CONVERSATION_RESPONSE_HEADER
from copilotedge.upstream import response_cache as cache

CACHE_REQUEST_HEADER = {
    "name": cache.HEADER,
    "in": "header",
    "required": False,
    "description": "Response cache: `use` (read and store even when not deterministic), "
    "`refresh` (ask upstream, store), `bypass` (neither). Default: used only when "
    "`temperature` is 0 or a `seed` is given.",
    "schema": {"type": "string", "enum": sorted(cache.DIRECTIVES)},
}

CACHE_RESPONSE_HEADER = {
    "description": "HIT: answered from the cache; MISS: answered upstream; BYPASS: not used.",
    "schema": {"type": "string", "enum": [cache.HIT, cache.MISS, cache.BYPASS]},
}

_CHAT_ERRORS = ("400", "401", "403", "404", "413", "429", "502", "503", "504")


def chat_operation() -> dict[str, Any]:
    return {
        "operationId": "createChatCompletion",
        "summary": "OpenAI Chat Completions (streamed with `stream: true`).",
        "parameters": [CACHE_REQUEST_HEADER],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": ref("ChatCompletionRequest")}},
        },
        "responses": {
            "200": {
                "description": "The answer; with `stream: true` an event stream of "
                "`chat.completion.chunk` frames ending with `data: [DONE]` (a failure "
                'mid-stream is a `data: {"error": …}` frame before it).',
                "headers": {
                    cache.HEADER: CACHE_RESPONSE_HEADER,
                    CONVERSATION_HEADER: CONVERSATION_RESPONSE_HEADER,
                },
                "content": {
                    JSON: {"schema": ref("ChatCompletion")},
                    EVENT_STREAM: {"schema": {"type": "string"}},
                },
            },
            **errors(*_CHAT_ERRORS),
        },
    }


def run_operation() -> dict[str, Any]:
    return {
        "operationId": "runModel",
        "summary": "Workers AI `/ai/run` compatible.",
        "parameters": [
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
            CACHE_REQUEST_HEADER,
        ],
        "requestBody": {"required": True, "content": {JSON: {"schema": ref("ChatRequest")}}},
        "responses": {
            "200": {
                "description": 'The envelope; with `stream: true` `data: {"response": …}` '
                "frames, a usage frame, then `data: [DONE]`.",
                "headers": {cache.HEADER: CACHE_RESPONSE_HEADER},
                "content": {
                    JSON: {"schema": ref("RunEnvelope")},
                    EVENT_STREAM: {"schema": {"type": "string"}},
                },
            },
            **{
                status: {
                    "description": ERROR_STATUSES[status] + " Both error shapes at once.",
                    "content": {JSON: {"schema": {"allOf": [ref("Error"), ref("RunEnvelope")]}}},
                }
                for status in _CHAT_ERRORS
            },
        },
    }
