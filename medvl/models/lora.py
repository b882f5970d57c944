"""What a stage trains: freezing, LoRA targets resolved by full module path, and stage chaining.

Targets are scoped by component: ``model.language_model`` for the LLM and ``model.visual.merger``
for the vision-language merger. Qwen2.5-VL's vision blocks also contain ``gate_proj``/``up_proj``/
``down_proj``; scoping by full path keeps an LLM LoRA away from them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Module-path prefix of each component, per model family (same in both families in transformers 5).
COMPONENTS = {
    "qwen2_vl": {"vision": "model.visual.blocks", "merger": "model.visual.merger", "llm": "model.language_model"},
    "qwen2_5_vl": {"vision": "model.visual.blocks", "merger": "model.visual.merger", "llm": "model.language_model"},
}
#: Parameters that belong to the LLM side but sit outside ``language_model`` (the output head).
LLM_EXTRA = ("lm_head",)
ALL_LINEAR = "all-linear"


def _family(cfg: Any) -> str:
    return str(getattr(cfg.model.family, "value", cfg.model.family))


def _mode(value: Any) -> str:
    return str(getattr(value, "value", value))


def lora_component(cfg: Any) -> str | None:
    """The component the stage trains with LoRA (``merger`` or ``llm``), or None."""
    for comp in ("merger", "llm", "vision"):
        if _mode(cfg.stage[comp]) == "lora":
            return comp
    return None


def target_modules(model: torch.nn.Module, cfg: Any) -> list[str]:
    """Full names of the modules that get LoRA adapters, in model order."""
    comp = lora_component(cfg)
    if comp is None or cfg.lora.name == "none":
        return []
    prefix = COMPONENTS[_family(cfg)][comp]
    suffixes = list(cfg.lora.targets)
    names = []
    for name, module in model.named_modules():
        if not name.startswith(prefix + "."):
            continue
        if ALL_LINEAR in suffixes:
            if isinstance(module, torch.nn.Linear):
                names.append(name)
        elif any(name.endswith("." + s) for s in suffixes):
            names.append(name)
    if not names:
        raise ValueError(f"lora={cfg.lora.name} matched no module under {prefix}")
    return names


def full_components(cfg: Any) -> list[str]:
    """Components trained with all their weights: marked ``full``, or ``lora`` with ``lora=none``."""
    out = [c for c in ("vision", "merger", "llm") if _mode(cfg.stage[c]) == "full"]
    comp = lora_component(cfg)
    if comp is not None and cfg.lora.name == "none":
        out.append(comp)
    return out


def _in_component(name: str, prefix: str, comp: str) -> bool:
    return name.startswith(prefix + ".") or (comp == "llm" and name.split(".")[0] in LLM_EXTRA)


def apply_training_setup(model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
    """Freeze everything, then add LoRA adapters and unfreeze full components as the stage says."""
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    targets = target_modules(model, cfg)
    full = full_components(cfg)
    prefixes = COMPONENTS[_family(cfg)]
    if targets:
        peft_cfg = LoraConfig(
            r=int(cfg.lora.r),
            lora_alpha=int(cfg.lora.alpha),
            lora_dropout=float(cfg.lora.dropout),
            # An exact alternation of full names: nothing outside the scoped component can match.
            target_modules="^(" + "|".join(re.escape(n) for n in targets) + ")$",
            modules_to_save=[prefixes[c] for c in full] or None,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, peft_cfg)
    for name, param in model.named_parameters():
        bare = name.removeprefix("base_model.model.")
        if any(_in_component(bare, prefixes[c], c) for c in full) and not targets:
            param.requires_grad_(True)
    return model


def trainable_parameter_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def merge_init_from(model: torch.nn.Module, init_from: str | Path) -> torch.nn.Module:
    """Merge an earlier stage's adapter into the base weights (stage chaining)."""
    from peft import PeftModel

    adapter = resolve_adapter_dir(init_from)
    log.info("Merging the adapter in %s into the base weights", adapter)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def resolve_adapter_dir(path: str | Path) -> Path:
    """A run dir's ``adapter/`` or the adapter dir itself."""
    path = Path(path)
    for cand in (path / "adapter", path):
        if (cand / "adapter_config.json").exists():
            return cand
    raise FileNotFoundError(f"no LoRA adapter (adapter_config.json) in {path} or {path / 'adapter'}")
