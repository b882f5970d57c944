"""Typed config schemas, registered in Hydra's ConfigStore, and start-up validation.

The YAML files under ``conf/`` are merged onto these dataclasses (:mod:`.schemas`), so a misspelt key fails when
the config is composed. :func:`validate` checks what the types cannot (ranges, cross-field rules:
:mod:`.validation`, :mod:`.lora`, :mod:`.secrets`); the metric names a config asks for are checked a layer up,
where the metric registry is (:mod:`medvl.training.checks`), and :mod:`medvl.preflight` turns every failure into
one line before any weights are loaded. Importing this package registers the schemas and the
``medvl_eval_name`` resolver (:mod:`.naming`) that conf/eval.yaml uses.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from medvl.config.errors import ConfigError, exit_with
from medvl.config.lora import (
    ALPHA_PER_RANK,
    AUTO_PRESET,
    COMPONENT_NAMES,
    lora_alpha,
    lora_component,
    lora_components,
    resolve_lora,
)
from medvl.config.naming import eval_dir_name, sweep_job_dir
from medvl.config.schemas import (
    DEFAULT_MAX_NEW_TOKENS,
    SCHEMAS,
    BertScoreConfig,
    DataConfig,
    DeepSpeedConfig,
    EvalConfig,
    EvalSettings,
    ExportConfig,
    Family,
    LoggerConfig,
    LoraConfig,
    ModelConfig,
    PrepareConfig,
    PromptConfig,
    StageConfig,
    Trainable,
    TrainConfig,
    TrainerConfig,
    register_configs,
)
from medvl.config.secrets import SECRET_WORDS, is_secret_key, refuse_secrets, secret_keys
from medvl.config.tree import CONF_DIR, DATASET_LABEL_KEYS, add_dataset_labels, dataset_labels, group_choices
from medvl.config.validation import BASE_INIT, check_init_from, starts_from_base, validate, validate_eval

register_configs()
if not OmegaConf.has_resolver("medvl_eval_name"):
    OmegaConf.register_new_resolver("medvl_eval_name", eval_dir_name)
if not OmegaConf.has_resolver("medvl_job_dir"):
    OmegaConf.register_new_resolver("medvl_job_dir", sweep_job_dir)

__all__ = [
    "ALPHA_PER_RANK", "AUTO_PRESET", "BASE_INIT", "COMPONENT_NAMES", "CONF_DIR", "DATASET_LABEL_KEYS",
    "DEFAULT_MAX_NEW_TOKENS", "SCHEMAS", "SECRET_WORDS", "BertScoreConfig", "ConfigError", "DataConfig",
    "DeepSpeedConfig", "EvalConfig", "EvalSettings", "ExportConfig", "Family", "LoggerConfig", "LoraConfig",
    "ModelConfig", "PrepareConfig", "PromptConfig", "StageConfig", "TrainConfig", "Trainable", "TrainerConfig",
    "add_dataset_labels", "check_init_from", "dataset_labels", "eval_dir_name", "exit_with", "group_choices", "is_secret_key",
    "lora_alpha", "lora_component", "lora_components", "refuse_secrets", "register_configs", "resolve_lora",
    "secret_keys", "starts_from_base", "sweep_job_dir", "validate", "validate_eval",
]
