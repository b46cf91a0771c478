"""The daily spend chart: an inline SVG drawn on the server.

No JavaScript and no external assets, so the chart looks the same in a browser, in a
mail client and in the PDF. Geometry uses floats; the amounts printed are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from markupsafe import Markup, escape

from .model import Day

WIDTH, HEIGHT = 700, 210
LEFT, RIGHT, TOP, BOTTOM = 64, 10, 12, 28


def nice_step(maximum: Decimal, ticks: int = 4) -> Decimal:
    """A round axis step (1, 2, 2.5 or 5 x 10^k) so that ``ticks`` steps cover ``maximum``."""
    if maximum <= 0:
        return Decimal(1)
    raw = maximum / ticks
    exp = raw.adjusted()
    base = Decimal(1).scaleb(exp)
    for m in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10)):
        if base * m >= raw:
            return base * m
    return base * 10  # pragma: no cover - the loop always returns


def _label(value: Decimal, places: int) -> str:
    # Axis steps are round numbers; show them with the currency's decimals.
    return f"{value:,.{places}f}"


def daily_spend_svg(days: Sequence[Day], currency: str, places: int = 2) -> Markup:
    """A bar chart of spend per day: one bar per day of the period, a labelled value axis
    and day-of-month labels; each bar carries a ``<title>`` (date and amount) as tooltip."""
    top = max((d.amount for d in days), default=Decimal(0))
    step = nice_step(top)
    ticks = 4
    while step * ticks < top:  # rounding of the step may leave the top bar over the axis
        ticks += 1
    axis_max = step * ticks
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    n = max(len(days), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.7, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-label="Daily spend in {escape(currency)}" '
        f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="10">']
    for i in range(ticks + 1):
        value = step * i
        y = TOP + plot_h - float(value / axis_max) * plot_h
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{"#9aa5b1" if i == 0 else "#e4e8ee"}" stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 3.5:.1f}" text-anchor="end" '
                     f'fill="#52606d">{escape(_label(value, places))}</text>')
    label_every = 1 if n <= 10 else 5
    for i, d in enumerate(days):
        x = LEFT + i * slot + (slot - bar_w) / 2
        h = float(d.amount / axis_max) * plot_h if axis_max else 0.0
        y = TOP + plot_h - h
        tip = escape(f"{d.date}: {d.amount:,} {currency} ({d.calls} calls)")
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                     f'fill="#2f6690"><title>{tip}</title></rect>')
        day = int(d.date[8:10])
        if day == 1 or day % label_every == 0:
            parts.append(f'<text x="{LEFT + i * slot + slot / 2:.1f}" y="{HEIGHT - 10}" '
                         f'text-anchor="middle" fill="#52606d">{day}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
