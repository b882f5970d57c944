"""Eval outputs: predictions with per-sample metrics, metrics.json, CSV, markdown, charts, console."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from medvl.data.taxonomy import CATEGORIES

FAMILIES = {
    "matching": ["exact_match", "substring_match", "soft_match", "word_jaccard", "closed_accuracy", "open_recall",
                 "choice_accuracy"],
    "fine_grained": ["word_precision", "word_recall", "word_f1", "char_precision", "char_recall", "char_f1"],
    "generation": ["bleu4", "rouge_l", "meteor", "cider", "bertscore_f1"],
    "perplexity": ["perplexity", "perplexity_median"],
}
SUMMARY_GROUPS = ("overall", "closed", "open")


def metric_names(tables: dict[str, Any]) -> list[str]:
    present = {k for group in SUMMARY_GROUPS for k in tables.get(group, {}) if k != "count"}
    ordered = [m for fam in FAMILIES.values() for m in fam if m in present]
    return ordered + sorted(present - set(ordered))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def markdown_tables(tables: dict[str, Any]) -> str:
    names = metric_names(tables)
    run = tables.get("run", {})
    lines = [f"# {run.get('name', 'eval')}: {run.get('data', '')} {run.get('split', '')}", ""]
    if run:
        lines += [f"model `{run.get('model')}`, checkpoint `{run.get('ckpt')}`, prompt `{run.get('prompt')}`", ""]
    lines += ["## Overall", "", "| Metric | " + " | ".join(SUMMARY_GROUPS) + " |",
              "|---|" + "---|" * len(SUMMARY_GROUPS)]
    lines.append("| count | " + " | ".join(_fmt(tables[g].get("count")) for g in SUMMARY_GROUPS) + " |")
    for m in names:
        lines.append(f"| {m} | " + " | ".join(_fmt(tables[g].get(m)) for g in SUMMARY_GROUPS) + " |")
    lines += ["", "## By category", "", "| Category | Count | Metric | Value |", "|---|---|---|---|"]
    for cat, group in tables["by_category"].items():
        for m in names:
            if m in group:
                lines.append(f"| {cat} | {group['count']} | {m} | {_fmt(group[m])} |")
    for key, groups in tables.items():
        if not key.startswith("by_") or key == "by_category":
            continue
        lines += ["", f"## {key.removeprefix('by_')}", "", "| Value | Count | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for value, group in groups.items():
            lines.append(f"| {value} | {group['count']} | " + " | ".join(_fmt(group.get(m)) for m in names) + " |")
    if tables.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in tables["notes"].values()]
    return "\n".join(lines) + "\n"


def write_csv(tables: dict[str, Any], path: Path) -> None:
    names = metric_names(tables)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["category", "answer_type", "count", *names])
        for cat, group in tables["by_category"].items():
            answer_type = CATEGORIES.get(cat, ("",))[0]
            writer.writerow([cat, answer_type, group["count"], *(group.get(m, "") for m in names)])
        for g in SUMMARY_GROUPS:
            writer.writerow([g, "", tables[g]["count"], *(tables[g].get(m, "") for m in names)])


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


def console():
    """A rich console; when output goes to a log or a pipe, wide enough for the metric tables.

    (rich falls back to 80 columns there, which cut every number to ``0.…``.)
    """
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 200))


def console_table(tables: dict[str, Any], title: str | None = None):
    from rich.table import Table

    names = [m for m in metric_names(tables) if m in FAMILIES["matching"] + ["word_f1", "bleu4", "rouge_l",
                                                                            "bertscore_f1", "perplexity"]]
    table = Table(title=title or tables.get("run", {}).get("name"))
    table.add_column("category")
    table.add_column("n", justify="right")
    for m in names:
        table.add_column(m, justify="right")
    rows = [(g, tables[g]) for g in SUMMARY_GROUPS] + list(tables["by_category"].items())
    rows += [(f"lang={lang}", group) for lang, group in tables.get("by_lang", {}).items()]  # en and zh apart
    for name, group in rows:
        table.add_row(name, str(group["count"]), *(_fmt(group.get(m)) for m in names))
    return table


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
    from rich.table import Table

    base, tuned = results["base"], results["ckpt"]
    names = metric_names(tuned)
    lines = ["| Group | Metric | base | fine-tuned |", "|---|---|---|---|"]
    table = Table(title="base vs fine-tuned")
    for col in ("group", "metric", "base", "fine-tuned"):
        table.add_column(col)
    groups = [(g, base[g], tuned[g]) for g in SUMMARY_GROUPS]
    groups += [(c, base["by_category"].get(c, {}), g) for c, g in tuned["by_category"].items()]
    for gname, b, t in groups:
        for m in names:
            if m in t:
                lines.append(f"| {gname} | {m} | {_fmt(b.get(m))} | {_fmt(t.get(m))} |")
                if gname in SUMMARY_GROUPS or m == "exact_match":
                    table.add_row(gname, m, _fmt(b.get(m)), _fmt(t.get(m)))
    (out / "comparison.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    console().print(table)
