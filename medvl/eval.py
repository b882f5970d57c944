"""``python -m medvl.eval [+ckpt=...]``: evaluate the base model or a checkpoint (see conf/eval.yaml)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from medvl.config import CONF_DIR, exit_with
from medvl.preflight import preflight
from medvl.training.distributed import rank_argv


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from medvl.config import ConfigError
    from medvl.evaluation import ranks
    from medvl.evaluation.metrics import MetricError
    from medvl.evaluation.run import evaluate
    from medvl.models.loading import ModelLoadError
    from medvl.runs import CheckpointError

    ranks.start()  # under torchrun: data-parallel, each rank predicts its share of the batches
    try:
        evaluate(cfg, list(HydraConfig.get().overrides.task))
    except (CheckpointError, ConfigError, MetricError, ModelLoadError, FileNotFoundError) as exc:
        exit_with(exc)
    ranks.finish()


def cli() -> None:
    """``python -m medvl.eval`` and ``medvl eval`` (medvl.cli): Hydra reads the overrides from ``sys.argv``."""
    # torchrun starts this in every rank: the default run dir has no timestamp, only rank 0 writes .hydra/.
    sys.argv[1:] = rank_argv(sys.argv[1:], run_dir_required=False)
    preflight("eval", sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
