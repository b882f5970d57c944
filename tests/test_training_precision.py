"""The dtypes training runs in: float32 with ``trainer.bf16=false``, float32 trainable weights in a bf16 model under
mixed precision (validation included), and DeepSpeed or no autocast leaving the loaded dtype alone."""

from __future__ import annotations

import math

import pytest
import torch

from medvl.config import validate
from medvl.training.run import build_model


def _training_dtype(compose, monkeypatch, overrides: list[str]) -> str:
    from medvl.training import run

    class Loaded(Exception):
        pass

    def fake_load(model_cfg, path=None, **kwargs):
        raise Loaded(str(model_cfg.dtype))

    monkeypatch.setattr("medvl.models.loading.load_model", fake_load)
    monkeypatch.setattr(run, "load_processor", lambda *a, **k: None)
    with pytest.raises(Loaded) as got:
        run.build_model(compose(overrides))
    return str(got.value)


def test_bf16_off_means_float32_weights(compose, monkeypatch, tiny_dir):
    # dtype=auto would load bf16 weights on a bf16 GPU even with trainer.bf16=false ("false forces float32").
    assert _training_dtype(compose, monkeypatch, ["model.dtype=auto", "trainer.bf16=false"]) == "float32"
    assert _training_dtype(compose, monkeypatch, ["model.dtype=auto"]) == "auto"
    assert _training_dtype(compose, monkeypatch, ["model.dtype=bfloat16", "trainer.bf16=false"]) == "bfloat16"


@pytest.fixture
def bf16_gpu(monkeypatch):
    """What build_model sees on a bf16 GPU with trainer.bf16 on (the weights themselves stay on the CPU)."""
    from medvl.training import run

    monkeypatch.setattr(run, "mixed_precision_bf16", lambda cfg: bool(cfg.trainer.bf16))


@pytest.mark.parametrize("overrides", [["stage=align", "lora=none"], ["stage=instruct", "stage.merger=full"]])
def test_trainable_weights_stay_float32_when_the_model_loads_in_bf16(compose, tiny_dir, small_synth, overrides,
                                                                     bf16_gpu):
    from medvl.data.dataset import Collator, encode
    from medvl.data.format import read_jsonl

    cfg = compose([*overrides, "model.dtype=bfloat16"])
    validate(cfg)
    processor, model = build_model(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert any(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    # Mixed precision as the Trainer runs it: the forward in bf16 under autocast, float32 gradients.
    rows = read_jsonl(small_synth / "train.jsonl")[:2]
    batch = Collator(processor.tokenizer.pad_token_id)([encode(r, processor, small_synth) for r in rows])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)


def test_deepspeed_runs_leave_dtypes_to_deepspeed(compose, tiny_dir, bf16_gpu):
    cfg = compose(["stage=align", "lora=none", "model.dtype=bfloat16", "deepspeed=zero2"])
    validate(cfg)
    _, model = build_model(cfg)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_validation_between_steps_runs_on_a_model_with_float32_trainable_weights(compose, tiny_dir, small_synth,
                                                                                  tmp_path, bf16_gpu):
    from medvl.data.format import read_jsonl
    from medvl.training.callbacks import GenerationEvalCallback

    cfg = compose(["stage=align", "lora=none", "model.dtype=bfloat16"])
    validate(cfg)
    processor, model = build_model(cfg)
    callback = GenerationEvalCallback(processor, read_jsonl(small_synth / "validation.jsonl")[:4], small_synth,
                                      eval_steps=1, system_prompt=None, batch_size=2, max_new_tokens=4,
                                      metrics=["exact_match"], metric_for_best="perplexity",
                                      best_dir=tmp_path / "best")
    tables = callback.run(model, step=1)
    assert tables["overall"]["count"] == 4 and math.isfinite(tables["overall"]["perplexity"])


def test_without_mixed_precision_a_bf16_model_trains_as_loaded(compose, tiny_dir):
    # No autocast around the forward (CPU, or trainer.bf16=false): float32 weights would meet bf16 activations.
    cfg = compose(["stage=align", "lora=none", "model.dtype=bfloat16"])
    validate(cfg)
    _, model = build_model(cfg)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
