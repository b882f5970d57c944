"""Typed config schemas, registered in Hydra's ConfigStore: the YAML files under ``conf/`` merge onto these
dataclasses, so a misspelt key fails when the config is composed."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from medvl.config.families import DEFAULT_FAMILY, FAMILIES


class Trainable(str, Enum):
    """How a stage treats a component: frozen, LoRA adapters on it, or all of its weights."""

    frozen = "frozen"
    lora = "lora"
    full = "full"


#: ``model.family``: a registered family (:data:`medvl.config.families.FAMILIES`). An Enum built from the
#: registry's keys, so that a wrong value fails when the config is composed, in OmegaConf's one line
#: ("model.family: Invalid value 'x', expected one of [...]"), and a new family needs no edit here.
Family = Enum("Family", {name: name for name in FAMILIES}, type=str, module=__name__)


class AnswerType(str, Enum):
    """A category's answer type in ``data.categories`` (medvl.data.taxonomy's CLOSED/OPEN)."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"


#: ``model.attn_implementation`` choices: ``auto``, transformers' own attention kernels, and ``torch_varlen``
#: (PyTorch's varlen kernel for packed rows, SDPA otherwise: :mod:`medvl.models.varlen`).
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention",
                        "torch_varlen")


@dataclass
class ModelConfig:
    name: str = MISSING
    name_or_path: str = MISSING
    family: Family = Family[DEFAULT_FAMILY]
    #: Built offline on first use when set (``tiny`` / ``tiny25``); ``name_or_path`` is then its cache dir.
    build_tiny: bool = False
    dtype: str = "auto"
    #: One of :data:`ATTN_IMPLEMENTATIONS`; ``auto``: FlashAttention 2 where flash_attn is installed (on a GPU, bf16
    #: or fp16 weights); for packed training without it ``torch_varlen`` where PyTorch's kernel runs; else SDPA
    #: (:func:`medvl.models.speed.resolve_attn_implementation`).
    attn_implementation: str = "auto"
    min_pixels: int = 3136
    max_pixels: int = 401408
    trust_remote_code: bool = False
    #: Overrides the stage's learning rate for this model size (``null``: the stage's).
    learning_rate: float | None = None
    #: Training default for this model size (``trainer.gradient_checkpointing`` overrides it): recomputing the
    #: activations in the backward pass costs about a third more compute and pays off from 7B up.
    gradient_checkpointing: bool = False


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
    #: DoRA (peft's ``use_dora``): each adapted weight split into a magnitude vector and a LoRA-updated direction.
    dora: bool = False
    #: QLoRA: the base weights load in 4-bit NF4 through bitsandbytes (a CUDA GPU and ``medvl[qlora]``).
    qlora: bool = False


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
    #: The dataset's own taxonomy, category name -> CLOSED/OPEN, in the order tables show it (docs/taxonomy.md);
    #: empty or null: the built-in 12 categories. Empty, not null, by default: OmegaConf cannot merge a command
    #: line's ``+data.categories.<name>=CLOSED`` into a None-valued dict node (omegaconf#1038).
    categories: dict[str, AnswerType] | None = field(default_factory=dict)
    #: Extra keyword options for the converter (``file``, ``image_dir``, ...), see docs/prepare.md.
    options: dict[str, Any] = field(default_factory=dict)
    #: ``data=hf``: the export to read (a ``save_to_disk`` folder, a Parquet file or a folder of them).
    source: str | None = None
    #: ``data=hf``: medvl field (question, answer, image, answer_type, category, id, lang) -> the export's column.
    columns: dict[str, str | None] = field(default_factory=dict)
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
    #: W&B run group (``null``: for medvl.eval the evaluated run's group; in a multirun the sweep directory's
    #: name; else none).
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    #: Rows in the W&B predictions table logged at each validation, or by medvl.eval (0: none).
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
    #: ``null``: the model's default (``model.gradient_checkpointing``, on for 7B and larger).
    gradient_checkpointing: bool | None = None
    group_by_length: bool = True
    #: Padding-free packing: each batch's rows laid end to end in one row, positions restarting per row, no
    #: attention across rows (medvl.training.packing; Qwen-VL families).
    packing: bool = False
    #: DataLoader worker processes per rank that encode the rows (decode, resize, tokenize); ``null``: up to 4
    #: per rank on a CUDA machine, 0 on the CPU (:mod:`medvl.training.workers`).
    dataloader_num_workers: int | None = None
    max_grad_norm: float = 1.0
    #: bf16 is used when a GPU supports it; ``false`` forces float32.
    bf16: bool = True
    #: Liger's Triton kernels (RMSNorm, LayerNorm, RoPE, SwiGLU/GeGLU, and the fused linear cross-entropy loss):
    #: a CUDA GPU and ``medvl[liger]`` (:mod:`medvl.models.liger`, :func:`medvl.training.loss.fused_head`).
    liger: bool = False


@dataclass
class BertScoreConfig:
    #: A local model directory or hub id; ``null``: the packaged all-MiniLM-L6-v2 (offline).
    model: str | None = None
    #: ``null``: bert-score's tuned layer for the model, also for a local copy of a model it knows (by the name in
    #: its config, its Hub cache path or its folder); the last layer, with a warning, for a model it does not know.
    num_layers: int | None = None
    #: ``float32`` (exact: equals bert-score's own output) or ``bfloat16`` (about twice as fast on CPUs
    #: with bf16 units; per-sample F1 within about 1e-2, the mean within about 2e-3).
    dtype: str = "float32"
    #: A multilingual model (local directory or hub id) for Chinese rows, at bert-score's layer for it;
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
    #: ``logger=wandb``: metrics, ``log_predictions`` rows with their images, and report.html to W&B.
    logger: LoggerConfig = field(default_factory=LoggerConfig)


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


#: Each command's schema, by the name of its top-level config file.
SCHEMAS = {"train": TrainConfig, "eval": EvalConfig, "prepare": PrepareConfig, "export": ExportConfig}
