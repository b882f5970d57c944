"""Eval outputs: predictions with per-sample metrics, metrics.json, CSV, markdown, charts, console.

Every table is built from :func:`metric_records` (metrics.json as tidy records) and written through
:mod:`medvl.tables`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from medvl import tables as tidy
from medvl.data.taxonomy import CATEGORIES
from medvl.tables import console

FAMILIES = {
    "matching": ["exact_match", "substring_match", "soft_match", "word_jaccard", "closed_accuracy", "open_recall",
                 "choice_accuracy"],
    "fine_grained": ["word_precision", "word_recall", "word_f1", "char_precision", "char_recall", "char_f1"],
    "generation": ["bleu4", "rouge_l", "meteor", "cider", "bertscore_f1"],
    "perplexity": ["perplexity", "perplexity_median"],
}
OVERALL = "overall"
ANSWER_TYPE_GROUPS = ("closed", "open")
SUMMARY_GROUPS = (OVERALL, *ANSWER_TYPE_GROUPS)
#: The breakdown (table) that the closed and open groups belong to.
ANSWER_TYPE = "answer_type"
#: metrics.json keys ``by_<breakdown>`` hold ``{value: {metric: number, "count": n}}`` tables.
BREAKDOWN_PREFIX = "by_"
#: The console shows these (when present); the files show every metric.
CONSOLE_METRICS = (*FAMILIES["matching"], "word_f1", "bleu4", "rouge_l", "bertscore_f1", "perplexity")

def metric_names(tables: dict[str, Any]) -> list[str]:
    present = {k for group in SUMMARY_GROUPS for k in tables.get(group, {}) if k != "count"}
    ordered = [m for fam in FAMILIES.values() for m in fam if m in present]
    return ordered + sorted(present - set(ordered))


def groups_of(metrics: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """``[(breakdown, group, {metric: value, "count": n})]`` of one metrics.json.

    ``("overall", "overall")``, ``("answer_type", "closed" | "open")``, then one entry per value of
    every ``by_<breakdown>`` table in file order: ``("category", "closed_yes_no")``,
    ``("task", "Disease Diagnosis")``, ``("question_type", "ABN")``, ...
    """
    out = []
    if isinstance(metrics.get(OVERALL), Mapping):
        out.append((OVERALL, OVERALL, metrics[OVERALL]))
    for group in ANSWER_TYPE_GROUPS:
        if isinstance(metrics.get(group), Mapping):
            out.append((ANSWER_TYPE, group, metrics[group]))
    for key, table in metrics.items():
        if key.startswith(BREAKDOWN_PREFIX) and isinstance(table, Mapping):
            breakdown = key.removeprefix(BREAKDOWN_PREFIX)
            out.extend((breakdown, str(value), values) for value, values in table.items()
                       if isinstance(values, Mapping))
    return out


def metric_records(tables: Mapping[str, Any], run: str | None = None) -> pd.DataFrame:
    """metrics.json as tidy records: one per (breakdown, group, metric the group has), with the group's count."""
    return tidy.records_frame(
        {"run": run, "breakdown": breakdown, "group": group, "metric": metric, "value": value,
         "count": values.get("count")}
        for breakdown, group, values in groups_of(tables) for metric, value in values.items() if metric != "count"
    )


def _cells(wide: pd.DataFrame, label: str) -> pd.DataFrame:
    """A wide table's values as text, its index as the first column, named ``label``."""
    return wide.map(tidy.format_number).rename_axis(label).reset_index()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _summary(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Rows: the overall, closed and open groups; columns: ``names``."""
    summary = frame[frame["breakdown"].isin([OVERALL, ANSWER_TYPE])]
    return tidy.pivot(summary, ["group"], columns="metric", row_order=SUMMARY_GROUPS, column_order=names)


def _breakdown(frame: pd.DataFrame, breakdown: str, groups: list[str], names: list[str]) -> pd.DataFrame:
    """Rows: the breakdown's ``groups``; columns: ``names``."""
    return tidy.pivot(frame[frame["breakdown"] == breakdown], ["group"], columns="metric", row_order=groups,
                      column_order=names)


def markdown_tables(tables: dict[str, Any]) -> str:
    names = metric_names(tables)
    frame = metric_records(tables)
    run = tables.get("run", {})
    lines = [f"# {run.get('name', 'eval')}: {run.get('data', '')} {run.get('split', '')}", ""]
    if run:
        lines += [f"model `{run.get('model')}`, checkpoint `{run.get('ckpt')}`, prompt `{run.get('prompt')}`", ""]
    counts = pd.DataFrame([[tables[g].get("count") for g in SUMMARY_GROUPS]], index=["count"],
                          columns=list(SUMMARY_GROUPS), dtype=object)
    summary = pd.concat([counts, _summary(frame, names).T])
    lines += ["## Overall", "", tidy.markdown(_cells(summary, "Metric"))]
    keys = [(cat, m) for cat, group in tables["by_category"].items() for m in names if m in group]
    long = tidy.pivot(frame[frame["breakdown"] == "category"], ["group", "metric"], columns="breakdown",
                      row_order=keys, column_order=["category"])
    by_category = pd.DataFrame([[cat, str(tables["by_category"][cat]["count"]), m, tidy.format_number(value)]
                                for (cat, m), value in zip(keys, long["category"])],
                               columns=["Category", "Count", "Metric", "Value"], dtype=object)
    lines += ["", "## By category", "", tidy.markdown(by_category)]
    for key, groups in tables.items():
        if not key.startswith(BREAKDOWN_PREFIX) or key == "by_category":
            continue
        breakdown = key.removeprefix(BREAKDOWN_PREFIX)
        table = _cells(_breakdown(frame, breakdown, [str(g) for g in groups], names), "Value")
        table.insert(1, "Count", [str(group["count"]) for group in groups.values()])
        lines += ["", f"## {breakdown}", "", tidy.markdown(table)]
    if tables.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in tables["notes"].values()]
    return "\n".join(lines) + "\n"


def write_csv(tables: dict[str, Any], path: Path) -> None:
    """by_category.csv: one row per category (with its answer type), then overall, closed and open."""
    names = metric_names(tables)
    frame = metric_records(tables)
    categories = list(tables["by_category"])
    wide = pd.concat([_breakdown(frame, "category", categories, names), _summary(frame, names)])
    wide.insert(0, "answer_type", [CATEGORIES.get(cat, ("",))[0] for cat in categories] + [""] * len(SUMMARY_GROUPS))
    wide.insert(1, "count", [tables["by_category"][cat]["count"] for cat in categories]
                + [tables[g]["count"] for g in SUMMARY_GROUPS])
    tidy.write_csv(wide.rename_axis("category").reset_index(), path)


def plot_families(tables: dict[str, Any], out: Path) -> list[Path]:
    """One bar chart per metric family: categories on the x axis, one bar per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cats = list(tables["by_category"])
    paths = []
    for family, metrics in FAMILIES.items():
        metrics = [m for m in metrics if any(m in g for g in tables["by_category"].values())]
        if not metrics or not cats:
            continue
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(cats) * max(1, len(metrics) / 3)), 4.5))
        width = 0.8 / len(metrics)
        x = np.arange(len(cats))
        for i, m in enumerate(metrics):
            # A category without the metric gets no bar (NaN), not a bar at 0 that reads as a score.
            vals = [np.nan if tables["by_category"][c].get(m) is None else tables["by_category"][c][m] for c in cats]
            ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=m)
        ax.set_xticks(x, cats, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{family} by category")
        if family == "perplexity":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"chart_{family}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def console_table(tables: dict[str, Any], title: str | None = None):
    """The summary groups, the categories and (Chinese and English apart) the languages, on the console."""
    names = [m for m in metric_names(tables) if m in CONSOLE_METRICS]
    keys = [(OVERALL, OVERALL), *((ANSWER_TYPE, g) for g in ANSWER_TYPE_GROUPS),
            *(("category", c) for c in tables["by_category"]), *(("lang", lang) for lang in tables.get("by_lang", {}))]
    counts = {(b, g): values["count"] for b, g, values in groups_of(tables)}
    wide = tidy.pivot(metric_records(tables), ["breakdown", "group"], columns="metric", row_order=keys, column_order=names)
    shown = wide.map(tidy.format_number)
    shown.insert(0, "n", [str(counts[key]) for key in keys])
    shown.insert(0, "category", [f"lang={g}" if b == "lang" else g for b, g in keys])
    return tidy.rich_table(shown.reset_index(drop=True), title=title or tables.get("run", {}).get("name"),
                           right=["n", *names])


def write_reports(records: list[dict[str, Any]], tables: dict[str, Any], out: Path) -> None:
    _atomic_write(out / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _atomic_write(out / "metrics.json", json.dumps(tables, indent=2, ensure_ascii=False))
    write_csv(tables, out / "by_category.csv")
    _atomic_write(out / "tables.md", markdown_tables(tables))
    plot_families(tables, out)
    console().print(console_table(tables))
    for note in (tables.get("notes") or {}).values():
        console().print(f"note: {note}", markup=False, highlight=False)


def print_side_by_side(results: dict[str, dict[str, Any]], out: Path) -> None:
    """Base vs fine-tuned on the console and in ``out/comparison.md``."""
    base, tuned = results["base"], results["ckpt"]
    names = metric_names(tuned)
    groups = [(OVERALL, OVERALL), *((ANSWER_TYPE, g) for g in ANSWER_TYPE_GROUPS),
              *(("category", c) for c in tuned["by_category"])]
    tuned_groups = {(b, g): values for b, g, values in groups_of(tuned)}
    keys = [(b, g, m) for b, g in groups for m in names if m in tuned_groups[b, g]]
    both = pd.concat([metric_records(base, "base"), metric_records(tuned, "fine-tuned")])
    wide = tidy.pivot(both, ["breakdown", "group", "metric"], row_order=keys, column_order=["base", "fine-tuned"])
    shown = wide.map(tidy.format_number).reset_index().drop(columns="breakdown")
    shown.columns = ["Group", "Metric", "base", "fine-tuned"]
    (out / "comparison.md").write_text(tidy.markdown(shown) + "\n", encoding="utf-8")
    on_console = shown[shown["Group"].isin(SUMMARY_GROUPS) | (shown["Metric"] == "exact_match")]
    console().print(tidy.rich_table(on_console.set_axis(["group", "metric", "base", "fine-tuned"], axis=1),
                                    title="base vs fine-tuned"))
