"""What ``medvl.eval logger=wandb`` and ``medvl.compare --wandb`` log to W&B.

- An evaluation: its metrics (overall, closed/open, every breakdown) as the run's summary and as a
  ``metrics`` table of tidy records (:func:`~medvl.evaluation.report.metric_records`); a ``predictions``
  table with each row's image (at most ``logger.log_predictions`` rows), question, reference, prediction
  and per-row metrics; and report.html (with metrics.json) as an ``eval-report`` artifact. With
  ``compare_base=true`` both runs, under ``base/`` and ``ckpt/``.
- A comparison: the tidy comparison table (with its ``best`` column) and the paired statistics as tables,
  and the files medvl.compare wrote as a ``comparison`` artifact.

Whether the run is online is decided at start-up (:func:`check_wandb`), before any model loads or any
bootstrap runs; the run itself is started once the results are written. Runs join the W&B group of the
training run or sweep they evaluate (:func:`~medvl.evaluation.wandb_session.run_group`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from medvl.evaluation.report import ANSWER_TYPE, OVERALL, metric_records
from medvl.evaluation.wandb_session import (
    offline_mode,
    redact,
    require_wandb,
    run_group,
    staging_in,
    start_run,
    sweep_group,
    thumbnail,
    wandb_offline_reason,
)
from medvl.runs import RunDir

log = logging.getLogger(__name__)

#: The eval directories of ``compare_base=true`` below the output directory (the keys of evaluate's result).
BOTH = ("base", "ckpt")
REPORT_FILES = ("report.html", "metrics.json")


@dataclass(frozen=True)
class WandbPlan:
    """W&B logging decided at start-up: why it will be offline (None: online, or the user's ``WANDB_MODE``)."""

    offline_reason: str | None


def check_wandb(command: str, wanted: bool) -> WandbPlan | None:
    """None unless ``wanted``; else the package is there and online or offline is decided, in seconds.

    Raises:
        ImportError: no wandb package (one line).
        ConfigError: ``WANDB_MODE=online`` with no route to the W&B server.
    """
    if not wanted:
        return None
    require_wandb(command)
    return WandbPlan(wandb_offline_reason())


def wants_wandb(cfg: DictConfig) -> bool:
    return "wandb" in (OmegaConf.select(cfg, "logger.report_to") or [])


def summary_values(tables: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """metrics.json as W&B summary keys: ``overall/<metric>``, ``closed/<metric>``, ``<breakdown>/<group>/<metric>``
    (``category/closed_yes_no/exact_match``), each under ``prefix``; metrics a group lacks are left out."""
    out = {}
    for record in metric_records(tables).to_dict("records"):
        value = record["value"]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        where = (record["group"] if record["breakdown"] in (OVERALL, ANSWER_TYPE)
                 else f"{record['breakdown']}/{record['group']}")
        out[f"{prefix}{where}/{record['metric']}"] = value
    return out


def frame_table(frame: pd.DataFrame):
    """A W&B table of a DataFrame, with missing values as None (W&B's JSON has no NaN)."""
    import wandb

    cells = frame.astype(object).where(frame.notna(), None)
    return wandb.Table(columns=[str(c) for c in frame.columns], data=cells.values.tolist())


def predictions_table(records: Sequence[Mapping[str, Any]], images: Mapping[str, str], image_root: str | Path | None,
                      max_rows: int):
    """The first ``max_rows`` records: id, image (thumbnail; None when the row has none), question, reference,
    prediction, category, answer type and one column per per-row metric."""
    import wandb

    shown = list(records)[:max_rows]
    metrics = list(dict.fromkeys(m for record in shown for m in record.get("metrics") or {}))
    table = wandb.Table(columns=["id", "image", "question", "reference", "prediction", "category", "answer_type",
                                 *metrics])
    for record in shown:
        image = images.get(str(record["id"]))
        table.add_data(record["id"], wandb.Image(thumbnail(image_root, image)) if image else None,
                       record["question"], record["reference"], record["prediction"], record.get("category"),
                       record.get("answer_type"), *((record.get("metrics") or {}).get(m) for m in metrics))
    return table


def eval_init_kwargs(cfg: DictConfig, out: Path, ckpt: RunDir | None, plan: WandbPlan) -> dict[str, Any]:
    """``wandb.init`` arguments of an evaluation: the command line's ``logger.group``, else the evaluated run's
    group (its training run's or sweep's), else this eval's own sweep."""
    group = cfg.logger.group or (run_group(ckpt) if ckpt is not None else None) or sweep_group()
    return {"project": cfg.logger.project, "name": f"eval-{out.name}", "group": group, "job_type": "eval",
            "tags": list(cfg.logger.tags) or None, "dir": str(out),
            "config": {"medvl": redact(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))},
            **offline_mode(plan.offline_reason)}


def log_evaluation(plan: WandbPlan, cfg: DictConfig, results: Mapping[str, Mapping[str, Any]], out: Path,
                   ckpt: RunDir | None) -> None:
    """One W&B run for one ``medvl.eval``: ``results`` as :func:`~medvl.evaluation.run.evaluate` returns them,
    read with their predictions.jsonl and report.html from ``out`` (``out/base`` and ``out/ckpt`` for both)."""
    import wandb

    from medvl.data.format import image_paths, read_jsonl
    from medvl.data.splits import load_split

    rows = load_split(cfg.data, cfg.split or cfg.data.eval_split, cfg.data.max_eval_samples)
    images = {str(row["id"]): paths[0] for row in rows if (paths := image_paths(row))}
    folders = {key: (out / key if len(results) > 1 else out) for key in results}
    run = start_run(eval_init_kwargs(cfg, out, ckpt, plan), plan.offline_reason)
    max_rows = int(cfg.logger.log_predictions)
    shown = total = 0
    with staging_in(Path(run.dir).parent):
        metrics, logged = [], {}
        for key, tables in results.items():
            prefix = f"{key}/" if len(results) > 1 else ""
            run.summary.update(summary_values(tables, prefix))
            metrics.append(metric_records(tables, run=str((tables.get("run") or {}).get("name", key))))
            records = read_jsonl(folders[key] / "predictions.jsonl")
            total += len(records)
            if max_rows > 0:
                logged[f"{prefix}predictions"] = predictions_table(records, images, cfg.data.root, max_rows)
                shown += min(max_rows, len(records))
        logged["metrics"] = frame_table(pd.concat(metrics, ignore_index=True))
        run.log(logged)
        artifact = wandb.Artifact(f"eval-report-{run.id}", type="eval-report",
                                  description=f"medvl.eval report.html and metrics.json of {out.name}")
        reports = [path for folder in dict.fromkeys([out, *folders.values()]) for name in REPORT_FILES
                   if (path := folder / name).is_file()]
        for path in reports:
            artifact.add_file(str(path), name=path.relative_to(out).as_posix())
        if reports:
            run.log_artifact(artifact)
    folder = Path(run.dir).parent
    run.finish()
    log.info("W&B: logged the metrics, %d of %d predictions with images (logger.log_predictions=%d) and %s to %s",
             shown, total, max_rows, ", ".join(p.relative_to(out).as_posix() for p in reports) or "no report", folder)


def comparison_group(runs: Sequence[Any]) -> str | None:
    """The W&B group the compared runs share (the training runs' or sweep's their checkpoints come from), if one."""
    groups = set()
    for run in runs:
        ckpt = (run.metrics.get("run") or {}).get("ckpt")
        found = RunDir.at(Path(ckpt)) if ckpt and Path(ckpt).exists() else None
        groups.add(run_group(found) if found is not None else None)
    return groups.pop() if len(groups) == 1 else None


def significance_frame(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One record per (run, reference, test, metric) of :func:`~medvl.evaluation.compare.significance`,
    with the test's plain values (CI bounds, p-value, counts) as columns."""
    records = []
    for pair in results:
        for test in ("bootstrap", "mcnemar"):
            for metric, values in (pair.get(test) or {}).items():
                plain = {k: v for k, v in values.items() if v is None or isinstance(v, (str, int, float, bool))}
                records.append({"reference": pair["reference"], "run": pair["run"], "test": test, "metric": metric,
                                "n_common": pair["n_common"], **plain})
    return pd.DataFrame.from_records(records)


def log_comparison(plan: WandbPlan, result: Mapping[str, Any], *, project: str, group: str | None = None,
                   tags: Sequence[str] = ()) -> None:
    """One W&B run for one ``medvl.compare``: the comparison and significance tables, and every file it wrote
    (tables, CSV, JSON, HTML) as a ``comparison`` artifact. ``group``: None for the runs' shared group."""
    import wandb

    from medvl.evaluation.compare import best_cells, is_best

    out = Path(result["out_dir"])
    runs = result["runs"]
    config = {"runs": [{"name": run.name, "path": str(run.path)} for run in runs],
              "reference": runs[result["reference_index"]].name}
    run = start_run({"project": project, "name": f"compare-{out.name}", "group": group or comparison_group(runs),
                     "job_type": "compare", "tags": list(tags) or None, "dir": str(out),
                     "config": {"medvl_compare": config}, **offline_mode(plan.offline_reason)}, plan.offline_reason)
    with staging_in(Path(run.dir).parent):
        frame = pd.DataFrame.from_records(list(result["table"]))
        best = best_cells(result["table"], result["directions"])
        frame["best"] = [is_best(best, record) for record in result["table"]]
        logged = {"comparison": frame_table(frame)}
        significance = significance_frame(result["significance"])
        if not significance.empty:
            logged["significance"] = frame_table(significance)
        run.log(logged)
        artifact = wandb.Artifact(f"comparison-{run.id}", type="comparison",
                                  description=f"medvl.compare outputs in {out.name}")
        for path in result["paths"].values():
            artifact.add_file(str(path), name=Path(path).name)
        run.log_artifact(artifact)
    folder = Path(run.dir).parent
    run.finish()
    log.info("W&B: logged the comparison of %d runs and %s to %s", len(runs),
             ", ".join(Path(p).name for p in result["paths"].values()), folder)
