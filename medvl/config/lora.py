"""Which component a stage trains with LoRA, and the ``lora`` group's preset, scope and alpha that fit it."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from medvl.config.errors import ConfigError
from medvl.config.tree import CONF_DIR, group_choices

COMPONENT_NAMES = ("vision", "merger", "llm")
#: The preset ``lora=auto`` takes for the component a stage trains with LoRA, when the stage's own
#: ``default_lora`` targets another component (a stage edited with ``stage.llm=lora``, say).
AUTO_PRESET = {"merger": "merger", "llm": "attn_ffn"}
#: ``alpha = ALPHA_PER_RANK * r`` when ``lora.alpha`` is null: the adapters' scale alpha/r stays the same across ranks.
ALPHA_PER_RANK = 2


def _mode(value: Any) -> str:
    return str(getattr(value, "value", value))


def lora_components(cfg: DictConfig) -> list[str]:
    """The components the stage marks ``lora`` (validated to be at most one, and not the vision encoder)."""
    return [comp for comp in ("merger", "llm", "vision") if _mode(cfg.stage[comp]) == "lora"]


def lora_component(cfg: DictConfig) -> str | None:
    """The component the stage trains with LoRA (``merger`` or ``llm``), or None."""
    comps = lora_components(cfg)
    return comps[0] if comps else None


def lora_alpha(lora: Any) -> int:
    """``lora.alpha``, or ``ALPHA_PER_RANK * lora.r`` when it is null: the one place the default is decided."""
    return int(lora.alpha) if lora.alpha is not None else ALPHA_PER_RANK * int(lora.r)


def _preset(name: str) -> DictConfig:
    return OmegaConf.load(CONF_DIR / "lora" / f"{name}.yaml")


def _presets_for(comp: str) -> list[str]:
    return [name for name in group_choices("lora") if _preset(name).get("scope") == comp]


def _stage_desc(cfg: DictConfig) -> str:
    return f"stage={cfg.stage.name} ({', '.join(f'{c}={_mode(cfg.stage[c])}' for c in COMPONENT_NAMES)})"


def _check_stage_components(cfg: DictConfig) -> None:
    comps = lora_components(cfg)
    if "vision" in comps:
        raise ConfigError("stage.vision=lora: no lora preset puts adapters on the vision encoder; set "
                          "stage.vision=full (all its weights train) or stage.vision=frozen")
    if len(comps) > 1:
        raise ConfigError(f"{_stage_desc(cfg)} marks both the merger and the llm lora, but a stage has one LoRA "
                          f"component; set stage.merger=full, stage.merger=frozen, stage.llm=full or stage.llm=frozen")
    if all(_mode(cfg.stage[c]) == "frozen" for c in COMPONENT_NAMES):
        name = str(cfg.stage.default_lora) if cfg.lora.name == "auto" else str(cfg.lora.name)
        scope = cfg.lora.scope if cfg.lora.name != "auto" else _preset(name).get("scope")
        comp = scope if scope in AUTO_PRESET else "llm"  # the component lora=... puts adapters on
        raise ConfigError(f"{_stage_desc(cfg)} trains nothing; set stage.{comp}=lora"
                          + ("" if cfg.lora.name not in ("auto", "none") else f" or stage.{comp}=full"))


def resolve_lora(cfg: DictConfig) -> None:
    """Fill in ``lora=auto`` and ``lora.alpha``, and check the targets fit the stage.

    ``lora=auto`` takes the stage's ``default_lora`` preset when it targets the stage's LoRA component, the
    component's own preset (:data:`AUTO_PRESET`) when it does not, and ``none`` when no component is ``lora``.
    """
    _check_stage_components(cfg)
    comp = lora_component(cfg)
    if cfg.lora.name == "auto":
        name = str(cfg.stage.default_lora)
        if comp is None:
            name = "none"
        elif _preset(name).get("scope") != comp:
            name = AUTO_PRESET[comp]
        preset = _preset(name)
        cfg.lora.name, cfg.lora.scope = preset.name, preset.scope
        cfg.lora.targets = list(preset.get("targets", []))
    if cfg.lora.alpha is None:
        cfg.lora.alpha = lora_alpha(cfg.lora)
    if cfg.lora.scope == "auto":
        cfg.lora.scope = comp or "none"
    elif cfg.lora.name != "none" and cfg.lora.scope != comp:
        if comp is None:
            works = f"choose lora=none, or set stage.{cfg.lora.scope}=lora"
        else:
            fitting = " or ".join(f"lora={name}" for name in _presets_for(comp))
            works = (f"choose {fitting} (adapters on the {comp}), lora=none (the {comp} trained fully), "
                     f"or set stage.{comp}=frozen stage.{cfg.lora.scope}=lora (adapters on the {cfg.lora.scope})")
        raise ConfigError(f"lora={cfg.lora.name} puts adapters on the {cfg.lora.scope}, but {_stage_desc(cfg)} "
                          f"trains {'the ' + comp if comp else 'no component'} with LoRA; {works}")
