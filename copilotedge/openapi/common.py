"""What the parts of the OpenAPI description share: media types, ``$ref`` and error responses."""

from __future__ import annotations

from typing import Any

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
# Stands in for a path parameter while reversing a URL, then is replaced by "{name}".
MODEL_PLACEHOLDER = "MODEL-PLACEHOLDER"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR_STATUSES = {
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


def errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {
            "description": ERROR_STATUSES[status],
            "content": {JSON: {"schema": ref("Error")}},
        }
        for status in statuses
    }
