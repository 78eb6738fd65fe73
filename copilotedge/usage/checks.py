"""Checks of the usage ledger, metrics and health settings: copilotedge.E020-E029, W020-W029."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import InvalidOperation

from django.core.checks import CheckMessage, Error, Warning

from copilotedge.conf import settings

_MIN_METRICS_TOKEN = 16


def _valid(read: Callable[[], bool]) -> bool | None:
    """``read()``; ``None`` when the setting cannot even be parsed."""
    try:
        return read()
    except (AttributeError, InvalidOperation, TypeError, ValueError):
        return None


def _default_price_ok() -> bool:
    default = settings.DEFAULT_PRICE
    return default is None or all(price >= 0 for price in default)


def check_usage() -> Iterable[CheckMessage]:
    prices_ok = _valid(
        lambda: all(price >= 0 for pair in settings.PRICES.values() for price in pair)
    )
    if prices_ok is False:  # None is E006
        yield Error("COPILOTEDGE_PRICES has a negative price.", id="copilotedge.E022")
    if not _valid(_default_price_ok):
        yield Error(
            "COPILOTEDGE_DEFAULT_PRICE must be None or (input, output) non-negative USD "
            "per million tokens.",
            id="copilotedge.E020",
        )
    if not _valid(lambda: settings.NEURON_PRICE >= 0):
        yield Error(
            "COPILOTEDGE_NEURON_PRICE must be a non-negative number (USD per 1,000 neurons).",
            id="copilotedge.E021",
        )
    if not _valid(lambda: settings.HEALTH_TIMEOUT > 0):
        yield Error("COPILOTEDGE_HEALTH_TIMEOUT must be a positive number.", id="copilotedge.E023")
    token = settings.METRICS_TOKEN
    if token and len(token) < _MIN_METRICS_TOKEN:
        yield Warning(
            f"COPILOTEDGE_METRICS_TOKEN is shorter than {_MIN_METRICS_TOKEN} characters.",
            hint="Use a long random value: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'.",
            id="copilotedge.W021",
        )
    if prices_ok is not None:
        from copilotedge.usage.ledger import has_price

        missing = [model for model in settings.MODELS if not has_price(model)]
        if missing:
            yield Warning(
                f"No price in COPILOTEDGE_PRICES for {', '.join(missing)}.",
                hint="Their usage is charged COPILOTEDGE_DEFAULT_PRICE, or the highest prices "
                "in the table when that is not set. Add them to COPILOTEDGE_PRICES (glob "
                "patterns such as '@cf/meta/*' are allowed).",
                id="copilotedge.W020",
            )
