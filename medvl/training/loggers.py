"""Callbacks that go with ``cfg.logger``, and the W&B run set-up.

HF's integrations, chosen by ``logger.report_to``, log the training curves and whatever
``Trainer.log`` receives (the validation callback's ``eval_*`` metrics included). This module adds:

- :class:`~medvl.training.monitor.TrainingMonitor` for every logger: step time, samples/s, tokens/s,
  GPU memory.
- For ``logger=wandb``, :class:`WandbRun`: it starts the run itself, before HF's ``WandbCallback``
  would (which then logs into it), so the run gets medvl's project, name, sweep group and resolved
  config; it logs a predictions table with image thumbnails at each validation; without an API key
  it runs offline, and with a key but no route to the W&B server (a cluster's compute node) it says so
  in one line and runs offline too, instead of waiting minutes for wandb's CommError. Its files go under
  the run directory. The session rules it shares with medvl.eval and medvl.compare live in
  :mod:`medvl.evaluation.wandb_session`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from medvl.evaluation.wandb_session import (
    offline_mode,
    redact,
    require_wandb,
    staging_in,
    start_run,
    sweep_group,
    thumbnail,
    wandb_offline_reason,
)

log = logging.getLogger(__name__)


def logger_callbacks(cfg: DictConfig, out: Path) -> list:
    """Extra Trainer callbacks for ``cfg.logger``; HF's own integrations come from ``report_to``.

    Built before the model loads: whether W&B can log online is decided here, in seconds.
    """
    from medvl.training.monitor import TrainingMonitor

    callbacks: list = [TrainingMonitor()]
    if "wandb" in cfg.logger.report_to:
        require_wandb("logger=wandb")
        from medvl.training.sweep import wants_eval_after_train

        reason = wandb_offline_reason()
        callbacks.append(WandbRun(wandb_init_kwargs(cfg, out, offline_reason=reason), image_root=cfg.data.root,
                                  max_rows=cfg.logger.log_predictions, keep_open=wants_eval_after_train(cfg),
                                  offline_reason=reason))
    log.info("Logger %s: %s", cfg.logger.name, ", ".join(type(cb).__name__ for cb in callbacks))
    return callbacks


def wandb_init_kwargs(cfg: DictConfig, out: Path, offline_reason: str | None = None) -> dict[str, Any]:
    """``wandb.init`` arguments for this run; ``mode="offline"`` when there is an ``offline_reason``
    (:func:`wandb_offline_reason`), or, when none is given, without credentials.

    A ``WANDB_MODE`` the user set (``online``, ``offline``, ``disabled``) is otherwise left to wandb.
    """
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    group = sweep_group()
    kwargs: dict[str, Any] = {
        "project": cfg.logger.project,
        # A sweep's jobs share run_name: the job's directory (``<num>_<overrides>``) tells them apart.
        "name": cfg.run_name if group is None else f"{cfg.run_name}-{out.name}",
        "group": cfg.logger.group or group,
        "tags": list(cfg.logger.tags) or None,
        "dir": str(out),
        # One key: HF's WandbCallback adds TrainingArguments (``deepspeed``, ``run_name``, ...) at the top level.
        "config": {"medvl": redact(config)},
    }
    return kwargs | offline_mode(offline_reason)


class WandbRun(TrainerCallback):
    """Owns the W&B run of one training: started in ``on_init_end`` (before HF's ``WandbCallback`` starts
    one of its own in ``on_train_begin``), a predictions table after each validation, finished at the end
    of training or, with ``keep_open``, after the evaluation that follows it (:meth:`log_final_eval`).

    Args:
        init_kwargs: from :func:`wandb_init_kwargs`.
        image_root: the data root that rows' image paths are relative to.
        max_rows: validation rows in the table (0: no table).
        keep_open: leave the run open at the end of training for :meth:`log_final_eval`.
        offline_reason: why the run logs offline, for the line that says so.
    """

    def __init__(self, init_kwargs: dict[str, Any], *, image_root: str | Path, max_rows: int,
                 keep_open: bool = False, offline_reason: str | None = None):
        self.init_kwargs = init_kwargs
        self.offline_reason = offline_reason or "no API key found"
        self.image_root = image_root
        self.max_rows = max_rows
        self.keep_open = keep_open
        self.trainer = None  # set by train(): the validation callback is found through it
        self.run = None
        self._thumbnails: dict[str, Any] = {}

    def on_init_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.run is not None:
            return
        self.run = start_run(self.init_kwargs, self.offline_reason)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.run is None or not self.max_rows or not any(k.startswith("eval_overall/") for k in logs or {}):
            return
        validation = self._validation_callback()
        if validation is None or not getattr(validation, "records", None):
            return
        with staging_in(Path(self.run.dir).parent):
            table = self.predictions_table(validation.records, validation.rows)
            self.run.log({"eval/predictions": table, "train/global_step": state.global_step})

    def on_train_end(self, args, state, control, **kwargs):
        if self.run is not None and not self.keep_open:  # kept open for the evaluation after training
            self.finish()

    def log_final_eval(self, tables: dict[str, Any]) -> None:
        """The evaluation after training (``eval_after_train``) into this run, as ``final_eval/<group>/<metric>``
        in its history and summary; then the run is finished."""
        if self.run is None:
            return
        from medvl.training.callbacks import flatten

        values = {key.replace("final_eval_", "final_eval/", 1): value
                  for key, value in flatten(tables, prefix="final_eval").items()}
        self.run.log(values)
        self.run.summary.update(values)
        self.finish()

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def _validation_callback(self):
        from medvl.training.callbacks import GenerationEvalCallback

        callbacks = self.trainer.callback_handler.callbacks if self.trainer is not None else []
        return next((cb for cb in callbacks if isinstance(cb, GenerationEvalCallback)), None)

    def _thumbnail(self, row: dict[str, Any]):
        from medvl.data.format import image_paths

        paths = image_paths(row)
        if not paths:
            return None
        if paths[0] not in self._thumbnails:  # the same rows at every validation: decode each image once
            self._thumbnails[paths[0]] = thumbnail(self.image_root, paths[0])
        return self._thumbnails[paths[0]]

    def predictions_table(self, records: list[dict[str, Any]], rows: list[dict[str, Any]]):
        """One row per validation record: id, image thumbnail, question, reference, prediction, category."""
        import wandb

        table = wandb.Table(columns=["id", "image", "question", "reference", "prediction", "category"])
        for record, row in list(zip(records, rows))[: self.max_rows]:
            image = self._thumbnail(row)
            table.add_data(record["id"], wandb.Image(image) if image is not None else None,
                           record["question"], record["reference"], record["prediction"], record["category"])
        return table
