"""What a training config needs beyond :func:`medvl.config.validate`: the metrics that validation and the
evaluation after training name exist, and what scoring them needs is there. The metric registry is evaluation's,
a layer above config, so these checks live here; train() and medvl.preflight both run them before weights load.
"""

from __future__ import annotations

from omegaconf import DictConfig

from medvl.config import ConfigError, validate
from medvl.models.speed import check_speed_options


def validate_training(cfg: DictConfig) -> None:
    """:func:`medvl.config.validate`, then the validation metrics' names (one ConfigError naming the key)."""
    validate(cfg)
    check_speed_options(cfg)  # Liger or QLoRA on the CPU, a missing optional package: one line before loading
    if cfg.trainer.packing:  # a family without known positions would train on wrong ones
        from medvl.training.packing import check_packing

        check_packing(cfg)
    if cfg.trainer.eval_steps > 0:  # a misspelt metric would otherwise surface after the model loads
        from medvl.training.callbacks import validation_metrics

        validation_metrics(list(cfg.trainer.eval_metrics), cfg.trainer.metric_for_best)


def check_eval_after_train(cfg: DictConfig) -> None:
    """What the evaluation after training scores with (``eval.*``): metric names, Java for METEOR, each
    metric's library and the BERTScore model files, or one ConfigError naming the key to change."""
    from medvl.evaluation.metrics import MetricError, check_scoring  # light: no torch

    try:
        check_scoring(cfg.eval, prefix="eval.")
    except MetricError as exc:
        raise ConfigError(f"the evaluation after training (eval_after_train) cannot run: {exc}") from None
