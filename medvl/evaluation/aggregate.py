"""Aggregation of per-sample scores into overall, closed/open and per-category tables."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medvl.data.taxonomy import BUILTIN, CLOSED, OPEN, normalize_answer_type
from medvl.evaluation.normalize import LANGUAGES

UNCATEGORIZED = "uncategorized"
#: metrics.json's record of a dataset's own taxonomy (category -> answer type, in ``data.categories`` order); absent
#: under the built-in one.
TAXONOMY_KEY = "taxonomy"


def aggregate(
    rows: Sequence[Mapping[str, Any]],
    per_sample: Sequence[Mapping[str, float]],
    corpus_fn: Callable[[Sequence[int]], Mapping[str, float]] | None = None,
    categories: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Average per-sample metrics over the whole set, closed and open rows, and each category.

    A metric's value for a group is the mean over the group's rows that have it (closed_accuracy
    exists only on closed rows), so a group's value is the count-weighted mean of its parts'. A row
    whose value is ``None`` (the metric applies but was left out there, e.g. BERTScore on Chinese
    rows without a multilingual model) takes the metric out of every group it is in: a mean over
    the other rows would pass for the whole group.
    ``corpus_fn(indices)``, when given, returns corpus-level scores (BLEU, CIDEr, METEOR) re-computed
    on a group's rows; they replace the means of those metrics' per-sample scores.

    A row's answer type is :func:`row_answer_type`'s; rows without one count in ``overall`` only. Rows with no
    category are grouped as ``"uncategorized"``. ``categories`` is the data's own taxonomy (``data.categories``,
    read by :func:`medvl.data.taxonomy.declared_taxonomy`; None: the built-in 12).

    Returns:
        ``{"overall": {...}, "closed": {...}, "open": {...}, "by_category": {category: {...}}}``,
        each group ``{metric: value, ..., "count": number of rows}``; categories in the taxonomy's
        order, then any others by name.
    """
    if len(rows) != len(per_sample):
        raise ValueError(f"{len(rows)} rows but {len(per_sample)} per-sample score dicts")

    closed, open_, by_category = [], [], {}
    for index, row in enumerate(rows):
        category = row.get("category") or UNCATEGORIZED
        by_category.setdefault(str(category), []).append(index)
        answer_type = row_answer_type(row, category, categories)
        if answer_type == CLOSED:
            closed.append(index)
        elif answer_type == OPEN:
            open_.append(index)

    def summarize(indices: list[int]) -> dict[str, float]:
        return _summarize(indices, per_sample, corpus_fn)

    order = {category: position for position, category in enumerate(BUILTIN if categories is None else categories)}
    categories = sorted(by_category, key=lambda c: (order.get(c, len(order)), c))
    return {
        "overall": summarize(list(range(len(rows)))),
        "closed": summarize(closed),
        "open": summarize(open_),
        "by_category": {category: summarize(by_category[category]) for category in categories},
    }


def row_answer_type(row: Mapping[str, Any], category: str | None = None,
                    categories: Mapping[str, str] | None = None) -> str | None:
    """``CLOSED``/``OPEN`` from the row's ``answer_type``, else from its category's in ``categories`` (None: the
    built-in 12), else (a row with a ``reference``) as the metrics infer it: closed when the reference is
    yes/no. ``None`` otherwise."""
    category = category or row.get("category") or UNCATEGORIZED
    given = normalize_answer_type(row.get("answer_type"))
    if given is not None:
        return given
    known = BUILTIN if categories is None else categories
    if category in known:
        return known[category]
    if "reference" in row:
        from medvl.evaluation.metrics import resolve_answer_type

        return resolve_answer_type(None, row["reference"])
    return None


def category_answer_types(tables: Mapping[str, Any]) -> dict[str, str]:
    """Category -> ``CLOSED``/``OPEN`` for an evaluation's tables: the data's own taxonomy where metrics.json
    records one (``taxonomy``, written by :func:`medvl.evaluation.scoring.score`), else the built-in 12."""
    return dict(tables.get(TAXONOMY_KEY) or BUILTIN)


def row_language(row: Mapping[str, Any]) -> str:
    """``"en"`` or ``"zh"``, from the row's data: its own label (Slake's ``meta.q_lang``), else its question and
    reference (:func:`medvl.evaluation.metrics.compute.resolve_language`), never the model's prediction."""
    from medvl.evaluation.metrics.compute import resolve_language

    meta = row.get("meta") or {}
    label = next((label for label in (meta.get("q_lang"), meta.get("lang"), row.get("lang")) if label in LANGUAGES),
                 None)
    return resolve_language(label, row.get("reference"), row.get("question"))


def _summarize(
    indices: list[int],
    per_sample: Sequence[Mapping[str, float]],
    corpus_fn: Callable[[Sequence[int]], Mapping[str, float]] | None,
) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    left_out: set[str] = set()
    for index in indices:
        for metric, value in per_sample[index].items():
            if value is None:
                left_out.add(metric)
                continue
            sums[metric] = sums.get(metric, 0.0) + value
            counts[metric] = counts.get(metric, 0) + 1
    summary = {metric: sums[metric] / counts[metric] for metric in sums if metric not in left_out}
    if corpus_fn is not None and indices:
        summary.update(corpus_fn(indices))
    summary["count"] = len(indices)
    return summary
