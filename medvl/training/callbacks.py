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


class GenerationEvalCallback(TrainerCallback):
    """Every ``eval_steps`` optimizer steps: greedy answers on ``rows``, scored and logged.

    Args:
        metric_for_best: an ``overall`` metric; each new best saves the model to ``best_dir``.
    """

    def __init__(self, processor, rows: list[dict[str, Any]], image_root: str | Path, *, eval_steps: int,
                 system_prompt: str | None, batch_size: int, max_new_tokens: int, metrics: list[str],
                 metric_for_best: str | None, best_dir: Path, data_name: str, is_main: bool = True):
        self.processor = processor
        self.rows = rows
        self.image_root = image_root
        self.eval_steps = eval_steps
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        from medvl.config import BertScoreConfig

        self.score_cfg = OmegaConf.create({"metrics": list(metrics), "bertscore": OmegaConf.structured(BertScoreConfig)})
        self.metric_for_best = metric_for_best
        self.best_dir = Path(best_dir)
        self.data_name = data_name
        self.is_main = is_main
        self.trainer = None  # set by the caller: Trainer.log reaches every logger integration
        self.last_step = -1
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        #: The latest validation's predictions, one per row of ``rows`` (read by the W&B table logger).
        self.records: list[dict[str, Any]] = []

    def _higher_is_better(self) -> bool:
        from medvl.evaluation.metrics import METRICS

        metric = METRICS.get(self.metric_for_best)
        return metric.higher_is_better if metric else "perplexity" not in self.metric_for_best

    def run(self, model, step: int) -> dict[str, Any]:
        from medvl.data.format import answer_of, question_of
        from medvl.evaluation.generate import generate
        from medvl.evaluation.run import score

        was_training = model.training
        preds = generate(model, self.processor, self.rows, self.image_root, system_prompt=self.system_prompt,
                         batch_size=self.batch_size, max_new_tokens=self.max_new_tokens)
        if was_training:
            model.train()
        records = [{"id": r["id"], "question": question_of(r), "reference": answer_of(r), "prediction": p,
                    "category": r.get("category"), "answer_type": r.get("answer_type"), "meta": r.get("meta", {})}
                   for r, p in zip(self.rows, preds)]
        tables = score(records, self.score_cfg, self.data_name)
        self.records = records
        self.history.append({"step": step, "overall": tables["overall"]})
        return tables

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
