"""``python -m medvl.train``: fine-tune a Qwen2-VL-family model (see conf/train.yaml)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from medvl.config import CONF_DIR, preflight


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from medvl.training.run import train

    train(cfg)


if __name__ == "__main__":
    preflight("train", sys.argv[1:])
    main()
