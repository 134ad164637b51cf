"""The per-day chart: inline SVG, no script, no style attribute (CSP-safe).

One point per day of the range for each series (page views, visitors), joined by a
line, each point with a ``<title>`` tooltip; colours come from classes in the
dashboard's stylesheet. Labels on the axes: the largest value, zero, the first and the
last day.

>>> svg = line_chart([{"day": "2026-11-01", "pageviews": 4, "visitors": 2}])
>>> svg.count('class="pt pt-pageviews"'), svg.count('class="pt pt-visitors"')
(1, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["line_chart"]

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 30
SERIES = (("pageviews", "page views"), ("visitors", "visitors"))


def _nice_max(value: int) -> int:
    """A round axis maximum at or above ``value`` (1, 2, 5 × 10^n)."""
    if value <= 5:
        return 5
    magnitude = int(10 ** (len(str(value)) - 1))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def line_chart(
    days: Sequence[dict[str, Any]], title: str = "Page views and visitors per day"
) -> str:
    """The SVG of ``days`` (the report's ``days`` rows)."""
    n = len(days)
    top = _nice_max(max((int(d[key]) for d in days for key, _ in SERIES), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))

    def y(v: int) -> float:
        return TOP + plot_h * (1 - v / top)

    radius = 3 if n <= 62 else 1.5 if n <= 186 else 1
    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">{escape(title)}</title>',
        '<g class="grid">',
    ]
    for frac in (0, 0.25, 0.5, 0.75, 1):
        gy = TOP + plot_h * (1 - frac)
        out.append(f'<line x1="{LEFT}" y1="{gy:.1f}" x2="{WIDTH - RIGHT}" y2="{gy:.1f}"/>')
    out.append("</g>")
    out.append(
        f'<g class="axis"><text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top:,}</text>'
        f'<text x="{LEFT - 6}" y="{TOP + plot_h + 4}" text-anchor="end">0</text>'
    )
    if n:
        first, last = escape(str(days[0]["day"])), escape(str(days[-1]["day"]))
        out.append(f'<text x="{LEFT}" y="{HEIGHT - 8}" text-anchor="start">{first}</text>')
        if n > 1:
            out.append(
                f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end">{last}</text>'
            )
    out.append("</g>")
    for key, label in SERIES:
        points = " ".join(f"{x(i):.1f},{y(int(d[key])):.1f}" for i, d in enumerate(days))
        out.append(f'<g class="series series-{key}">')
        if n > 1:
            out.append(f'<polyline class="line line-{key}" points="{points}"/>')
        for i, d in enumerate(days):
            value = int(d[key])
            out.append(
                f'<circle class="pt pt-{key}" cx="{x(i):.1f}" cy="{y(value):.1f}" r="{radius}">'
                f"<title>{escape(str(d['day']))}: {value:,} {label}</title></circle>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)
