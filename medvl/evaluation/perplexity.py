"""Perplexity of the reference answer given the image and the question.

The negative log-likelihood covers exactly the tokens training labels (the answer and its
end-of-turn token). The output head and the log-softmax run in float32; the transformer below
them runs in the model's dtype (float32 on CPU, bf16 on GPUs under ``model.dtype=auto``; set
``model.dtype=float32`` for an all-float32 pass), as lm-evaluation-harness does. Logits are computed only at those positions: a full
``[batch, length, vocab]`` tensor for a 152k vocabulary is what runs other tools out of memory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medvl.data.dataset import IGNORE_INDEX, Collator, encode, first_turn


def _core(model):
    """The ``*ForConditionalGeneration`` module under a possible PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.inference_mode()
def answer_nll(model, processor, rows: list[dict[str, Any]], image_root: str | Path, *,
               system_prompt: str | None = None,
               items: list[dict[str, torch.Tensor]] | None = None) -> list[tuple[float, int]]:
    """(summed NLL in nats, number of scored tokens) of each row's reference answer.

    The reference is the first answer (``answer_of``, what generation answers): later turns of a
    multi-turn row are left out, so the NLL is of the same answer the other metrics score.
    ``items``: the rows' first turns already encoded (``medvl.evaluation.generate.encode_chunk``).
    """
    if items is None:
        items = [encode(first_turn(r), processor, image_root, system_prompt=system_prompt) for r in rows]
    batch = Collator(processor.tokenizer.pad_token_id, padding_side="right")(items)
    device = next(model.parameters()).device
    labels = batch.pop("labels").to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    core = _core(model)
    hidden = core.model(**batch, use_cache=False).last_hidden_state
    # Position t predicts token t+1.
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    # The head runs in float32 too: bf16 logits would round the log-probabilities of a 152k vocabulary. With
    # device=auto_shard the last layer's output, the head and the inputs may each be on another GPU.
    head = core.lm_head
    on = head.weight.device
    with torch.autocast(device_type=on.type, enabled=False):  # float32 even inside a caller's autocast
        answer = hidden[:, :-1][mask.to(hidden.device)].to(on)
        logits = F.linear(answer.float(), head.weight.float(), None if head.bias is None else head.bias.float())
        token_nll = F.cross_entropy(logits, targets[mask].to(on), reduction="none")
    out, start = [], 0
    for n in mask.sum(dim=1).tolist():
        out.append((float(token_nll[start : start + n].sum()), int(n)))
        start += n
    return out


def perplexity(nll: float, n_tokens: int) -> float | None:
    return math.exp(nll / n_tokens) if n_tokens else None


def corpus_perplexity(pairs: list[tuple[float, int]]) -> dict[str, float | None]:
    """Corpus perplexity exp(total NLL / total tokens), and the median of per-sample perplexities."""
    total = sum(n for _, n in pairs)
    per = sorted(p for p in (perplexity(nll, n) for nll, n in pairs) if p is not None)
    median = None
    if per:
        mid = len(per) // 2
        median = per[mid] if len(per) % 2 else (per[mid - 1] + per[mid]) / 2
    return {"perplexity": perplexity(sum(nll for nll, _ in pairs), total), "perplexity_median": median}
