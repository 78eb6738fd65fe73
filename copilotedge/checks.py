"""Every misconfiguration as a system check with a stable id, so ``manage.py check`` tells."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import InvalidOperation
from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from .conf import DEFAULT_BASE_URL, settings


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


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
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
    routes = settings.ROUTES
    bad_routes = sorted(glob for glob, route in routes.items() if route not in ("openai", "run"))
    if bad_routes:
        errors.append(
            Error(
                f"COPILOTEDGE_ROUTES maps {', '.join(bad_routes)} to an unknown route.",
                hint='Each value must be "openai" or "run".',
                id="copilotedge.E003",
            )
        )
    errors.extend(_positive_numbers())
    try:
        settings.ON_CHUNK  # noqa: B018 - importing the dotted path is the check
    except ImportError as error:
        errors.append(
            Error(f"COPILOTEDGE_ON_CHUNK cannot be imported: {error}", id="copilotedge.E005")
        )
    try:
        settings.PRICES  # noqa: B018
    except (InvalidOperation, TypeError, ValueError):
        errors.append(
            Error(
                "COPILOTEDGE_PRICES must map model ids to (input, output) USD per million tokens.",
                id="copilotedge.E006",
            )
        )
    errors.extend(check_conversation_settings())
    return errors


# Conversations and the WebSocket consumer: ids copilotedge.E030-E039 / W030-W039.
_CONVERSATION_NUMBERS = (
    "HISTORY_MAX_MESSAGES",
    "HISTORY_MAX_TOKENS",
    "RETENTION_DAYS",
    "FLUSH_INTERVAL",
    "FLUSH_BYTES",
    "LIVE_INTERVAL",
    "CONVERSATIONS_PAGE_SIZE",
    "WS_AUTH_TIMEOUT",
    "WS_MAX_CHATS",
    "WS_MAX_MESSAGE_BYTES",
    "WS_DETACHED_TIMEOUT",
)


def check_conversation_settings() -> list[CheckMessage]:
    from django.conf import settings as django_settings

    errors: list[CheckMessage] = []
    for name in _CONVERSATION_NUMBERS:
        try:
            value = getattr(settings, name)
        except (TypeError, ValueError):
            value = None
        if value is None or value <= 0:
            errors.append(
                Error(f"COPILOTEDGE_{name} must be a positive number.", id="copilotedge.E030")
            )
    layers = getattr(django_settings, "CHANNEL_LAYERS", None) or {}
    if "default" not in layers:
        errors.append(
            Warning(
                "CHANNEL_LAYERS has no 'default' layer: WebSocket clients cannot resume "
                "an answer that is still being generated.",
                hint="Use channels_redis.core.RedisChannelLayer (or InMemoryChannelLayer "
                "for a single process).",
                id="copilotedge.W030",
            )
        )
    return errors
