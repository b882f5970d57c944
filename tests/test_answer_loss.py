"""The training loss with the output head at the answer positions only equals the model's own loss."""

from __future__ import annotations

import json

import pytest
import torch

import medvl.training.loss as loss_mod
from medvl.data.dataset import IGNORE_INDEX, Collator, encode
from medvl.models.loading import load_model, load_processor
from medvl.training.loss import answer_loss, answer_loss_applies
from medvl.training.packing import PackingCollator, rope_index_of
from medvl.training.run import train

from .conftest import small_data_overrides

FAMILIES = ["tiny", "tiny25", "tiny3", "tiny3_moe", "tiny_gemma3"]


def losses_and_grads(model, batch, **kwargs):
    results = []
    for compute in (lambda: model(**batch).loss, lambda: answer_loss(model, batch, **kwargs)):
        model.zero_grad()
        loss = compute()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    return results


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("model_name", FAMILIES)
def test_the_answer_position_loss_is_the_models_own_loss(compose, small_synth, rows, model_name, packed):
    if packed and model_name == "tiny_gemma3":
        pytest.skip("Gemma 3 is not packed (no mrope positions)")
    cfg = compose([f"model={model_name}"])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    model.train()
    items = [encode(row, processor, small_synth) for row in rows]
    batch = (PackingCollator(rope_index_of(model)) if packed else Collator(processor.tokenizer.pad_token_id))(items)
    (own, own_grads), (answer, answer_grads) = losses_and_grads(model, batch)
    torch.testing.assert_close(answer, own)
    assert answer_grads.keys() == own_grads.keys() and own_grads
    for name, grad in own_grads.items():
        torch.testing.assert_close(answer_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_the_head_sees_only_the_positions_before_an_answer_token(compose, small_synth, rows):
    cfg = compose([])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    batch = Collator(processor.tokenizer.pad_token_id)([encode(row, processor, small_synth) for row in rows])
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        answer_loss(model, batch)
    answer_positions = (batch["labels"][:, 1:] != IGNORE_INDEX).any(dim=0).sum()
    assert seen == [torch.Size([len(rows), int(answer_positions), model.config.text_config.hidden_size])]
    assert answer_positions < batch["labels"].shape[1] - 1  # fewer than every position of the batch


def test_a_sum_over_the_accumulated_label_count_when_the_model_takes_it(compose, small_synth, rows):
    cfg = compose([])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    batch = Collator(processor.tokenizer.pad_token_id)([encode(row, processor, small_synth) for row in rows])
    count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    with torch.no_grad():
        mean, summed = answer_loss(model, batch), answer_loss(model, batch, num_items_in_batch=torch.tensor(3 * count))
    torch.testing.assert_close(summed * 3, mean)


def test_a_mixture_of_experts_with_its_router_loss_keeps_the_models_own_loss(compose):
    cfg = compose(["model=tiny3_moe"])
    model = load_model(cfg.model)
    assert answer_loss_applies(model)
    model.config.text_config.output_router_logits = True  # its load-balancing loss joins the LM loss
    assert not answer_loss_applies(model)


def test_a_training_run_with_the_answer_head_follows_the_models_own_loss(compose, small_synth, tiny_dir, tmp_path,
                                                                         monkeypatch):
    """medvl.train's steps (losses and gradient norms) with the head at the answer positions and with the model's
    own loss (logits everywhere) are the same, padded and packed."""
    steps = ["trainer.max_steps=3", "trainer.per_device_train_batch_size=4", "trainer.logging_steps=1",
             "trainer.save_steps=1000", "lora.dropout=0", *small_data_overrides(small_synth)]
    logged, calls = {}, []
    real = loss_mod.answer_loss
    monkeypatch.setattr(loss_mod, "answer_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    for packing in ("false", "true"):
        for answer_head in (True, False):
            monkeypatch.setattr(loss_mod, "answer_loss_applies", lambda model, on=answer_head: on)
            out = tmp_path / f"{packing}-{answer_head}"
            train(compose([*steps, f"trainer.packing={packing}"], output_dir=out))
            history = json.loads((out / "trainer_state.json").read_text())["log_history"]
            logged[packing, answer_head] = [(h["loss"], h["grad_norm"]) for h in history if "loss" in h]
        assert len(logged[packing, True]) == 3
        for (loss, norm), (a_loss, a_norm) in zip(logged[packing, False], logged[packing, True]):
            assert a_loss == pytest.approx(loss, abs=1e-5) and a_norm == pytest.approx(norm, rel=1e-4)
    assert len(calls) == 6  # the answer head ran in the answer-head runs' steps (3 each), not in the others


@pytest.mark.parametrize("model_name", ["tiny25", "tiny3"])
def test_gradient_accumulation_weighs_tokens_as_one_batch_in_every_family(compose, small_synth, tmp_path,
                                                                          model_name):
    """Two micro-batches of 2 rows step as one batch of the same 4 rows: the loss over all their label tokens.
    transformers marks Qwen2.5-VL and Qwen3-VL as not taking the label count, and would average the two
    micro-batches' means (rows with long answers would then weigh less)."""
    steps = ["trainer.max_steps=2", "trainer.logging_steps=1", "trainer.save_steps=1000", "trainer.warmup_ratio=0",
             "trainer.max_grad_norm=1000", "lora.dropout=0", f"model={model_name}", *small_data_overrides(small_synth)]
    logged = {}
    for batch, accumulate in ((4, 1), (2, 2)):
        out = tmp_path / f"{batch}x{accumulate}"
        train(compose([*steps, f"trainer.per_device_train_batch_size={batch}",
                       f"trainer.gradient_accumulation_steps={accumulate}"], output_dir=out))
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        logged[accumulate] = [(h["loss"], h["grad_norm"]) for h in history if "loss" in h]
    assert len(logged[1]) == len(logged[2]) == 2
    for (loss, norm), (a_loss, a_norm) in zip(logged[1], logged[2]):
        assert a_loss == pytest.approx(loss, rel=1e-4) and a_norm == pytest.approx(norm, rel=1e-4)
