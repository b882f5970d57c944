"""Compare evaluation runs: side-by-side tables, paired bootstrap CIs and McNemar's test.

Each run is an eval directory written by ``python -m medvl.eval``. The tables come from the runs'
``metrics.json`` (overall, closed/open and every ``by_*`` breakdown: category, GMAI-MMBench's task,
department, granularity and modality, Slake's modality and content type, VQA-RAD's question type, ...);
the paired statistics come from their ``predictions.jsonl``, pairing rows by ``id`` and keeping only the
ids both runs scored. Runs evaluated on different data, or with different generation or scoring settings
(``eval_fingerprint.json``), are refused. :func:`compare` chains the steps for ``python -m medvl.compare``:

- :mod:`.runs`: finding and loading runs (the only reads), the reference, the output directory;
- :mod:`.settings`: whether the runs can be compared;
- :mod:`.stats`: the paired statistics;
- :mod:`.tables`: the tidy comparison table, bold-best, Markdown and console rendering;
- here: :func:`write_outputs` (the only writes) and :func:`compare`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medvl import tables as tidy
from medvl.evaluation.compare.page import write_comparison_html
from medvl.evaluation.compare.runs import (
    CompareError,
    Run,
    default_out_dir,
    discover_eval_dirs,
    is_sweep_dir,
    load_runs,
    select_reference,
    unique_names,
)
from medvl.evaluation.compare.settings import (
    STRICT_SETTINGS,
    check_same_data,
    check_same_settings,
    differing_settings,
    eval_settings,
    mixed_strict_settings,
)
from medvl.evaluation.compare.stats import (
    bootstrap_ci,
    bootstrap_corpus_ci,
    mcnemar,
    pairwise_significance,
    sample_metrics,
    significance,
)
from medvl.evaluation.compare.tables import (
    available_metrics,
    best_cells,
    comparison_table,
    console_tables,
    is_best,
    metric_directions,
    render_markdown,
    render_significance,
)

__all__ = [
    "CompareError", "Run", "available_metrics", "best_cells", "bootstrap_ci", "bootstrap_corpus_ci",
    "check_same_data", "check_same_settings", "compare", "comparison_table", "console_tables", "default_out_dir",
    "differing_settings", "discover_eval_dirs", "eval_settings", "is_best", "is_sweep_dir", "load_runs", "mcnemar",
    "metric_directions", "mixed_strict_settings", "pairwise_significance", "render_markdown",
    "render_significance", "sample_metrics", "select_reference", "significance", "unique_names", "write_outputs",
    "STRICT_SETTINGS",
]


def comparison_document(runs: Sequence[Run], table: Sequence[Mapping[str, Any]], best: Any,
                        directions: Mapping[str, bool], significance_results: Sequence[Mapping[str, Any]],
                        differ: Mapping[str, Mapping[str, str]], *, reference: str, n_boot: int, seed: int,
                        confidence: float) -> dict[str, Any]:
    """model_comparison.json: the runs and their settings, the tidy table with its best cells, the tests."""
    return {
        "runs": [
            {"name": run.name, "path": str(run.path), "run": run.metrics.get("run"), "n_predictions": len(run.rows),
             "settings": eval_settings(run)}
            for run in runs
        ],
        "reference": reference,
        "settings_differ": dict(differ),
        "mixed_settings": mixed_strict_settings(differ),
        "higher_is_better": dict(directions),
        "table": list(table),
        "best": best,
        "significance": {
            "confidence": confidence,
            "n_boot": n_boot,
            "seed": seed,
            "results": list(significance_results),
        },
    }


def write_outputs(
    out_dir: Path,
    runs: Sequence[Run],
    table: Sequence[Mapping[str, Any]],
    directions: Mapping[str, bool],
    significance_results: Sequence[Mapping[str, Any]],
    *,
    reference_index: int = 0,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    differ: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Path]:
    """Write model_comparison_tables.md, model_comparison.csv, model_comparison.json, significance.md and
    model_comparison.html.

    The CSV holds the tidy records with a ``best`` column (the bold cells of the markdown tables);
    ``differ`` (:func:`differing_settings`) marks the evaluation settings the runs do not share.
    """
    differ = dict(differ or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [run.name for run in runs]
    paths = {
        "tables": out_dir / "model_comparison_tables.md",
        "csv": out_dir / "model_comparison.csv",
        "json": out_dir / "model_comparison.json",
        "significance": out_dir / "significance.md",
    }
    best = best_cells(table, directions)
    paths["tables"].write_text(render_markdown(table, names, directions, runs=runs, differ=differ),
                               encoding="utf-8")
    frame = tidy.records_frame(table)
    frame["best"] = [is_best(best, record) for record in table]
    tidy.write_csv(frame, paths["csv"])
    document = comparison_document(runs, table, best, directions, significance_results, differ,
                                   reference=names[reference_index], n_boot=n_boot, seed=seed, confidence=confidence)
    paths["json"].write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["significance"].write_text(
        render_significance(significance_results, directions, n_boot=n_boot, seed=seed, confidence=confidence,
                            mixed_settings=mixed_strict_settings(differ)),
        encoding="utf-8",
    )
    paths["report"] = write_comparison_html(out_dir, runs, table, directions, significance_results, n_boot=n_boot,
                                            seed=seed, confidence=confidence, differ=differ)
    return paths


def compare(
    specs: Sequence[str | os.PathLike[str]],
    *,
    reference: str | int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    higher_is_better: Mapping[str, bool] | None = None,
    allow_mixed_settings: bool = False,
) -> dict[str, Any]:
    """Load runs, tabulate them, test each against the reference and write the results.

    Runs evaluated with different :data:`STRICT_SETTINGS` are refused unless ``allow_mixed_settings``;
    every evaluation setting the runs do not share (the prompt too) is marked in the outputs.

    Raises:
        CompareError: missing paths or metrics.json, runs on different data or (without
            ``allow_mixed_settings``) with different generation or scoring settings, an unknown
            reference or unknown metrics.

    Returns:
        ``{"runs", "reference_index", "table", "directions", "significance", "settings_differ",
        "paths", "out_dir"}``.
    """
    runs = load_runs(specs)
    check_same_data(runs)
    differ = check_same_settings(runs, allow_mixed=allow_mixed_settings)
    reference_index = select_reference(runs, reference)
    table_metrics = available_metrics(runs)
    per_sample = sample_metrics(runs)
    sample_selection = None
    if metrics is not None:
        known = set(table_metrics) | set(per_sample)
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise CompareError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(sorted(known))}")
        table_metrics = [m for m in metrics if m in table_metrics]
        sample_selection = [m for m in metrics if m in per_sample]
    table = comparison_table(runs, table_metrics)
    directions = metric_directions(list(dict.fromkeys([*table_metrics, *per_sample])), higher_is_better)
    results = significance(runs, reference_index, metrics=sample_selection, n_boot=n_boot, seed=seed,
                           confidence=confidence)
    target = Path(out_dir) if out_dir is not None else default_out_dir(specs, runs)
    paths = write_outputs(target, runs, table, directions, results, reference_index=reference_index,
                          n_boot=n_boot, seed=seed, confidence=confidence, differ=differ)
    return {
        "runs": runs,
        "reference_index": reference_index,
        "table": table,
        "directions": directions,
        "significance": results,
        "settings_differ": differ,
        "paths": paths,
        "out_dir": target,
    }
