"""Start-up checks of what the schema types cannot say: ranges, cross-field rules, a later stage's ``init_from``.

The metric names a config asks for are checked a layer up, where the metric registry is
(:mod:`medvl.training.checks`), and :mod:`medvl.preflight` turns every failure into one line before any weights load.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medvl.config.errors import ConfigError
from medvl.config.families import family_name, family_spec
from medvl.config.lora import resolve_lora
from medvl.config.schemas import ATTN_IMPLEMENTATIONS
from medvl.config.secrets import refuse_secrets, secret_keys

#: ``init_from`` values that start a later-stage config from the base model on purpose.
BASE_INIT = ("base", "none")


def starts_from_base(init_from: Any) -> bool:
    """Whether ``init_from`` says "the base model" in words (``init_from=base``) rather than naming a run."""
    return init_from is not None and str(init_from).strip().lower() in BASE_INIT


def check_init_from(cfg: DictConfig, *, resume_may_supply: bool = True) -> None:
    # An experiment's ``init_from: ???`` merges onto the schema's null as null, so a later stage says
    # ``init_from_required: true`` instead and forgetting init_from stops here. A resumed run takes it from its
    # own config.yaml (medvl.training.run.keep_stage_chain), checked again once that is read.
    resuming = resume_may_supply and bool(OmegaConf.select(cfg, "resume", default=None))
    if cfg.init_from is None and cfg.init_from_required and not resuming:
        raise ConfigError(
            f"run_name={cfg.run_name} trains {cfg.stage.name} on top of an earlier stage (init_from_required=true) "
            f"but init_from is not set; add init_from=<the earlier stage's run dir> (e.g. outputs/train/align_7b), "
            f"or init_from=base to start from the base model {cfg.model.name_or_path} on purpose")


def validate(cfg: DictConfig) -> None:
    """Resolve ``lora=auto`` and check values the type system cannot: ranges and cross-field rules."""
    refuse_secrets(secret_keys(cfg))
    check_init_from(cfg)
    _check(cfg, [("lora.r", cfg.lora.r > 0, "must be a positive integer")])
    resolve_lora(cfg)
    checks = [
        ("lora.alpha", cfg.lora.alpha > 0, "must be a positive integer, or null (2 * lora.r)"),
        ("lora.dropout", 0.0 <= cfg.lora.dropout < 1.0, "must be in [0, 1)"),
        ("lora.scope", cfg.lora.scope in ("llm", "merger", "none"), "must be one of: auto, llm, merger"),
        _pixels_check(cfg),
        _attn_check(cfg),
        ("data.max_length", cfg.data.max_length is None or cfg.data.max_length > 0,
         "must be a positive integer, or null (derived from the model's pixel budget)"),
        ("data.text_tokens", cfg.data.text_tokens > 0, "must be a positive integer"),
        ("max_new_tokens", cfg.max_new_tokens > 0, "must be a positive integer"),
        ("trainer.per_device_train_batch_size", cfg.trainer.per_device_train_batch_size > 0,
         "must be a positive integer"),
        ("trainer.gradient_accumulation_steps", cfg.trainer.gradient_accumulation_steps > 0,
         "must be a positive integer"),
        ("trainer.dataloader_num_workers", cfg.trainer.dataloader_num_workers is None
         or cfg.trainer.dataloader_num_workers >= 0, "must be 0 or more, or null (up to 4 per rank on a GPU)"),
    ]
    lr = cfg.trainer.learning_rate
    checks.append(("trainer.learning_rate", lr is None or lr > 0, "must be positive"))
    # transformers 5 reads warmup_steps below 1 as a ratio and from 1 up as a step count.
    checks.append(("trainer.warmup_ratio", 0 <= cfg.trainer.warmup_ratio < 1, "must be in [0, 1)"))
    _check(cfg, checks)
    if cfg.lora.name != "none" and not cfg.lora.targets:
        raise ConfigError(f"lora={cfg.lora.name} lists no targets; add lora.targets=[...] (module-name suffixes "
                          f"inside the {cfg.lora.scope}, e.g. self_attn.q_proj) or choose a preset such as "
                          f"lora=attn_ffn, or lora=none")
    _check(cfg, _eval_settings_checks(cfg.eval, "eval."))


def validate_eval(cfg: DictConfig) -> None:
    """The checks of :func:`validate` for ``python -m medvl.eval``."""
    refuse_secrets(secret_keys(cfg))
    _check(cfg, [
        ("device", re.fullmatch(r"auto|auto_shard|cpu|cuda(:\d+)?", str(cfg.device)) is not None,
         "must be auto, auto_shard, cpu, cuda or cuda:N"),
        *_eval_settings_checks(cfg),
        _pixels_check(cfg),
        _attn_check(cfg),
    ])


def _eval_settings_checks(settings: DictConfig, prefix: str = "") -> list[tuple[str, bool, str]]:
    """Range checks of :class:`EvalSettings`, under ``prefix`` (``eval.`` in a training config)."""
    return [
        (f"{prefix}batch_size", settings.batch_size > 0, "must be a positive integer"),
        (f"{prefix}max_new_tokens", settings.max_new_tokens > 0, "must be a positive integer"),
        (f"{prefix}bertscore.dtype", settings.bertscore.dtype in ("float32", "bfloat16"),
         "must be float32 or bfloat16"),
    ]


def _pixels_check(cfg: DictConfig) -> tuple[str, bool, str]:
    return ("model.min_pixels", 0 < cfg.model.min_pixels <= cfg.model.max_pixels,
            "must be positive and not above model.max_pixels")


def _attn_check(cfg: DictConfig) -> tuple[str, bool, str]:
    attn = str(getattr(cfg.model.attn_implementation, "value", cfg.model.attn_implementation))
    if attn == "flash_attention_2" and not family_spec(cfg.model.family).flash_attention:
        return ("model.attn_implementation", False, f"transformers' {family_name(cfg.model.family)} model does not "
                f"run under FlashAttention 2; use auto (SDPA for it) or sdpa")
    return ("model.attn_implementation", attn in ATTN_IMPLEMENTATIONS,
            f"must be one of: {', '.join(ATTN_IMPLEMENTATIONS)}")


def _check(cfg: DictConfig, checks: list[tuple[str, bool, str]]) -> None:
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} is invalid: {why}")
