"""A :class:`~medvl.evaluation.charts.FamilyChart` as an inline SVG bar chart: categories with their n, one bar
per metric, 95% CI error bars, "n/a" where a metric does not apply, and a true zero drawn as a thin bar."""

from __future__ import annotations

import math
from html import escape

from medvl.evaluation.charts import FamilyChart, Interval
from medvl.tables import format_number

#: matplotlib's tab10, so that a metric has the same colour in the PNG charts.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
BAR = 12
GROUP_GAP = 18
LEFT, TOP, PLOT_HEIGHT, BOTTOM = 56, 52, 220, 120
#: About how far a 10 px label rotated by 35 degrees reaches left per character (the first one must fit).
LABEL_REACH = 4.7
#: The height of a bar at 0: a true zero is seen (an absent metric is "n/a" instead).
ZERO_HEIGHT = 2


class _Scale:
    """Value -> y pixel (linear from 0, or log10 for perplexity) and the axis ticks."""

    def __init__(self, chart: FamilyChart) -> None:
        shown = [v for m in chart.metrics for v in chart.values[m] if v is not None]
        shown += [ci.high for m in chart.metrics for ci in chart.intervals[m] if ci is not None]
        self.log = chart.log_scale and all(v > 0 for v in shown)
        if self.log:
            self.low = math.floor(math.log10(min(shown, default=1.0)))
            self.high = max(self.low + 1, math.ceil(math.log10(max(shown, default=10.0))))
        else:
            self.low, self.high = 0.0, max(1.0, *shown) if shown else 1.0

    def y(self, value: float) -> float:
        position = (math.log10(max(value, 10.0**self.low)) if self.log else value) - self.low
        return TOP + PLOT_HEIGHT - PLOT_HEIGHT * position / (self.high - self.low)

    def ticks(self) -> list[float]:
        if self.log:
            return [10.0**e for e in range(int(self.low), int(self.high) + 1)]
        return [self.high * k / 4 for k in range(5)]


def _tip(category: str, count: int | None, metric: str, value: float | None, ci: Interval | None) -> str:
    text = f"{category} (n={count}) · {metric}: {'n/a' if value is None else format_number(value)}"
    if ci is not None:
        text += f", 95% CI [{format_number(ci.low)}, {format_number(ci.high)}] ({ci.method})"
    return escape(text)


def _bars(chart: FamilyChart, scale: _Scale, group_width: float, left: float) -> list[str]:
    base = TOP + PLOT_HEIGHT
    out = []
    for i, (category, count) in enumerate(zip(chart.categories, chart.counts)):
        for j, metric in enumerate(chart.metrics):
            x = left + i * group_width + GROUP_GAP / 2 + j * BAR
            value, ci = chart.values[metric][i], chart.intervals[metric][i]
            keys = f'data-category="{escape(category)}" data-metric="{escape(metric)}"'
            tip = f"<title>{_tip(category, count, metric, value, ci)}</title>"
            if value is None:
                out.append(f'<text class="na" {keys} x="{x + BAR / 2:.1f}" y="{base - 4}" '
                           f'transform="rotate(-90 {x + BAR / 2:.1f} {base - 4})">n/a{tip}</text>')
                continue
            top = min(scale.y(value), base - ZERO_HEIGHT)
            out.append(f'<rect class="bar{" zero" if value == 0 else ""}" {keys} data-value="{value!r}" '
                       f'x="{x:.1f}" y="{top:.1f}" width="{BAR - 1}" height="{base - top:.1f}" '
                       f'fill="{PALETTE[j % len(PALETTE)]}">{tip}</rect>')
            if ci is not None:
                mid, low, high = x + (BAR - 1) / 2, scale.y(ci.low), scale.y(ci.high)
                out.append(f'<path class="ci" d="M{mid:.1f} {low:.1f}V{high:.1f}M{mid - 3:.1f} {low:.1f}h6'
                           f'M{mid - 3:.1f} {high:.1f}h6"/>')
        label_x = left + (i + 0.5) * group_width
        out.append(f'<text class="category" x="{label_x:.1f}" y="{base + 14}" '
                   f'transform="rotate(-35 {label_x:.1f} {base + 14})">{escape(_label(category, count))}</text>')
    return out


def _label(category: str, count: int | None) -> str:
    return f"{category} (n={count})"


def chart_svg(chart: FamilyChart) -> str:
    """The chart as an ``<svg>`` element; every text in it is HTML-escaped."""
    scale = _Scale(chart)
    group_width = len(chart.metrics) * BAR + GROUP_GAP
    first = _label(chart.categories[0], chart.counts[0]) if chart.categories else ""
    left = max(LEFT, LABEL_REACH * len(first) - group_width / 2 + 8)
    legend_width = sum(24 + 7 * len(m) for m in chart.metrics)
    width = int(max(left + len(chart.categories) * group_width + 24, LEFT + legend_width))
    height = TOP + PLOT_HEIGHT + BOTTOM
    title = f"{chart.family} by category"
    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'data-family="{escape(chart.family)}"><title>{escape(title)}</title>'
             f'<text class="heading" x="8" y="16">{escape(title)}</text>']
    for tick in scale.ticks():
        y = scale.y(tick)
        parts.append(f'<line class="grid" x1="{left:.1f}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{left - 4:.1f}" y="{y + 3:.1f}">{escape(f"{tick:.4g}")}</text>')
    parts.append(f'<line class="axis" x1="{left:.1f}" x2="{width - 8}" y1="{TOP + PLOT_HEIGHT}" '
                 f'y2="{TOP + PLOT_HEIGHT}"/>')
    x = 8
    for j, metric in enumerate(chart.metrics):
        parts.append(f'<rect x="{x}" y="26" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                     f'<text class="legend" x="{x + 14}" y="35">{escape(metric)}</text>')
        x += 24 + 7 * len(metric)
    parts += _bars(chart, scale, group_width, left)
    parts.append("</svg>")
    return "".join(parts)
