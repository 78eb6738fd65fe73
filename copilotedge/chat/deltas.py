"""Deltas: the normalised pieces of an upstream answer, and the parsing that makes them.

Both upstream shapes (``{"response": …}`` from ``/ai/run`` and OpenAI ``choices[]``,
as stream frames or whole bodies) become :class:`Delta` objects here, and an upstream
error body becomes an exception from :mod:`copilotedge.exceptions`. Nothing here
touches the network: :mod:`copilotedge.upstream.client` reads it and hands each payload to
:func:`parse_payload`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from copilotedge import exceptions

# Named as before the split, so logging configured for the upstream client still applies.
logger = logging.getLogger("copilotedge.upstream.client")


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    neurons: float | None = None

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a tool call; ``arguments`` is a JSON fragment to append."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


#: What a :class:`ToolStep` says: the model called a server tool, the call waits for a
#: person's approval, or the call ended.
TOOL_CALL, TOOL_CONFIRM, TOOL_RESULT = "call", "confirm", "result"


@dataclass(frozen=True, slots=True)
class ToolStep:
    """The progress of one server-side tool call, for a face to show (the turn makes them)."""

    kind: str
    tool_call_id: str
    name: str
    arguments: str = ""
    #: The result the model reads (``result`` only), and how the call ended.
    content: str = ""
    outcome: str = ""
    #: Which tool step of the turn this call belongs to (1, 2, …).
    step: int = 0


@dataclass(slots=True)
class Delta:
    """One normalised event: text, tool-call pieces, an end, usage, or a server tool step."""

    text: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_step: ToolStep | None = None


def error_for(status: int, body: bytes) -> exceptions.UpstreamError:
    """Translate an upstream error response, keeping Cloudflare's error code only."""
    code: int | None = None
    try:
        errors = json.loads(body).get("errors") or []
        code = int(errors[0]["code"]) if errors else None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        pass
    if status in (401, 403):
        logger.error(
            "Workers AI refused our credentials (HTTP %s): check COPILOTEDGE_API_TOKEN "
            "and COPILOTEDGE_ACCOUNT_ID.",
            status,
        )
        return exceptions.UpstreamConfigurationError(upstream_code=code)
    if status == 404:
        return exceptions.ModelNotFound(upstream_code=code)
    if status == 429:
        if code == 3036:
            return exceptions.UpstreamQuotaExceeded(upstream_code=code)
        return exceptions.UpstreamRateLimited(upstream_code=code)
    if 400 <= status < 500:
        suffix = f" (upstream code {code})" if code else ""
        return exceptions.UpstreamRejected(
            f"The model provider rejected the request{suffix}.", upstream_code=code
        )
    return exceptions.UpstreamError(
        f"The model provider failed (HTTP {status}).", upstream_code=code
    )


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    neurons = raw.get("neurons")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(raw.get("total_tokens") or prompt + completion),
        neurons=float(neurons) if isinstance(neurons, int | float) else None,
    )


def _tool_calls(raw: Any) -> list[ToolCallDelta]:
    calls = []
    for position, call in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(call, dict):
            continue
        nested = call.get("function")
        function: dict[str, Any] = nested if isinstance(nested, dict) else call
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):  # /ai/run gives an object, OpenAI a JSON string
            arguments = json.dumps(arguments)
        calls.append(
            ToolCallDelta(
                index=int(call.get("index", position)),
                id=call.get("id"),
                name=function.get("name"),
                arguments=arguments,
            )
        )
    return calls


def parse_payload(payload: Any) -> Delta:
    """Normalise a stream frame or a whole response body of either upstream shape."""
    try:
        return _parse_payload(payload)
    except (AttributeError, TypeError, ValueError):
        # A frame of the wrong shape (a string for an object, "seven" for a count) ends
        # the answer with an upstream error, never a traceback.
        raise exceptions.UpstreamError(
            "The model provider sent a malformed answer.", code="upstream_malformed"
        ) from None


def _parse_payload(payload: Any) -> Delta:
    if not isinstance(payload, dict):
        raise TypeError("not an object")
    if payload.get("success") is False or "error" in payload:
        raise error_for(500, json.dumps(payload).encode())
    if isinstance(payload.get("result"), dict):
        payload = payload["result"]
    delta = Delta(usage=_usage(payload.get("usage")))
    choices = payload.get("choices")
    if isinstance(choices, list):
        for choice in choices[:1]:
            part = choice.get("delta") or choice.get("message") or {}
            delta.text = part.get("content") or ""
            if not isinstance(delta.text, str):
                raise TypeError("content is not a string")
            delta.tool_calls = _tool_calls(part.get("tool_calls"))
            delta.finish_reason = choice.get("finish_reason")
    else:
        response = payload.get("response")
        if response is not None and not isinstance(response, str):
            response = json.dumps(response)  # JSON mode answers with an object
        delta.text = response or ""
        delta.tool_calls = _tool_calls(payload.get("tool_calls"))
    return delta
