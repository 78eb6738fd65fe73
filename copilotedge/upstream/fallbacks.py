"""Fallbacks: the ordered ways to answer a request for a model (``COPILOTEDGE_FALLBACKS``).

The request's model on the default upstream comes first, then each fallback: another
model on the same upstream, or any OpenAI-compatible base URL (an AI Gateway, a
self-hosted server). They are tried per request and never remembered.
"""

from __future__ import annotations

from dataclasses import dataclass

from copilotedge.conf import settings
from copilotedge.upstream.requests import Upstream


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to answer: a model on an upstream."""

    model: str
    upstream: Upstream


def fallback_upstream(entry: dict[str, str]) -> Upstream:
    base_url = entry.get("base_url")
    if not base_url:
        return Upstream.default()
    base_url = base_url.rstrip("/")
    return Upstream(
        base_url,
        entry.get("api_token", ""),
        entry.get("account_id", ""),
        name=entry.get("name") or base_url,
    )


def candidates_for(model: str) -> list[Candidate]:
    """The request's model on the default upstream, then its fallbacks in order."""
    chain = [Candidate(model, Upstream.default())]
    for entry in settings.FALLBACKS.get(model, []):
        chain.append(Candidate(entry["model"], fallback_upstream(entry)))
    return chain


def configured_upstreams() -> list[Upstream]:
    """Every upstream the settings name (the default first), once each by name."""
    seen: dict[str, Upstream] = {}
    default = Upstream.default()
    seen[default.name] = default
    for entries in settings.FALLBACKS.values():
        for entry in entries:
            upstream = fallback_upstream(entry)
            seen.setdefault(upstream.name, upstream)
    return list(seen.values())
