"""The sweep summary written after a multirun: a comparison that cannot be made leaves one warning line, not a
traceback, and the summary still stands."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medvl.training.sweep import summarize_sweep

from .conftest import make_eval_dir


def _sweep(root: Path, overall: dict[str, float]) -> Path:
    """A finished two-job sweep whose jobs were evaluated with these overall metrics."""
    rows = [{"id": f"q{i}", "prediction": "yes", "reference": "yes", "metrics": {"exact_match": 1.0}} for i in range(3)]
    for num in range(2):
        job = root / f"{num}_lora.r={num}"
        make_eval_dir(job / "eval", f"job{num}", rows, overall=overall)
        (job / "job_status.json").write_text(json.dumps({"num": num, "overrides": [f"lora.r={num}"], "dir": str(job),
                                                         "status": "ok"}))
    return root


def test_a_metric_without_a_registered_direction_is_one_warning_line(tmp_path: Path, caplog) -> None:
    # A metrics.json from a newer or patched medvl with a metric this registry does not know: which way is
    # better cannot be read, so there are no comparison tables, and the sweep's own summary is still written.
    sweep = _sweep(tmp_path, {"exact_match": 0.5, "custom_score": 0.3})
    with caplog.at_level(logging.WARNING, logger="medvl.training.sweep"):
        summary = summarize_sweep(sweep)
    assert summary["failed"] == [] and (sweep / "sweep_summary.md").is_file()
    assert not (sweep / "model_comparison_tables.md").exists()
    [record] = [r for r in caplog.records if r.name == "medvl.training.sweep" and r.levelno == logging.WARNING]
    assert "custom_score" in record.getMessage() and "\n" not in record.getMessage()
    assert record.exc_info is None


def test_registered_metrics_give_the_comparison_tables(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, {"exact_match": 0.5})
    summarize_sweep(sweep)
    assert "job0" in (sweep / "model_comparison_tables.md").read_text()
