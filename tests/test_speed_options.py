"""Speed and memory options (medvl.models.speed): model.attn_implementation=auto, trainer.liger, lora.qlora, lora.dora
and gradient checkpointing's per-model default. GPU-only options are refused in one line before any model loads;
where a GPU or package is missing here, what medvl calls is checked with a stand-in (a fake liger_kernel module, a
recorder for peft's k-bit preparation)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from medvl.config import ConfigError, group_choices, validate
from medvl.models import speed
from medvl.preflight import preflight
from medvl.training import run
from medvl.training.checks import validate_training

from .conftest import small_data_overrides

#: Every model group but the tiny offline ones; those below 7B train without gradient checkpointing by default.
REAL_PRESETS = [name for name in group_choices("model") if not name.startswith("tiny")]
BELOW_7B = {"2b", "qwen2_5_vl_3b", "qwen3_vl_2b", "qwen3_vl_4b", "medgemma_4b"}


@pytest.fixture
def gpu_machine(monkeypatch):
    """A machine that looks as if it had a CUDA GPU, as far as the start-up checks ask."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def installed(monkeypatch, present: set[str]):
    """``importlib.util.find_spec`` finds the optional packages in ``present`` and none of the others."""
    real = importlib.util.find_spec
    optional = {"flash_attn", "liger_kernel", "bitsandbytes"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (object() if name in present else None)
                        if name in optional else real(name, *a))


def refusal(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        preflight("train", argv)
    return str(exc.value)


# --- attention ---------------------------------------------------------------------------------------------------

def test_auto_attention_is_sdpa_without_flash_attn_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="medvl.models.speed"):
        assert speed.resolve_attn_implementation("auto", torch.bfloat16) == "sdpa"
    assert "model.attn_implementation=auto: sdpa (" in caplog.text


def test_auto_attention_takes_flash_attention_2_on_a_gpu_with_flash_attn_in_half_precision(monkeypatch, gpu_machine,
                                                                                            caplog):
    installed(monkeypatch, {"flash_attn"})
    with caplog.at_level(logging.INFO, logger="medvl.models.speed"):
        assert speed.resolve_attn_implementation("auto", torch.bfloat16) == "flash_attention_2"
        assert speed.resolve_attn_implementation("auto", "float16") == "flash_attention_2"
        # FlashAttention runs in bf16/fp16 only: float32 weights keep SDPA.
        assert speed.resolve_attn_implementation("auto", torch.float32) == "sdpa"
    assert "auto: flash_attention_2" in caplog.text and "weights load in float32" in caplog.text
    assert speed.resolve_attn_implementation("eager", torch.bfloat16) == "eager"


def test_auto_attention_keeps_medgemma_off_flash_attention_2(monkeypatch, gpu_machine, compose, caplog):
    """transformers' Gemma 3 does not run under FlashAttention 2 (it would drop the bidirectional mask over the
    image tokens, and from_pretrained refuses it): auto takes SDPA for it, on a GPU with flash_attn too, and an
    explicit flash_attention_2 is refused at start-up."""
    from medvl.models.loading import attention_of

    installed(monkeypatch, {"flash_attn"})
    with caplog.at_level(logging.INFO, logger="medvl.models.speed"):
        assert speed.resolve_attn_implementation("auto", torch.bfloat16, family="gemma3") == "sdpa"
    assert "transformers' gemma3 model does not run under FlashAttention 2" in caplog.text
    assert speed.resolve_attn_implementation("auto", torch.bfloat16, family="qwen2_vl") == "flash_attention_2"
    assert attention_of(compose(["model=medgemma_4b", "model.dtype=bfloat16"]).model) == "sdpa"
    assert attention_of(compose(["model=7b", "model.dtype=bfloat16"]).model) == "flash_attention_2"
    assert refusal(["model=medgemma_4b", "model.attn_implementation=flash_attention_2"]) == (
        "medvl: model.attn_implementation=flash_attention_2 is invalid: transformers' gemma3 model does not run "
        "under FlashAttention 2; use auto (SDPA for it) or sdpa")


def test_the_loader_passes_the_resolved_attention_to_transformers(compose, tiny_dir):
    from medvl.models.loading import load_model

    cfg = compose()
    assert cfg.model.attn_implementation == "auto"
    assert load_model(cfg.model).config._attn_implementation == "sdpa"


@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_real_presets_use_auto_attention_and_checkpoint_from_7b_up(compose, preset):
    cfg = compose([f"model={preset}"])
    assert cfg.model.attn_implementation == "auto"
    small = preset in BELOW_7B
    assert run.gradient_checkpointing(cfg) is not small
    assert run.gradient_checkpointing(compose([f"model={preset}", f"trainer.gradient_checkpointing={small}"])) is small


def test_unknown_attention_and_missing_flash_attn_are_one_line(monkeypatch):
    assert refusal(["model.attn_implementation=fast"]) == (
        "medvl: model.attn_implementation=fast is invalid: must be one of: auto, sdpa, eager, flash_attention_2, "
        "flash_attention_3, flex_attention, torch_varlen")
    installed(monkeypatch, set())
    assert refusal(["model.attn_implementation=flash_attention_2"]).startswith(
        "medvl: model.attn_implementation=flash_attention_2 but flash_attn is not installed; install flash-attn, or "
        "set model.attn_implementation=auto")


# --- refusals before loading ----------------------------------------------------------------------------------

@pytest.mark.parametrize("option, expected", [
    ("trainer.liger=true", "medvl: trainer.liger=true needs a CUDA GPU (Liger's kernels are Triton GPU kernels) and "
                           "none is visible; set trainer.liger=false"),
    ("lora.qlora=true", "medvl: lora.qlora=true needs a CUDA GPU (bitsandbytes' 4-bit matrix products) and none is "
                        "visible; set lora.qlora=false"),
])
def test_gpu_options_on_the_cpu_are_one_line_at_start_up(option, expected):
    msg = refusal([option])
    assert msg == expected and "\n" not in msg


@pytest.mark.parametrize("option, extra", [("trainer.liger=true", "liger"), ("lora.qlora=true", "qlora")])
def test_gpu_options_without_their_package_name_the_extra(monkeypatch, gpu_machine, option, extra):
    installed(monkeypatch, set())
    assert f"is not installed; pip install 'medvl[{extra}]', or set {option.split('=')[0]}=false" in refusal([option])
    installed(monkeypatch, {"liger_kernel", "bitsandbytes"})
    preflight("train", [option])  # with the package on a GPU machine: accepted


@pytest.mark.parametrize("overrides, expected", [
    (["lora=none"], "lora.qlora=true puts LoRA adapters on a 4-bit base, but this config trains no LoRA adapters"),
    (["stage.vision=full"], "lora.qlora=true: stage.vision=full would train 4-bit weights, which cannot be trained"),
    (["deepspeed=zero3"], "lora.qlora=true with deepspeed=zero3 (ZeRO-3) is not supported; use deepspeed=zero2"),
])
def test_qlora_without_adapters_or_with_a_full_component_is_refused(compose, gpu_machine, overrides, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate_training(compose(["lora.qlora=true", *overrides]))


def test_train_refuses_liger_on_the_cpu_before_the_model_loads(compose, small_synth, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the start-up checks failed")

    monkeypatch.setattr("medvl.models.loading.load_model", never)
    monkeypatch.setattr(run, "load_processor", never)
    with pytest.raises(ConfigError, match="trainer.liger=true needs a CUDA GPU"):
        run.train(compose([*small_data_overrides(small_synth), "trainer.max_steps=1", "trainer.liger=true"]))


# --- what medvl calls -----------------------------------------------------------------------------------------

def test_liger_goes_into_the_loaded_model_before_lora_wraps_it(compose, monkeypatch):
    from peft import PeftModel

    from medvl.models.loading import load_model

    calls = []
    monkeypatch.setattr(run, "apply_liger", lambda model, family: calls.append((model, family, type(model).__name__)))
    cfg = compose(["model=tiny3", "trainer.liger=true"])
    validate(cfg)
    base = load_model(cfg.model)
    model = run.setup_for_training(base, cfg)
    assert calls == [(base, "qwen3_vl", "Qwen3VLForConditionalGeneration")] and isinstance(model, PeftModel)


def test_qlora_loads_nf4_with_double_quantization_and_bf16_compute(compose):
    assert speed.quantization_config(compose()) is None
    bnb = speed.quantization_config(compose(["lora.qlora=true"]))
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16


def test_qlora_prepares_the_quantized_model_before_adding_adapters(compose, tiny_dir, monkeypatch):
    from medvl.models.loading import load_model

    seen = []
    monkeypatch.setattr(run, "prepare_quantized", lambda model: seen.append(
        (any(p.requires_grad for p in model.parameters()), type(model).__name__)) or model)
    cfg = compose(["lora.qlora=true", "model.gradient_checkpointing=true"])
    validate(cfg)
    model = run.setup_for_training(load_model(cfg.model), cfg)
    assert seen == [(True, "Qwen2VLForConditionalGeneration")]  # before LoRA froze it
    assert model.get_base_model().is_gradient_checkpointing  # turned on once, after the adapters


def test_dora_with_gradient_checkpointing_trains_magnitudes_and_directions(compose, small_synth, tmp_path, caplog):
    out = tmp_path / "dora"
    cfg = compose([*small_data_overrides(small_synth), "trainer.max_steps=3", "trainer.save_steps=1000",
                   "lora.dora=true", "model.gradient_checkpointing=true"], output_dir=out)
    with caplog.at_level(logging.INFO, logger="medvl.training.run"):
        run.train(cfg)
    assert "Gradient checkpointing: on (model=tiny's default)" in caplog.text
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    magnitudes = {k: v for k, v in weights.items() if "lora_magnitude_vector" in k}
    assert magnitudes and len(magnitudes) == len([k for k in weights if "lora_A" in k])
    # DoRA's magnitude starts as the weight's column norms; training moved it, and B away from zero.
    from medvl.models.loading import load_model

    base = dict(load_model(cfg.model).named_parameters())
    name, magnitude = next(iter(magnitudes.items()))
    module = name.removeprefix("base_model.model.").split(".lora_magnitude_vector")[0]
    assert not torch.allclose(magnitude, base[f"{module}.weight"].norm(dim=1), atol=1e-6)
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)


# --- on a GPU with the extras installed (skipped here) -------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("option, package, model_name", [
    ("lora.qlora=true", "bitsandbytes", "tiny"),
    # Liger's numbers per family are compared in tests/test_liger.py; here whole runs of three kinds of model.
    *(("trainer.liger=true", "liger_kernel", name) for name in ("tiny", "tiny3_moe", "tiny_gemma3")),
])
def test_gpu_options_train_the_tiny_model(compose, small_synth, tmp_path, option, package, model_name):
    pytest.importorskip(package)
    out = tmp_path / "run"
    cfg = compose([*small_data_overrides(small_synth), "trainer.max_steps=3", "trainer.save_steps=1000",
                   "trainer.logging_steps=1", "model.dtype=bfloat16", f"model={model_name}", option], output_dir=out)
    run.train(cfg)
    losses = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)


@pytest.mark.parametrize("model_name", ["tiny", "tiny25"])
def test_checkpointing_keeps_the_frozen_vision_tower_out_of_backward(compose, small_synth, model_name):
    """Gradient checkpointing as setup_for_training turns it on (non-reentrant): the LoRA gradients equal those of
    the same model without checkpointing, and the frozen vision tower's output carries no gradient (its backward
    would be work and activation memory for nothing)."""
    from medvl.data.dataset import Collator, encode
    from medvl.data.format import read_jsonl
    from medvl.models.loading import load_model, load_processor

    cfg = compose([f"model={model_name}", "stage=instruct", "lora=attn_ffn", "lora.dropout=0"])
    validate_training(cfg)
    processor = load_processor(cfg.model)
    batch = Collator(processor.tokenizer.pad_token_id)(
        [encode(row, processor, small_synth) for row in read_jsonl(small_synth / "train.jsonl")[:3]])
    grads, vision_grad = {}, {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg.trainer.gradient_checkpointing = checkpointing
        model = run.setup_for_training(load_model(cfg.model), cfg)
        assert model.get_base_model().is_gradient_checkpointing is checkpointing
        model.train()
        visual = model.get_base_model().model.visual
        assert not visual.patch_embed._forward_hooks  # no input-gradient hook on the vision tower
        visual.register_forward_hook(lambda module, args, out, key=checkpointing: vision_grad.update(
            {key: (out[0] if isinstance(out, tuple) else getattr(out, "pooler_output", out)).requires_grad}))
        model(**batch).loss.backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert vision_grad == {False: False, True: False}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, msg=name)
