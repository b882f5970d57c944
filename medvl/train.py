"""``python -m medvl.train``: fine-tune a Qwen2-VL-family model (see conf/train.yaml)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from medvl.config import CONF_DIR, exit_with
from medvl.preflight import preflight
from medvl.training.distributed import rank_argv


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from medvl.config import ConfigError
    from medvl.models.loading import ModelLoadError
    from medvl.runs import CheckpointError
    from medvl.training.run import train
    from medvl.training.sweep import in_multirun, run_sweep_job

    if in_multirun():
        # Hydra's sweeper re-raises the first failure after the batch and skips the sweep's
        # end-of-run summary; a failed job is recorded instead and the others go on.
        return run_sweep_job(train, cfg)
    try:
        return train(cfg)
    except (CheckpointError, ConfigError, ModelLoadError, FileNotFoundError) as exc:
        # What the user can fix (a model that cannot load, a path that does not exist) is one line.
        exit_with(exc)


def cli() -> None:
    """``python -m medvl.train`` and ``medvl train`` (medvl.cli): Hydra reads the overrides from ``sys.argv``."""
    # torchrun / deepspeed start this in every rank: agree on the run dir, rank 0 writes (see distributed.py).
    sys.argv[1:] = rank_argv(sys.argv[1:])
    preflight("train", sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
