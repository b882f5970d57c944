"""Merge a LoRA adapter (and any fully trained modules saved with it) into the base weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from medvl.models.card import read_eval_metrics, write_model_card
from medvl.models.loading import load_run
from medvl.runs import CONFIG_FILE, RUN_GROUPS, CheckpointError, RunDir

log = logging.getLogger(__name__)


def export(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Save ``+ckpt`` merged into its base model, with the processor, as safetensors; return the dir."""
    if not cfg.get("ckpt"):
        raise CheckpointError("medvl.export needs +ckpt=<run dir or adapter dir>")
    run = RunDir.from_ckpt(cfg.ckpt)
    run.apply_config(cfg, list(overrides))
    # load_run merges the adapter (merge_and_unload also folds modules_to_save copies in).
    model, processor = load_run(cfg.model, run, device="cpu")  # a 32B merge must not need its GPU memory
    if cfg.dtype != "auto":
        model = model.to(getattr(torch, cfg.dtype))
    out = Path(cfg.save_dir or Path(cfg.output_dir) / "merged")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    write_model_card(run, out, base_model=cfg.model.name_or_path, merged=True, metrics=read_eval_metrics(run))
    # Provenance: the adapter, the base, and the earlier stages merged in beneath it (nearest first).
    provenance = {"ckpt": str(run.path), "base": cfg.model.name_or_path,
                  "init_from": [str(stage.root) for stage in run.stage_chain()]}
    (out / "medvl_export.json").write_text(json.dumps(provenance, indent=2))
    settings = merged_config(run, cfg)
    if settings is not None:
        OmegaConf.save(settings, out / CONFIG_FILE)
    log.info("Merged %s into %s -> %s", run.path, cfg.model.name_or_path, out)
    return out


def merged_config(run: RunDir, cfg: DictConfig) -> DictConfig | None:
    """The config ``+ckpt=<merged dir>`` reads beside the merged weights (:meth:`RunDir.at`), so that the merged
    model is evaluated as its run is: the run's model settings (pixel budget, family, dtype; as exported), data
    and prompt. No ``init_from``: every earlier stage is merged in. None for a run without a config (a bare
    adapter directory)."""
    if run.config is None:
        return None
    groups = {group: run.config[group] for group in RUN_GROUPS if group in run.config}
    groups["model"] = cfg.model
    return OmegaConf.create({group: OmegaConf.to_container(node, resolve=True) for group, node in groups.items()})
