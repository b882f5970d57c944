"""Eval outputs: predictions with per-sample metrics, metrics.json, CSV, markdown, charts, report.html, console.

Every table is built from :func:`metric_records` (metrics.json as tidy records) and written through
:mod:`medvl.tables`; report.html shows the same cells (:mod:`medvl.evaluation.html` renders them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medvl import tables as tidy
from medvl.evaluation import html
from medvl.evaluation.aggregate import category_answer_types
from medvl.evaluation.charts import INTERVALS_NOTE, family_charts, runs_chart
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


def _summary(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Rows: the overall, closed and open groups; columns: ``names``."""
    summary = frame[frame["breakdown"].isin([OVERALL, ANSWER_TYPE])]
    return tidy.pivot(summary, ["group"], columns="metric", row_order=SUMMARY_GROUPS, column_order=names)


def _breakdown(frame: pd.DataFrame, breakdown: str, groups: list[str], names: list[str]) -> pd.DataFrame:
    """Rows: the breakdown's ``groups``; columns: ``names``."""
    return tidy.pivot(frame[frame["breakdown"] == breakdown], ["group"], columns="metric", row_order=groups,
                      column_order=names)


def _overall_cells(tables: dict[str, Any], frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The overall table's cells: rows the count and each metric, columns overall, closed and open."""
    counts = pd.DataFrame([[tables[g].get("count") for g in SUMMARY_GROUPS]], index=["count"],
                          columns=list(SUMMARY_GROUPS), dtype=object)
    return _cells(pd.concat([counts, _summary(frame, names).T]), "Metric")


def _breakdown_cells(tables: dict[str, Any], frame: pd.DataFrame, names: list[str],
                     skip: tuple[str, ...] = ("by_category",)) -> list[tuple[str, pd.DataFrame]]:
    """``(breakdown, cells)`` of every ``by_*`` table but ``skip``: rows its groups (with their count)."""
    out = []
    for key, groups in tables.items():
        if not key.startswith(BREAKDOWN_PREFIX) or key in skip:
            continue
        breakdown = key.removeprefix(BREAKDOWN_PREFIX)
        table = _cells(_breakdown(frame, breakdown, [str(g) for g in groups], names), "Value")
        table.insert(1, "Count", [str(group["count"]) for group in groups.values()])
        out.append((breakdown, table))
    return out


def markdown_tables(tables: dict[str, Any]) -> str:
    names = metric_names(tables)
    frame = metric_records(tables)
    run = tables.get("run", {})
    lines = [f"# {run.get('name', 'eval')}: {run.get('data', '')} {run.get('split', '')}", ""]
    if run:
        lines += [f"model `{run.get('model')}`, checkpoint `{run.get('ckpt')}`, prompt `{run.get('prompt')}`", ""]
    lines += ["## Overall", "", tidy.markdown(_overall_cells(tables, frame, names))]
    keys = [(cat, m) for cat, group in tables["by_category"].items() for m in names if m in group]
    long = tidy.pivot(frame[frame["breakdown"] == "category"], ["group", "metric"], columns="breakdown",
                      row_order=keys, column_order=["category"])
    by_category = pd.DataFrame([[cat, str(tables["by_category"][cat]["count"]), m, tidy.format_number(value)]
                                for (cat, m), value in zip(keys, long["category"])],
                               columns=["Category", "Count", "Metric", "Value"], dtype=object)
    lines += ["", "## By category", "", tidy.markdown(by_category)]
    for breakdown, table in _breakdown_cells(tables, frame, names):
        lines += ["", f"## {breakdown}", "", tidy.markdown(table)]
    if tables.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in tables["notes"].values()]
    return "\n".join(lines) + "\n"


def html_report(records: list[dict[str, Any]], tables: dict[str, Any], images: Mapping[str, Path] | None = None,
                ) -> str:
    """report.html of one evaluation: the tables of tables.md (the same cells), the breakdowns, the charts with
    their CIs and the predictions browser."""
    names = metric_names(tables)
    frame = metric_records(tables)
    run = tables.get("run", {})
    categories = list(tables["by_category"])
    by_category = _cells(_breakdown(frame, "category", categories, names), "Category")
    answer_types = category_answer_types(tables)
    by_category.insert(1, "Answer type", [answer_types.get(c, "") for c in categories])
    by_category.insert(2, "Count", [str(tables["by_category"][c]["count"]) for c in categories])
    right = ["Count", *SUMMARY_GROUPS, *names]
    sections = [
        html.Section("Overall", "overall", [html.Table(_overall_cells(tables, frame, names), id="table-overall",
                                                       right=right)],
                     notes=["Closed and open: the rows of each answer type. -: no value (the metric does not apply "
                            "there, or was left out: see the notes)."]),
        html.Section("By category", "by-category", [html.Table(by_category, id="table-category", right=right)]),
        *(html.Section(f"By {b.replace('_', ' ')}", f"by-{b}", [html.Table(t, id=f"table-{b}", right=right)])
          for b, t in _breakdown_cells(tables, frame, names)),
        html.Section("Charts", "charts", charts=[html.chart_svg(c) for c in family_charts(tables, FAMILIES, records)],
                     notes=[INTERVALS_NOTE]),
    ]
    if tables.get("notes"):
        sections.append(html.Section("Notes", "notes", notes=list(tables["notes"].values())))
    meta = [(label, str(run[key])) for label, key in (("data", "data"), ("split", "split"), ("model", "model"),
                                                      ("checkpoint", "ckpt"), ("prompt", "prompt")) if run.get(key)]
    return html.render(f"{run.get('name', 'eval')}: {run.get('data', '')} {run.get('split', '')}".strip(),
                       meta=meta, sections=sections, data=tables,
                       browser=html.build_browser({str(run.get("name", "prediction")): records}, images,
                                                  categories=list(tables["by_category"])))


def runs_charts_section(tables: Mapping[str, Mapping[str, Any]], records: Mapping[str, Sequence[Mapping[str, Any]]],
                        ) -> html.Section:
    """report.html's charts of several runs: each matching metric by category, a bar per run, with its CIs
    (``tables`` and ``records``: each run's metrics.json and predictions, by run name)."""
    charts = [chart for metric in FAMILIES["matching"] if (chart := runs_chart(metric, tables, records))]
    return html.Section("Charts", "charts", charts=[html.chart_svg(chart) for chart in charts], notes=[INTERVALS_NOTE])


def write_csv(tables: dict[str, Any], path: Path) -> None:
    """by_category.csv: one row per category (with its answer type), then overall, closed and open."""
    names = metric_names(tables)
    frame = metric_records(tables)
    categories = list(tables["by_category"])
    wide = pd.concat([_breakdown(frame, "category", categories, names), _summary(frame, names)])
    answer_types = category_answer_types(tables)
    wide.insert(0, "answer_type", [answer_types.get(cat, "") for cat in categories] + [""] * len(SUMMARY_GROUPS))
    wide.insert(1, "count", [tables["by_category"][cat]["count"] for cat in categories]
                + [tables[g]["count"] for g in SUMMARY_GROUPS])
    tidy.write_csv(wide.rename_axis("category").reset_index(), path)


def plot_families(tables: dict[str, Any], out: Path, records: list[dict[str, Any]] | None = None) -> list[Path]:
    """One bar chart per metric family: categories (with their n) on the x axis, one bar per metric, with the
    95% CIs of :func:`medvl.evaluation.charts.family_charts` when ``records`` are given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    for chart in family_charts(tables, FAMILIES, records):
        cats, metrics = chart.categories, chart.metrics
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(cats) * max(1, len(metrics) / 3)), 4.8))
        width = 0.8 / len(metrics)
        x = np.arange(len(cats))
        for i, m in enumerate(metrics):
            # A category without the metric gets no bar (NaN) and an "n/a" mark, not a bar at 0 that reads as a
            # score; a true 0 gets a line in the bar's colour, so that it is seen.
            vals = [np.nan if v is None else v for v in chart.values[m]]
            where = x + i * width - 0.4 + width / 2
            color = ax.bar(where, vals, width, label=m).patches[0].get_facecolor()
            for position, value, ci in zip(where, chart.values[m], chart.intervals[m]):
                if value is None:
                    ax.text(position, 0.01, "n/a", transform=ax.get_xaxis_transform(), rotation=90, fontsize=6,
                            ha="center", va="bottom", color="0.4")
                elif value == 0 and not chart.log_scale:
                    ax.hlines(0, position - width / 2, position + width / 2, colors=[color], linewidth=3)
                if ci is not None:
                    ax.errorbar(position, value, yerr=[[max(0.0, value - ci.low)], [max(0.0, ci.high - value)]], fmt="none",
                                ecolor="0.2", elinewidth=0.8, capsize=2)
        ax.set_xticks(x, [f"{c}\nn={n}" for c, n in zip(cats, chart.counts)], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{chart.family} by category")
        if chart.log_scale:
            ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # not over the bars
        fig.text(0.01, 0.01, INTERVALS_NOTE, fontsize=6, wrap=True, va="bottom")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        path = out / f"chart_{chart.family}.png"
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


def write_reports(records: list[dict[str, Any]], tables: dict[str, Any], out: Path,
                  images: Mapping[str, Path] | None = None) -> None:
    """predictions.jsonl, metrics.json, by_category.csv, tables.md, the PNG charts and report.html (with
    thumbnails of ``images``, ``{id: image path}``, when given)."""
    tidy.write_text(out / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tidy.write_text(out / "metrics.json", json.dumps(tables, indent=2, ensure_ascii=False))
    write_csv(tables, out / "by_category.csv")
    tidy.write_text(out / "tables.md", markdown_tables(tables))
    plot_families(tables, out, records)
    html.write(out / html.REPORT, html_report(records, tables, images))
    console().print(console_table(tables))
    for note in (tables.get("notes") or {}).values():
        console().print(f"note: {note}", markup=False, highlight=False)


def print_side_by_side(results: dict[str, dict[str, Any]], out: Path, images: Mapping[str, Path] | None = None,
                       ) -> None:
    """Base vs fine-tuned on the console, in ``out/comparison.md`` and in ``out/report.html`` (with the two
    predictions of each row side by side, read from ``out/base`` and ``out/ckpt``)."""
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
    html.write(out / html.REPORT, _side_by_side_html(results, out, wide, shown, images))
    on_console = shown[shown["Group"].isin(SUMMARY_GROUPS) | (shown["Metric"] == "exact_match")]
    console().print(tidy.rich_table(on_console.set_axis(["group", "metric", "base", "fine-tuned"], axis=1),
                                    title="base vs fine-tuned"))


def _side_by_side_html(results: dict[str, dict[str, Any]], out: Path, wide: pd.DataFrame, shown: pd.DataFrame,
                       images: Mapping[str, Path] | None) -> str:
    """report.html of ``compare_base=true``: comparison.md's table (the better value in bold, by the metric's
    registered direction) and both runs' predictions side by side."""
    from medvl.data.format import read_jsonl
    from medvl.evaluation.metrics import MetricError, higher_is_better

    def direction(metric: str) -> bool | None:
        try:
            return higher_is_better(metric)
        except MetricError:  # not registered: no bold rather than a guessed direction
            return None

    directions = [direction(m) for m in wide.index.get_level_values("metric")]
    best = tidy.best_mask(wide, [d is not False for d in directions])
    best.loc[[d is None for d in directions]] = False
    bold = pd.concat([pd.DataFrame(False, index=best.index, columns=["Group", "Metric"]), best], axis=1)
    run = results["ckpt"].get("run", {})
    records = {name: read_jsonl(out / sub / "predictions.jsonl") for name, sub in (("base", "base"),
                                                                                  ("fine-tuned", "ckpt"))}
    table = html.Table(shown, id="table-comparison", bold=bold.reset_index(drop=True), right=["base", "fine-tuned"])
    return html.render(
        f"base vs fine-tuned: {run.get('data', '')} {run.get('split', '')}".strip(),
        meta=[("checkpoint", str(run.get("ckpt"))), ("model", str(run.get("model")))],
        sections=[html.Section("Base vs fine-tuned", "comparison", [table],
                               notes=["The better value of each row in bold (by the metric's direction); "
                                      "-: the metric does not apply to the group."]),
                  runs_charts_section({"base": results["base"], "fine-tuned": results["ckpt"]}, records)],
        browser=html.build_browser(records, images, categories=[*results["base"]["by_category"],
                                                                *results["ckpt"]["by_category"]]), data=results,
        links=[("base report", f"base/{html.REPORT}"), ("fine-tuned report", f"ckpt/{html.REPORT}")],
    )
