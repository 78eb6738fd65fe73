"""Checks of the conversation and WebSocket consumer settings: copilotedge.E030-E039, W030-W039."""

from __future__ import annotations

from django.core.checks import CheckMessage, Error, Warning

from .conf import settings

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
