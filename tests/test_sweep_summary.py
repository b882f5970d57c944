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


def test_a_sweep_jobs_folder_is_taken_back_unquoted_by_the_command_line() -> None:
    """``+ckpt=<job>`` (evaluate a job on other data) and ``init_from=<job>`` (stage 2 on a stage-1 sweep's job):
    Hydra's parser refuses ``=`` and ``,`` in an unquoted value, which its own ``<num>_<override_dirname>`` has."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from medvl.config import CONF_DIR, sweep_job_dir

    parser = OverridesParser.create()
    for num, overrides in [(3, "lora.r=8,lora=attn"), (1, "eval.metrics=[bleu4,cider],trainer.seed=7"),
                           (2, "+extra={a:1},prompt.system_prompt='Be brief.'"), (0, "")]:
        job = f"outputs/sweeps/2026-12-03_21-00-00-000000/{sweep_job_dir(num, overrides)}"
        for key in ("+ckpt", "init_from", "hydra.run.dir"):
            assert parser.parse_override(f"{key}={job}").value() == job
    assert sweep_job_dir(3, "lora.r=8,lora=attn") == "3_lora.r-8_lora-attn"
    # What conf/train.yaml names a job's folder with (tests/test_runs.py runs a sweep through it).
    assert "subdir: ${medvl_job_dir:${hydra.job.num},${hydra.job.override_dirname}}" in (
        CONF_DIR / "train.yaml").read_text()
