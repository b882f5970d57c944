"""Hydra callback for multirun sweeps: a status file per job, a summary and a comparison at the end.

Each job writes ``job_status.json`` into its own directory from ``on_job_end`` (which runs where
the job runs, locally or on a SLURM node), so the summary written by ``on_multirun_end`` works for
every launcher. A failed job never stops the others; it is marked failed in the summary.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
STATUS_FILE = "job_status.json"


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def wants_eval_after_train(cfg: DictConfig) -> bool:
    """``eval_after_train`` as set, or by default on in a multirun sweep and off in a single run."""
    if cfg.eval_after_train is not None:
        return bool(cfg.eval_after_train)
    return in_multirun()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def run_sweep_job(fn, cfg: DictConfig) -> dict[str, Any]:
    """Run one sweep job; a failure is logged and returned (not raised) so the sweep goes on."""
    from medvl.config import ConfigError
    from medvl.models.loading import ModelLoadError

    try:
        return {"status": "ok", "metrics": fn(cfg)}
    except (ConfigError, ModelLoadError, FileNotFoundError) as exc:
        # What the user can fix is one line, as from a single run; a traceback would bury it.
        log.error("Sweep job failed: %s", exc)
        _finish_wandb_run()
        return {"status": "failed", "error": _one_line(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure of one job must not stop the sweep
        log.exception("Sweep job failed")
        _finish_wandb_run()
        return {"status": "failed", "error": _one_line(exc)}


def _finish_wandb_run() -> None:
    """Close a failed job's W&B run as failed: left active, the next job's ``wandb.init`` would return it
    (wandb's default ``reinit``) and log that job into the failed job's run and directory."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.run.finish(exit_code=1)


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = job_return.hydra_cfg.hydra if job_return.hydra_cfg else None
        if hydra_cfg is None or str(hydra_cfg.mode) != "RunMode.MULTIRUN":
            return
        if int(os.environ.get("RANK", "0")) != 0:  # a SLURM job runs one task per GPU; one status file
            return
        out = Path(hydra_cfg.runtime.output_dir)
        status = {"num": hydra_cfg.job.num, "overrides": list(job_return.overrides or []), "dir": str(out)}
        if job_return.status == JobStatus.COMPLETED:
            value = job_return.return_value
            status["status"] = value.get("status", "ok") if isinstance(value, dict) else "ok"
            if isinstance(value, dict) and value.get("error"):
                status["error"] = value["error"]
        else:
            status["status"] = "failed"
            status["error"] = _one_line(job_return._return_value)
        out.mkdir(parents=True, exist_ok=True)
        (out / STATUS_FILE).write_text(json.dumps(status, indent=2))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summary = summarize_sweep(Path(config.hydra.sweep.dir))
        if summary["failed"]:
            log.error("%d of %d sweep jobs failed: %s (see %s)", len(summary["failed"]), len(summary["jobs"]),
                      summary["failed"], Path(config.hydra.sweep.dir) / "sweep_summary.md")
            sys.exit(1)


def summarize_sweep(sweep_dir: Path) -> dict[str, Any]:
    """Write ``sweep_summary.{json,md}`` and, over the jobs that were evaluated, the comparison tables."""
    import pandas as pd  # here, not at the top: Hydra imports this callback for every run

    from medvl import tables as tidy

    jobs = sorted((json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{STATUS_FILE}")), key=lambda j: j["num"])
    for job in jobs:
        metrics_file = Path(job["dir"]) / "eval" / "metrics.json"
        job["eval_dir"] = str(metrics_file.parent) if metrics_file.exists() else None
        if metrics_file.exists():
            job["exact_match"] = json.loads(metrics_file.read_text())["overall"].get("exact_match")
    table = pd.DataFrame([[job["num"], " ".join(job["overrides"]), job["status"],
                           tidy.format_number(job.get("exact_match")), job.get("error", "")] for job in jobs],
                         columns=["job", "overrides", "status", "exact_match", "note"], dtype=object)
    summary = {"sweep_dir": str(sweep_dir), "jobs": jobs,
               "failed": [j["num"] for j in jobs if j["status"] != "ok"]}
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(summary, indent=2))
    (sweep_dir / "sweep_summary.md").write_text(tidy.markdown(table) + "\n")
    eval_dirs = [j["eval_dir"] for j in jobs if j["status"] == "ok" and j.get("eval_dir")]
    if eval_dirs:
        from medvl.evaluation.compare import CompareError, compare
        from medvl.evaluation.metrics import MetricError

        try:
            compare(eval_dirs, out_dir=sweep_dir)
        # What medvl.compare reports in one line (a sweep over datasets, a metric without a registered
        # direction) is one warning here: the summary above still stands.
        except (CompareError, MetricError) as error:
            log.warning("No comparison tables for %s: %s", sweep_dir, error)
    log.info("Sweep summary: %d jobs, %d failed -> %s", len(jobs), len(summary["failed"]),
             sweep_dir / "sweep_summary.md")
    return summary
