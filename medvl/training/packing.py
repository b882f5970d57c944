"""Padding-free packing (``trainer.packing=true``): a batch's rows laid end to end in one row, no pad tokens.

What stays as in a padded batch, so that the packed step computes the same loss and gradients (tests/test_packing.py):

- **Rows per step.** The sampler still draws ``per_device_train_batch_size`` rows (length grouping, resume order,
  steps per epoch and the learning-rate schedule are unchanged); the collator lays them into one row of their summed
  length. That length is at most ``per_device_train_batch_size x data.max_length`` (each row is checked against
  ``data.max_length`` at start-up), the most a padded batch of those rows could hold, so packing never needs more
  activation memory than the padded batch at its worst. This is the token budget; it is checked again here.
- **Positions.** Each row's positions restart at 0. For Qwen's 3D mrope they come from the model's own
  ``get_rope_index`` on that row alone with its own ``image_grid_thw``, exactly what the model computes for the row
  in a padded batch; the vision tower still sees each image on its own (its ``cu_seqlens`` come from the grids).
  ``position_ids`` is ``[4, 1, total]``: the text positions first, then the three mrope rows; transformers' Qwen-VL
  text models read the first as the packed-sequence positions (qwen2_vl ``Qwen2VLTextModel.forward``).
- **No attention across rows.** No ``attention_mask`` is passed. With ``eager`` and ``sdpa``, transformers'
  ``create_causal_mask`` finds where the text positions restart and builds a block-diagonal causal mask
  (``masking_utils.find_packed_sequence_indices``; it needs ``attention_mask=None`` and no KV cache, hence
  ``use_cache=False`` in the batch). With ``flash_attention_2`` the layers run ``flash_attn_varlen_func`` on the
  ``cu_seq_lens_q/k`` and ``max_length_q/k`` given here; transformers keeps those four away from the vision tower
  (``utils.generic.accepts_precomputed_kwargs``), whose own ``cu_seqlens`` separate the images. ``torch_varlen``
  (:mod:`medvl.models.varlen`) reads the same four with PyTorch's own varlen kernel, where flash_attn is missing.
- **Labels.** Each row's first label is ignored: the last token of one row must not learn to predict the first
  token of the next. In a padded batch that label is never a target either (labels are shifted left by one).
- **Loss.** The Qwen-VL models' loss is the mean over all label tokens of the batch (their ``accepts_loss_kwargs``
  is False, so the Trainer passes no ``num_items_in_batch`` and averages micro-batches), the same sum over the same
  tokens packed or padded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from medvl.config import ConfigError
from medvl.config.families import FAMILIES, family_name, family_spec
from medvl.data.dataset import IGNORE_INDEX, Collator
from medvl.data.token_length import resolve_max_length
from medvl.models.varlen import VARLEN

log = logging.getLogger(__name__)

RopeIndex = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def check_packing(cfg: DictConfig) -> None:
    """``trainer.packing=true`` on a family whose positions this module cannot build: one ConfigError at start-up."""
    # The families whose positions this module can build (``FamilySpec.packing``: the Qwen-VL models with
    # ``get_rope_index``); another is refused at start-up rather than trained with wrong positions.
    if cfg.trainer.packing and not family_spec(cfg.model.family).packing:
        raise ConfigError(f"trainer.packing=true: model.family={family_name(cfg.model.family)} is not supported "
                          f"(packing builds Qwen-VL mrope positions; supported: {', '.join(packable_families())}); "
                          f"set trainer.packing=false")


def packable_families() -> list[str]:
    """The families whose packed positions this module can build (``FamilySpec.packing``)."""
    return [name for name, spec in FAMILIES.items() if spec.packing]


def train_collator(cfg: DictConfig, processor, model):
    """The training batches' collator: padded rows, or with ``trainer.packing`` one packed row per batch."""
    if not cfg.trainer.packing:
        return Collator(processor.tokenizer.pad_token_id)
    budget = cfg.trainer.per_device_train_batch_size * resolve_max_length(cfg.model, cfg.data)
    log.info("Packing: each batch of %d rows is one padding-free row of at most %d tokens; rows kept apart by %s",
             cfg.trainer.per_device_train_batch_size, budget, attention_path(model.config._attn_implementation))
    return PackingCollator(rope_index_of(model), max_tokens=budget)


def attention_path(attn_implementation: str | None) -> str:
    """How the model's attention keeps packed rows apart, for the run log."""
    if attn_implementation and "flash" in attn_implementation:
        return f"{attn_implementation} varlen on cu_seq_lens"
    if attn_implementation == VARLEN:
        return "torch_varlen on cu_seq_lens (PyTorch's varlen kernel on a CUDA GPU in bf16/fp16, else SDPA per row)"
    return f"a block-diagonal causal mask ({attn_implementation}) from the restarting positions"


def rope_index_of(model) -> RopeIndex:
    """The model's own ``get_rope_index`` (through PEFT and the ``ForConditionalGeneration`` wrapper)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for candidate in (inner, getattr(inner, "model", None)):
        fn = getattr(candidate, "get_rope_index", None)
        if fn is not None:
            return fn
    raise ValueError(f"trainer.packing: {type(inner).__name__} has no get_rope_index (3D mrope positions); "
                     f"packing supports the families {', '.join(packable_families())}")


def row_positions(item: dict[str, torch.Tensor], rope_index: RopeIndex) -> torch.Tensor:
    """``[3, length]`` mrope positions of one encoded row, starting at 0, from its own image grids."""
    ids = item["input_ids"][None]
    if "image_grid_thw" not in item:  # text only: the three rows are the plain positions
        return torch.arange(ids.shape[1]).expand(3, -1)
    positions, _ = rope_index(input_ids=ids, mm_token_type_ids=item["mm_token_type_ids"][None],
                              image_grid_thw=item["image_grid_thw"])
    return positions[:, 0]


class PackingCollator:
    """Encoded rows -> one packed row (see the module docstring for what is kept equal to a padded batch).

    Args:
        rope_index: the model's ``get_rope_index`` (:func:`rope_index_of`); it reads only the model's config.
            Being a bound method it holds the model: DataLoader workers forked on Linux share it at no cost,
            a ``spawn`` start method would pickle the model into every worker.
        max_tokens: the token budget (``per_device_train_batch_size x data.max_length``); ``None``: unchecked.
    """

    def __init__(self, rope_index: RopeIndex, max_tokens: int | None = None):
        self.rope_index = rope_index
        self.max_tokens = max_tokens

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        lengths = [len(it["input_ids"]) for it in items]
        total = sum(lengths)
        if self.max_tokens is not None and total > self.max_tokens:
            raise ValueError(f"packed batch of {total} tokens > the budget of {self.max_tokens} "
                             f"(per_device_train_batch_size x data.max_length)")
        labels = []
        for it in items:
            row_labels = it["labels"].clone()
            row_labels[0] = IGNORE_INDEX  # the previous row's last token must not predict it
            labels.append(row_labels)
        text_positions = torch.cat([torch.arange(n) for n in lengths])
        mrope = torch.cat([row_positions(it, self.rope_index) for it in items], dim=1)
        cu_seq_lens = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        batch: dict[str, Any] = {
            "input_ids": torch.cat([it["input_ids"] for it in items])[None],
            "labels": torch.cat(labels)[None],
            "position_ids": torch.cat([text_positions[None], mrope])[:, None],  # [4, 1, total]
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max(lengths),
            "max_length_k": max(lengths),
            "use_cache": False,  # a KV cache would turn off the packed-sequence mask (eager, sdpa)
        }
        with_images = [it for it in items if "pixel_values" in it]
        if with_images:
            batch["pixel_values"] = torch.cat([it["pixel_values"] for it in with_images])
            batch["image_grid_thw"] = torch.cat([it["image_grid_thw"] for it in with_images])
            batch["mm_token_type_ids"] = torch.cat(
                [it.get("mm_token_type_ids", torch.zeros_like(it["input_ids"])) for it in items])[None]
        return batch
