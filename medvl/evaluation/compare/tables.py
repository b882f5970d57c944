"""The comparison's tables: tidy records of every run's metrics.json, the best cell of each row by the
metric's direction, and their Markdown (model_comparison_tables.md, significance.md) and console forms.

The records are data (:func:`comparison_table`, also written as CSV and JSON); everything else here
formats them through :mod:`medvl.tables`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from medvl import tables as tidy
from medvl.evaluation.compare.runs import Run
from medvl.evaluation.compare.settings import NOT_RECORDED, mixed_strict_settings
from medvl.evaluation.compare.stats import EXACT_BELOW, MCNEMAR_METRICS
from medvl.evaluation.metrics import higher_is_better as registered_direction
from medvl.evaluation.report import ANSWER_TYPE, ANSWER_TYPE_GROUPS, OVERALL, groups_of

#: A CI bound within this of 0 is 0 (float round-off of identical corpus statistics, shown as +0.0000).
_ZERO = 1e-12
#: A value a run does not have; a dash would read as a minus sign beside signed differences.
MISSING = "—"


def metric_directions(
    metrics: Sequence[str], higher_is_better: Mapping[str, bool] | None = None
) -> dict[str, bool]:
    """``{metric: higher_is_better}``: from ``higher_is_better``, else the metric registry.

    Raises:
        MetricError: a metric that is neither given nor registered (its direction is never guessed).
    """
    explicit = dict(higher_is_better or {})
    return {metric: bool(explicit[metric]) if metric in explicit else registered_direction(metric)
            for metric in metrics}


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Numeric metric names in the runs' metrics.json groups, in first-seen order (``count`` excluded)."""
    names: dict[str, None] = {}
    for run in runs:
        for _, _, values in groups_of(run.metrics):
            for key, value in values.items():
                if key != "count" and tidy.is_number(value):
                    names.setdefault(key, None)
    return list(names)


def comparison_table(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Tidy records ``{"run", "breakdown", "group", "metric", "value", "count"}`` of every run's metrics.json.

    ``breakdown`` and ``group`` are as :func:`groups_of` gives them (``overall``/``overall``,
    ``answer_type``/``closed``, ``category``/``closed_yes_no``, ``task``/``Disease Diagnosis``, ...);
    ``value`` is None where a run lacks the metric for that group; ``count`` is the group's number of
    rows in that run. Breakdowns and their groups come in first-seen order (overall, closed, open,
    then metrics.json's ``by_*`` tables); metrics in ``metrics`` order (all numeric ones by default).
    """
    metrics = list(metrics) if metrics is not None else available_metrics(runs)
    order: dict[tuple[str, str], None] = {}
    for run in runs:
        for breakdown, group, _ in groups_of(run.metrics):
            order.setdefault((breakdown, group), None)
    # Grouped by breakdown, so that a breakdown only some runs have still reads as one table.
    breakdowns = list(dict.fromkeys(breakdown for breakdown, _ in order))
    keys = [key for breakdown in breakdowns for key in order if key[0] == breakdown]
    run_groups = [{(b, g): values for b, g, values in groups_of(run.metrics)} for run in runs]
    records = []
    for key in keys:
        for run, groups in zip(runs, run_groups):
            values = groups.get(key)
            if values is None:
                continue
            count = values.get("count")
            for metric in metrics:
                value = values.get(metric)
                records.append({
                    "run": run.name,
                    "breakdown": key[0],
                    "group": key[1],
                    "metric": metric,
                    "value": float(value) if tidy.is_number(value) else None,
                    "count": int(count) if tidy.is_number(count) else None,
                })
    return records


def best_cells(
    table: Sequence[Mapping[str, Any]], directions: Mapping[str, bool]
) -> dict[str, dict[str, dict[str, list[str]]]]:
    """``{breakdown: {group: {metric: [best runs]}}}`` for every row of the comparison tables
    (:func:`medvl.tables.best_of`: ties all, all equal none)."""
    frame = tidy.records_frame(table)
    if frame.empty:
        return {}
    wide = tidy.pivot(frame, ["breakdown", "group", "metric"])
    best = tidy.best_mask(wide, [directions.get(m, True) for m in wide.index.get_level_values("metric")])
    out: dict[str, dict[str, dict[str, list[str]]]] = {}
    for (breakdown, group, metric), row in best.iterrows():
        out.setdefault(breakdown, {}).setdefault(group, {})[metric] = [run for run, is_best in row.items() if is_best]
    return out


def is_best(best: Mapping[str, Mapping[str, Mapping[str, Sequence[str]]]], record: Mapping[str, Any]) -> bool:
    """Whether a tidy record holds the best value of its row (as bold in the markdown tables)."""
    return record["run"] in best.get(record["breakdown"], {}).get(record["group"], {}).get(record["metric"], ())


def _value(value: Any) -> str:
    return tidy.format_number(value, missing=MISSING, compact_from=None)


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def _breakdown_title(breakdown: str) -> str:
    """``answer_type`` -> ``Answer type``, ``content_type`` -> ``Content type``."""
    return breakdown.replace("_", " ").capitalize()


def _breakdown_rows(
    records: pd.DataFrame, run_names: Sequence[str], directions: Mapping[str, bool]
) -> list[tuple[str, str, list[str], list[bool]]]:
    """``(group, row label, cells, bold)`` of one breakdown: for each group the metrics some run has (best
    in bold), then the group's count."""
    values = tidy.pivot(records, ["group", "metric"], column_order=run_names)
    counts = tidy.pivot(records.drop_duplicates(["group", "run"]), ["group"], values="count",
                          column_order=run_names)
    shown = values[values.notna().any(axis=1)]
    best = tidy.best_mask(shown, [directions.get(m, True) for m in shown.index.get_level_values("metric")])
    rows = []
    for group in counts.index:
        for metric in (m for g, m in shown.index if g == group):
            rows.append((group, f"{metric} {_arrow(directions.get(metric, True))}",
                         [_value(v) for v in shown.loc[(group, metric)]], list(best.loc[(group, metric)])))
        rows.append((group, "count", [_value(c) for c in counts.loc[group]], [False] * len(run_names)))
    return rows


def breakdown_frames(rows: Sequence[tuple[str, str, list[str], list[bool]]], labels: Sequence[str],
                     run_names: Sequence[str], *, with_group: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of :func:`_breakdown_rows` as a frame of cells and a like frame marking the best (bold) ones."""
    lead = len(labels)
    cells = [[*([group] if with_group else []), label, *texts] for group, label, texts, _ in rows]
    bold = [[False] * lead + list(flags) for _, _, _, flags in rows]
    columns = [*labels, *run_names]
    return (pd.DataFrame(cells, columns=columns, dtype=object),
            pd.DataFrame(bold, columns=columns, dtype=bool) if bold else pd.DataFrame(columns=columns, dtype=bool))


def breakdown_tables(
    table: Sequence[Mapping[str, Any]], run_names: Sequence[str], directions: Mapping[str, bool]
) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """``(title, cells, bold)`` of each table of :func:`render_markdown`: overall, closed/open, then one per
    breakdown, one column per run."""
    frame = tidy.records_frame(table)
    out = []
    for breakdown in pd.unique(frame["breakdown"]):
        rows = _breakdown_rows(frame[frame["breakdown"] == breakdown], run_names, directions)
        if breakdown == OVERALL:
            first = rows[0][0]  # the overall table has one group
            out.append(("Overall", *breakdown_frames([row for row in rows if row[0] == first], ["Metric"],
                                                     run_names, with_group=False)))
            continue
        title = "Closed / open" if breakdown == ANSWER_TYPE else f"By {_breakdown_title(breakdown).lower()}"
        out.append((title, *breakdown_frames(rows, [_breakdown_title(breakdown), "Metric"], run_names,
                                             with_group=True)))
    return out


def render_settings(differ: Mapping[str, Mapping[str, str]], run_names: Sequence[str]) -> list[str]:
    """Markdown lines marking the evaluation settings the runs do not share (none when they share all)."""
    if not differ:
        return []
    mixed = mixed_strict_settings(differ)
    lines = ["## Evaluation settings that differ", ""]
    if mixed:
        lines += [f"**Warning: the runs were not evaluated alike ({', '.join(mixed)}); differences in the tables "
                  "below measure these settings as well as the models.**", ""]
    frame = pd.DataFrame([[setting, *(str(texts.get(n, NOT_RECORDED)) for n in run_names)]
                          for setting, texts in differ.items()], columns=["Setting", *run_names], dtype=object)
    return [*lines, tidy.markdown(frame), ""]


def render_markdown(
    table: Sequence[Mapping[str, Any]],
    run_names: Sequence[str],
    directions: Mapping[str, bool],
    *,
    runs: Sequence[Run] = (),
    differ: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """Markdown tables, one column per run, best value of each row in bold.

    An overall table (rows: metrics), a closed/open table and one table per breakdown (category,
    task, department, modality, ...; rows: group x metric), each with the groups' row counts.
    ``runs``, when given, adds a legend of paths; ``differ`` (:func:`differing_settings`) a section
    marking the evaluation settings the runs do not share.
    """
    lines = ["# Model comparison", ""]
    if runs:
        for run in runs:
            meta = run.metrics.get("run") if isinstance(run.metrics.get("run"), Mapping) else {}
            details = ", ".join(f"{key}={meta[key]}" for key in ("model", "ckpt", "data", "prompt") if meta.get(key))
            lines.append(f"- **{tidy.cell(run.name)}**: `{run.path}`"
                         + (f" ({tidy.cell(details)})" if details else ""))
        lines.append("")
    lines += render_settings(differ or {}, run_names)
    lines += ["↑ higher is better, ↓ lower is better; the best value of each row is in **bold** (ties: all, "
              "all equal: none).", ""]
    for title, cells, bold in breakdown_tables(table, run_names, directions):
        lines += [f"## {title}", "", tidy.markdown(cells.where(~bold, cells.map(tidy.bold)), right=run_names), ""]
    return "\n".join(lines)


def significance_method(n_boot: int, seed: int, confidence: float) -> str:
    """How the paired statistics are computed, as significance.md and report.html say it."""
    return (
        "Differences are run − reference, paired by id over "
        f"the ids both runs scored (and where both have the metric). {confidence:.0%} CIs: percentile paired bootstrap, "
        f"{n_boot} resamples of ids, seed {seed}. BLEU-4 and perplexity are corpus statistics: each resample "
        "recomputes corpus BLEU-4 from the rows' summed n-gram counts and lengths, and exp(total NLL / total "
        "tokens), so reference and run are the corpus values over the common ids. CIDEr is the mean of "
        "per-sample CIDEr with document frequencies of each run's whole evaluation set (which is how the "
        "corpus CIDEr is defined). METEOR has no CI: its corpus score pools statistics inside the Java "
        f"scorer. * marks a CI that excludes 0. McNemar on {' and '.join(MCNEMAR_METRICS)} (the rows each "
        "applies to): b = reference right & run wrong, c = reference wrong & run right; exact binomial test "
        f"when b + c < {EXACT_BELOW}, else chi-square with continuity correction."
    )


def significance_frames(result: Mapping[str, Any], directions: Mapping[str, bool],
                        confidence: float = 0.95) -> list[tuple[pd.DataFrame, list[str]]]:
    """``(cells, right-aligned columns)`` of one pair's McNemar table and bootstrap CI table (those it has)."""
    frames = []
    if result["mcnemar"]:
        frame = pd.DataFrame(
            [[metric, m["n"], m["b"], m["c"], m["method"], f"{m['statistic']:.4f}", tidy.format_p(m["p_value"])]
             for metric, m in result["mcnemar"].items()],
            columns=["McNemar", "n", "b", "c", "method", "statistic", "p-value"], dtype=object)
        frames.append((frame, ["n", "b", "c", "statistic", "p-value"]))
    if result["bootstrap"]:
        frame = pd.DataFrame(
            [[f"{metric} {_arrow(directions.get(metric, True))}", ci["n"], f"{ci['reference_mean']:.4f}",
              f"{ci['other_mean']:.4f}", f"{ci['diff']:+.4f}",
              tidy.format_ci(ci["low"], ci["high"]) + (" *" if ci["low"] > _ZERO or ci["high"] < -_ZERO else "")]
             for metric, ci in result["bootstrap"].items()],
            columns=["Metric", "n", "reference", "run", "diff", f"{confidence:.0%} CI"], dtype=object)
        frames.append((frame, ["n", "reference", "run", "diff"]))
    return frames


def pair_summary(result: Mapping[str, Any]) -> str:
    """How many ids two runs share, and how many only one has."""
    return (f"ids: {result['n_common']} in common; {result['n_reference'] - result['n_common']} only in the "
            f"reference, {result['n_run'] - result['n_common']} only in this run.")


def render_significance(
    results: Sequence[Mapping[str, Any]],
    directions: Mapping[str, bool],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    mixed_settings: Sequence[str] = (),
) -> str:
    """Markdown report of :func:`significance` results; ``mixed_settings`` adds a warning that they differ."""
    lines = ["# Significance", ""]
    if not results:
        return "\n".join([*lines, "Only one run: nothing to compare.", ""])
    lines += [f"Reference: **{tidy.cell(results[0]['reference'])}**. " + significance_method(n_boot, seed, confidence),
              ""]
    if mixed_settings:
        lines += [f"**Warning: the runs were not evaluated alike ({', '.join(mixed_settings)}); these tests measure "
                  "the settings as well as the models.**", ""]
    for result in results:
        lines += [f"## {tidy.cell(result['run'])} vs {tidy.cell(result['reference'])}", ""]
        lines += [pair_summary(result), ""]
        if result["note"]:
            lines += [f"**{tidy.cell(result['note'])}**", ""]
            continue
        for frame, right in significance_frames(result, directions, confidence):
            lines += [tidy.markdown(frame, right=right), ""]
        for metric, why in (result.get("skipped") or {}).items():
            lines += [f"{tidy.cell(metric)}: {tidy.cell(why)}.", ""]
    return "\n".join(lines)


def console_tables(
    table: Sequence[Mapping[str, Any]],
    run_names: Sequence[str],
    directions: Mapping[str, bool],
    significance_results: Sequence[Mapping[str, Any]] = (),
    *,
    confidence: float = 0.95,
) -> list[Any]:
    """rich Tables: overall/closed/open values (best in bold) and, when there are pairs, the paired tests."""
    from rich.markup import escape
    from rich.text import Text

    frame = tidy.records_frame(table)
    rows = []
    for breakdown in (OVERALL, ANSWER_TYPE):
        records = frame[(frame["breakdown"] == breakdown) & frame["group"].isin([OVERALL, *ANSWER_TYPE_GROUPS])]
        if not records.empty:
            rows += _breakdown_rows(records, run_names, directions)
    values = pd.DataFrame([[group, label, *texts] for group, label, texts, _ in rows],
                          columns=["Group", "Metric", *run_names], dtype=object)
    bold = pd.DataFrame([[False, False, *flags] for _, _, _, flags in rows], columns=values.columns, dtype=bool)
    result_tables = [tidy.rich_table(values, title="Model comparison (overall, closed, open)", right=run_names,
                                       bold_cells=bold, section_by="Group")]
    if significance_results:
        reference = significance_results[0]["reference"]
        tests = []
        for result in significance_results:
            if result["note"]:
                tests.append([result["run"], "—", "", "", Text(result["note"], style="yellow")])
            for metric, m in result["mcnemar"].items():
                tests.append([result["run"], f"{metric} (McNemar)", str(m["n"]), "",
                              f"b={m['b']} c={m['c']} {m['method']} stat={m['statistic']:.3f} "
                              f"p={tidy.format_p(m['p_value'])}"])
            for metric, ci in result["bootstrap"].items():
                interval = tidy.format_ci(ci["low"], ci["high"])
                excludes_zero = ci["low"] > 0 or ci["high"] < 0
                tests.append([result["run"], metric, str(ci["n"]), f"{ci['diff']:+.4f}",
                              Text(interval, style="bold") if excludes_zero else interval])
        columns = ["Run", "Metric", "n", "diff", f"{confidence:.0%} CI / McNemar"]
        result_tables.append(tidy.rich_table(pd.DataFrame(tests, columns=columns, dtype=object),
                                               title=f"Paired vs {escape(reference)} (diff = run − reference)",
                                               right=["n", "diff"], section_by="Run"))
    return result_tables
