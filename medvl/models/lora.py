"""What a stage trains: freezing, and LoRA targets resolved by full module path.

Targets are scoped by component: ``model.language_model`` for the LLM and ``model.visual.merger``
for the vision-language merger. Qwen2.5-VL's vision blocks also contain ``gate_proj``/``up_proj``/
``down_proj``; scoping by full path keeps an LLM LoRA away from them.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from medvl.config import lora_alpha, lora_component

log = logging.getLogger(__name__)

#: Module-path prefix of each component, per model family (same in both families in transformers 5).
COMPONENTS = {
    "qwen2_vl": {"vision": "model.visual.blocks", "merger": "model.visual.merger", "llm": "model.language_model"},
    "qwen2_5_vl": {"vision": "model.visual.blocks", "merger": "model.visual.merger", "llm": "model.language_model"},
}
#: Modules a component trains in full (``full``, or ``lora`` with ``lora=none``): the vision encoder is
#: everything in ``model.visual`` but the merger (its patch embedding too), the LLM includes the output head.
FULL_MODULES = {
    "vision": ("model.visual.patch_embed", "model.visual.blocks"),
    "merger": ("model.visual.merger",),
    "llm": ("model.language_model", "lm_head"),
}
ALL_LINEAR = "all-linear"


def _family(cfg: Any) -> str:
    return str(getattr(cfg.model.family, "value", cfg.model.family))


def _mode(value: Any) -> str:
    return str(getattr(value, "value", value))




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
        from medvl.config import ConfigError

        raise ConfigError(f"lora={cfg.lora.name} (lora.targets={suffixes}) matched no module under {prefix}; "
                          f"name module-name suffixes found there (e.g. self_attn.q_proj, mlp.0) or use "
                          f"lora=all_linear")
    return names


def full_components(cfg: Any) -> list[str]:
    """Components trained with all their weights: marked ``full``, or ``lora`` with ``lora=none``."""
    out = [c for c in ("vision", "merger", "llm") if _mode(cfg.stage[c]) == "full"]
    comp = lora_component(cfg)
    if comp is not None and cfg.lora.name == "none":
        out.append(comp)
    return out


def _modules_to_save(model: torch.nn.Module, full: list[str]) -> list[str]:
    """Full names of the modules peft keeps trainable copies of beside the adapters.

    peft cannot wrap a ``ModuleList`` (the vision blocks), so those are listed block by block; a head
    tied to the input embeddings is left out (training the embeddings trains it).
    """
    modules = dict(model.named_modules())
    out = []
    for prefix in (p for c in full for p in FULL_MODULES[c]):
        module = modules.get(prefix)
        if module is None:
            continue
        if prefix == "lm_head" and any(module.weight is m.weight for m in modules.values()
                                       if isinstance(m, torch.nn.Embedding)):
            continue
        if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            out += [f"{prefix}.{child}" for child, _ in module.named_children()]
        else:
            out.append(prefix)
    return out


def peft_lora_config(cfg: Any, targets: list[str], modules_to_save: list[str] | None = None):
    """peft's ``LoraConfig`` for ``cfg.lora`` on the modules named ``targets`` (full names).

    The scale peft applies is ``alpha / r``, or ``alpha / sqrt(r)`` with ``lora.use_rslora``; a null
    ``lora.alpha`` follows r (:func:`medvl.config.lora_alpha`).
    """
    from peft import LoraConfig

    return LoraConfig(
        r=int(cfg.lora.r),
        lora_alpha=lora_alpha(cfg.lora),
        lora_dropout=float(cfg.lora.dropout),
        use_rslora=bool(cfg.lora.get("use_rslora", False)),
        # An exact alternation of full names: nothing outside the scoped component can match.
        target_modules="^(" + "|".join(re.escape(n) for n in targets) + ")$",
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def apply_training_setup(model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
    """Freeze everything, then add LoRA adapters and unfreeze full components as the stage says."""
    from peft import get_peft_model

    model.requires_grad_(False)
    targets = target_modules(model, cfg)
    full = full_components(cfg)
    if targets:
        return get_peft_model(model, peft_lora_config(cfg, targets, _modules_to_save(model, full)))
    prefixes = tuple(p + "." for c in full for p in FULL_MODULES[c])
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(True)
    return model


def upcast_trainable(model: torch.nn.Module) -> int:
    """Trainable bf16/fp16 parameters to float32, in place; returns how many elements were upcast.

    A model loaded in bf16 (``model.dtype=auto`` on a GPU) would otherwise be trained in bf16 by the
    optimizer, which rounds away any update smaller than about 1/256 of a weight: the merger of stage
    ``align`` or any ``full`` component would barely move. The forward still runs in bf16 under the
    Trainer's mixed precision (``trainer.bf16``). peft already keeps LoRA weights in float32; this covers
    fully trained modules (``modules_to_save`` copies included). Runs under DeepSpeed skip it: DeepSpeed
    keeps float32 master weights of its own.
    """
    n = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            n += param.numel()
    return n


def trainable_parameter_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}
