"""What a finished training run writes into its directory: the weights, processor, resolved config, model card,
trainer state and loss curve."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medvl.models.card import write_run_card
from medvl.runs import CONFIG_FILE, weights_dir
from medvl.training.distributed import is_main_process


def save_outputs(model, processor, trainer, cfg: DictConfig, out: Path) -> None:
    """Adapter (or whole model) + processor, resolved config, trainer state and loss curve.

    Called on every rank: under DeepSpeed the weights are gathered from all ranks (ZeRO-3 shards
    them), and only rank 0 writes.
    """
    from peft import PeftModel

    target = weights_dir(out, adapter=isinstance(model, PeftModel))
    if trainer.is_deepspeed_enabled:
        trainer.save_model(str(target))  # collective; needs stage3_gather_16bit_weights_on_model_save
    elif is_main_process():
        model.save_pretrained(target, safe_serialization=True)
    if not is_main_process():
        return
    processor.save_pretrained(target)
    write_run_config(cfg, out)
    write_run_card(out)  # replaces peft's placeholder README.md; rewritten with the numbers after evaluation
    trainer.state.save_to_json(str(out / "trainer_state.json"))
    plot_loss(trainer.state.log_history, out / "loss.png")


def write_run_config(cfg: DictConfig, out: Path) -> None:
    """The run's resolved config, ``config.yaml``: written when the run starts (a killed run's checkpoints are
    then evaluated, exported and chained on top of its stage chain) and again with its outputs."""
    # Replaced in one step: the other ranks of a resumed run read it at start-up (keep_stage_chain).
    partial = out / f".{CONFIG_FILE}.partial"
    partial.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(partial, out / CONFIG_FILE)


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(h["step"], h["loss"]) for h in history if "loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.plot(*zip(*points), marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(path.parent.name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
