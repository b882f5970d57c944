"""Typed config schemas, registered in Hydra's ConfigStore, and start-up validation.

The YAML files under ``conf/`` are merged onto these dataclasses, so a misspelt key fails when the
config is composed. :func:`preflight` turns every composition or validation failure into one line
that names the key and the valid choices, before any weights are loaded.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Installed as a wheel the conf tree is shipped inside the package.
if not CONF_DIR.is_dir():  # pragma: no cover
    CONF_DIR = Path(__file__).resolve().parent / "conf"


class Trainable(str, Enum):
    """How a stage treats a component: frozen, LoRA adapters on it, or all of its weights."""

    frozen = "frozen"
    lora = "lora"
    full = "full"


class Family(str, Enum):
    qwen2_vl = "qwen2_vl"
    qwen2_5_vl = "qwen2_5_vl"


@dataclass
class ModelConfig:
    name: str = MISSING
    name_or_path: str = MISSING
    family: Family = Family.qwen2_vl
    #: Built offline on first use when set (``tiny`` / ``tiny25``); ``name_or_path`` is then its cache dir.
    build_tiny: bool = False
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    min_pixels: int = 3136
    max_pixels: int = 401408
    trust_remote_code: bool = False
    #: Overrides the stage's learning rate for this model size (``null``: the stage's).
    learning_rate: float | None = None


@dataclass
class StageConfig:
    name: str = MISSING
    vision: Trainable = Trainable.frozen
    merger: Trainable = Trainable.frozen
    llm: Trainable = Trainable.frozen
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    #: Which side of the model the ``lora`` group's targets apply to by default.
    default_lora: str = "attn_ffn"


@dataclass
class LoraConfig:
    name: str = MISSING
    #: Module-name suffixes inside the scoped component; empty for ``none``.
    targets: list[str] = field(default_factory=list)
    #: Component the targets live in: ``merger``, ``llm``, or ``auto`` (the stage's LoRA component).
    scope: str = "auto"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05


@dataclass
class DataConfig:
    name: str = MISSING
    #: Converter / reader used by ``medvl.prepare``; ``synth`` is generated.
    format: str = "medvl"
    #: Folder that image paths in the rows are relative to.
    root: str = MISSING
    #: Folder holding ``<split>.jsonl`` files in the unified format.
    dir: str = MISSING
    train_split: str = "train"
    eval_split: str = "test"
    validation_split: str = "validation"
    #: Cap the number of rows read per split (0 = all); handy for smoke runs.
    max_train_samples: int = 0
    max_eval_samples: int = 0
    #: Longest training row in tokens; ``null``: derived from the model's pixel budget, the largest image
    #: it allows plus ``text_tokens`` (:func:`medvl.data.token_length.resolve_max_length`). Evaluation rows are
    #: never dropped or cut for their length.
    max_length: int | None = None
    #: Tokens allowed for the text of a row (system prompt, template, question, answer) in a derived max_length.
    text_tokens: int = 512
    #: Accept image paths that reach outside ``root`` through symbolic links inside it (shared datasets
    #: are often linked in); ``..`` and absolute paths in rows are refused either way.
    follow_symlinks: bool = False
    lang: str = "en"
    #: Extra keyword options for the converter (``file``, ``image_dir``, ...), see docs/prepare.md.
    options: dict[str, Any] = field(default_factory=dict)
    # Synthetic data only.
    num_train: int = 3000
    num_validation: int = 300
    num_test: int = 300
    image_size: int = 56
    seed: int = 0


#: One generation length for validation, the evaluation after training and medvl.eval, so that a sweep's
#: tables and a later ``medvl.eval`` of the same run agree. Greedy decoding stops at the end-of-turn token,
#: so short answers (Slake, VQA-RAD: a few tokens) end early, while 64 tokens hold all but the
#: longest free-text answers (LLaVA-Med, PathVQA open questions) before they are cut.
DEFAULT_MAX_NEW_TOKENS = 64


@dataclass
class PromptConfig:
    name: str = "default"
    #: ``null``: the chat template's own default system prompt.
    system_prompt: str | None = None


@dataclass
class DeepSpeedConfig:
    name: str = "none"
    config: dict[str, Any] | None = None


@dataclass
class LoggerConfig:
    name: str = "none"
    report_to: list[str] = field(default_factory=list)
    project: str = "medvl"
    #: W&B run group (``null``: the sweep directory's name in a multirun, else none).
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    #: Validation rows in the W&B predictions table logged at each validation (0: none).
    log_predictions: int = 32


@dataclass
class TrainerConfig:
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    #: ``null``: the stage's learning rate.
    learning_rate: float | None = None
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    #: ``null``: the stage's number of epochs.
    num_train_epochs: float | None = None
    max_steps: int = -1
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2
    #: Generation-based validation every ``eval_steps`` optimizer steps (0: off).
    eval_steps: int = 0
    #: Validation rows used by that check (the first N of ``data.validation_split``).
    eval_samples: int = 64
    eval_metrics: list[str] = field(default_factory=lambda: ["exact_match", "closed_accuracy", "open_recall",
                                                             "word_f1", "rouge_l"])
    #: Keep the adapter with the best ``overall`` value of this metric in ``<run>/best`` (null: off).
    metric_for_best: str | None = "exact_match"
    seed: int = 42
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    dataloader_num_workers: int = 0
    max_grad_norm: float = 1.0
    #: bf16 is used when a GPU supports it; ``false`` forces float32.
    bf16: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cache_dir: str = MISSING
    output_dir: str = MISSING
    #: A previous stage's run dir or adapter dir: merged into the base weights before this stage.
    init_from: str | None = None
    #: Run ``medvl.eval`` on the run after training (``null``: on in multirun sweeps, off otherwise).
    eval_after_train: bool | None = None
    #: ``auto``: continue from the newest checkpoint in the run directory; or a checkpoint path.
    resume: str | None = None
    #: Generation length of validation and of the evaluation after training (as medvl.eval's).
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    run_name: str = "${stage.name}-${model.name}-${lora.name}"


@dataclass
class BertScoreConfig:
    #: A local model directory or hub id; ``null``: the packaged all-MiniLM-L6-v2 (offline).
    model: str | None = None
    num_layers: int | None = None
    #: ``float32`` (exact: equals bert-score's own output) or ``bfloat16`` (about twice as fast on CPUs
    #: with bf16 units; per-sample F1 within about 1e-2, the mean within about 2e-3).
    dtype: str = "float32"
    #: A multilingual model (local directory or hub id) for Chinese rows, at its own default layer;
    #: ``null``: zh rows get no BERTScore (the reason is in metrics.json), never an English model's score.
    model_zh: str | None = None


@dataclass
class _ModelDataConfig:
    """What every command that reads a dataset through a model's processor shares."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class EvalConfig(_ModelDataConfig):
    """``python -m medvl.eval``. ``ckpt`` is deliberately absent: it is given as ``+ckpt=...``."""

    #: Split to evaluate (conf/eval.yaml: ``${data.eval_split}``).
    split: str = "test"
    #: Also evaluate the base model and report both.
    compare_base: bool = False
    batch_size: int = 32
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    #: Metric names from the registry; empty: all of them.
    metrics: list[str] = field(default_factory=list)
    perplexity: bool = True
    bertscore: BertScoreConfig = field(default_factory=BertScoreConfig)
    seed: int = 0
    #: Where the model runs: ``auto`` (this process's GPU, ``cuda:$LOCAL_RANK``, when there is
    #: one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    device: str = "auto"


@dataclass
class PrepareConfig(_ModelDataConfig):
    """``python -m medvl.prepare``: convert a dataset and validate every row as training reads it."""

    #: Splits to convert; empty: every split the dataset has.
    splits: list[str] = field(default_factory=list)
    #: Validate with the slow path (real dataset item + collator) instead of image headers.
    full: bool = False
    workers: int = 2


@dataclass
class ExportConfig:
    """``python -m medvl.export +ckpt=...``: merge an adapter into its base and save a plain model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache_dir: str = MISSING
    output_dir: str = MISSING
    #: Where the merged model goes (``null``: ``<output_dir>/merged``).
    save_dir: str | None = None
    #: Saved weights dtype: ``auto`` keeps the loaded dtype, or float32/bfloat16/float16.
    dtype: str = "auto"


def register_configs() -> None:
    """Register the top-level schemas; group files merge into their typed nodes."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="prepare_schema", node=PrepareConfig)
    cs.store(name="export_schema", node=ExportConfig)


def _slug(path: str) -> str:
    """A directory-name-safe label for a checkpoint path: its last two components."""
    if path in ("", "None", "base"):
        return "base"
    parts = [p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".", "adapter", "model")]
    return "_".join(parts[-2:]).replace("=", "-").replace(",", "_") or "base"


def _eval_name(ckpt: str, model: str, data: str, split: str, prompt: str) -> str:
    """The default eval directory name, ``<model>_<data>_<split>_<prompt>_<checkpoint>``.

    With ``+ckpt=<run>``, medvl.eval takes model, data and prompt from the run unless the command
    line chooses them (:func:`medvl.evaluation.run.apply_run_config`); the name says the same, so
    that an eval of a 7B Slake run is not filed under the defaults' ``tiny_synth``.
    """
    run = _run_config_of(ckpt)
    if run is not None:
        given = _command_line_keys()
        if "model" not in given and OmegaConf.select(run, "model.name"):
            model = run.model.name
        if "data" not in given and OmegaConf.select(run, "data.name"):
            data = run.data.name
            if not given & {"split", "data.eval_split"}:
                split = OmegaConf.select(run, "data.eval_split", default=split)
        if not given & {"prompt", "prompt.name"} and OmegaConf.select(run, "prompt.name"):
            prompt = run.prompt.name
    return f"{model}_{data}_{split}_{prompt}_{_slug(ckpt)}"


def _run_config_of(ckpt: str) -> DictConfig | None:
    if ckpt in ("", "None", "base"):
        return None
    from medvl.evaluation.checkpoint import resolve_checkpoint

    try:
        return resolve_checkpoint(ckpt).run_config
    except ValueError:  # a bad +ckpt gets its one-line error when medvl.eval starts, not here
        return None


def _command_line_keys() -> set[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task}


register_configs()
if not OmegaConf.has_resolver("medvl_eval_name"):
    OmegaConf.register_new_resolver("medvl_eval_name", _eval_name)
SCHEMAS = {"train": TrainConfig, "eval": EvalConfig, "prepare": PrepareConfig, "export": ExportConfig}


class ConfigError(ValueError):
    """A config value that composes but makes no sense; its message is one line."""


def _lora_component(cfg: DictConfig) -> str | None:
    for comp in ("merger", "llm", "vision"):
        if str(getattr(cfg.stage[comp], "value", cfg.stage[comp])) == "lora":
            return comp
    return None


def resolve_lora(cfg: DictConfig) -> None:
    """Fill in ``lora=auto`` from the stage's default and check the targets fit the stage."""
    if cfg.lora.name == "auto":
        preset = OmegaConf.load(CONF_DIR / "lora" / f"{cfg.stage.default_lora}.yaml")
        cfg.lora.name, cfg.lora.scope = preset.name, preset.scope
        cfg.lora.targets = list(preset.get("targets", []))
    comp = _lora_component(cfg)
    if cfg.lora.scope == "auto":
        cfg.lora.scope = comp or "none"
    elif cfg.lora.name != "none" and cfg.lora.scope != comp:
        raise ConfigError(
            f"lora={cfg.lora.name} puts adapters on the {cfg.lora.scope} but stage={cfg.stage.name} trains "
            f"the {comp or 'nothing'} with LoRA; choose lora={'merger' if comp == 'merger' else 'attn_ffn'} "
            f"or lora=none")


#: A key whose last word is one of these holds a secret: ``api_key``, ``hf_token``, ``wandbApiKey``
#: (but not ``max_new_tokens`` or ``pad_token_id``).
SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials"}


def is_secret_key(name: str) -> bool:
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower())
    return words[-1] in SECRET_WORDS


def secret_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the secret-named keys in a config (values are never read)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            found += [path] if is_secret_key(key) else secret_keys(value, path + ".")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += secret_keys(value, f"{prefix}{i}.")
    return found


def _refuse_secrets(keys: list[str]) -> None:
    if keys:
        raise ConfigError(f"{', '.join(keys)}: secrets must not be in the config (it is saved with the run and "
                          "logged); use the environment (WANDB_API_KEY, HF_TOKEN) or `wandb login`")


def validate(cfg: DictConfig) -> None:
    """Resolve ``lora=auto`` and check values the type system cannot: ranges and cross-field rules."""
    _refuse_secrets(secret_keys(cfg))
    resolve_lora(cfg)
    checks = [
        ("lora.r", cfg.lora.r > 0, "must be a positive integer"),
        ("lora.alpha", cfg.lora.alpha > 0, "must be a positive integer"),
        ("lora.dropout", 0.0 <= cfg.lora.dropout < 1.0, "must be in [0, 1)"),
        ("lora.scope", cfg.lora.scope in ("llm", "merger", "none"), "must be one of: auto, llm, merger"),
        _pixels_check(cfg),
        ("data.max_length", cfg.data.max_length is None or cfg.data.max_length > 0,
         "must be a positive integer, or null (derived from the model's pixel budget)"),
        ("data.text_tokens", cfg.data.text_tokens > 0, "must be a positive integer"),
        ("trainer.per_device_train_batch_size", cfg.trainer.per_device_train_batch_size > 0,
         "must be a positive integer"),
        ("trainer.gradient_accumulation_steps", cfg.trainer.gradient_accumulation_steps > 0,
         "must be a positive integer"),
    ]
    lr = cfg.trainer.learning_rate
    checks.append(("trainer.learning_rate", lr is None or lr > 0, "must be positive"))
    # transformers 5 reads warmup_steps below 1 as a ratio and from 1 up as a step count.
    checks.append(("trainer.warmup_ratio", 0 <= cfg.trainer.warmup_ratio < 1, "must be in [0, 1)"))
    _check(cfg, checks)
    if cfg.lora.name != "none" and not cfg.lora.targets:
        raise ConfigError(f"lora={cfg.lora.name} lists no targets")
    if cfg.trainer.eval_steps > 0:  # a misspelt metric would otherwise surface after the model loads
        from medvl.training.callbacks import validation_metrics

        validation_metrics(list(cfg.trainer.eval_metrics), cfg.trainer.metric_for_best)


def validate_eval(cfg: DictConfig) -> None:
    """The checks of :func:`validate` for ``python -m medvl.eval``."""
    _refuse_secrets(secret_keys(cfg))
    _check(cfg, [
        ("device", re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(cfg.device)) is not None,
         "must be auto, cpu, cuda or cuda:N"),
        ("batch_size", cfg.batch_size > 0, "must be a positive integer"),
        ("max_new_tokens", cfg.max_new_tokens > 0, "must be a positive integer"),
        ("bertscore.dtype", cfg.bertscore.dtype in ("float32", "bfloat16"), "must be float32 or bfloat16"),
        _pixels_check(cfg),
    ])


def _pixels_check(cfg: DictConfig) -> tuple[str, bool, str]:
    return ("model.min_pixels", 0 < cfg.model.min_pixels <= cfg.model.max_pixels,
            "must be positive and not above model.max_pixels")


def _check(cfg: DictConfig, checks: list[tuple[str, bool, str]]) -> None:
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} is invalid: {why}")


def group_choices(group: str) -> list[str]:
    """The option names of a config group, read from the conf tree."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _one_line(exc: BaseException, overrides: list[str], schema: type) -> str:
    """Explain a composition failure in one line naming the key and the valid choices."""
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if "." in key or not (CONF_DIR / key).is_dir():
            continue
        if value not in group_choices(key):
            return f"invalid choice {key}={value}; valid choices for {key}: {', '.join(group_choices(key))}"
    msg = str(exc).strip()
    full_key = getattr(exc, "full_key", None)
    cause = exc.__cause__ or exc.__context__
    if full_key is None and cause is not None:
        full_key = getattr(cause, "full_key", None)
        msg = str(cause).strip() or msg
    first = msg.splitlines()[0] if msg else type(exc).__name__
    if full_key and "not in" in first:
        parent, _, _ = str(full_key).rpartition(".")
        node = OmegaConf.structured(schema)
        valid = OmegaConf.select(node, parent) if parent else node
        names = ", ".join(valid.keys()) if isinstance(valid, DictConfig) else ""
        return f"unknown key {full_key}; valid keys{' in ' + parent if parent else ''}: {names}"
    if full_key:
        return f"{full_key}: {first}"
    return first


_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd",
                     "--config-path", "-cp", "--experimental-rerun"}


def _secret_override_keys(argv: list[str]) -> list[str]:
    """Secret-named keys among the overrides: their own keys, and keys inside dict values, every
    value of a sweep included (``-m '+extra={api_key:...},{}'``), which no composed config shows
    before Hydra writes multirun.yaml."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys = []
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key = arg.lstrip("+~").partition("=")[0]
        if is_secret_key(key.rpartition(".")[2]):
            keys.append(key)
            continue
        try:
            override = parser.parse_override(arg)
            values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        except Exception:  # noqa: BLE001 - a malformed override gets Hydra's own error
            continue
        keys += [f"{key}.{path}" for value in values for path in secret_keys(value)]
    return keys


def preflight(config_name: str, argv: list[str]) -> None:
    """Compose ``config_name`` with the command-line overrides and validate it, or exit with one line.

    Multirun sweeps and Hydra's own flags are left to Hydra; each swept job still runs
    :func:`validate` when it starts.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    # Before Hydra writes .hydra/ (and, for -m, multirun.yaml) with the overrides in them.
    try:
        _refuse_secrets(_secret_override_keys(argv))
    except ConfigError as exc:
        sys.exit(f"medvl: {exc}")
    if any(a in ("-m", "--multirun", "--help", "-h", "--hydra-help", "--info") or a.startswith("--info")
           for a in argv):
        return
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-") and not arg.startswith("hydra"):
            overrides.append(arg)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
            if config_name == "train":
                validate(cfg)
            elif config_name == "eval":
                validate_eval(cfg)
    except ConfigError as exc:
        sys.exit(f"medvl: {exc}")
    except Exception as exc:  # noqa: BLE001 - every composition error becomes one line
        sys.exit(f"medvl: {_one_line(exc, overrides, SCHEMAS[config_name])}")
    finally:
        GlobalHydra.instance().clear()
