"""What a request to an upstream says, before any I/O: where it goes and its body.

:class:`Upstream` is a base URL and its credentials (Workers AI with an account, or a
plain OpenAI-compatible server); :func:`route_for` picks a Workers AI model's route
(``COPILOTEDGE_ROUTES``): the OpenAI-compatible endpoint or ``/ai/run``; and
:func:`build_payload` forwards only the parameters that route accepts.
:mod:`copilotedge.upstream.client` sends what these build.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

from copilotedge.conf import settings

Route = Literal["openai", "run"]

# Parameters each route accepts; the rest of an OpenAI request is not forwarded.
OPENAI_PARAMS = frozenset(
    {
        "temperature",
        "max_tokens",
        "top_p",
        "stop",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "tools",
        "tool_choice",
        "response_format",
    }
)
RUN_PARAMS = OPENAI_PARAMS - {"stop", "tool_choice"}


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where requests go: Workers AI (with an account) or a plain OpenAI-compatible base."""

    base_url: str
    api_token: str
    account_id: str = ""
    name: str = "workers-ai"

    @classmethod
    def default(cls) -> Upstream:
        return cls(settings.API_BASE_URL, settings.API_TOKEN, settings.ACCOUNT_ID)

    def url(self, route: Route, model: str) -> str:
        if not self.account_id:
            return f"{self.base_url}/chat/completions"
        prefix = f"{self.base_url}/accounts/{self.account_id}/ai"
        return f"{prefix}/v1/chat/completions" if route == "openai" else f"{prefix}/run/{model}"


def route_for(model: str) -> Route:
    for pattern, route in settings.ROUTES.items():
        if fnmatch.fnmatchcase(model, pattern):
            return "openai" if route == "openai" else "run"
    return "run"


def build_payload(
    route: Route, model: str, messages: list[dict[str, Any]], params: dict[str, Any], stream: bool
) -> dict[str, Any]:
    allowed = OPENAI_PARAMS if route == "openai" else RUN_PARAMS
    payload: dict[str, Any] = {k: v for k, v in params.items() if k in allowed and v is not None}
    payload["messages"] = messages
    payload["stream"] = stream
    if route == "openai":
        payload["model"] = model
        if stream:
            payload["stream_options"] = {"include_usage": True}
    return payload
