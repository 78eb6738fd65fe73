"""Template filters of the usage report."""

from __future__ import annotations

from decimal import Decimal

from django import template

from copilotedge.admin.dashboard import usd as _usd

register = template.Library()


@register.filter
def usd(value: Decimal | float | int) -> str:
    """A USD amount as the report shows it (``$1,234.56``, ``$0.0042``)."""
    return _usd(value)
