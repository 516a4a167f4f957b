"""Inline SVG charts for the HTML report: no JavaScript, no external assets.

:func:`line_chart` draws one or more series over time; :func:`bar_chart`
draws a histogram. Both return an ``<svg>`` string, already escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

WIDTH = 760
HEIGHT = 230
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 130, 26, 34
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
)  # fmt: skip

Point = tuple[float, float]


def _nice(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.1f}"
    return f"{v:.3g}"


def nice_ceiling(v: float) -> float:
    """The smallest of 1, 2, 4, 5, 8 x 10^k at or above ``v``, so that the axis' quarter
    ticks are round numbers (0.581 -> 0.8: ticks 0, 0.2, 0.4, 0.6, 0.8)."""
    if v <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(v))
    for step in (1.0, 2.0, 4.0, 5.0, 8.0, 10.0):
        if v <= step * scale * (1 + 1e-9):
            return step * scale
    return 10.0 * scale


def _frame(title: str, y_label: str, x_label: str = "") -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<text x="{MARGIN_L}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<text x="12" y="{HEIGHT / 2}" font-size="11" transform="rotate(-90 12 {HEIGHT / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    if x_label:
        middle = MARGIN_L + (WIDTH - MARGIN_L - MARGIN_R) / 2
        parts.append(
            f'<text x="{middle:.0f}" y="{HEIGHT - 4}" font-size="11" text-anchor="middle">'
            f"{escape(x_label)}</text>"
        )
    return parts


def _axes(parts: list[str], y_min: float, y_max: float, x_labels: Sequence[str]) -> None:
    plot_w = WIDTH - MARGIN_L - MARGIN_R
    plot_h = HEIGHT - MARGIN_T - MARGIN_B
    bottom = MARGIN_T + plot_h
    for i in range(5):
        frac = i / 4
        y = bottom - frac * plot_h
        value = y_min + frac * (y_max - y_min)
        parts.append(
            f'<line x1="{MARGIN_L}" y1="{y:.1f}" x2="{MARGIN_L + plot_w}" y2="{y:.1f}" '
            'stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{MARGIN_L - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{_nice(value)}</text>"
        )
    n = len(x_labels)
    for i, label in enumerate(x_labels):
        x = MARGIN_L + (i / max(1, n - 1)) * plot_w
        parts.append(
            f'<text x="{x:.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">'
            f"{escape(label)}</text>"
        )


def line_chart(
    title: str,
    y_label: str,
    series: Mapping[str, Sequence[Point]],
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    x_label: str = "",
) -> str:
    """Series of ``(x seconds, y)`` points; missing samples simply are not points.

    ``x_range``: the run's time span, so that every chart of a report shares one time
    axis; ``y_range``: a fixed scale (MOS 1-5), else 0 to a round value above the data.
    """
    points = [p for pts in series.values() for p in pts]
    parts = _frame(title, y_label, x_label)
    if not points:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text>')
        return "".join(parts) + "</svg>"
    x_min, x_max = x_range or (min(p[0] for p in points), max(p[0] for p in points))
    if y_range is not None:
        y_min, y_max = y_range
    else:
        y_min = min(0.0, min(p[1] for p in points))
        y_max = y_min + nice_ceiling(max(p[1] for p in points) - y_min)
    x_span = (x_max - x_min) or 1.0
    plot_w = WIDTH - MARGIN_L - MARGIN_R
    plot_h = HEIGHT - MARGIN_T - MARGIN_B
    ticks = [f"{x_min + i * x_span / 5:.0f}s" for i in range(6)]
    _axes(parts, y_min, y_max, ticks)
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(
            f"{MARGIN_L + (x - x_min) / x_span * plot_w:.1f},"
            f"{MARGIN_T + plot_h - (y - y_min) / (y_max - y_min) * plot_h:.1f}"
            for x, y in pts
        )
        if coords:
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{coords}"/>'
            )
        ly = MARGIN_T + 12 + i * 14
        parts.append(
            f'<rect x="{WIDTH - MARGIN_R + 10}" y="{ly - 8}" width="10" height="10" '
            f'fill="{color}"/><text x="{WIDTH - MARGIN_R + 24}" y="{ly + 1}" font-size="11">'
            f"{escape(name)}</text>"
        )
    return "".join(parts) + "</svg>"


def bar_chart(
    title: str, y_label: str, bars: Sequence[tuple[str, float]], x_label: str = ""
) -> str:
    """One bar per ``(label, value)``, e.g. a histogram's bins."""
    parts = _frame(title, y_label, x_label)
    if not bars:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text>')
        return "".join(parts) + "</svg>"
    y_max = nice_ceiling(max(v for _, v in bars))
    plot_w = WIDTH - MARGIN_L - MARGIN_R
    plot_h = HEIGHT - MARGIN_T - MARGIN_B
    step = plot_w / len(bars)
    label_every = max(1, len(bars) // 8)
    _axes(parts, 0.0, y_max, [])
    for i, (label, value) in enumerate(bars):
        h = value / y_max * plot_h
        x = MARGIN_L + i * step
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{MARGIN_T + plot_h - h:.1f}" '
            f'width="{max(1.0, step - 2):.1f}" height="{h:.1f}" fill="{PALETTE[0]}">'
            f"<title>{escape(label)}: {value:g}</title></rect>"
        )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{MARGIN_T + plot_h + 14}" font-size="10" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    return "".join(parts) + "</svg>"
