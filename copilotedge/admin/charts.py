"""Charts as inline SVG, drawn on the server: no JavaScript, no CDN, nothing to vendor.

Each bar carries ``data-label``/``data-value`` attributes and a ``<title>`` tooltip, so the
numbers behind a chart can be read by people (hover, screen readers) and by tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

Number = int | float | Decimal
Formatter = Callable[[Number], str]

_BAR_COLOR = "#417690"  # the admin's own blue
_AXIS_COLOR = "#999"
_FONT = 'font-family="sans-serif" font-size="11"'


def _plain(value: Number) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{float(value):,.2f}"


def _bar(
    x: float, y: float, width: float, height: float, label: str, shown: str, value: Number
) -> str:
    title = escape(f"{label}: {shown}")
    return (
        f'<rect class="ce-bar" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
        f'height="{height:.1f}" fill="{_BAR_COLOR}" data-label="{escape(label)}" '
        f'data-value="{escape(format(value, "f") if isinstance(value, Decimal) else value)}">'
        f"<title>{title}</title></rect>"
    )


def _svg(title: str, width: int, height: int, body: list[str]) -> SafeString:
    name = escape(title)
    # Safe: every interpolated text went through escape() above.
    return mark_safe(
        f'<svg class="ce-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{name}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{name}</title>{"".join(body)}</svg>'
    )


def column_chart(
    points: Sequence[tuple[str, Number]],
    *,
    title: str,
    fmt: Formatter = _plain,
    width: int = 640,
    height: int = 180,
) -> SafeString:
    """Vertical bars, one per point (e.g. per day), with the peak value on the y axis."""
    left, bottom, top = 64, 22, 10
    plot_w, plot_h = width - left - 8, height - bottom - top
    highest: Number = max((v for _, v in points), default=0)
    peak = float(highest)
    body = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 8}" y2="{top + plot_h}" '
        f'stroke="{_AXIS_COLOR}"/>',
        f'<text x="{left - 6}" y="{top + 8}" text-anchor="end" {_FONT}>'
        f"{escape(fmt(highest))}</text>",
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" {_FONT}>0</text>',
    ]
    slot = plot_w / max(len(points), 1)
    every = max(1, round(len(points) / 8))  # at most about eight x labels
    for i, (label, value) in enumerate(points):
        bar_h = plot_h * float(value) / peak if peak else 0.0
        x = left + i * slot + slot * 0.1
        body.append(_bar(x, top + plot_h - bar_h, slot * 0.8, bar_h, label, fmt(value), value))
        if i % every == 0:
            body.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{height - 6}" text-anchor="middle" '
                f"{_FONT}>{escape(label[-5:])}</text>"
            )
    return _svg(title, width, height, body)


def bar_chart(
    points: Sequence[tuple[str, Number]],
    *,
    title: str,
    fmt: Formatter = _plain,
    width: int = 640,
    row_height: int = 22,
) -> SafeString:
    """Horizontal bars, largest first as given (e.g. cost by model, top users)."""
    label_w, value_w = 220, 90
    plot_w = width - label_w - value_w
    height = max(len(points), 1) * row_height + 4
    peak = max((float(v) for _, v in points), default=0.0)
    body = []
    for i, (label, value) in enumerate(points):
        y = 2 + i * row_height
        bar_w = plot_w * float(value) / peak if peak else 0.0
        short = label if len(label) <= 34 else "…" + label[-33:]
        body.append(
            f'<text x="{label_w - 6}" y="{y + row_height * 0.65:.1f}" text-anchor="end" '
            f"{_FONT}>{escape(short)}</text>"
        )
        body.append(_bar(label_w, y + 3, bar_w, row_height - 6, label, fmt(value), value))
        body.append(
            f'<text x="{label_w + bar_w + 4:.1f}" y="{y + row_height * 0.65:.1f}" '
            f"{_FONT}>{escape(fmt(value))}</text>"
        )
    return _svg(title, width, height, body)
