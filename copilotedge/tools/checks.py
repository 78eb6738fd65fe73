"""Checks of the tool settings: copilotedge.E080-E081."""

from __future__ import annotations

from collections.abc import Iterable

from django.core.checks import CheckMessage, Error

from copilotedge.conf import settings


def check_tool_settings() -> Iterable[CheckMessage]:
    """``COPILOTEDGE_MAX_TOOL_STEPS`` and ``COPILOTEDGE_TOOL_CONFIRM_TIMEOUT`` are usable."""
    try:
        steps = settings.MAX_TOOL_STEPS
    except (TypeError, ValueError):
        steps = 0
    if steps < 1:
        yield Error("COPILOTEDGE_MAX_TOOL_STEPS must be a positive integer.", id="copilotedge.E080")
    try:
        timeout = settings.TOOL_CONFIRM_TIMEOUT
    except (TypeError, ValueError):
        timeout = 0.0
    if not 0 < timeout < float("inf"):
        yield Error(
            "COPILOTEDGE_TOOL_CONFIRM_TIMEOUT must be a positive number of seconds.",
            id="copilotedge.E081",
        )
