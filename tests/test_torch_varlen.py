"""model.attn_implementation=torch_varlen: packed rows through PyTorch's own varlen kernel, without flash_attn.

On the CPU the kernel itself cannot run (it is CUDA only). What runs here: the per-row SDPA path, and the kernel call
with a stand-in for ``torch.nn.attention.varlen.varlen_attn`` in each keyword form PyTorch releases have had, which
computes causal attention per ``cu_seq`` segment in the kernel's own ``[total, heads, head_dim]`` layout: the model's
packed loss and gradients must equal the padded batch's through it. The real kernel: the gpu-marked test.
"""

from __future__ import annotations

import logging
import types

import pytest
import torch

import medvl.models.speed as speed
import medvl.models.varlen as varlen
from medvl.data.dataset import Collator, encode
from medvl.models.loading import load_model, load_processor
from medvl.training.packing import PackingCollator, rope_index_of
from medvl.training.run import training_model_config

from .conftest import PACKABLE as FAMILIES
from .conftest import loss_and_grads


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                        scale: float | None = None, causal: bool = True) -> torch.Tensor:
    """Attention inside each segment of ``cu`` (causal, or not: a vision tower's images), in varlen's layout
    (``[total, heads, head_dim]``)."""
    bounds = cu.tolist()
    if k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    pieces = [torch.nn.functional.scaled_dot_product_attention(
        q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=causal, scale=scale)
        for a, b in zip(bounds, bounds[1:])]
    return torch.cat(pieces, dim=1).transpose(0, 1)


def varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """PyTorch 2.10's form: ``is_causal``, no ``scale``, no grouped-query heads."""
    STAND_IN_CALLS.append({"is_causal": is_causal, "max_q": max_q, "heads": (query.shape[1], key.shape[1]),
                           "segments": len(cu_seq_q) - 1})
    assert max_q == max_k and torch.equal(cu_seq_q, cu_seq_k) and query.shape[1] == key.shape[1]
    assert cu_seq_q.dtype == torch.int32 and max_q == int((cu_seq_q[1:] - cu_seq_q[:-1]).max())
    return reference_attention(query, key, value, cu_seq_q, causal=is_causal)


def varlen_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """The later form: ``window_size=(-1, 0)`` for causal, ``scale``, ``enable_gqa``."""
    STAND_IN_CALLS.append({"window_size": window_size, "enable_gqa": enable_gqa, "scale": scale,
                           "heads": (query.shape[1], key.shape[1]), "segments": len(cu_seq_q) - 1})
    assert window_size in ((-1, 0), (-1, -1)) and enable_gqa == (query.shape[1] != key.shape[1])
    return reference_attention(query, key, value, cu_seq_q, scale, causal=window_size == (-1, 0))


STAND_IN_CALLS: list[dict] = []


def padded_and_packed(cfg, small_synth, rows):
    """(padded loss, grads, packed loss, grads) on ``cfg``'s model; the packed row's text-position row is left
    out, so transformers cannot find the rows from restarting positions: only ``cu_seq_lens`` separates them."""
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    model.train()
    items = [encode(row, processor, small_synth) for row in rows]
    loss, _, grads = loss_and_grads(model, Collator(processor.tokenizer.pad_token_id)(items))
    packed = PackingCollator(rope_index_of(model))(items)
    packed_loss, _, packed_grads = loss_and_grads(model, {**packed, "position_ids": packed["position_ids"][1:]})
    return model, (loss, grads, packed_loss, packed_grads)


def assert_same_training(loss, grads, packed_loss, packed_grads) -> None:
    torch.testing.assert_close(packed_loss, loss)
    assert grads.keys() == packed_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_name", FAMILIES)
def test_packed_rows_under_torch_varlen_train_as_the_padded_batch(compose, small_synth, rows, model_name):
    """The CPU path (one SDPA call per packed row): same loss and gradients as the padded batch."""
    cfg = compose([f"model={model_name}", "model.attn_implementation=torch_varlen"])
    assert_same_training(*padded_and_packed(cfg, small_synth, rows)[1])


@pytest.mark.parametrize("stand_in", [varlen_2_10, varlen_2_12], ids=["torch-2.10-form", "later-form"])
@pytest.mark.parametrize("model_name", ["tiny", "tiny3"])
def test_the_kernel_call_gives_the_padded_batchs_loss_and_gradients(compose, small_synth, rows, model_name,
                                                                     stand_in, monkeypatch):
    """The kernel path, with a stand-in kernel: layout, grouped-query heads, causality and segment bounds as
    varlen_attn takes them in each of its keyword forms."""
    monkeypatch.setattr(varlen, "_varlen_attn", lambda: stand_in)
    monkeypatch.setattr(varlen, "_kernel_applies", lambda *args: True)
    STAND_IN_CALLS.clear()
    cfg = compose([f"model={model_name}", "model.attn_implementation=torch_varlen"])
    model, results = padded_and_packed(cfg, small_synth, rows)
    STAND_IN_CALLS[:] = [call for call in STAND_IN_CALLS if call.get("is_causal", True) and call.get(
        "window_size", (-1, 0)) == (-1, 0)]  # the text layers' (the vision tower's are tested below)
    assert_same_training(*results)
    # Every text layer of the packed forward, nothing else (the padded batch has no cu_seq_lens).
    text = model.config.get_text_config()
    assert len(STAND_IN_CALLS) == text.num_hidden_layers
    # Grouped-query heads: repeated to the query heads for 2.10's form, passed as they are with enable_gqa later.
    assert text.num_key_value_heads < text.num_attention_heads
    kv_heads = text.num_attention_heads if stand_in is varlen_2_10 else text.num_key_value_heads
    assert all(call["heads"] == (text.num_attention_heads, kv_heads) for call in STAND_IN_CALLS)
    if stand_in is varlen_2_12:
        assert all(call["scale"] is not None for call in STAND_IN_CALLS)


def test_the_kernels_test_call_compares_it_with_causal_sdpa_row_by_row(monkeypatch):
    """The start-up test call on the CPU with stand-ins: a correct kernel passes; one that ignores causality
    (what a backend that drops the causal window would do on long rows) or raises is named, not used."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(varlen, "_varlen_attn", lambda: varlen_2_12)
    assert varlen._call_fails(cpu, causal=True) is None and varlen._call_fails(cpu, causal=False) is None

    def not_causal(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, window_size=(-1, -1), **kwargs):
        k, v = (t.repeat_interleave(query.shape[1] // key.shape[1], dim=1) for t in (key, value))
        bounds = cu_seq_q.tolist()
        return torch.cat([torch.nn.functional.scaled_dot_product_attention(
            query[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)).transpose(0, 1)
            for a, b in zip(bounds, bounds[1:])])

    monkeypatch.setattr(varlen, "_varlen_attn", lambda: not_causal)
    assert varlen._call_fails(cpu, causal=True).startswith("its test call differs from causal SDPA per row by ")
    # One that is always causal fails the non-causal call (a vision tower's images).
    monkeypatch.setattr(varlen, "_varlen_attn", lambda: lambda *args, window_size=(-1, -1), **kwargs: varlen_2_12(
        *args, window_size=(-1, 0), **kwargs))
    assert varlen._call_fails(cpu, causal=False).startswith("its test call differs from non-causal SDPA per row by ")

    def fails(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(varlen, "_varlen_attn", lambda: fails)
    assert varlen._call_fails(cpu, causal=True) == ("its test call failed: RuntimeError: no kernel image is available for execution on "
                                 "the device")


def test_a_packed_row_builds_no_mask_and_a_padded_batch_gets_sdpas(compose, small_synth, rows, monkeypatch):
    """No total x total block-diagonal mask for a packed row (cu_seq_lens keeps its rows apart); a padded batch
    gets SDPA's mask from its padding."""
    import transformers.masking_utils as masking

    built, real = [], masking.sdpa_mask
    monkeypatch.setattr(masking, "sdpa_mask", lambda *a, **k: built.append(1) or real(*a, **k))
    cfg = compose(["model.attn_implementation=torch_varlen"])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    items = [encode(row, processor, small_synth) for row in rows]
    with torch.no_grad():
        packed = model(**PackingCollator(rope_index_of(model))(items)).loss
        assert built == []
        padded = model(**Collator(processor.tokenizer.pad_token_id)(items)).loss
    assert built and torch.testing.assert_close(packed, padded) is None


def test_float32_attention_under_cuda_autocast_runs_the_kernel_in_the_autocast_dtype(monkeypatch):
    """QLoRA's float32 residual stream reaches attention in float32 under bf16 autocast: the kernel takes it in
    bf16 (its dtype), not the per-row fallback."""
    query = torch.zeros(1, 4, 8, 64)
    assert varlen._compute_dtype(query) == torch.float32  # the CPU: as it is
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "cuda")
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    assert varlen._compute_dtype(query) == torch.bfloat16
    monkeypatch.setattr(varlen, "_varlen_attn", lambda: varlen_2_12)
    assert varlen._kernel_applies(query, None, 0.0, torch.bfloat16) and not varlen._kernel_applies(query, None, 0.0)


def test_the_kernel_is_taken_only_on_a_gpu_in_half_precision(monkeypatch):
    monkeypatch.setattr(varlen, "_varlen_attn", lambda: varlen_2_12)
    query = torch.zeros(1, 4, 8, 64)
    assert not varlen._kernel_applies(query, None, 0.0)  # the CPU
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert not varlen._kernel_applies(query, None, 0.0)  # float32
    half = query.to(torch.bfloat16)
    assert varlen._kernel_applies(half, 0.125, 0.0)
    assert not varlen._kernel_applies(half, None, 0.1)  # attention dropout: the kernel has none
    assert not varlen._kernel_applies(torch.zeros(1, 4, 8, 320, dtype=torch.bfloat16), None, 0.0)  # head > 256
    monkeypatch.setattr(varlen, "_varlen_attn", lambda: varlen_2_10)  # no scale argument: only the default scale
    assert varlen._kernel_applies(half, 64 ** -0.5, 0.0) and not varlen._kernel_applies(half, 0.5, 0.0)
    monkeypatch.setattr(varlen, "_varlen_attn", lambda: None)  # PyTorch before 2.10
    assert not varlen._kernel_applies(half, None, 0.0)


@pytest.fixture
def gpu_without_flash_attn(monkeypatch):
    """A CUDA machine without flash_attn, as resolve_attn_implementation sees it; the kernel's test call passes."""
    monkeypatch.setattr(speed, "_cuda", lambda: True)
    monkeypatch.setattr(speed, "_cuda_index", lambda: 0)
    monkeypatch.setattr(speed, "_installed", lambda module: module != speed.FLASH_ATTN_PACKAGE)
    monkeypatch.setattr(speed, "kernel_unavailable", lambda index: None)
    return monkeypatch


def test_auto_takes_torch_varlen_for_packed_training_where_its_kernel_runs(gpu_without_flash_attn, caplog):
    from transformers import AttentionInterface

    with caplog.at_level(logging.INFO, logger="medvl.models.speed"):
        assert speed.resolve_attn_implementation("auto", torch.bfloat16, packing=True) == "torch_varlen"
    assert "auto: torch_varlen (flash_attn is not installed; packed rows run PyTorch's" in caplog.text
    assert AttentionInterface._global_mapping["torch_varlen"] is varlen.varlen_attention_forward
    # Not packed (evaluation, padded training), or float32 weights: SDPA, as before.
    assert speed.resolve_attn_implementation("auto", torch.bfloat16) == "sdpa"
    assert speed.resolve_attn_implementation("auto", torch.float32, packing=True) == "sdpa"
    gpu_without_flash_attn.setattr(speed, "_installed", lambda module: True)  # flash_attn installed: it wins
    assert speed.resolve_attn_implementation("auto", torch.bfloat16, packing=True) == "flash_attention_2"


def test_auto_falls_back_to_sdpa_and_says_why_when_the_kernel_does_not_run(gpu_without_flash_attn, caplog):
    gpu_without_flash_attn.setattr(speed, "kernel_unavailable", lambda index: "its test call failed: RuntimeError")
    with caplog.at_level(logging.INFO, logger="medvl.models.speed"):
        assert speed.resolve_attn_implementation("auto", "bfloat16", packing=True) == "sdpa"
    assert ("auto: sdpa (flash_attn is not installed; PyTorch's varlen kernel: its test call failed: RuntimeError)"
            in caplog.text)


def test_training_resolves_auto_attention_for_packing(compose, gpu_without_flash_attn):
    """The model config training loads with: packing + auto -> torch_varlen on such a GPU; the saved config
    keeps ``auto``; without packing nothing changes."""
    cfg = compose(["trainer.packing=true", "model.dtype=bfloat16"])
    assert training_model_config(cfg).attn_implementation == "torch_varlen"
    assert cfg.model.attn_implementation == "auto"
    assert training_model_config(compose(["model.dtype=bfloat16"])).attn_implementation == "auto"


def test_training_on_this_cpu_keeps_sdpa_for_packed_rows(compose):
    assert training_model_config(compose(["trainer.packing=true"])).attn_implementation == "sdpa"


def test_the_kernels_test_call_says_why_it_cannot_run_without_a_gpu():
    varlen.kernel_unavailable.cache_clear()
    why = varlen.kernel_unavailable(0)
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the gpu-marked test covers the kernel")
    assert why in ("no CUDA GPU", f"torch {torch.__version__} has no torch.nn.attention.varlen (PyTorch 2.10 or later)")


def test_a_padded_batch_and_generation_under_torch_varlen_are_sdpas(compose, small_synth, rows):
    """Without cu_seq_lens (a padded batch, left-padded generation with its KV cache) torch_varlen is SDPA."""
    outputs = {}
    for attn in ("sdpa", "torch_varlen"):
        cfg = compose([f"model.attn_implementation={attn}"])
        processor, model = load_processor(cfg.model), load_model(cfg.model)
        model.eval()
        items = [encode(row, processor, small_synth) for row in rows[:3]]
        batch = Collator(processor.tokenizer.pad_token_id)(items)
        with torch.no_grad():
            logits = model(**batch).logits
            prompt = {k: v for k, v in batch.items() if k != "labels"}
            generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
        outputs[attn] = (logits, generated)
    torch.testing.assert_close(outputs["torch_varlen"][0], outputs["sdpa"][0])
    assert torch.equal(outputs["torch_varlen"][1], outputs["sdpa"][1])


# --- the vision tower ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", [None, varlen_2_10, varlen_2_12], ids=["cpu-fallback", "torch-2.10-form",
                                                                           "later-form"])
@pytest.mark.parametrize("model_name", ["tiny", "tiny25", "tiny3"])
def test_the_vision_tower_runs_one_call_per_block_over_its_images_bounds(compose, small_synth, rows, monkeypatch,
                                                                         model_name, kernel):
    """With the vision attention set as a GPU without flash_attn gets it, the model computes what it computed under
    SDPA (one call per image or window): the same loss and gradients, the vision tower's included, with one
    non-causal kernel call per vision block over the images' bounds, or the windows' in Qwen2.5-VL's windowed
    blocks. On the CPU (no stand-in) the segments run one SDPA call each, as transformers does."""
    if kernel is not None:
        monkeypatch.setattr(varlen, "_varlen_attn", lambda: kernel)
        monkeypatch.setattr(varlen, "_kernel_applies", lambda *args: True)
    cfg = compose([f"model={model_name}"])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    model.train()
    batch = Collator(processor.tokenizer.pad_token_id)([encode(row, processor, small_synth) for row in rows])
    loss, _, grads = loss_and_grads(model, batch)  # the vision tower's gradients too: all weights train here
    monkeypatch.setattr(speed, "_cuda", lambda: True)
    monkeypatch.setattr(speed, "_cuda_index", lambda: 0)
    monkeypatch.setattr(speed, "vision_kernel_unavailable", lambda index, head_dim: None)
    assert speed.vision_attention(model, cfg.model.family, "auto", "sdpa", torch.bfloat16) == varlen.VISION_VARLEN
    assert model.model.visual.config._attn_implementation == varlen.VISION_VARLEN
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    STAND_IN_CALLS.clear()
    varlen_loss, _, varlen_grads = loss_and_grads(model, batch)

    torch.testing.assert_close(varlen_loss, loss)
    assert varlen_grads.keys() == grads.keys() and any(n.startswith("model.visual.blocks") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(varlen_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    if kernel is None:
        assert not STAND_IN_CALLS
        return
    vision = model.config.vision_config
    images = len(batch["image_grid_thw"])
    assert len(STAND_IN_CALLS) == vision.depth  # one per block, no text layer (a padded batch)
    assert all(call.get("is_causal") is False or call.get("window_size") == (-1, -1) for call in STAND_IN_CALLS)
    windowed = getattr(vision, "fullatt_block_indexes", None)
    segments = [call["segments"] for call in STAND_IN_CALLS]
    if windowed is None:
        assert set(segments) == {images}
    else:  # Qwen2.5-VL: its full-attention blocks over the images, the others over the windows
        assert {segments[i] for i in windowed} == {images} and max(segments) > images


def test_the_vision_tower_takes_the_kernel_only_where_it_runs_and_was_asked_for(monkeypatch, caplog):
    def model():
        return types.SimpleNamespace(config=types.SimpleNamespace(vision_config=types.SimpleNamespace(
            _attn_implementation="sdpa", hidden_size=1280, num_heads=16)))

    tested = []
    monkeypatch.setattr(speed, "_cuda", lambda: True)
    monkeypatch.setattr(speed, "_cuda_index", lambda: 0)
    monkeypatch.setattr(speed, "vision_kernel_unavailable", lambda index, head_dim: tested.append(head_dim))
    for requested, resolved, device in (("auto", "sdpa", None), ("torch_varlen", "torch_varlen", "cuda:1"),
                                        ("auto", "sdpa", "auto")):
        on = model()
        assert speed.vision_attention(on, "qwen2_5_vl", requested, resolved, torch.bfloat16,
                                      device) == varlen.VISION_VARLEN
        assert on.config.vision_config._attn_implementation == varlen.VISION_VARLEN
    assert set(tested) == {80}  # the kernel was tried at the vision tower's own head size
    # An explicit attention, FlashAttention 2 (already one call per block), float32, Gemma 3's SigLIP, a model put
    # on the CPU: unchanged.
    for family, requested, resolved, dtype, device in (("qwen2_vl", "sdpa", "sdpa", torch.bfloat16, None),
                                                       ("qwen2_vl", "auto", "flash_attention_2", torch.bfloat16, None),
                                                       ("qwen3_vl", "auto", "sdpa", torch.float32, None),
                                                       ("gemma3", "auto", "sdpa", torch.bfloat16, None),
                                                       ("qwen2_vl", "auto", "sdpa", torch.bfloat16, "cpu")):
        off = model()
        assert speed.vision_attention(off, family, requested, resolved, dtype, device) == resolved
        assert off.config.vision_config._attn_implementation == "sdpa"
    monkeypatch.setattr(speed, "vision_kernel_unavailable", lambda index, head_dim: "its test call failed: X")
    with caplog.at_level(logging.INFO, logger="medvl.models.speed"):
        assert speed.vision_attention(model(), "qwen2_vl", "auto", "sdpa", torch.bfloat16) == "sdpa"
    assert "Vision attention: sdpa, one call per image or window (PyTorch's varlen kernel: its test call" in caplog.text
    monkeypatch.setattr(speed, "_cuda", lambda: False)
    assert speed.vision_attention(model(), "qwen2_vl", "auto", "sdpa", torch.bfloat16) == "sdpa"


def test_the_vision_kernels_test_call_runs_at_the_towers_head_size(monkeypatch):
    """Qwen2/2.5-VL's vision heads are 80 wide, Qwen3-VL's 72: the non-causal test call runs at that size, over
    segments shorter and longer than 128 patches; a head size the kernel cannot take is said, not tried."""
    calls = []

    def recording(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                  enable_gqa=False):
        calls.append(query.shape[-1])
        return varlen_2_12(query, key, value, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size,
                           enable_gqa=enable_gqa)

    monkeypatch.setattr(varlen, "_varlen_attn", lambda: recording)
    cpu = torch.device("cpu")
    assert varlen._call_fails(cpu, causal=False, head_dim=80) is None
    assert varlen._call_fails(cpu, causal=False, head_dim=72) is None
    assert calls == [80, 72]
    assert STAND_IN_CALLS[-1]["window_size"] == (-1, -1) and STAND_IN_CALLS[-1]["segments"] == 4
    varlen.vision_kernel_unavailable.cache_clear()
    assert varlen.vision_kernel_unavailable(0, 20) == "its head size 20 is not a multiple of 8 up to 256"
    assert not varlen._kernel_applies(torch.zeros(1, 2, 3, 20, dtype=torch.bfloat16), None, 0.0)


def test_loading_sets_the_vision_attention_on_such_a_gpu(compose, gpu_without_flash_attn):
    gpu_without_flash_attn.setattr(speed, "vision_kernel_unavailable", lambda index, head_dim: None)
    model = load_model(compose(["model=tiny25", "model.dtype=bfloat16"]).model)
    assert model.config.vision_config._attn_implementation == varlen.VISION_VARLEN
    assert model.config.get_text_config()._attn_implementation == "sdpa"


@pytest.mark.gpu
@pytest.mark.parametrize("model_name", FAMILIES)
def test_torch_varlen_kernel_packed_equals_padded_on_the_gpu(compose, small_synth, rows, model_name,
                                                             monkeypatch):
    """PyTorch's varlen kernel itself (bf16: looser bounds), as test_flash_attention_varlen_equals_padded."""
    varlen.kernel_unavailable.cache_clear()
    why = varlen.kernel_unavailable(0)
    assert why is None, f"PyTorch's varlen kernel does not run here: {why}"
    cfg = compose([f"model={model_name}", "model.attn_implementation=torch_varlen", "model.dtype=bfloat16"])
    processor, model = load_processor(cfg.model), load_model(cfg.model, device="cuda")
    model.train()
    items = [encode(row, processor, small_synth) for row in rows]
    on_gpu = lambda batch: {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}  # noqa: E731
    calls, kernel = [], varlen._kernel
    monkeypatch.setattr(varlen, "_kernel", lambda *a: calls.append(1) or kernel(*a))
    loss, _, grads = loss_and_grads(model, on_gpu(Collator(processor.tokenizer.pad_token_id)(items)))
    packed_loss, _, packed_grads = loss_and_grads(model, on_gpu(PackingCollator(rope_index_of(model))(items)))
    assert calls, "the packed forward never reached PyTorch's varlen kernel"
    torch.testing.assert_close(packed_loss, loss, atol=2e-2, rtol=1e-2)
    for name, grad in grads.items():
        assert (packed_grads[name] - grad).float().norm() <= 0.05 * grad.float().norm() + 1e-4, name


@pytest.mark.gpu
@pytest.mark.parametrize("model_name", ["tiny", "tiny25", "tiny3"])
def test_the_vision_kernel_on_the_gpu_computes_what_sdpa_computes(compose, small_synth, rows, model_name):
    """The vision tower through PyTorch's varlen kernel (non-causal, one call per block) against its SDPA calls
    per image or window, in bf16 on the GPU: the same logits to bf16's precision."""
    varlen.kernel_unavailable.cache_clear()
    assert varlen.kernel_unavailable(0) is None
    cfg = compose([f"model={model_name}", "model.dtype=bfloat16"])
    processor, model = load_processor(cfg.model), load_model(cfg.model, device="cuda")
    assert model.config.vision_config._attn_implementation == varlen.VISION_VARLEN  # as loading sets it here
    batch = Collator(processor.tokenizer.pad_token_id)([encode(row, processor, small_synth) for row in rows])
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        kernel = model(**batch).logits.float()
        model.config.vision_config._attn_implementation = "sdpa"
        reference = model(**batch).logits.float()
    assert (kernel - reference).norm() <= 2e-2 * reference.norm()


def test_each_rank_tests_the_kernel_on_its_own_gpu(monkeypatch):
    """Under torchrun the kernel's test call runs on LOCAL_RANK's GPU, so no rank leaves a CUDA context on GPU 0."""
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert speed._cuda_index() == 3
