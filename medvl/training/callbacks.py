"""Generation-based validation during training, with the same functions ``medvl.eval`` uses.

HF ``Trainer.evaluate`` gathers full-vocabulary logits for every validation token, the memory
blow-up users of other tools hit with 152k-token vocabularies. This callback instead generates
answers (no logits kept), scores them with the metric registry, logs overall and per-category
values through ``Trainer.log`` (so every configured logger sees them) and keeps the best adapter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from transformers import TrainerCallback

log = logging.getLogger(__name__)


def flatten(tables: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """``{"eval_overall/exact_match": ..., "eval_closed_yes_no/exact_match": ...}`` for ``Trainer.log``.

    HF's logger integrations turn an ``eval_`` prefix into the ``eval/`` section of TensorBoard and
    W&B (anything else lands under ``train/``).
    """
    flat = {}
    groups = {g: tables[g] for g in ("overall", "closed", "open")} | tables.get("by_category", {})
    for group, values in groups.items():
        for metric, value in values.items():
            if metric != "count" and isinstance(value, (int, float)):
                flat[f"{prefix}_{group}/{metric}"] = float(value)
    return flat


def validation_metrics(eval_metrics: list[str], metric_for_best: str | None) -> list[str]:
    """The metrics validation computes: ``eval_metrics`` plus ``metric_for_best`` when it is not among them.

    Raises:
        ConfigError: a name that is neither a registered metric nor a perplexity (one line, at start-up
            rather than at the first validation or, for ``metric_for_best``, never).
    """
    from medvl.config import ConfigError
    from medvl.evaluation.metrics import METRICS
    from medvl.evaluation.scoring import LIKELIHOOD_METRICS

    names = list(dict.fromkeys([*eval_metrics, *([metric_for_best] if metric_for_best else [])]))
    valid = [*METRICS, *LIKELIHOOD_METRICS]
    for key, values in (("trainer.eval_metrics", eval_metrics), ("trainer.metric_for_best", [metric_for_best])):
        unknown = [m for m in values if m and m not in valid]
        if unknown:
            raise ConfigError(f"{key}: unknown metric {', '.join(unknown)}; valid: {', '.join(valid)}")
    return names


def mixed_precision(model):
    """Autocast to the model's half dtype when its weights mix it with float32, else a no-op.

    Training keeps trainable weights in float32 beside frozen bf16 ones
    (:func:`medvl.models.lora.upcast_trainable`) and runs the forward under the Trainer's autocast;
    validation runs between steps, outside it, where a float32 merger would meet bf16 activations.
    """
    import contextlib

    import torch

    dtypes = {p.dtype for p in model.parameters()}
    half = next((d for d in (torch.bfloat16, torch.float16) if d in dtypes), None)
    if half is None or torch.float32 not in dtypes:
        return contextlib.nullcontext()
    return torch.autocast(device_type=next(model.parameters()).device.type, dtype=half)


class GenerationEvalCallback(TrainerCallback):
    """Every ``eval_steps`` optimizer steps: greedy answers on ``rows``, scored and logged.

    Args:
        metric_for_best: an ``overall`` metric (computed even when not in ``metrics``; ``perplexity``
            is lower-is-better); each new best saves the model to ``best_dir``.
    """

    def __init__(self, processor, rows: list[dict[str, Any]], image_root: str | Path, *, eval_steps: int,
                 system_prompt: str | None, batch_size: int, max_new_tokens: int, metrics: list[str],
                 metric_for_best: str | None, best_dir: Path, is_main: bool = True):
        self.processor = processor
        self.rows = rows
        self.image_root = image_root
        self.eval_steps = eval_steps
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        from medvl.config import BertScoreConfig
        from medvl.evaluation.scoring import LIKELIHOOD_METRICS

        names = validation_metrics(list(metrics), metric_for_best)
        #: Perplexity needs the reference answer's NLL (logits only at the answer positions).
        self.perplexity = any(m in LIKELIHOOD_METRICS for m in names)
        # An empty list would mean "every metric" (METEOR, BERTScore) to the scorer.
        text_metrics = [m for m in names if m not in LIKELIHOOD_METRICS] or ["exact_match"]
        self.score_cfg = OmegaConf.create({"metrics": text_metrics, "bertscore": OmegaConf.structured(BertScoreConfig)})
        self.metric_for_best = metric_for_best
        self.best_dir = Path(best_dir)
        self.is_main = is_main
        self.trainer = None  # set by the caller: Trainer.log reaches every logger integration
        self.last_step = -1
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        #: The latest validation's predictions, one per row of ``rows`` (read by the W&B table logger).
        self.records: list[dict[str, Any]] = []

    def _higher_is_better(self) -> bool:
        from medvl.evaluation.metrics import higher_is_better

        return higher_is_better(self.metric_for_best)

    def run(self, model, step: int) -> dict[str, Any]:
        from medvl.evaluation.generate import answer_chunks, iter_batches
        from medvl.evaluation.scoring import prediction_record, score

        was_training = model.training
        records = []
        with mixed_precision(model):  # answer_chunks puts the model in eval mode: no dropout in the likelihood
            for chunk, preds, nlls in answer_chunks(model, self.processor, list(iter_batches(self.rows, self.batch_size)),
                                                    self.image_root, system_prompt=self.system_prompt,
                                                    max_new_tokens=self.max_new_tokens, perplexity=self.perplexity):
                records += [prediction_record(r, p, nll, n) for r, p, (nll, n) in zip(chunk, preds, nlls)]
        if was_training:
            model.train()
        # No breakdown tables: validation logs the overall, closed/open and category values only.
        tables = score(records, self.score_cfg)
        self.records = records
        self.history.append({"step": step, "overall": tables["overall"]})
        return tables

    def on_train_begin(self, args, state, control, **kwargs):
        # Resuming: the best so far is on disk; without it the first validation after the restart
        # would replace a better adapter in best/ with a worse one.
        path = self.best_dir / "best.json"
        if self.metric_for_best and state.global_step > 0 and self.best is None and path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("metric") == self.metric_for_best and saved.get("step", 0) <= state.global_step:
                self.best = saved
                log.info("Resuming with best %s=%.4f from step %d", saved["metric"], saved["value"], saved["step"])
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if not self.eval_steps or step % self.eval_steps or step == self.last_step:
            return control
        self.last_step = step  # never twice for one step (e.g. once more from on_train_end)
        tables = self.run(model, step)
        flat = flatten(tables)
        if self.trainer is not None:
            should_log = control.should_log  # Trainer.log clears it, which would drop HF's loss log for this step
            self.trainer.log(flat)
            control.should_log = should_log
        value = tables["overall"].get(self.metric_for_best) if self.metric_for_best else None
        # Every rank scores the same rows with the same weights, so all ranks take the same decision;
        # that matters because saving under ZeRO-3 is collective.
        if value is not None and (self.best is None or (value > self.best["value"] if self._higher_is_better()
                                                        else value < self.best["value"])):
            self.best = {"metric": self.metric_for_best, "value": value, "step": step, "path": str(self.best_dir)}
            if self.trainer is not None and getattr(self.trainer, "is_deepspeed_enabled", False):
                self.trainer.save_model(str(self.best_dir))
            elif self.is_main:
                model.save_pretrained(self.best_dir, safe_serialization=True)
            if self.is_main:
                self.processor.save_pretrained(self.best_dir)
                (self.best_dir / "best.json").write_text(json.dumps(self.best, indent=2))
                log.info("New best %s=%.4f at step %d -> %s", self.metric_for_best, value, step, self.best_dir)
        return control
