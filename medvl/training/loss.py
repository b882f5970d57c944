"""The training loss with the output head run only where there is something to predict.

A VQA row's loss is on its answer: a few tokens among a thousand or more (the image's tokens, the question). The
models' own forward computes the logits at every position and upcasts them to float32 for the cross-entropy: for
a Qwen vocabulary of 152k entries and a batch of 8 rows of 1300 tokens, 6 GB of float32 logits and as much again
for their gradient, and the head's matrix product for every token (about 7% of a 7B step's work).

:func:`answer_loss` asks the model for the logits at the positions whose next token is a label in some row of
the batch (transformers' ``logits_to_keep`` with a tensor of positions) and computes the same cross-entropy there:
the mean over all label tokens of the batch (or the sum over ``num_items_in_batch`` for a model that takes it), in
float32, as transformers' ``ForCausalLMLoss`` does. The model's forward is still what runs (through DDP, DeepSpeed
and PEFT as before); only the head's input is cut.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medvl.data.dataset import IGNORE_INDEX


def _unwrapped(model):
    """The transformers model under DDP/DeepSpeed (``.module``) and PEFT (``get_base_model``)."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_loss_applies(model) -> bool:
    """Whether :func:`answer_loss` equals the model's own loss: not for a mixture of experts that adds its
    router's load-balancing loss to the language-model loss (``output_router_logits``)."""
    config = _unwrapped(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return not getattr(text, "output_router_logits", False)


def answer_loss(model, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """The model's causal-LM loss on ``inputs`` (with ``labels``), the head run at the answer positions only."""
    labels = inputs["labels"]
    targets = labels[:, 1:]  # position p predicts the token at p + 1
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=positions)
    logits = outputs.logits.float()
    chosen = targets[:, positions].to(logits.device)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chosen.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction=reduction)
    if num_items_in_batch is not None:
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
    return loss
