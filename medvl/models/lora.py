"""What a stage trains: freezing, and LoRA targets resolved by full module path.

Targets are scoped by component, through the family's component map (:mod:`medvl.config.families`): e.g.
``model.language_model`` for the LLM and ``model.visual.merger`` for Qwen2-VL's vision-language merger.
Qwen2.5-VL's vision blocks also contain ``gate_proj``/``up_proj``/``down_proj``, and Qwen3-VL's vision blocks
have ``linear_fc1``/``linear_fc2`` like its mergers; scoping by full path keeps a LoRA away from them.
Adding a model family is one ``FamilySpec`` there and one ``conf/model`` file.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from medvl.config import lora_alpha, lora_component
from medvl.config.families import family_spec

log = logging.getLogger(__name__)

#: The output head, trained with the LLM when the LLM is trained fully.
HEAD = "lm_head"
ALL_LINEAR = "all-linear"
#: The layers peft puts a LoRA adapter on (bitsandbytes' 4-bit Linear of QLoRA is an nn.Linear; peft also takes
#: transformers' GPT-2 Conv1D, which no family medvl loads has). A target naming any other module (an attention
#: block, a norm) is refused at setup, in one line, rather than by peft with a traceback.
ADAPTABLE = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
             torch.nn.MultiheadAttention)


def _mode(value: Any) -> str:
    return str(getattr(value, "value", value))


def component_prefixes(cfg: Any, comp: str) -> tuple[str, ...]:
    """Module-path prefixes of component ``comp`` (vision, merger, llm) in ``cfg.model.family``."""
    return family_spec(cfg.model.family).prefixes(comp)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return name.startswith(tuple(p + "." for p in prefixes))


def _lora_targets(model: torch.nn.Module, cfg: Any) -> tuple[list[str], list[str]]:
    """(modules, parameters): full names of the ``nn.Linear`` modules and of the bare weight tensors (a MoE's
    stacked experts, e.g. ``mlp.experts.gate_up_proj``) that ``lora.targets`` names in the stage's LoRA component."""
    comp = lora_component(cfg)
    if comp is None or cfg.lora.name == "none":
        return [], []
    prefixes = component_prefixes(cfg, comp)
    suffixes = list(cfg.lora.targets)
    matched: set[str] = set()
    modules, parameters = [], []
    for name, module in model.named_modules():
        if not _under(name, prefixes):
            continue
        if ALL_LINEAR in suffixes:
            if isinstance(module, torch.nn.Linear):
                modules.append(name)
                matched.add(ALL_LINEAR)
            continue
        hits = [s for s in suffixes if name.endswith("." + s)]
        if hits and not isinstance(module, ADAPTABLE):
            raise _not_adaptable(cfg, suffixes, name, module, hits[0])
        if hits:
            modules.append(name)
            matched.update(hits)
        # peft wraps a module's own nn.Parameter (not a Linear's weight) with ``target_parameters``.
        for pname, _ in module.named_parameters(recurse=False):
            hits = [s for s in suffixes if f"{name}.{pname}".endswith("." + s)]
            if hits and not isinstance(module, torch.nn.Linear):
                parameters.append(f"{name}.{pname}")
                matched.update(hits)
    where = ", ".join(prefixes)
    if not modules and not parameters:
        from medvl.config import ConfigError

        raise ConfigError(f"lora={cfg.lora.name} (lora.targets={suffixes}) matched no module under {where}; "
                          f"name module-name suffixes found there (e.g. self_attn.q_proj, mlp.0) or use "
                          f"lora=all_linear")
    if parameters and float(cfg.lora.dropout):
        from medvl.config import ConfigError

        raise ConfigError(f"lora={cfg.lora.name} puts adapters on bare weights ({parameters[0]}, ...), which peft "
                          f"wraps without dropout; set lora.dropout=0 (lora.dropout={cfg.lora.dropout})")
    unmatched = [s for s in suffixes if s not in matched]
    if unmatched:
        # A MoE LLM has no dense mlp.*_proj: lora=attn_ffn (instruct's default) then trains attention only.
        log.info("lora=%s: %s matched nothing under %s; adapters go on the %d modules and %d weights that matched",
                 cfg.lora.name, ", ".join(unmatched), where, len(modules), len(parameters))
    return modules, parameters


def _not_adaptable(cfg: Any, suffixes: list[str], name: str, module: torch.nn.Module, suffix: str) -> Exception:
    """The one-line error for a target that names a module peft cannot adapt, with the Linear layers inside it."""
    from medvl.config import ConfigError

    inside = [f"{suffix}.{n}" for n, m in module.named_modules() if n and isinstance(m, torch.nn.Linear)]
    hint = f"name its linear layers instead (e.g. {', '.join(inside[:4])})" if inside else "use lora=all_linear"
    return ConfigError(f"lora={cfg.lora.name} (lora.targets={suffixes}) names {name}, a {type(module).__name__}, "
                       f"which LoRA cannot adapt (peft adapts nn.Linear, nn.Embedding and nn.Conv layers); {hint}")


def target_modules(model: torch.nn.Module, cfg: Any) -> list[str]:
    """Full names of the modules that get LoRA adapters, in model order."""
    return _lora_targets(model, cfg)[0]


def target_parameters(model: torch.nn.Module, cfg: Any) -> list[str]:
    """Full names of the bare weight tensors that get LoRA adapters (a MoE's experts with lora=attn_experts)."""
    return _lora_targets(model, cfg)[1]


def full_components(cfg: Any) -> list[str]:
    """Components trained with all their weights: marked ``full``, or ``lora`` with ``lora=none``."""
    out = [c for c in ("vision", "merger", "llm") if _mode(cfg.stage[c]) == "full"]
    comp = lora_component(cfg)
    if comp is not None and cfg.lora.name == "none":
        out.append(comp)
    return out


def _full_prefixes(cfg: Any, full: list[str]) -> list[str]:
    return [p for c in full for p in component_prefixes(cfg, c) + ((HEAD,) if c == "llm" else ())]


def _modules_to_save(model: torch.nn.Module, prefixes: list[str]) -> list[str]:
    """Full names of the modules peft keeps trainable copies of beside the adapters.

    peft cannot wrap a ``ModuleList`` (the vision blocks), so those are listed block by block; a head
    tied to the input embeddings is left out (training the embeddings trains it).
    """
    modules = dict(model.named_modules())
    out = []
    for prefix in prefixes:
        module = modules.get(prefix)
        if module is None:
            continue
        if prefix == HEAD and any(module.weight is m.weight for m in modules.values()
                                  if isinstance(m, torch.nn.Embedding)):
            continue
        if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            out += [f"{prefix}.{child}" for child, _ in module.named_children()]
        else:
            out.append(prefix)
    return out


def peft_lora_config(cfg: Any, targets: list[str], modules_to_save: list[str] | None = None,
                     parameters: list[str] | None = None):
    """peft's ``LoraConfig`` for ``cfg.lora`` on the modules named ``targets`` (full names), and on the bare
    weight tensors named ``parameters`` (peft's ``target_parameters``: a MoE's stacked experts).

    The scale peft applies is ``alpha / r``, or ``alpha / sqrt(r)`` with ``lora.use_rslora``; a null
    ``lora.alpha`` follows r (:func:`medvl.config.lora_alpha`). ``lora.dora``: DoRA, a learned magnitude vector
    per adapted weight beside the LoRA-updated direction.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=int(cfg.lora.r),
        lora_alpha=lora_alpha(cfg.lora),
        lora_dropout=float(cfg.lora.dropout),
        use_rslora=bool(cfg.lora.get("use_rslora", False)),
        use_dora=bool(cfg.lora.get("dora", False)),
        # An exact alternation of full names: nothing outside the scoped component can match.
        target_modules="^(" + "|".join(re.escape(n) for n in targets) + ")$" if targets else [],
        target_parameters=parameters or None,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def apply_training_setup(model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
    """Freeze everything, then add LoRA adapters and unfreeze full components as the stage says."""
    from peft import get_peft_model

    model.requires_grad_(False)
    targets, parameters = _lora_targets(model, cfg)
    full = _full_prefixes(cfg, full_components(cfg))
    if targets or parameters:
        return get_peft_model(model, peft_lora_config(cfg, targets, _modules_to_save(model, full), parameters))
    prefixes = tuple(p + "." for p in full)
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
