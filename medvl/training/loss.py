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

With ``trainer.liger=true`` the head and the cross-entropy become one of Liger's fused linear cross-entropy calls
(:func:`fused_head`): the model returns the hidden states the head would read (its head passes them through), the
label tokens among them are taken, and Liger computes the head's product and the cross-entropy a chunk of tokens at
a time, with the gradient, so that neither the logits nor their float32 copy and gradient are ever whole in memory.
For rows with long answers (LLaVA-Med's multi-turn instructions, captions) that is several GB of a 7B step: 8 rows
of 500 answer tokens hold 4,000 x 152k logits, 2.4 GB in float32 alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.data.dataset import IGNORE_INDEX

log = logging.getLogger(__name__)

#: ``(hidden [N, H], weight [V, H], targets [N], reduction) -> loss``: the output head and cross-entropy in one call.
FusedHead = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], torch.Tensor]


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


def answer_loss(model, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None,
                fused: FusedHead | None = None) -> torch.Tensor:
    """The model's causal-LM loss on ``inputs`` (with ``labels``), the head run at the answer positions only
    (``fused``: by that function, on the hidden states of the label tokens)."""
    labels = inputs["labels"]
    targets = labels[:, 1:]  # position p predicts the token at p + 1
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    reduction = "sum" if num_items_in_batch is not None else "mean"
    if fused is None:
        logits = model(**model_inputs, logits_to_keep=positions).logits.float()
        chosen = targets[:, positions].to(logits.device)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chosen.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction=reduction)
    else:
        head = _unwrapped(model).get_output_embeddings()
        with _passing_through(head):
            hidden = model(**model_inputs, logits_to_keep=positions).logits  # what the head would have read
        chosen = targets[:, positions].to(hidden.device)
        label = chosen != IGNORE_INDEX  # the union of the rows' positions: each row's own labels only
        if not label.any():  # nothing to predict (Liger divides by the token count): no loss, the graph kept
            return hidden.sum() * 0.0
        loss = fused(hidden[label], head.weight, chosen[label], reduction)
    if num_items_in_batch is not None:
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
    return loss


@contextmanager
def _passing_through(head: nn.Module):
    """Inside, ``head`` returns its input; what its ``forward`` was (a hook's wrapper included) is back on leaving,
    also after an error."""
    own = vars(head).get("forward")
    head.forward = _identity
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def fused_head(model, liger: bool, dtype: torch.dtype | None = None) -> FusedHead | None:
    """Liger's fused linear cross-entropy for ``model``'s training loss when ``liger`` (``trainer.liger``) and the
    head is one it can stand in for; None otherwise, with the reason in the run log. It stands in for a frozen plain
    linear head without bias, in a model that adds nothing to its logits (softcapping) or its loss (a router's),
    outside DeepSpeed ZeRO-3 (which holds the head's weight only while the head itself runs).

    ``dtype``: the mixed-precision compute dtype (bf16 training). The loss runs outside the forward's autocast, so
    the head's product is done in it explicitly, as autocast did for the head: QLoRA's preparation keeps the head in
    float32, and the kernel would otherwise multiply in float32. Without it, the head's own dtype."""
    if not liger:
        return None
    reason = _not_fusable(model)
    if reason:
        log.info("trainer.liger=true: the loss keeps the output head at the answer positions, not Liger's fused "
                 "linear cross-entropy: %s", reason)
        return None
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    log.info("trainer.liger=true: the loss is Liger's fused linear cross-entropy over the answer tokens")

    def head_and_loss(hidden, weight, targets, reduction):
        compute = dtype or weight.dtype
        return liger_fused_linear_cross_entropy(hidden.to(compute), weight.to(compute), targets,
                                                ignore_index=IGNORE_INDEX, reduction=reduction)

    return head_and_loss


def _not_fusable(model) -> str | None:
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    base = _unwrapped(model)
    head = base.get_output_embeddings()
    text = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if not answer_loss_applies(model):
        return "the model adds its router's load-balancing loss"
    if type(head) is not nn.Linear:
        kind = f"{type(head).__module__}.{type(head).__qualname__}"
        return f"the head is a {kind}, not a plain nn.Linear (adapted or fully trained)"
    if head.bias is not None or head.weight.requires_grad:
        return "the head has a bias" if head.bias is not None else "the head is trained"
    if getattr(text, "final_logit_softcapping", None) is not None:
        return "the model softcaps its logits"
    if is_deepspeed_zero3_enabled():
        return "DeepSpeed ZeRO-3 gathers the head's weight only while the head runs"
    return None
