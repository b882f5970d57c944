"""``python -m medvl.eval [+ckpt=...]``: evaluate the base model or a checkpoint (see conf/eval.yaml)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from medvl.config import CONF_DIR, preflight


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from medvl.config import ConfigError
    from medvl.evaluation.checkpoint import CheckpointError
    from medvl.evaluation.metrics import MetricError
    from medvl.evaluation.run import evaluate
    from medvl.models.loading import ModelLoadError

    try:
        evaluate(cfg, list(HydraConfig.get().overrides.task))
    except (CheckpointError, ConfigError, MetricError, ModelLoadError, FileNotFoundError) as exc:
        sys.exit(f"medvl: {exc}")


if __name__ == "__main__":
    preflight("eval", sys.argv[1:])
    main()
