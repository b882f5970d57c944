"""Batched greedy generation with left padding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from medvl.data.chat import end_of_turn
from medvl.data.dataset import Collator, encode_prompts

#: How answers are decoded: greedy, one beam. Recorded in each eval's fingerprint so that medvl.compare
#: can tell runs decoded differently apart.
DECODING: dict[str, Any] = {"do_sample": False, "num_beams": 1}


def iter_batches(rows: list[dict[str, Any]], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(rows), batch_size):
        yield rows[i : i + batch_size]


def stop_token_ids(model, processor) -> list[int]:
    """Token ids that end an answer: the end-of-turn token training labels, and the model's own eos ids.

    A base checkpoint's tokenizer (Qwen2-VL-7B) has ``<|endoftext|>`` as eos, while a model fine-tuned
    on the chat template ends its answers with ``<|im_end|>`` (Gemma 3: ``<end_of_turn>``): stopping on eos
    alone would run every answer on to ``max_new_tokens``.
    """
    tokenizer = processor.tokenizer
    ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn(processor)[0])]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id))


@torch.inference_mode()
def generate_tokens(model, items: list[dict[str, torch.Tensor]], *, pad_token_id: int, eos_token_id: list[int],
                    max_new_tokens: int) -> torch.Tensor:
    """Greedy new token ids for encoded prompts, decoded as one left-padded batch (with the KV cache).

    A row that stopped early is padded with ``pad_token_id`` to the batch's longest answer.
    """
    batch = Collator(pad_token_id, padding_side="left")(items)
    batch.pop("labels")
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    out = model.generate(**batch, max_new_tokens=max_new_tokens, **DECODING, pad_token_id=pad_token_id,
                         eos_token_id=eos_token_id)
    return out[:, batch["input_ids"].shape[1]:]


def generate_batch(model, processor, rows: list[dict[str, Any]], image_root: str | Path, *,
                   system_prompt: str | None = None, max_new_tokens: int = 32) -> list[str]:
    """Greedy answers to the first question of each row, generated as one left-padded batch."""
    tokenizer = processor.tokenizer
    items = encode_prompts(rows, processor, image_root, system_prompt=system_prompt)
    new_tokens = generate_tokens(model, items, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=stop_token_ids(model, processor), max_new_tokens=max_new_tokens)
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def generate(model, processor, rows: list[dict[str, Any]], image_root: str | Path, *,
             system_prompt: str | None = None, batch_size: int = 32, max_new_tokens: int = 32) -> list[str]:
    """Greedy answers for all rows, ``batch_size`` at a time."""
    model.eval()
    preds: list[str] = []
    for chunk in iter_batches(rows, batch_size):
        preds += generate_batch(model, processor, chunk, image_root, system_prompt=system_prompt,
                                max_new_tokens=max_new_tokens)
    return preds
