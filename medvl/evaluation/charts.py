"""What the per-category charts show, for the PNG charts and the HTML report alike: for each metric family
the categories with their row counts, each metric's value per category (None: the metric does not apply to
that category) and its 95% confidence interval.

A category's value gets an interval when it is the mean of the category's per-row scores in
predictions.jsonl: the Wilson score interval when every row scores 0 or 1 (a proportion: exact_match,
closed_accuracy, ...), else the percentile bootstrap of the mean: CIDEr's too, since a category's CIDEr is the
mean of its rows' CIDEr (document frequencies from the whole evaluated set). A corpus statistic (BLEU-4, METEOR,
perplexity) is not the mean of what a row holds, and gets none; :data:`INTERVALS_NOTE` says so beside every
chart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medvl.evaluation.aggregate import UNCATEGORIZED
from medvl.evaluation.resample import percentile_ci

WILSON = "Wilson"
BOOTSTRAP = "bootstrap"
CONFIDENCE = 0.95
N_BOOT = 2000
SEED = 0
INTERVALS_NOTE = (f"Error bars: {CONFIDENCE:.0%} CI; Wilson score interval for 0/1 metrics, percentile bootstrap "
                  f"of the mean ({N_BOOT} resamples, seed {SEED}) for other per-row means (CIDEr included); none "
                  "for corpus statistics (BLEU-4, METEOR, perplexity). n/a: the metric does not apply to the category.")
#: Relative tolerance of "the table's value is the mean of the rows' values" (the aggregate sums in row order,
#: numpy pairwise: the last bits differ).
_MEAN_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # WILSON or BOOTSTRAP


@dataclass(frozen=True)
class FamilyChart:
    """Bars by category: ``values[metric][i]`` is category ``i``'s value (None: n/a), with ``intervals[metric][i]``
    its CI (None: none, see the module's docstring). In a comparison's chart (:func:`runs_chart`) the bars of a
    category are the runs, and ``family`` names the one metric."""

    family: str
    categories: list[str]
    counts: list[int | None]
    metrics: list[str]
    values: dict[str, list[float | None]]
    intervals: dict[str, list[Interval | None]]
    log_scale: bool


def wilson(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (``n`` > 0), as scipy computes it."""
    from scipy.stats import binomtest  # scipy.stats takes ~0.5 s to import; only needed here

    ci = binomtest(round(successes), n).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_mean(values: Sequence[float], *, n_boot: int = N_BOOT, seed: int = SEED,
                   confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values``, with the draws medvl.compare makes for the same seed."""
    data = np.asarray(values, dtype=float)
    return percentile_ci(data.size, lambda index: data[index].mean(axis=1), n_boot=n_boot, seed=seed,
                         confidence=confidence)


def interval(values: Sequence[float], value: float) -> Interval | None:
    """The CI of ``value`` from the rows' ``values``; None when ``value`` is not their mean (a corpus statistic)."""
    if not values or not math.isclose(math.fsum(values) / len(values), value, rel_tol=_MEAN_TOLERANCE,
                                      abs_tol=_MEAN_TOLERANCE):
        return None
    if all(v in (0.0, 1.0) for v in values):
        return Interval(*wilson(sum(values), len(values)), WILSON)
    return Interval(*bootstrap_mean(values), BOOTSTRAP)


def _row_values(records: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """``{category: {metric: [row values]}}``, rows grouped as the aggregate groups them."""
    out: dict[str, dict[str, list[float]]] = {}
    for record in records:
        scores = record.get("metrics") or {}
        group = out.setdefault(str(record.get("category") or UNCATEGORIZED), {})
        for metric in metrics:
            value = scores.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                group.setdefault(metric, []).append(float(value))
    return out


def family_charts(tables: Mapping[str, Any], families: Mapping[str, Sequence[str]],
                  records: Sequence[Mapping[str, Any]] | None = None) -> list[FamilyChart]:
    """One :class:`FamilyChart` per family with a metric some category has; CIs only with ``records``."""
    by_category = tables.get("by_category") or {}
    categories = list(by_category)
    charts = []
    for family, names in families.items():
        metrics = [m for m in names if any(m in group for group in by_category.values())]
        if not metrics or not categories:
            continue
        rows = _row_values(records or [], metrics)
        values = {m: [by_category[c].get(m) for c in categories] for m in metrics}
        intervals = {m: [None if value is None else interval(rows.get(c, {}).get(m, []), value)
                         for c, value in zip(categories, values[m])] for m in metrics}
        charts.append(FamilyChart(family, categories, [by_category[c].get("count") for c in categories], metrics,
                                  values, intervals, log_scale=family == "perplexity"))
    return charts


def runs_chart(metric: str, tables: Mapping[str, Mapping[str, Any]],
               records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> FamilyChart | None:
    """One metric by category with a bar per run (``tables`` and ``records``: each run's metrics.json and
    predictions by run name); None when no run has the metric in any category."""
    groups = {name: t.get("by_category") or {} for name, t in tables.items()}
    categories = list(dict.fromkeys(c for by_category in groups.values() for c in by_category))
    values = {name: [(by_category.get(c) or {}).get(metric) for c in categories] for name, by_category in groups.items()}
    if all(v is None for run_values in values.values() for v in run_values):
        return None
    rows = {name: _row_values((records or {}).get(name, []), [metric]) for name in groups}
    intervals = {name: [None if v is None else interval(rows[name].get(c, {}).get(metric, []), v)
                        for c, v in zip(categories, run_values)] for name, run_values in values.items()}
    counts = [next((g[c].get("count") for g in groups.values() if c in g), None) for c in categories]
    return FamilyChart(metric, categories, counts, list(groups), values, intervals,
                       log_scale=metric.startswith("perplexity"))
