"""Reading one upstream request: route, body, the emulator's own headers and fault markers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from copilotedge.testing.answers import content_text
from copilotedge.testing.asgi import Scope, header
from copilotedge.testing.faults import Fault, faults_in

Route = Literal["openai", "run"]

TOKENS_HEADER = b"x-emulator-tokens"
TOKEN_DELAY_HEADER = b"x-emulator-token-delay"

# Any base URL prefix works, so the Cloudflare one (/client/v4) and an AI Gateway's do.
_ACCOUNT_ROUTE = re.compile(r"/accounts/[^/]+/ai/(?:(v1/chat/completions)|run/(.+))$")
# Fields that have their own place in the request log; the rest are "params".
_OWN_FIELDS = frozenset({"messages", "prompt", "model", "stream"})


class BadInput(ValueError):
    """The request cannot be answered; Cloudflare says 400 with code 5006."""


def match_route(path: str) -> tuple[Route, str] | None:
    """The route and, for ``/ai/run``, the model named by the path."""
    match = _ACCOUNT_ROUTE.search(path)
    if match is not None:
        return ("openai", "") if match[1] else ("run", match[2])
    if "/accounts/" not in path and path.endswith("/chat/completions"):
        return ("openai", "")
    return None


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A request to a model, as the emulator understood it."""

    route: Route
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    stream: bool
    include_usage: bool
    tokens: int
    token_delay: float
    max_tokens: int | None
    faults: list[Fault]


def _header_number(scope: Scope, name: bytes, default: float) -> float:
    raw = header(scope, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadInput(f"{name.decode()} must be a number") from None
    if not 0 <= value < float("inf"):
        raise BadInput(f"{name.decode()} must not be negative")
    return value


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None and isinstance(body.get("prompt"), str):
        return [{"role": "user", "content": body["prompt"]}]
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
    ):
        raise BadInput("must have required property 'messages' or 'prompt'")
    return messages


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def parse_request(
    route: Route, path_model: str, scope: Scope, raw: bytes, *, tokens: int, token_delay: float
) -> UpstreamRequest:
    """Validate a body; ``BadInput`` says what is wrong."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadInput("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadInput("the body must be a JSON object")
    model = path_model or body.get("model")
    if not isinstance(model, str) or not model:
        raise BadInput("must have required property 'model'")
    messages = _messages(body)
    last = messages[-1]
    faults: list[Fault] = []
    if last.get("role") == "user":
        try:
            faults = faults_in(content_text(last.get("content")))
        except ValueError as error:
            raise BadInput(str(error)) from None
    stream_options = body.get("stream_options")
    return UpstreamRequest(
        route=route,
        model=model,
        messages=messages,
        params={k: v for k, v in body.items() if k not in _OWN_FIELDS},
        stream=body.get("stream") is True,
        include_usage=isinstance(stream_options, dict)
        and stream_options.get("include_usage") is True,
        tokens=int(_header_number(scope, TOKENS_HEADER, tokens)),
        token_delay=_header_number(scope, TOKEN_DELAY_HEADER, token_delay),
        max_tokens=_max_tokens(body),
        faults=faults,
    )
