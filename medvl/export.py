"""``python -m medvl.export +ckpt=...``: a merged, plain Qwen2-VL checkpoint (see conf/export.yaml)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from medvl.config import CONF_DIR, exit_with
from medvl.preflight import preflight


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from medvl.models.export import export
    from medvl.models.loading import ModelLoadError
    from medvl.runs import CheckpointError

    try:
        print(export(cfg, list(HydraConfig.get().overrides.task)))
    except (CheckpointError, ModelLoadError, FileNotFoundError) as exc:
        exit_with(exc)


def cli() -> None:
    """``python -m medvl.export`` and ``medvl export`` (medvl.cli): Hydra reads the overrides from ``sys.argv``."""
    preflight("export", sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
