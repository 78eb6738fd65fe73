"""Checks of the upstream and request-handling settings: copilotedge.E003-E007, W001-W002.

Credentials for Workers AI, the route table, the timeouts and size limits, the
``ON_CHUNK`` callback and the price table: what every request depends on.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import InvalidOperation

from django.core.checks import CheckMessage, Error, Warning

from copilotedge.conf import DEFAULT_BASE_URL, settings


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


def check_upstream() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
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
