"""Padding-free packing (trainer.packing): a packed batch trains exactly as the same rows padded.

The loss compared is the one the Trainer optimizes for these models: the mean over all label tokens of the batch
(Qwen-VL's ``accepts_loss_kwargs`` is False, so the Trainer passes no ``num_items_in_batch`` and the model's loss is
used as it is), checked here against that mean computed by hand.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from medvl.config import ConfigError
from medvl.data.dataset import IGNORE_INDEX, Collator, encode
from medvl.models.loading import load_model, load_processor
from medvl.training.checks import validate_training
from medvl.training.packing import PackingCollator, rope_index_of
from medvl.training.run import train

from .conftest import PACKABLE as FAMILIES
from .conftest import loss_and_grads, small_data_overrides


def mean_over_label_tokens(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every shifted label token of the batch, divided by their number."""
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return torch.nn.functional.cross_entropy(flat[keep], targets[keep], reduction="sum") / keep.sum()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("model_name", FAMILIES)
def test_packed_batch_has_the_loss_and_gradients_of_the_padded_batch(compose, small_synth, rows, model_name, attn):
    cfg = compose([f"model={model_name}", f"model.attn_implementation={attn}"])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    model.train()
    items = [encode(row, processor, small_synth) for row in rows]
    assert len({len(it["input_ids"]) for it in items}) > 2  # the padded batch really pads

    padded = Collator(processor.tokenizer.pad_token_id)(items)
    packed = PackingCollator(rope_index_of(model))(items)
    assert packed["input_ids"].shape == (1, sum(len(it["input_ids"]) for it in items))
    loss, logits, grads = loss_and_grads(model, padded)
    packed_loss, packed_logits, packed_grads = loss_and_grads(model, packed)

    torch.testing.assert_close(loss, mean_over_label_tokens(logits, padded["labels"]))
    torch.testing.assert_close(packed_loss, loss)
    real = torch.cat([logits[i, : len(it["input_ids"])] for i, it in enumerate(items)])
    torch.testing.assert_close(packed_logits[0], real, atol=2e-5, rtol=1e-5)  # every token sees what it saw padded
    assert packed_grads.keys() == grads.keys() and len(grads) > 50  # vision tower, merger and LLM all trained
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)

    # The comparison is sharp: without the restarting text positions the rows attend across their boundaries.
    leaking = {**packed, "position_ids": packed["position_ids"][1:]}
    assert not torch.allclose(loss_and_grads(model, leaking)[0], loss, atol=1e-3)


def test_mrope_positions_restart_per_row_from_each_rows_own_grid(compose, small_synth, rows):
    cfg = compose(["model=tiny"])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    items = [encode(row, processor, small_synth) for row in rows]
    packed = PackingCollator(rope_index_of(model))(items)
    position_ids = packed["position_ids"][:, 0]
    start = 0
    for item in items:
        n = len(item["input_ids"])
        alone = Collator(processor.tokenizer.pad_token_id)([item])
        want, _ = model.model.get_rope_index(alone["input_ids"], alone.get("mm_token_type_ids",
                                             torch.zeros_like(alone["input_ids"])), alone.get("image_grid_thw"))
        torch.testing.assert_close(position_ids[1:, start : start + n], want[:, 0])
        assert position_ids[0, start : start + n].tolist() == list(range(n))
        start += n
    assert packed["cu_seq_lens_q"].tolist() == [0, *torch.tensor([len(it["input_ids"]) for it in items]).cumsum(0)]
    assert packed["max_length_q"] == max(len(it["input_ids"]) for it in items)
    # Each image keeps its own grid: the vision tower's cu_seqlens come from image_grid_thw, one block per image.
    assert packed["image_grid_thw"].shape[0] == sum(len(it.get("image_grid_thw", [])) for it in items)


def test_a_row_boundary_label_is_never_a_target(compose, small_synth, rows):
    """Were a row's first token labelled, the previous row's last token would learn to predict it."""
    cfg = compose(["model=tiny"])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    items = [encode(row, processor, small_synth) for row in rows[:3]]
    for item in items:
        item["labels"][0] = item["input_ids"][0]
    padded = Collator(processor.tokenizer.pad_token_id)(items)
    packed = PackingCollator(rope_index_of(model))(items)
    starts = packed["cu_seq_lens_q"][:-1].long()
    assert (packed["labels"][0, starts] == IGNORE_INDEX).all()
    torch.testing.assert_close(model(**packed).loss, model(**padded).loss)


def test_packed_batch_over_the_token_budget_is_refused(compose, small_synth, rows):
    cfg = compose(["model=tiny"])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    items = [encode(row, processor, small_synth) for row in rows[:2]]
    total = sum(len(it["input_ids"]) for it in items)
    assert PackingCollator(rope_index_of(model), max_tokens=total)(items)["input_ids"].shape[1] == total
    with pytest.raises(ValueError, match=f"packed batch of {total} tokens > the budget of {total - 1}"):
        PackingCollator(rope_index_of(model), max_tokens=total - 1)(items)


@pytest.mark.gpu
@pytest.mark.parametrize("model_name", FAMILIES)
def test_flash_attention_varlen_equals_padded(compose, small_synth, rows, model_name):
    """flash_attention_2 runs the packed row through flash_attn_varlen_func on cu_seq_lens (bf16: looser bounds)."""
    pytest.importorskip("flash_attn")
    cfg = compose([f"model={model_name}", "model.attn_implementation=flash_attention_2", "model.dtype=bfloat16"])
    processor, model = load_processor(cfg.model), load_model(cfg.model, device="cuda")
    model.train()
    items = [encode(row, processor, small_synth) for row in rows]
    on_gpu = lambda batch: {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}  # noqa: E731
    loss, _, grads = loss_and_grads(model, on_gpu(Collator(processor.tokenizer.pad_token_id)(items)))
    packed_loss, _, packed_grads = loss_and_grads(model, on_gpu(PackingCollator(rope_index_of(model))(items)))
    torch.testing.assert_close(packed_loss, loss, atol=2e-2, rtol=1e-2)
    for name, grad in grads.items():
        assert (packed_grads[name] - grad).float().norm() <= 0.05 * grad.float().norm() + 1e-4, name


def varlen_reference(module, query, key, value, attention_mask, *, cu_seq_lens_q=None, max_length_q=None,
                     is_causal=None, **kwargs):
    """What flash_attn_varlen_func computes, in sdpa: causal attention inside each ``cu_seq_lens`` segment.

    The text layers must receive the packed batch's ``cu_seq_lens`` (else this fails); the vision tower
    (``is_causal=False``, its images already split by its own ``cu_seqlens``) and the padded batch run plain sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = module.is_causal if is_causal is None else is_causal
    if not causal or attention_mask is not None:  # the vision tower, or the padded batch
        return sdpa_attention_forward(module, query, key, value, attention_mask, is_causal=causal, **kwargs)
    assert cu_seq_lens_q is not None and query.shape[0] == 1, "packed text attention without cu_seq_lens"
    bounds = cu_seq_lens_q.tolist()
    assert max_length_q == max(b - a for a, b in zip(bounds, bounds[1:]))
    pieces = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                     is_causal=True, **kwargs)[0] for a, b in zip(bounds, bounds[1:])]
    return torch.cat(pieces, dim=1), None


@pytest.mark.parametrize("model_name", FAMILIES)
def test_flash_style_varlen_kwargs_reach_every_text_layer(compose, small_synth, rows, model_name):
    """The flash_attention_2 path on the CPU: an attention that, like flash_attn_varlen_func, knows the rows only
    from cu_seq_lens_q/k (no mask) gives the padded batch's loss and gradients. What it cannot show is the CUDA
    kernel itself (test_flash_attention_varlen_equals_padded, gpu)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register("varlen_reference", varlen_reference)
    AttentionMaskInterface.register("varlen_reference", flash_attention_mask)  # no mask without padding, as flash
    cfg = compose([f"model={model_name}", "model.attn_implementation=sdpa"])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    model.train()
    items = [encode(row, processor, small_synth) for row in rows]
    loss, _, grads = loss_and_grads(model, Collator(processor.tokenizer.pad_token_id)(items))
    model.set_attn_implementation("varlen_reference")
    packed = PackingCollator(rope_index_of(model))(items)
    packed_loss, _, packed_grads = loss_and_grads(model, {**packed, "position_ids": packed["position_ids"][1:]})
    torch.testing.assert_close(packed_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attn", ["sdpa", "torch_varlen"])
def test_a_packed_training_run_follows_the_padded_run(compose, small_synth, tiny_dir, tmp_path, monkeypatch, attn,
                                                      caplog):
    """medvl.train with trainer.packing=true: the same rows per step, one packed row each, and the same losses and
    gradient norms step after step as the padded run (LoRA dropout off: its masks depend on the batch's shape),
    with the rows kept apart by SDPA's mask or by torch_varlen (one SDPA call per row on the CPU); the log says which.
    ``tiny_dir``: the tiny model is built before either run, as building it draws from the seeded RNG that then
    initialises LoRA's A matrices."""
    packed_shapes, collate = [], PackingCollator.__call__

    def recording(self, items):
        batch = collate(self, items)
        packed_shapes.append((len(items), tuple(batch["input_ids"].shape)))
        return batch

    monkeypatch.setattr(PackingCollator, "__call__", recording)
    steps = ["trainer.max_steps=3", "trainer.per_device_train_batch_size=8", "trainer.logging_steps=1",
             "trainer.save_steps=1000", "lora.dropout=0", f"model.attn_implementation={attn}",
             *small_data_overrides(small_synth)]
    logged, tokens_seen = {}, {}
    for packing in (False, True):
        out = tmp_path / f"packing-{packing}"
        with caplog.at_level(logging.INFO, logger="medvl.training.packing"):
            train(compose([*steps, f"trainer.packing={str(packing).lower()}"], output_dir=out))
        state = json.loads((out / "trainer_state.json").read_text())
        logged[packing] = [(h["loss"], h["grad_norm"]) for h in state["log_history"] if "loss" in h]
        tokens_seen[packing] = state["num_input_tokens_seen"]  # the monitor's tokens/s: no padding counted
    assert len(logged[True]) == 3 and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert f"rows kept apart by {attn} " in caplog.text or f"rows kept apart by a block-diagonal causal mask ({attn})" \
        in caplog.text
    assert tokens_seen[True] == tokens_seen[False] > 0
    assert len(packed_shapes) >= 3 and all(n == 8 and shape[0] == 1 for n, shape in packed_shapes)
    for (loss, norm), (packed_loss, packed_norm) in zip(logged[False], logged[True]):
        assert packed_loss == pytest.approx(loss, abs=2e-4) and packed_norm == pytest.approx(norm, rel=1e-3)


def test_packing_a_family_without_mrope_positions_is_refused_at_start_up(compose):
    for name in FAMILIES:
        validate_training(compose([f"model={name}", "trainer.packing=true"]))
    with pytest.raises(ConfigError, match="trainer.packing=true: model.family=gemma3 is not supported"):
        validate_training(compose(["model=tiny_gemma3", "trainer.packing=true"]))


def test_packing_rows_longer_than_max_length_are_refused_at_start_up(compose, small_synth, tmp_path, monkeypatch):
    """One line before any weights load: a packed row holds whole rows only, so none may exceed data.max_length."""
    import medvl.training.run as run

    monkeypatch.setattr(run, "load_for_training", lambda *a: pytest.fail("weights loaded"))
    cfg = compose(["trainer.packing=true", "data.max_length=20", *small_data_overrides(small_synth)])
    with pytest.raises(ConfigError, match=r"rows are longer than max_length=20 .*raise data.max_length"):
        train(cfg)
