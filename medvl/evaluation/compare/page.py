"""model_comparison.html, the report of a comparison: the tables of model_comparison_tables.md (best in bold),
the paired statistics of significance.md (bootstrap CIs, McNemar) and the runs' predictions side by side, in one
offline page. Not report.html: the default output directory, the runs' common parent, may be a
``compare_base=true`` evaluation with its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medvl.evaluation import html
from medvl.evaluation.compare.runs import Run
from medvl.evaluation.compare.settings import NOT_RECORDED, mixed_strict_settings
from medvl.evaluation.compare.tables import breakdown_tables, pair_summary, significance_frames, significance_method
from medvl.evaluation.report import runs_charts_section

COMPARISON_REPORT = "model_comparison.html"


def _runs_table(runs: Sequence[Run]) -> html.Table:
    rows = []
    for run in runs:
        meta = run.metrics.get("run") if isinstance(run.metrics.get("run"), Mapping) else {}
        rows.append([run.name, str(run.path), *(str(meta.get(k) or "") for k in ("model", "ckpt", "data", "prompt")),
                     str(len(run.rows))])
    frame = pd.DataFrame(rows, columns=["Run", "Path", "Model", "Checkpoint", "Data", "Prompt", "Predictions"],
                         dtype=object)
    return html.Table(frame, id="table-runs", right=["Predictions"])


def _significance_section(results: Sequence[Mapping[str, Any]], directions: Mapping[str, bool], *, n_boot: int,
                          seed: int, confidence: float) -> html.Section:
    section = html.Section("Significance", "significance")
    if not results:
        section.notes.append("Only one run: nothing to compare.")
        return section
    section.notes.append(f"Reference: {results[0]['reference']}. " + significance_method(n_boot, seed, confidence))
    for result in results:
        title = f"{result['run']} vs {result['reference']}"
        notes = [pair_summary(result), *([result["note"]] if result["note"] else []),
                 *(f"{metric}: {why}." for metric, why in (result.get("skipped") or {}).items())]
        section.tables += [html.Table(frame, title=title, right=right)
                           for frame, right in ([] if result["note"] else
                                                significance_frames(result, directions, confidence))]
        section.notes += [f"{title}: {note}" for note in notes]
    return section


def comparison_html(
    runs: Sequence[Run],
    table: Sequence[Mapping[str, Any]],
    directions: Mapping[str, bool],
    significance_results: Sequence[Mapping[str, Any]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    differ: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """The page (see the module's docstring)."""
    names = [run.name for run in runs]
    differ = dict(differ or {})
    warnings = []
    if mixed := mixed_strict_settings(differ):
        warnings.append(f"The runs were not evaluated alike ({', '.join(mixed)}): differences in the tables and "
                        "tests measure these settings as well as the models.")
    sections = [html.Section("Runs", "runs", [_runs_table(runs)])]
    if differ:
        frame = pd.DataFrame([[setting, *(str(texts.get(n, NOT_RECORDED)) for n in names)]
                              for setting, texts in differ.items()], columns=["Setting", *names], dtype=object)
        sections.append(html.Section("Evaluation settings that differ", "settings", [html.Table(frame)]))
    tables = [html.Table(cells, title=title, bold=bold, right=names, id=f"table-{title.lower().replace(' ', '-')}")
              for title, cells, bold in breakdown_tables(table, names, directions)]
    sections.append(html.Section("Tables", "tables", tables, notes=[
        "↑ higher is better, ↓ lower is better; the best value of each row is in bold (ties: all, all equal: none)."]))
    sections.append(_significance_section(significance_results, directions, n_boot=n_boot, seed=seed,
                                          confidence=confidence))
    sections.append(runs_charts_section({run.name: run.metrics for run in runs}, {run.name: run.rows for run in runs}))
    browser = html.build_browser({run.name: run.rows for run in runs if run.rows},
                                 categories=[c for run in runs for c in run.metrics.get("by_category") or {}])
    return html.render("Model comparison", warnings=warnings, sections=sections, browser=browser,
                       data={"table": list(table), "significance": list(significance_results)})


def write_comparison_html(out_dir: Path, runs: Sequence[Run], *args: Any, **kwargs: Any) -> Path:
    """``out_dir/model_comparison.html`` (:func:`comparison_html`'s arguments after ``runs``)."""
    return html.write(Path(out_dir) / COMPARISON_REPORT, comparison_html(runs, *args, **kwargs))
