"""``train(cfg)``: one stage of fine-tuning with HF ``Trainer`` + PEFT, then (optionally) evaluation."""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from medvl.config import ConfigError, starts_from_base
from medvl.config.families import family_name
from medvl.config.validation import check_init_from
from medvl.data.dataset import VQADataset
from medvl.data.splits import check_train_lengths, ensure_data, load_split
from medvl.data.token_length import resolve_max_length
from medvl.models.card import EVAL_METRICS, write_run_card
from medvl.models.liger import apply_liger
from medvl.models.loading import load_dtype, load_processor, load_run_weights, resolve_model_path
from medvl.models.lora import apply_training_setup, trainable_parameter_names, upcast_trainable
from medvl.models.speed import prepare_quantized, quantization_config, resolve_attn_implementation
from medvl.runs import CONFIG_FILE, RunDir
from medvl.training.checks import check_eval_after_train, validate_training
from medvl.training.distributed import is_main_process, one_gpu_without_launcher
from medvl.training.loss import fused_head
from medvl.training.outputs import save_outputs, write_run_config
from medvl.training.packing import train_collator
from medvl.training.sweep import wants_eval_after_train
from medvl.training.workers import dataloader_workers

log = logging.getLogger(__name__)


def end_distributed() -> None:
    """Wait for rank 0's writes, then close the process group.

    A rank that exits with the group still open can abort ("terminate called without an active
    exception"), and the launcher then kills the ranks still writing.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def ensure_data_once(cfg: DictConfig) -> None:
    """Generate synthetic data under a file lock: ranks starting together would write the same files."""
    if cfg.data.format != "synth":
        return
    from filelock import FileLock

    root = Path(cfg.data.root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        ensure_data(cfg.data)


def training_model_config(cfg: DictConfig) -> DictConfig:
    """``cfg.model`` as training loads it: ``dtype=auto`` means float32 when ``trainer.bf16`` is off
    (``auto`` alone would load bf16 weights on a bf16 GPU, and the run would not be float32), and with
    ``trainer.packing`` an ``auto`` attention is resolved for packed rows (``torch_varlen`` where flash_attn is
    missing and PyTorch's varlen kernel runs: :func:`medvl.models.speed.resolve_attn_implementation`)."""
    changes: dict[str, str] = {}
    if str(cfg.model.dtype) == "auto" and not cfg.trainer.bf16:
        changes["dtype"] = "float32"
    if cfg.trainer.packing and str(cfg.model.attn_implementation) == "auto":
        dtype = load_dtype(changes.get("dtype", str(cfg.model.dtype)))
        changes["attn_implementation"] = resolve_attn_implementation("auto", dtype, packing=True,
                                                                     family=cfg.model.family)
    if not changes:
        return cfg.model
    return OmegaConf.create({**OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True), **changes})


def mixed_precision_bf16(cfg: DictConfig) -> bool:
    """Whether the Trainer runs in bf16 mixed precision: ``trainer.bf16`` on a GPU that supports it."""
    return bool(cfg.trainer.bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def load_for_training(cfg: DictConfig, out: Path):
    """(TrainingArguments, processor, model), the arguments first: with ``deepspeed=zero3*`` they register the
    DeepSpeed config that ``from_pretrained`` reads, so each rank keeps only its 1/world_size share of the
    weights as they load. Loaded before the arguments existed, every rank would hold the whole model
    (a 32B model in bf16 is 64 GB per rank) until the Trainer partitioned it."""
    resolve_model_path(cfg.model)  # a tiny model is built (from_config) before ZeRO-3 would partition it
    args = training_arguments(cfg, out)
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        deepspeed_comm_ready()
    processor, model = build_model(cfg)
    return args, processor, model


def deepspeed_comm_ready() -> None:
    """ZeRO-3's ``zero.Init`` takes the world size from DeepSpeed's own comm module. accelerate starts that
    module for GPU ranks only; CPU ranks (DS_ACCELERATOR=cpu) get plain torch.distributed, and zero.Init
    would then take them for one rank each."""
    import deepspeed.comm as ds_comm

    if not ds_comm.is_initialized() and torch.distributed.is_initialized():
        ds_comm.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)


def gathered(model):
    """Under ZeRO-3, the model's whole weights while inside (the earlier stage's adapter is merged into
    them; a rank's partition alone cannot take it), partitioned again on exit; otherwise nothing.
    The full model is held on each rank only for the merge."""
    from contextlib import nullcontext

    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0)


def build_model(cfg: DictConfig):
    """Processor and model ready for training: stage chaining merged, adapters added, freezing applied."""
    base = resolve_model_path(cfg.model)
    processor = load_processor(cfg.model, base)
    # The weights the earlier stage ended with, rebuilt as eval and export rebuild them (4-bit for QLoRA).
    init_from = RunDir.from_init_from(cfg.init_from) if cfg.init_from else None
    model = load_run_weights(training_model_config(cfg), init_from, base, around_merges=gathered,
                             **({"quantization_config": quantization_config(cfg)} if cfg.lora.qlora else {}))
    return processor, setup_for_training(model, cfg)


def setup_for_training(model, cfg: DictConfig):
    """A loaded model as a stage trains it: Liger's kernels, QLoRA's preparation, LoRA adapters and freezing,
    float32 trainable weights under bf16 autocast, and gradient checkpointing (:func:`enable_checkpointing`)."""
    checkpointing = gradient_checkpointing(cfg)
    if cfg.trainer.liger:
        apply_liger(model, family_name(cfg.model.family))
    if cfg.lora.qlora:
        model = prepare_quantized(model)
    model = apply_training_setup(model, cfg)
    if mixed_precision_bf16(cfg) and not cfg.deepspeed.config:  # the forward runs under bf16 autocast
        upcast = upcast_trainable(model)
        if upcast:
            log.info("Trainable weights kept in float32 (%d parameters loaded in half precision)", upcast)
    source = "trainer.gradient_checkpointing" if cfg.trainer.gradient_checkpointing is not None else \
        f"model={cfg.model.name}'s default"
    log.info("Gradient checkpointing: %s (%s)", "on" if checkpointing else "off", source)
    if checkpointing:
        enable_checkpointing(model)
    return model


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing of every layer, with no input-gradient hooks.

    transformers' ``gradient_checkpointing_enable`` also makes every sub-model's input embeddings require
    gradients (``enable_input_require_grads``), the vision tower's patch embedding included: the frozen tower's
    backward would then run, and keep its activations, for nothing. Non-reentrant checkpointing needs no such
    hook (the LoRA weights inside a checkpointed layer get their gradients without it), so they are removed.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.disable_input_require_grads()


def trainer_class():
    """HF's Trainer with medvl's length-grouped sampler and answer-position loss (a factory: transformers loads only
    when training does)."""
    from transformers import Trainer

    from medvl.training.loss import answer_loss, answer_loss_applies
    from medvl.training.sampler import EpochLengthGroupedSampler

    class MedvlTrainer(Trainer):
        """HF Trainer whose length grouping uses lengths read from image headers.

        Trainer only takes precomputed lengths from a ``datasets.Dataset``; for any other dataset
        it would encode every sample (decoding every image) just to learn its length.
        """

        #: The loss from logits at the answer positions only (:mod:`medvl.training.loss`); False: the model's own.
        answer_head = True
        #: The head and cross-entropy as one fused call (``trainer.liger``'s, set by :func:`build_trainer`), or None.
        fused_head = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if (return_outputs or not self.answer_head or "labels" not in inputs or self.label_smoother is not None
                    or self.compute_loss_func is not None or not answer_loss_applies(model)):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            # As the model's own loss would be: normalized by the accumulated label count where the model takes
            # it (accepts_loss_kwargs), else the mean of this micro-batch.
            items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            loss = answer_loss(model, inputs, num_items_in_batch=items, fused=self.fused_head)
            if self.args.average_tokens_across_devices and items is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                               else self.args.n_gpu)
            return loss

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
                batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
                return EpochLengthGroupedSampler(batch, lengths=dataset.lengths, seed=self.args.data_seed)
            return super()._get_train_sampler(train_dataset)

    return MedvlTrainer


def resume_checkpoint(cfg: DictConfig, out: Path) -> str | None:
    """``resume=auto``: the newest complete ``checkpoint-N`` in the run directory (None if there is none).

    A process killed while saving leaves a checkpoint without ``trainer_state.json`` (the Trainer
    writes it last); such a checkpoint is skipped rather than resumed from.
    """
    if not cfg.resume:
        return None
    if cfg.resume != "auto":
        if not (Path(cfg.resume) / "trainer_state.json").is_file():
            raise FileNotFoundError(f"resume={cfg.resume}: not a complete Trainer checkpoint directory (no "
                                    f"trainer_state.json); use resume=auto (the newest complete checkpoint in the run "
                                    f"directory) or resume=<run dir>/checkpoint-N")
        return str(cfg.resume)
    candidates = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                        if p.name.split("-")[-1].isdigit() else -1, reverse=True)
    for ckpt in candidates:
        if (ckpt / "trainer_state.json").is_file():
            log.info("resume=auto: continuing from %s", ckpt)
            return str(ckpt)
        log.warning("resume=auto: skipping incomplete checkpoint %s", ckpt)
    log.info("resume=auto: no checkpoint in %s yet, starting fresh", out)
    return None


def gradient_checkpointing(cfg: DictConfig) -> bool:
    """trainer.gradient_checkpointing, else the model size's default (on for 7B and larger)."""
    value = cfg.trainer.gradient_checkpointing
    return bool(cfg.model.gradient_checkpointing if value is None else value)


def learning_rate(cfg: DictConfig) -> float:
    """trainer.learning_rate, else the model size's, else the stage's."""
    for value in (cfg.trainer.learning_rate, cfg.model.learning_rate, cfg.stage.learning_rate):
        if value is not None:
            return float(value)
    raise AssertionError("stage.learning_rate is always set")


def training_arguments(cfg: DictConfig, output_dir: Path):
    from transformers import TrainingArguments

    t = cfg.trainer
    use_bf16 = mixed_precision_bf16(cfg)
    workers = dataloader_workers(cfg)
    ds = OmegaConf.to_container(cfg.deepspeed.config, resolve=True) if cfg.deepspeed.config else None
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=learning_rate(cfg),
        num_train_epochs=t.num_train_epochs if t.num_train_epochs is not None else cfg.stage.num_train_epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        bf16=use_bf16,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,  # not re-forked (and re-warmed) every epoch
        remove_unused_columns=False,
        report_to=list(cfg.logger.report_to) or "none",
        run_name=cfg.run_name,
        deepspeed=ds,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not is_main_process(),
    )
    one_gpu_without_launcher(args)
    return args


def resolve_init_from(cfg: DictConfig) -> None:
    """``init_from=base`` (a later-stage config started from the base model on purpose) becomes null, said
    loudly; a run path becomes absolute: config.yaml records it, and eval, export and later stages read it
    from another directory."""
    if starts_from_base(cfg.init_from):
        log.warning("init_from=%s: stage %s starts from the base model %s, not from an earlier stage's run",
                    cfg.init_from, cfg.stage.name, cfg.model.name_or_path)
        cfg.init_from = None
    elif cfg.init_from:
        cfg.init_from = str(Path(cfg.init_from).expanduser().resolve())


def check_evaluation_needs(cfg: DictConfig) -> None:
    """What validation and the evaluation after training will need, checked before the model loads: their
    splits, and for the evaluation after training its metrics (Java for METEOR, BERTScore model files).
    Found missing only after training, a sweep's every job would train to the end and then fail."""
    if cfg.trainer.eval_steps > 0:
        load_split(cfg.data, cfg.data.validation_split, cfg.trainer.eval_samples)
    if not wants_eval_after_train(cfg):
        return
    check_eval_after_train(cfg)
    load_split(cfg.data, cfg.data.eval_split, cfg.data.max_eval_samples)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one stage as configured; return the final training metrics (and eval metrics if asked)."""
    validate_training(cfg)
    from_base = starts_from_base(cfg.init_from)
    resolve_init_from(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.trainer.seed)
    log.info("Run %s -> %s", cfg.run_name, out)
    resume_from, rows, lengths = check_before_loading(cfg, out, from_base=from_base)
    if not from_base:  # a resumed later stage's init_from, now read from its config.yaml
        check_init_from(cfg, resume_may_supply=False)
    if is_main_process():  # from the start: checkpoint-N/ and best/ of this run are read with its stage chain
        write_run_config(cfg, out)
    from medvl.training.loggers import logger_callbacks

    log_callbacks = logger_callbacks(cfg, out)  # W&B decides online or offline here, not after loading

    args, processor, model = load_for_training(cfg, out)
    n_train = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)  # ZeRO-3: 0
    log.info("Trainable parameters: %d in %d tensors", n_train, len(trainable_parameter_names(model)))

    dataset = VQADataset(rows, processor, cfg.data.root, system_prompt=cfg.prompt.system_prompt,
                         max_length=resolve_max_length(cfg.model, cfg.data), lengths=lengths)
    callbacks = [validation_callback(cfg, processor, out)] if cfg.trainer.eval_steps > 0 else []
    callbacks += log_callbacks
    trainer = build_trainer(cfg, model, args, dataset, train_collator(cfg, processor, model), callbacks)
    start = json.loads((Path(resume_from) / "trainer_state.json").read_text())["global_step"] if resume_from else None
    result = trainer.train(resume_from_checkpoint=resume_from)  # may delete that checkpoint (save_total_limit)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    save_outputs(trainer.model, processor, trainer, cfg, out)
    metrics.update(best_metrics(callbacks))
    if is_main_process():
        metrics = write_train_metrics(out, metrics, start, trainer.state.global_step)
    if wants_eval_after_train(cfg):  # in every rank, while the group is up (DeepSpeed's engine asks for its rank)
        release_training(trainer, callbacks)
    end_distributed()
    if wants_eval_after_train(cfg) and is_main_process():
        del trainer, model, args  # the caller's half of release_training
        metrics["eval"] = evaluate_after_training(cfg, out, callbacks)
    return metrics


def write_train_metrics(out: Path, metrics: dict[str, float], start: int | None, global_step: int
                        ) -> dict[str, float]:
    """``train_metrics.json``; returns what it holds. A resumed run's figures cover only the steps after its
    checkpoint (step ``start``), and say so (``resumed_from_step``). A resume with no step left (``resume=auto`` on a
    finished run) keeps the file its training wrote: the Trainer would report ``train_loss`` 0.0 for no steps."""
    path = out / "train_metrics.json"
    if start is not None and global_step <= start:
        log.warning("resume: the checkpoint is already at the last step (%d); nothing was trained, %s", start,
                    "train_metrics.json kept" if path.is_file() else "no training figures to record")
        if path.is_file():
            return {**json.loads(path.read_text()), **{k: v for k, v in metrics.items() if k.startswith("best_")}}
        metrics = {k: v for k, v in metrics.items() if not k.startswith("train_")}
    if start is not None:
        metrics["resumed_from_step"] = float(start)
    path.write_text(json.dumps(metrics, indent=2))
    return metrics


def check_before_loading(cfg: DictConfig, out: Path, from_base: bool = False
                         ) -> tuple[str | None, list[dict[str, Any]], list[int]]:
    """Everything a path or the data can get wrong, checked before minutes of loading weights (every earlier
    stage's weights too): returns the checkpoint to resume from, the training rows and their token lengths."""
    resume_from = resume_checkpoint(cfg, out)
    if resume_from is not None:
        keep_stage_chain(cfg, out, from_base)
    if cfg.init_from:
        RunDir.from_init_from(cfg.init_from).weight_stages()
    ensure_data_once(cfg)
    rows = load_split(cfg.data, cfg.data.train_split, cfg.data.max_train_samples)
    # A row too long for this model would stop training when the sampler reaches it: refused here instead.
    lengths = check_train_lengths(rows, cfg.data, cfg.model, cfg.prompt.system_prompt, cfg.data.train_split)
    check_evaluation_needs(cfg)
    return resume_from, rows, lengths


def keep_stage_chain(cfg: DictConfig, out: Path, from_base: bool) -> None:
    """A resumed run continues as it started: on top of the earlier stage its ``config.yaml`` records (taken when
    the command line names none, as ``resume=auto`` commands often do), with the same model and stage. Without
    this, the adapter's remaining steps would train on the bare base model. One line when they disagree."""
    saved_path = out / CONFIG_FILE
    if not saved_path.is_file():
        return
    saved = OmegaConf.load(saved_path)
    for key in ("model.name", "stage.name"):
        before, now = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        if before is not None and str(before) != str(now):
            raise ConfigError(f"resume: {out} was trained with {key}={before}, this command has {key}={now}; "
                              f"resume with the run's settings, or pass hydra.run.dir=<new dir> to start a new run")
    earlier = OmegaConf.select(saved, "init_from")
    if earlier and not cfg.init_from and not from_base:
        log.info("resume: %s was trained on top of init_from=%s (its %s); continuing on top of it", out, earlier,
                 CONFIG_FILE)
        cfg.init_from = str(earlier)
    elif str(earlier or "") != str(cfg.init_from or ""):
        raise ConfigError(f"resume: {out} was trained on top of init_from={earlier or 'base'}, this command has "
                          f"init_from={cfg.init_from or 'base'}; resume with the run's init_from (or none: it is read "
                          f"from {CONFIG_FILE}), or pass hydra.run.dir=<new dir> to start a new run")


def build_trainer(cfg: DictConfig, model, args, dataset, collator, callbacks: list):
    """medvl's Trainer (:func:`trainer_class`), with ``trainer.liger``'s fused head where it applies, known to each
    callback: validation logs and saves the best checkpoint through it, and the W&B callback finds the validation
    callback through it."""
    trainer = trainer_class()(model=model, args=args, train_dataset=dataset, data_collator=collator,
                              callbacks=callbacks)
    trainer.fused_head = fused_head(trainer.model, cfg.trainer.liger, torch.bfloat16 if args.bf16 else None)
    from medvl.training.loss import answer_loss_applies

    if trainer.answer_head and answer_loss_applies(trainer.model):
        # medvl's loss divides by the label tokens of the whole accumulated batch (num_items_in_batch) for every
        # family: transformers marks Qwen2.5-VL and Qwen3-VL as not taking it, and would average the
        # micro-batches' means instead, so that gradient accumulation would weigh tokens otherwise than one batch.
        trainer.model_accepts_loss_kwargs = True
    for cb in callbacks:
        cb.trainer = trainer
    return trainer


def best_metrics(callbacks: list) -> dict[str, float]:
    """The best validation value and its step, when validation kept a best checkpoint (it is the first callback)."""
    best = getattr(callbacks[0], "best", None) if callbacks else None
    return {"best_" + best["metric"]: best["value"], "best_step": best["step"]} if best else {}


def evaluate_after_training(cfg: DictConfig, out: Path, callbacks: list) -> dict[str, float]:
    """``medvl.eval`` of the run on rank 0 alone, once training let its model go; the loggers get the tables."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # Rank 0 evaluates alone: a still-registered ZeRO-3 config would make from_pretrained shard.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    tables = evaluate_run(cfg, out)["ckpt"]
    for cb in callbacks:
        if hasattr(cb, "log_final_eval"):  # W&B: the sweep's dashboards get the final numbers too
            cb.log_final_eval(tables)
    return tables["overall"]


def release_training(trainer, callbacks: list) -> None:
    """Let the trained model, its optimizer state and DeepSpeed engine go before the evaluation after training
    loads a second copy of the model: the callbacks hold the trainer, and the trainer's accelerator holds the
    model, optimizer, scheduler and engine. The caller drops its own names and collects."""
    for cb in callbacks:
        if hasattr(cb, "trainer"):
            cb.trainer = None
    trainer.accelerator.free_memory()  # accelerate forgets its models, optimizers, engine and dataloaders
    trainer.model = trainer.model_wrapped = trainer.deepspeed = None
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.callback_handler.model = trainer.callback_handler.optimizer = None
    trainer.callback_handler.lr_scheduler = None


def set_aside_stale_eval(eval_cfg: DictConfig, out: Path) -> Path | None:
    """The run's ``eval/`` made from weights this run has since replaced (trained again into its directory, or
    resumed and saved again) is moved to ``eval.before-<time>``, said in the log: resuming it would mix
    predictions of two models, and refusing it would fail the run after its training. Returns where it went."""
    from medvl.evaluation.run import fingerprint

    stale = Path(eval_cfg.output_dir)
    recorded = stale / "eval_fingerprint.json"
    if not recorded.is_file():
        return None
    old = json.loads(recorded.read_text())
    new = json.loads(json.dumps(fingerprint(eval_cfg, RunDir.from_ckpt(out), eval_cfg.split)))
    if all(old.get(key) == new.get(key) for key in ("weights", "earlier_weights")):
        return None
    moved = stale.with_name(f"{stale.name}.before-{time.strftime('%Y%m%d-%H%M%S', time.localtime(recorded.stat().st_mtime))}")
    stale.rename(moved)
    log.warning("%s held the evaluation of weights this run has since replaced; moved to %s, evaluating again",
                stale, moved)
    return moved


def validation_callback(cfg: DictConfig, processor, out: Path):
    from medvl.training.callbacks import GenerationEvalCallback

    rows = load_split(cfg.data, cfg.data.validation_split, cfg.trainer.eval_samples)
    return GenerationEvalCallback(
        processor, rows, cfg.data.root, eval_steps=cfg.trainer.eval_steps, system_prompt=cfg.prompt.system_prompt,
        batch_size=cfg.trainer.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens,
        metrics=list(cfg.trainer.eval_metrics), metric_for_best=cfg.trainer.metric_for_best,
        best_dir=out / "best", is_main=is_main_process())


def evaluate_run(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Run ``medvl.eval`` on this run directory with the run's model, data and prompt."""
    from medvl.config import EvalConfig
    from medvl.evaluation.run import evaluate

    eval_cfg = OmegaConf.structured(EvalConfig)
    for key in ("model", "data", "prompt", "cache_dir"):
        eval_cfg[key] = cfg[key]
    eval_cfg.output_dir = str(out / "eval")
    eval_cfg.split = cfg.data.eval_split
    eval_cfg.merge_with(OmegaConf.to_container(cfg.eval, resolve=True))  # eval.metrics, eval.max_new_tokens, ...
    with open_dict(eval_cfg):
        eval_cfg.ckpt = str(out)
    set_aside_stale_eval(eval_cfg, out)
    tables = evaluate(eval_cfg)
    if (out / EVAL_METRICS).exists():  # the card gets the evaluation's numbers (model-index)
        write_run_card(out)
    return tables
