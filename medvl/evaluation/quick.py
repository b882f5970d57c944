"""Exact match of greedy answers on an evaluation split: the check run right after training."""

from __future__ import annotations

from typing import Any

from medvl.data.format import answer_of
from medvl.data.splits import load_split
from medvl.evaluation.generate import generate
from medvl.evaluation.normalize import normalize_answer


def exact_match(predictions: list[str], references: list[str]) -> float:
    if not references:
        return 0.0
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)) / len(references)


def exact_match_eval(model, processor, cfg: Any, split: str | None = None) -> dict[str, float]:
    """Greedy-decode ``split`` (default ``data.eval_split``) and score normalized exact match."""
    split = split or cfg.data.eval_split
    rows = load_split(cfg.data, split, cfg.data.max_eval_samples)
    preds = generate(model, processor, rows, cfg.data.root, system_prompt=cfg.prompt.system_prompt,
                     batch_size=cfg.trainer.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens)
    return {f"{split}_exact_match": exact_match(preds, [answer_of(r) for r in rows]), f"{split}_rows": len(rows)}
