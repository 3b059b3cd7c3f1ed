"""Charts as inline SVG, rendered on the server: no script, no style attribute (the stylesheet colours them by class).

Every text that reaches the markup is escaped; numbers are formatted here. Each chart has a `<title>` and a
`role="img"` with an `aria-label` so a screen reader gets its gist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

RHO = "\u03c1"  # the unit shown for zCDP amounts

__all__ = ["RHO", "Interval", "bar_chart", "budget_bar", "fmt", "interval_chart", "step_chart"]


def fmt(x: float) -> str:
    """A number for people: up to 4 significant digits, no exponent below 1e9."""
    if x != x or math.isinf(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e9 or abs(x) < 1e-4:
        return f"{x:.3g}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def _svg(width: int, height: int, label: str, body: list[str]) -> Markup:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{escape(label)}">'
            f"<title>{escape(label)}</title>")
    return Markup(head + "".join(body) + "</svg>")


@dataclass(frozen=True, slots=True)
class Interval:
    """One released value with its 95% confidence interval."""

    label: str
    value: float
    lower: float
    upper: float


def interval_chart(title: str, items: Sequence[Interval], *, width: int = 640) -> Markup:
    """Each value as a dot with its 95% interval as an error bar, one row per group, on a shared axis."""
    if not items:
        return Markup("")
    row, left, right, top = 26, 150, 20, 24
    height = top + row * len(items) + 28
    lo = min(min(i.lower, i.value) for i in items)
    hi = max(max(i.upper, i.value) for i in items)
    if lo > 0 and lo < (hi - lo):
        lo = 0.0
    if hi == lo:
        hi, lo = hi + 1, lo - 1
    span = hi - lo

    def x(v: float) -> float:
        return left + (v - lo) / span * (width - left - right)

    body = [f'<text class="chart-title" x="{left}" y="14">{escape(title)}</text>']
    for k, i in enumerate(items):
        y = top + row * k + row / 2
        body.append(f'<text class="label" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">'
                    f"{escape(i.label[:22])}</text>")
        body.append(f'<line class="whisker" x1="{x(i.lower):.1f}" x2="{x(i.upper):.1f}" y1="{y:.1f}" y2="{y:.1f}"/>')
        for end in (i.lower, i.upper):
            body.append(f'<line class="whisker" x1="{x(end):.1f}" x2="{x(end):.1f}" y1="{y - 6:.1f}" '
                        f'y2="{y + 6:.1f}"/>')
        body.append(f'<circle class="point" cx="{x(i.value):.1f}" cy="{y:.1f}" r="4">'
                    f"<title>{escape(i.label)}: {fmt(i.value)} (95% interval {fmt(i.lower)} to {fmt(i.upper)})"
                    "</title></circle>")
    base = top + row * len(items) + 4
    body.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{base}" y2="{base}"/>')
    for t in range(5):
        v = lo + span * t / 4
        body.append(f'<text class="tick" x="{x(v):.1f}" y="{base + 16}" text-anchor="middle">{fmt(v)}</text>')
    return _svg(width, height, f"{title}: values with 95% confidence intervals", body)


def budget_bar(label: str, spent: float, total: float, *, unit: str = "ε", note: str = "",
               width: int = 420) -> Markup:
    """A stacked bar: spent against what remains of `total`."""
    height, left = 34, 0
    frac = 0.0 if total <= 0 else max(0.0, min(1.0, spent / total))
    inner = width - left
    body = [
        f'<rect class="bar-left" x="{left}" y="4" width="{inner}" height="14"/>',
        f'<rect class="bar-spent{" bar-high" if frac >= 0.9 else ""}" x="{left}" y="4" '
        f'width="{inner * frac:.1f}" height="14"/>',
        f'<text class="tick" x="{left}" y="31">{escape(label)}: {fmt(spent)} of {fmt(total)} {escape(unit)} spent '
        f"({frac:.0%}){escape(note)}</text>",
    ]
    return _svg(width, height, f"{label}: {fmt(spent)} of {fmt(total)} {unit} spent", body)


def bar_chart(title: str, items: Sequence[tuple[str, float]], *, unit: str = "", width: int = 520) -> Markup:
    """Horizontal bars, one per item, scaled to the largest."""
    if not items:
        return Markup("")
    row, left, top = 22, 170, 22
    height = top + row * len(items) + 6
    hi = max(v for _, v in items) or 1.0
    body = [f'<text class="chart-title" x="0" y="14">{escape(title)}</text>']
    for k, (name, v) in enumerate(items):
        y = top + row * k
        w = (width - left - 80) * (v / hi)
        body.append(f'<text class="label" x="{left - 8}" y="{y + 13}" text-anchor="end">{escape(name[:26])}</text>')
        body.append(f'<rect class="bar-spent" x="{left}" y="{y + 2}" width="{max(w, 0.5):.1f}" height="14"/>')
        body.append(f'<text class="tick" x="{left + w + 6:.1f}" y="{y + 13}">{fmt(v)} {escape(unit)}</text>')
    return _svg(width, height, title, body)


def step_chart(title: str, points: Sequence[tuple[str, float]], *, cap: float | None = None, unit: str = "ε",
               width: int = 640, height: int = 200) -> Markup:
    """A cumulative step line over time (x: the points in order, labelled at both ends), with the cap as a
    dashed line when there is one."""
    if not points:
        return Markup("")
    left, right, top, bottom = 60, 16, 22, 28
    hi = max([v for _, v in points] + ([cap] if cap else [])) or 1.0
    n = len(points)

    def x(k: float) -> float:
        return left + (k / max(1, n - 1)) * (width - left - right) if n > 1 else left + (width - left - right) / 2

    def y(v: float) -> float:
        return top + (1 - v / hi) * (height - top - bottom)

    path = [f"M{x(0):.1f},{y(0):.1f}"]
    for k, (_, v) in enumerate(points):
        path.append(f"L{x(k):.1f},{y(points[k - 1][1] if k else 0):.1f} L{x(k):.1f},{y(v):.1f}")
    body = [f'<text class="chart-title" x="{left}" y="14">{escape(title)}</text>',
            f'<line class="axis" x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>',
            f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{y(0):.1f}"/>',
            f'<path class="line" d="{" ".join(path)}"/>',
            f'<text class="tick" x="{left - 6}" y="{y(hi) + 4:.1f}" text-anchor="end">{fmt(hi)}</text>',
            f'<text class="tick" x="{left - 6}" y="{y(0) + 4:.1f}" text-anchor="end">0</text>',
            f'<text class="tick" x="{left}" y="{height - 8}">{escape(points[0][0])}</text>',
            f'<text class="tick" x="{width - right}" y="{height - 8}" text-anchor="end">{escape(points[-1][0])}</text>']
    if cap:
        body.append(f'<line class="cap-line" x1="{left}" x2="{width - right}" y1="{y(cap):.1f}" y2="{y(cap):.1f}"/>')
        body.append(f'<text class="tick" x="{width - right}" y="{y(cap) - 4:.1f}" text-anchor="end">cap '
                    f"{fmt(cap)} {escape(unit)}</text>")
    return _svg(width, height, f"{title}: {fmt(points[-1][1])} {unit} so far", body)
