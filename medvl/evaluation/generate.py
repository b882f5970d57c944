"""Batched greedy generation with left padding."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch

from medvl.data.chat import end_of_turn
from medvl.data.dataset import Collator, append_answer, encode_prompts
from medvl.evaluation.perplexity import answer_nll

T = TypeVar("T")
R = TypeVar("R")

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
                   system_prompt: str | None = None, max_new_tokens: int = 32,
                   prompts: list[dict[str, torch.Tensor]] | None = None) -> list[str]:
    """Greedy answers to the first question of each row, generated as one left-padded batch.

    ``prompts``: the rows' prompts already encoded (:func:`encode_chunk`); else they are encoded here.
    """
    tokenizer = processor.tokenizer
    items = prompts if prompts is not None else encode_prompts(rows, processor, image_root,
                                                                system_prompt=system_prompt)
    new_tokens = generate_tokens(model, items, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=stop_token_ids(model, processor), max_new_tokens=max_new_tokens)
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


class Encoded(NamedTuple):
    """A chunk of evaluation rows encoded: generation's prompts, and perplexity's whole first turns (or None)."""

    prompts: list[dict[str, torch.Tensor]]
    whole: list[dict[str, torch.Tensor]] | None


def encode_chunk(rows: list[dict[str, Any]], processor, image_root: str | Path, *, system_prompt: str | None,
                 with_answers: bool) -> Encoded:
    """Everything evaluation feeds the model for ``rows``, from one pass over their images: the prompts, and
    with ``with_answers`` the first turns with their answers (:func:`medvl.data.dataset.append_answer`)."""
    prompts = encode_prompts(rows, processor, image_root, system_prompt=system_prompt)
    whole = ([append_answer(prompt, row, processor, system_prompt=system_prompt) for prompt, row in zip(prompts, rows)]
             if with_answers else None)
    return Encoded(prompts, whole)


def prefetched(chunks: Sequence[T], encode: Callable[[T], R], *, background: bool = True) -> Iterator[tuple[T, R]]:
    """``(chunk, encode(chunk))`` for each chunk, the next chunk's ``encode`` running in a background thread while
    the caller works on the current one: image decoding, resizing and tokenization overlap the model's work.

    ``encode`` runs in that thread only, so it must not share a tokenizer with the caller (a Rust tokenizer used
    from two threads at once can fail with "Already borrowed"): give it its own processor (``copy.deepcopy``).
    An error in ``encode`` is raised here, at the chunk it belongs to.
    """
    if not background:  # each chunk encoded when its turn comes
        yield from ((chunk, encode(chunk)) for chunk in chunks)
        return
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medvl-encode") as pool:
        ahead = pool.submit(encode, chunks[0])
        for i, chunk in enumerate(chunks):
            encoded = ahead.result()
            if i + 1 < len(chunks):
                ahead = pool.submit(encode, chunks[i + 1])
            yield chunk, encoded


def answer_chunks(model, processor, chunks: Sequence[list[dict[str, Any]]], image_root: str | Path, *,
                  system_prompt: str | None = None, max_new_tokens: int = 32, perplexity: bool = False,
                  background: bool | None = None) -> Iterator[tuple[list[dict[str, Any]], list[str], list[tuple[float | None, int]]]]:
    """``(chunk, greedy answers, reference-answer NLLs)`` for each chunk of rows (NLLs ``(None, 0)`` without
    ``perplexity``), in order: what ``medvl.eval`` and validation during training run.

    Each chunk is encoded once (its images processed once, for generation and perplexity both). With the model on
    a GPU that happens in a background thread with its own copy of the processor, while the model works on the
    chunk before it (:func:`prefetched`); on the CPU the model and the encoding would compete for the same cores
    (measured slower with the tiny model: ``benchmarks/data_loading.py``), so each chunk is encoded in turn.
    ``background``: that choice made explicitly (None: in the background with the model on a GPU).
    """
    model.eval()
    if not chunks:
        return
    if background is None:
        background = next(model.parameters()).device.type == "cuda"
    encode = functools.partial(encode_chunk, processor=copy.deepcopy(processor) if background else processor,
                               image_root=image_root, system_prompt=system_prompt, with_answers=perplexity)
    for chunk, encoded in prefetched(chunks, encode, background=background):
        preds = generate_batch(model, processor, chunk, image_root, system_prompt=system_prompt,
                               max_new_tokens=max_new_tokens, prompts=encoded.prompts)
        nlls = (answer_nll(model, processor, chunk, image_root, system_prompt=system_prompt, items=encoded.whole)
                if perplexity else [(None, 0)] * len(chunk))
        yield chunk, preds, nlls


def generate(model, processor, rows: list[dict[str, Any]], image_root: str | Path, *,
             system_prompt: str | None = None, batch_size: int = 32, max_new_tokens: int = 32) -> list[str]:
    """Greedy answers for all rows, ``batch_size`` at a time."""
    return [pred for _, preds, _ in answer_chunks(model, processor, list(iter_batches(rows, batch_size)), image_root,
                                                  system_prompt=system_prompt, max_new_tokens=max_new_tokens)
            for pred in preds]
