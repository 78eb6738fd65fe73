"""The OpenAPI description of the conversations and preferences endpoints.

Also the ``X-CopilotEdge-Conversation`` response header the chat routes send.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from copilotedge.openapi.common import ERROR_STATUSES, JSON, ref

CONVERSATION_HEADER = "X-CopilotEdge-Conversation"
CONVERSATION_RESPONSE_HEADER = {
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
        status: {"description": text, "content": {JSON: {"schema": ref("Error")}}}
        for status, text in statuses.items()
    }


_NOT_YOURS = "No such conversation, or not the caller's (never 403: ids leak nothing)."
_UNAUTHENTICATED = ERROR_STATUSES["401"]

CONVERSATION_SCHEMAS: dict[str, Any] = {
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
            "data": {"type": "array", "items": ref("Conversation")},
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
        "allOf": [ref("Conversation")],
        "properties": {"messages": {"type": "array", "items": ref("StoredMessage")}},
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


def conversation_paths() -> dict[str, Any]:
    detail = reverse(
        "copilotedge:conversation",
        kwargs={"conversation_id": "00000000-0000-0000-0000-000000000000"},
    ).replace("00000000-0000-0000-0000-000000000000", "{conversation_id}")
    preferences = {JSON: {"schema": ref("Preferences")}}
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
                        "content": {JSON: {"schema": ref("ConversationList")}},
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
                        "content": {JSON: {"schema": ref("ConversationDetail")}},
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
                            "413": ERROR_STATUSES["413"],
                        }
                    ),
                },
            },
        },
    }
