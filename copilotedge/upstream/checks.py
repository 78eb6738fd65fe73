"""Checks of the upstream settings.

:func:`check_upstream` (copilotedge.E003-E008, W001-W002): credentials for Workers AI,
the route table, the timeouts and size limits, the ``ON_CHUNK`` callback and the price
table. :func:`check_reliability` (copilotedge.E050-E059, W050-W059): retries, circuit
breakers, fallbacks and the response cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import InvalidOperation
from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from copilotedge.conf import settings
from copilotedge.defaults import DEFAULT_BASE_URL


def _positive_numbers() -> Iterable[CheckMessage]:
    for name in (
        "CONNECT_TIMEOUT",
        "READ_TIMEOUT",
        "TOTAL_TIMEOUT",
        "KEEPALIVE_SECONDS",
        "MAX_BODY_BYTES",
        "MAX_MESSAGES",
        "MAX_CONNECTIONS",
    ):
        try:
            value = getattr(settings, name)
        except (TypeError, ValueError):
            value = None
        if value is None or value <= 0:
            yield Error(f"COPILOTEDGE_{name} must be a positive number.", id="copilotedge.E004")


def _header_safe(value: str) -> bool:
    """Whether ``value`` can go into an HTTP header or a URL path as it is."""
    return value.isascii() and value.isprintable() and " " not in value


def _credentials() -> Iterable[CheckMessage]:
    for name in ("ACCOUNT_ID", "API_TOKEN"):
        if not _header_safe(getattr(settings, name)):
            yield Error(
                f"COPILOTEDGE_{name} holds a character that cannot be sent upstream "
                "(non-ASCII, a space or a control character): every request would fail.",
                hint=f"Set COPILOTEDGE_{name} in your settings to the value Cloudflare "
                "gave you, not a placeholder.",
                id="copilotedge.E008",
            )


def check_upstream() -> list[CheckMessage]:
    errors: list[CheckMessage] = list(_credentials())
    if DEFAULT_BASE_URL.rstrip("/") == settings.API_BASE_URL:
        if not settings.ACCOUNT_ID:
            errors.append(
                Warning(
                    "COPILOTEDGE_ACCOUNT_ID is not set: requests to Workers AI will fail.",
                    hint="Set it to your Cloudflare account id (or point "
                    "COPILOTEDGE_API_BASE_URL at the emulator or another upstream).",
                    id="copilotedge.W001",
                )
            )
        if not settings.API_TOKEN:
            errors.append(
                Warning(
                    "COPILOTEDGE_API_TOKEN is not set: requests to Workers AI will fail.",
                    hint="Create a Workers AI API token in the Cloudflare dashboard.",
                    id="copilotedge.W002",
                )
            )
    try:
        routes = settings.ROUTES
    except (TypeError, ValueError):  # not a mapping: reading it must not crash the check
        errors.append(
            Error(
                "COPILOTEDGE_ROUTES must be a dict of model globs to routes.",
                hint='For example {"@cf/meta/*": "openai", "*": "run"}.',
                id="copilotedge.E003",
            )
        )
        routes = {}
    bad_routes = sorted(
        repr(glob) if not isinstance(glob, str) else glob
        for glob, route in routes.items()
        if not isinstance(glob, str) or route not in ("openai", "run")
    )
    if bad_routes:
        errors.append(
            Error(
                f"COPILOTEDGE_ROUTES maps {', '.join(bad_routes)} to an unknown route.",
                hint='Each key must be a glob string and each value "openai" or "run".',
                id="copilotedge.E003",
            )
        )
    errors.extend(_positive_numbers())
    try:
        on_chunk = settings.ON_CHUNK  # importing the dotted path is the check
    except ImportError as error:
        errors.append(
            Error(f"COPILOTEDGE_ON_CHUNK cannot be imported: {error}", id="copilotedge.E005")
        )
    else:
        if on_chunk is not None and not callable(on_chunk):
            errors.append(Error("COPILOTEDGE_ON_CHUNK is not callable.", id="copilotedge.E005"))
    try:
        admission = settings.ADMISSION_LIMIT
    except (TypeError, ValueError):
        admission = -1
    if admission < 0:
        errors.append(
            Error(
                "COPILOTEDGE_ADMISSION_LIMIT must be a whole number >= 0 (0: no limit).",
                id="copilotedge.E007",
            )
        )
    try:
        settings.PRICES  # noqa: B018
    except (AttributeError, InvalidOperation, TypeError, ValueError):
        errors.append(
            Error(
                "COPILOTEDGE_PRICES must map model ids to (input, output) USD per million tokens.",
                id="copilotedge.E006",
            )
        )
    return errors


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
