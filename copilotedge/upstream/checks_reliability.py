"""Checks of the reliability settings (retries, breakers, fallbacks, response cache).

Their ids are copilotedge.E050-E059 and W050-W059.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from copilotedge.conf import settings

_RELIABILITY_NUMBERS: dict[str, float] = {
    # name: the smallest allowed value
    "FIRST_TOKEN_TIMEOUT": 1e-9,
    "RETRY_ATTEMPTS": 1,
    "RETRY_BASE_DELAY": 0,
    "RETRY_MAX_DELAY": 0,
    "RETRY_DEADLINE": 1e-9,
    "CIRCUIT_FAILURE_THRESHOLD": 1,
    "CIRCUIT_FAILURE_RATIO": 0,
    "CIRCUIT_FAILURE_WINDOW": 1e-9,
    "CIRCUIT_COOLDOWN": 1e-9,
    "RESPONSE_CACHE_TTL": 1,
}
_FALLBACK_FIELDS = frozenset({"model", "base_url", "api_token", "account_id", "name"})


def _fallback_problem(fallbacks: Any) -> str | None:
    if not isinstance(fallbacks, dict):
        return "it must be a dict of model id -> list of fallbacks"
    for model, entries in fallbacks.items():
        if not isinstance(entries, list | tuple):
            return f"the fallbacks of {model!r} must be a list"
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
                return f"each fallback of {model!r} must be a dict with a 'model' string"
            unknown = set(entry) - _FALLBACK_FIELDS
            if unknown:
                return f"a fallback of {model!r} has unknown keys {sorted(unknown)}"
            if not all(isinstance(value, str) for value in entry.values()):
                return f"the values of a fallback of {model!r} must be strings"
    return None


def check_reliability() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for name, smallest in _RELIABILITY_NUMBERS.items():
        try:
            value = getattr(settings, name)
        except (TypeError, ValueError):
            value = None
        if value is None or value < smallest:
            at_least = "a positive number" if smallest else "a number >= 0"
            errors.append(Error(f"COPILOTEDGE_{name} must be {at_least}.", id="copilotedge.E050"))
    try:
        problem = _fallback_problem(settings.FALLBACKS)
    except (TypeError, ValueError):
        problem = "it must be a dict of model id -> list of fallbacks"
    if problem:
        errors.append(
            Error(
                f"COPILOTEDGE_FALLBACKS is invalid: {problem}.",
                hint='e.g. {"@cf/meta/llama-3.1-8b-instruct": [{"model": "@cf/meta/llama-3.2-3b-'
                'instruct"}, {"model": "gpt-4o-mini", "base_url": "https://gateway.example/v1", '
                '"api_token": "..."}]}',
                id="copilotedge.E051",
            )
        )
    if not errors and settings.FIRST_TOKEN_TIMEOUT >= settings.RETRY_DEADLINE:
        errors.append(
            Warning(
                "COPILOTEDGE_FIRST_TOKEN_TIMEOUT is not shorter than COPILOTEDGE_RETRY_DEADLINE: "
                "an upstream that hangs before its first token is never retried.",
                id="copilotedge.W050",
            )
        )
    return errors
