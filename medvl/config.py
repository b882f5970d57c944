"""Typed config schemas, registered in Hydra's ConfigStore, and start-up validation.

The YAML files under ``conf/`` are merged onto these dataclasses, so a misspelt key fails when the
config is composed. :func:`validate` checks what the types cannot (ranges, cross-field rules); the metric
names a config asks for are checked a layer up, where the metric registry is (:mod:`medvl.training.checks`), and
:mod:`medvl.preflight` turns every failure into one line before any weights are loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from medvl.runs import ADAPTER_DIR, MODEL_DIR, RunDir

#: The config tree: the repository's top-level conf/, through the link medvl/conf -> ../conf, which a wheel
#: ships as the package's own files (pyproject.toml's package-data), so an installed medvl runs from anywhere.
CONF_DIR = (Path(__file__).parent / "conf").resolve()


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
    #: LoRA's scale numerator: adapters are scaled by alpha/r (alpha/sqrt(r) with ``use_rslora``); ``null``:
    #: ``ALPHA_PER_RANK * r`` (:func:`lora_alpha`), so that a rank sweep keeps one scale (alpha/r = 2) in every job.
    alpha: int | None = None
    dropout: float = 0.05
    #: Rank-stabilised LoRA (peft's ``use_rslora``): scale alpha/sqrt(r) instead of alpha/r.
    use_rslora: bool = False


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
    #: ``meta`` keys whose values each get a table of their own (``by_<key>`` in metrics.json and tables.md).
    breakdowns: list[str] = field(default_factory=list)
    #: Those of ``breakdowns`` whose value can list several labels ("ABN, POS"): such a row counts under each.
    multi_label: list[str] = field(default_factory=list)
    #: Extra keyword options for the converter (``file``, ``image_dir``, ...), see docs/prepare.md.
    options: dict[str, Any] = field(default_factory=dict)
    # Synthetic data only: their values are conf/data/synth.yaml's.
    num_train: int | None = None
    num_validation: int | None = None
    num_test: int | None = None
    image_size: int | None = None
    seed: int | None = None


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
class EvalSettings:
    """How an evaluation generates and scores: ``medvl.eval``'s own keys, and the ``eval`` node of
    ``medvl.train`` (its evaluation after training), defined once for both."""

    batch_size: int = 32
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    #: Metric names from the registry; empty: all of them (METEOR needs Java, checked at start-up).
    metrics: list[str] = field(default_factory=list)
    perplexity: bool = True
    bertscore: BertScoreConfig = field(default_factory=BertScoreConfig)


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
    #: Set by a config that trains a later stage (``experiment=slake_instruct_7b``): ``init_from`` must then
    #: name the earlier stage's run, or ``base`` to start from the base model on purpose.
    init_from_required: bool = False
    #: Metrics and generation of the evaluation after training, checked before training starts
    #: (conf/train.yaml: ``batch_size`` and ``max_new_tokens`` follow the validation's by default).
    eval: EvalSettings = field(default_factory=EvalSettings)
    #: ``auto``: continue from the newest checkpoint in the run directory; or a checkpoint path.
    resume: str | None = None
    #: Generation length of validation during training; the evaluation after training follows it unless
    #: ``eval.max_new_tokens`` is set (conf/train.yaml), so that the best checkpoint and the final table agree.
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    run_name: str = "${stage.name}-${model.name}-${lora.name}"


@dataclass
class _ModelDataConfig:
    """What every command that reads a dataset through a model's processor shares."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class EvalConfig(_ModelDataConfig, EvalSettings):
    """``python -m medvl.eval``. ``ckpt`` is deliberately absent: it is given as ``+ckpt=...``."""

    #: Split to evaluate (conf/eval.yaml: ``${data.eval_split}``).
    split: str = "test"
    #: Also evaluate the base model and report both.
    compare_base: bool = False
    seed: int = 0
    #: Where the model runs: ``auto`` (this process's GPU, ``cuda:$LOCAL_RANK``, when there is
    #: one, else the CPU), ``auto_shard`` (one model's layers spread over all visible GPUs, for a model
    #: larger than one GPU: ``device_map="auto"``), ``cpu``, ``cuda`` or ``cuda:N``.
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


#: The data-config keys that name a dataset's label columns (:class:`DataConfig`).
DATASET_LABEL_KEYS = ("breakdowns", "multi_label")


def dataset_labels(name: str) -> dict[str, list[str]]:
    """``breakdowns`` and ``multi_label`` as ``conf/data/<name>.yaml`` states them (empty without the file or key)."""
    path = CONF_DIR / "data" / f"{name}.yaml"
    shipped = OmegaConf.load(path) if name and path.is_file() else OmegaConf.create()
    return {key: [str(v) for v in shipped.get(key) or []] for key in DATASET_LABEL_KEYS}


def add_dataset_labels(run_config: DictConfig | None) -> None:
    """Give a run's saved config the data label keys it lacks, from its dataset's config file (in place).

    A run saved before data configs named their breakdowns has none; merged as it is over medvl.eval's
    default data config, it would take that dataset's breakdowns for its own.
    """
    data = None if run_config is None else run_config.get("data")
    if data is None:
        return
    shipped = dataset_labels(str(data.get("name") or ""))
    for key in DATASET_LABEL_KEYS:
        if key not in data:
            data[key] = shipped[key]


def _slug(path: str) -> str:
    """A directory-name-safe label for a checkpoint path: its last two components."""
    if path in ("", "None", "base"):
        return "base"
    parts = [p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".", ADAPTER_DIR, MODEL_DIR)]
    return "_".join(parts[-2:]).replace("=", "-").replace(",", "_") or "base"


def _eval_name(ckpt: str, model: str, data: str, split: str, prompt: str) -> str:
    """The default eval directory name, ``<model>_<data>_<split>_<prompt>_<checkpoint>``.

    With ``+ckpt=<run>``, medvl.eval takes model, data and prompt from the run unless the command
    line chooses them (:meth:`medvl.runs.RunDir.apply_config`); the name says the same, so
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
    try:
        return RunDir.from_ckpt(ckpt).config
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


#: ``init_from`` values that start a later-stage config from the base model on purpose.
BASE_INIT = ("base", "none")


def starts_from_base(init_from: Any) -> bool:
    """Whether ``init_from`` says "the base model" in words (``init_from=base``) rather than naming a run."""
    return init_from is not None and str(init_from).strip().lower() in BASE_INIT


def check_init_from(cfg: DictConfig) -> None:
    # An experiment's ``init_from: ???`` merges onto the schema's null as null, so a later stage says
    # ``init_from_required: true`` instead and forgetting init_from stops here.
    if cfg.init_from is None and cfg.init_from_required:
        raise ConfigError(
            f"run_name={cfg.run_name} trains {cfg.stage.name} on top of an earlier stage (init_from_required=true) "
            f"but init_from is not set; add init_from=<the earlier stage's run dir> (e.g. outputs/train/align_7b), "
            f"or init_from=base to start from the base model {cfg.model.name_or_path} on purpose")


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


def refuse_secrets(keys: list[str]) -> None:
    if keys:
        raise ConfigError(f"{', '.join(keys)}: secrets must not be in the config (it is saved with the run and "
                          "logged); use the environment (WANDB_API_KEY, HF_TOKEN) or `wandb login`")


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
        ("data.max_length", cfg.data.max_length is None or cfg.data.max_length > 0,
         "must be a positive integer, or null (derived from the model's pixel budget)"),
        ("data.text_tokens", cfg.data.text_tokens > 0, "must be a positive integer"),
        ("max_new_tokens", cfg.max_new_tokens > 0, "must be a positive integer"),
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


def _check(cfg: DictConfig, checks: list[tuple[str, bool, str]]) -> None:
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} is invalid: {why}")


def group_choices(group: str) -> list[str]:
    """The option names of a config group, read from the conf tree."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
