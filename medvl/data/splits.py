"""Locate and read a data config's splits (generating the synthetic data on first use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvl.data.format import read_jsonl


def ensure_data(data_cfg: Any) -> None:
    """Make sure the configured data exists on disk (only ``synth`` is generated)."""
    if data_cfg.format == "synth":
        from medvl.data.synth import ensure_synth

        sizes = {"train": data_cfg.num_train, "validation": data_cfg.num_validation, "test": data_cfg.num_test}
        ensure_synth(data_cfg.root, sizes, image_size=data_cfg.image_size, seed=data_cfg.seed)


def split_path(data_cfg: Any, split: str) -> Path:
    return Path(data_cfg.dir) / f"{split}.jsonl"


def load_split(data_cfg: Any, split: str, limit: int = 0) -> list[dict[str, Any]]:
    """Rows of ``<data.dir>/<split>.jsonl``; ``limit`` > 0 keeps the first ``limit`` rows."""
    ensure_data(data_cfg)
    path = split_path(data_cfg, split)
    if not path.exists():
        raise FileNotFoundError(
            f"data={data_cfg.name}: no {split} split at {path}; run `python -m medvl.prepare data={data_cfg.name} "
            f"data.root=...` first or set data.dir")
    rows = read_jsonl(path)
    return rows[:limit] if limit > 0 else rows
