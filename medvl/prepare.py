"""``python -m medvl.prepare``: convert a dataset and validate every row as training reads it (conf/prepare.yaml).

    python -m medvl.prepare data=slake data.root=/data/Slake1.0 [model=7b] [full=true] [splits=[test]]
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from medvl.config import CONF_DIR, exit_with
from medvl.preflight import preflight


@hydra.main(config_path=str(CONF_DIR), config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from medvl.data.converters import ConverterError
    from medvl.data.prepare import prepare

    try:
        prepare(cfg)
    except (ConverterError, FileNotFoundError) as exc:  # a wrong data.format/options/root: one line
        exit_with(exc)


def cli() -> None:
    """``python -m medvl.prepare`` and ``medvl prepare``: Hydra reads the overrides from ``sys.argv``."""
    preflight("prepare", sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
