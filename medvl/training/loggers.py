"""Callbacks that depend on the configured logger."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def logger_callbacks(cfg: DictConfig, processor, out: Path) -> list:
    """Extra Trainer callbacks for ``cfg.logger``; HF's own integrations come from ``report_to``."""
    return []
