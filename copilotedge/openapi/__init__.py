"""The OpenAPI 3.1 description of the app's HTTP API, served at ``openapi.json``.

Hand-written to match :mod:`copilotedge.chat.validation` and :mod:`copilotedge.views`; paths
are reversed from the URLconf at call time, so they are right wherever a site mounts
the app. The fuzz tests generate requests from what this describes.

This module assembles the document; each concern's components and paths are in an
``openapi_<concern>`` module (chat, copilotkit, conversations), and what they share is
in :mod:`copilotedge.openapi.common`.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from copilotedge import __version__
from copilotedge.openapi.chat import chat_operation, run_operation
from copilotedge.openapi.chat_schemas import CHAT_SCHEMAS
from copilotedge.openapi.common import EVENT_STREAM, JSON, MODEL_PLACEHOLDER, errors, ref
from copilotedge.openapi.conversations import (
    CONVERSATION_HEADER,
    CONVERSATION_SCHEMAS,
    conversation_paths,
)
from copilotedge.openapi.copilotkit import COPILOTKIT_SCHEMAS, MULTIPART, copilotkit_paths

# These names were defined here before the description was split by concern.
__all__ = ["CONVERSATION_HEADER", "EVENT_STREAM", "JSON", "MULTIPART", "SCHEMAS", "describe"]

# Every component, in the order the document has always listed them.
SCHEMAS: dict[str, Any] = {**CHAT_SCHEMAS, **COPILOTKIT_SCHEMAS, **CONVERSATION_SCHEMAS}


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
                "content": {JSON: {"schema": ref("Error")}},
            },
            "403": {
                "description": "Signed in, but not staff.",
                "content": {JSON: {"schema": ref("Error")}},
            },
        },
    }


def describe() -> dict[str, Any]:
    """The description, with the paths where this site serves the app."""
    run_path = reverse("copilotedge:ai-run", kwargs={"model": MODEL_PLACEHOLDER})
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
            reverse("copilotedge:chat-completions"): {"post": chat_operation()},
            reverse("copilotedge:models"): {
                "get": {
                    "operationId": "listModels",
                    "responses": {
                        "200": {
                            "description": "The models clients may ask for.",
                            "content": {JSON: {"schema": ref("ModelList")}},
                        },
                        **errors("401"),
                    },
                }
            },
            run_path.replace(MODEL_PLACEHOLDER, "{model}"): {"post": run_operation()},
            **conversation_paths(),
            **copilotkit_paths(),
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
