"""What ``+ckpt=...`` points at: a medvl run dir, a LoRA adapter dir, or a merged model dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


class CheckpointError(ValueError):
    """``+ckpt`` does not point at something medvl can evaluate; the message is one line."""


@dataclass
class Checkpoint:
    path: Path
    kind: str  # "adapter" or "model"
    #: The training run's resolved config, when the checkpoint sits in a medvl run directory.
    run_config: DictConfig | None = None


def resolve_checkpoint(ckpt: str | Path) -> Checkpoint:
    if not str(ckpt).strip():
        # `+ckpt=$RUN` with $RUN unset: evaluating the base model instead would pass for the checkpoint's numbers.
        raise CheckpointError("+ckpt= is empty; give a run, adapter or model directory, or leave +ckpt out "
                              "to evaluate the base model")
    path = Path(ckpt).expanduser()
    if not path.exists():
        raise CheckpointError(f"+ckpt={ckpt} does not exist")
    for cand, kind in ((path / "adapter", "adapter"), (path / "model", "model"), (path, None)):
        if (cand / "adapter_config.json").exists():
            kind = "adapter"
        elif (cand / "config.json").exists() and kind != "adapter":
            kind = "model"
        else:
            continue
        run_cfg = None
        for cfg_file in (cand / "config.yaml", cand.parent / "config.yaml"):
            if cfg_file.exists():
                run_cfg = OmegaConf.load(cfg_file)
                break
        return Checkpoint(cand, kind, run_cfg)
    raise CheckpointError(
        f"+ckpt={ckpt} is not a medvl run directory, a LoRA adapter (adapter_config.json) or a model "
        f"directory (config.json)")
