"""trainer.liger=true: Liger's kernels placed by medvl (medvl.models.liger).

Liger's kernels are Triton GPU kernels. On the CPU, each kernel entry point Liger's modules call is replaced by a
plain-torch computation of what the kernel computes (Liger's own shape handling and casting modes included), and
counted: the patched model must then compute the same loss and gradients as the unpatched one, and every patched
module must have run. That checks what medvl owns: which modules and functions get a kernel, and with what
arguments. The real kernels are compared on a GPU (the gpu-marked test at the end).
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from medvl.config import ConfigError
from medvl.config.families import FAMILIES, family_name
from medvl.data.dataset import IGNORE_INDEX, Collator, encode
from medvl.models.liger import TEXT_ROPE, VISION_ROPE, apply_liger
from medvl.models.loading import load_model, load_processor
from medvl.training import run
from medvl.training.checks import validate_training
from medvl.training.loss import answer_loss, fused_head
from medvl.training.packing import PackingCollator, rope_index_of

from .conftest import loss_and_grads

liger = pytest.importorskip("liger_kernel.transformers")  # in the dev extra: CI has it

TINY = ["tiny", "tiny25", "tiny3", "tiny3_moe", "tiny_gemma3"]


def rms_norm(x, weight, eps, offset, casting_mode):
    """Liger's RMSNorm: ``llama`` casts the normalised input back before the weight, ``gemma`` stays in float32."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if casting_mode == "gemma":
        return (normed * (offset + weight.float())).to(x.dtype)
    assert casting_mode == "llama", casting_mode
    return normed.to(x.dtype) * (offset + weight)


class RMSNormKernel(torch.autograd.Function):
    """Liger's RMSNorm kernel, in-place backward included: with ``in_place`` it writes the input gradient into the
    output gradient's memory. Where that gradient is shared (a post-norm residual, as in Gemma) the result is
    wrong, as it would be on the GPU."""

    @staticmethod
    def forward(ctx, x, weight, eps, offset, casting_mode, in_place, row_mode):
        ctx.save_for_backward(x, weight)
        ctx.args = eps, offset, casting_mode, in_place
        return rms_norm(x, weight, eps, offset, casting_mode)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        eps, offset, casting_mode, in_place = ctx.args
        with torch.enable_grad():
            x_, w_ = x.detach().requires_grad_(), weight.detach().requires_grad_()
            dx, dw = torch.autograd.grad(rms_norm(x_, w_, eps, offset, casting_mode), (x_, w_), dy)
        if in_place:
            dx = dy.copy_(dx)
        return dx, dw, None, None, None, None, None


class SiLUMulKernel(torch.autograd.Function):
    """Liger's SwiGLU kernel: its backward writes the two input gradients into the saved inputs' memory."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return F.silu(a) * b

    @staticmethod
    def backward(ctx, dc):
        a, b = ctx.saved_tensors
        sig = torch.sigmoid(a)
        da, db = dc * b * sig * (1 + a * (1 - sig)), dc * F.silu(a)
        return a.copy_(da), b.copy_(db)


def _rotate(x, cos, sin):
    """RoPE as Liger's kernel applies it, in place on x (batch, seq, heads, dim): it reads only the first half of
    cos/sin, so a layout whose halves differ would come out wrong here as on the GPU."""
    half = x.shape[-1] // 2
    c, s = cos[..., :half].unsqueeze(2), sin[..., :half].unsqueeze(2)
    x1, x2 = x[..., :half].clone(), x[..., half:].clone()
    x[..., :half] = x1 * c - x2 * s
    x[..., half:] = x2 * c + x1 * s


class RopeKernel(torch.autograd.Function):
    """Liger's RoPE (``liger_kernel.ops.rope.rope_forward``): cos/sin of 2, 3 or 4 dimensions brought to
    (1 or batch, seq, dim), q/k rotated in place in their (batch, seq, heads, dim) memory, forward and backward."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, unsqueeze_dim):
        if cos.ndim == 4:
            axis = unsqueeze_dim if cos.shape[unsqueeze_dim] == 1 else 1
            cos, sin = cos.squeeze(axis), sin.squeeze(axis)
        if cos.ndim == 2:
            cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
        batch, _, seq, dim = q.shape
        assert cos.shape[0] in (1, batch) and cos.shape[1:] == (seq, dim), (cos.shape, q.shape)
        q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
        _rotate(q, cos, sin)
        _rotate(k, cos, sin)
        ctx.save_for_backward(cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq, dk = dq.transpose(1, 2).contiguous(), dk.transpose(1, 2).contiguous()
        _rotate(dq, cos, -sin)
        _rotate(dk, cos, -sin)
        return dq.transpose(1, 2), dk.transpose(1, 2), None, None, None


class Counted:
    """A stand-in for one of Liger's kernel entry points: computes ``fn`` and counts its calls under ``name``."""

    def __init__(self, fn, calls: Counter, name: str):
        self.fn, self.calls, self.name = fn, calls, name

    def __call__(self, *args, **kwargs):
        self.calls[self.name] += 1
        return self.fn(*args, **kwargs)

    apply = __call__  # torch.autograd.Function's entry point


def rope(op, q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    assert op == "rope" and position_ids is None
    return RopeKernel.apply(q, k, cos, sin, unsqueeze_dim)


def fused_linear_cross_entropy(calls: Counter):
    """Liger's fused linear cross-entropy kernel entry point (``LigerFusedLinearCrossEntropyFunction.apply``): the
    head's product and the cross-entropy in float32, as the kernel computes them a chunk of rows at a time; counts
    its calls and the rows (tokens) it was given."""

    def kernel(x, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing, reduction,
               softcap, return_z_loss, *rest):
        assert bias is None and ce_weight is None and softcap is None and not return_z_loss
        assert lse_square_scale == label_smoothing == 0 and ignore_index == IGNORE_INDEX and x.dim() == 2
        assert x.dtype == weight.dtype, "the kernel multiplies its two inputs as they are: one dtype"
        calls["fused rows"] += x.shape[0]
        calls[f"fused {str(x.dtype).removeprefix('torch.')}"] += 1
        loss = F.cross_entropy(F.linear(x, weight).float(), target, ignore_index=ignore_index, reduction=reduction)
        return loss, None, None, None

    return Counted(kernel, calls, "FusedLinearCrossEntropy")


def keep_rotary_functions(monkeypatch) -> None:
    """The rotary functions apply_liger replaces in transformers' modules come back after the test."""
    for kernels in {spec.liger for spec in FAMILIES.values() if spec.liger}:
        module = importlib.import_module(kernels.module)
        for name in (TEXT_ROPE, VISION_ROPE):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))


@pytest.fixture
def liger_on_cpu(monkeypatch) -> Counter:
    """Liger's kernel entry points computed in plain torch as the kernels compute them (their in-place writes
    included), and counted; the vision RoPE is counted apart as well."""
    import liger_kernel.transformers.functional as functional
    import liger_kernel.transformers.geglu as geglu
    import liger_kernel.transformers.layer_norm as layer_norm
    import liger_kernel.transformers.rms_norm as rms
    import liger_kernel.transformers.rope as rope_module
    import liger_kernel.transformers.swiglu as swiglu

    calls: Counter = Counter()
    monkeypatch.setattr(rms, "LigerRMSNormFunction", Counted(RMSNormKernel.apply, calls, "RMSNorm"))
    monkeypatch.setattr(layer_norm, "_functional_layer_norm", Counted(
        lambda x, w, b, eps, impl=None, mode=None: F.layer_norm(x, x.shape[-1:], w, b, eps), calls, "LayerNorm"))
    monkeypatch.setattr(swiglu, "_swiglu_dispatch", Counted(SiLUMulKernel.apply, calls, "LigerSwiGLUMLP"))
    monkeypatch.setattr(geglu, "LigerGELUMulFunction", Counted(
        lambda a, b: F.gelu(a, approximate="tanh") * b, calls, "LigerGEGLUMLP"))
    monkeypatch.setattr(rope_module, "dispatch", Counted(rope, calls, "rope"))
    monkeypatch.setattr(rope_module, "liger_rotary_pos_emb_vision", Counted(
        rope_module.liger_rotary_pos_emb_vision, calls, "vision rope"))
    monkeypatch.setattr(functional, "LigerFusedLinearCrossEntropyFunction", fused_linear_cross_entropy(calls))
    keep_rotary_functions(monkeypatch)
    return calls


def tiny_batch(compose, small_synth, rows, model_name: str, packed: bool = False):
    cfg = compose([f"model={model_name}"])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    model.train()
    items = [encode(row, processor, small_synth) for row in rows]
    collate = PackingCollator(rope_index_of(model)) if packed else Collator(processor.tokenizer.pad_token_id)
    return cfg, model, collate(items)


@pytest.mark.parametrize("model_name, packed", [*((name, False) for name in TINY), ("tiny", True), ("tiny3", True)])
def test_the_model_with_liger_computes_what_it_computed_before(compose, small_synth, rows, liger_on_cpu, caplog,
                                                               model_name, packed):
    cfg, model, batch = tiny_batch(compose, small_synth, rows, model_name, packed)
    own_loss, _, own_grads = loss_and_grads(model, batch)
    assert not liger_on_cpu
    with caplog.at_level(logging.INFO, logger="medvl.models.liger"):
        patched = apply_liger(model, cfg.model.family)
    loss, _, grads = loss_and_grads(model, batch)

    torch.testing.assert_close(loss, own_loss)
    assert grads.keys() == own_grads.keys() and grads
    for name, grad in own_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-3, msg=name)
    # Every module given a kernel ran it once in the forward: none was patched where the model does not look.
    modules = Counter(type(m).__name__ for m in model.modules())
    norms = sum(n for name, n in modules.items() if name.endswith("RMSNorm"))
    assert patched["RMSNorm"] == norms == liger_on_cpu["RMSNorm"] > 0
    assert patched["LayerNorm"] == modules["LayerNorm"] == liger_on_cpu["LayerNorm"]
    mlp = "LigerGEGLUMLP" if model_name == "tiny_gemma3" else "LigerSwiGLUMLP"
    gated = sum(all(isinstance(getattr(m, n, None), torch.nn.Linear) for n in ("gate_proj", "up_proj", "down_proj"))
                for m in model.modules())
    assert patched[mlp] == gated == liger_on_cpu[mlp]
    assert gated > 0 or model_name == "tiny3_moe"  # the MoE's experts keep transformers' grouped implementation
    # RoPE once per attention layer: the text model's, and the vision tower's where the family has vision RoPE.
    vision_depth = getattr(model.config.vision_config, "depth", 0) if model_name != "tiny_gemma3" else 0
    assert liger_on_cpu["vision rope"] == vision_depth and (vision_depth > 0) is (model_name != "tiny_gemma3")
    assert liger_on_cpu["rope"] - vision_depth == model.config.get_text_config().num_hidden_layers
    assert patched[f"RoPE ({TEXT_ROPE})"] == 1 and patched[f"RoPE ({VISION_ROPE})"] == (vision_depth > 0)
    assert "trainer.liger=true: Liger's kernels in " in caplog.text and "RMSNorm x" in caplog.text
    assert all(m._get_name().startswith("Liger") for m in model.modules() if type(m).__name__.endswith("RMSNorm"))


def test_each_familys_norms_get_its_casting_mode(compose, liger_on_cpu):
    """Qwen's RMSNorm casts back before the weight, and its pre-norm layers let the backward run in place;
    Gemma's multiplies by 1 + weight in float32, and its post-norm residuals share the gradient: not in place."""
    for model_name, casting, offset, in_place in (("tiny", "llama", 0.0, True), ("tiny_gemma3", "gemma", 1.0, False)):
        cfg = compose([f"model={model_name}"])
        model = load_model(cfg.model)
        apply_liger(model, cfg.model.family)
        norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
        assert norms and {(m.casting_mode, m.offset, m.in_place) for m in norms} == {(casting, offset, in_place)}
        assert "offset=" in repr(norms[0])  # prints as Liger's module


@pytest.mark.parametrize("model_name", ["tiny", "tiny25", "tiny3"])
def test_lora_trains_through_the_patched_mlp(compose, small_synth, rows, liger_on_cpu, model_name):
    """Liger's kernels go in before LoRA wraps the linear layers; the patched MLP calls its (now LoRA) layers, so
    the LoRA gradients are those of the unpatched model, also with gradient checkpointing's recomputation."""
    results = {}
    for on in (False, True):
        torch.manual_seed(0)
        cfg = compose([f"model={model_name}", "stage=instruct", "lora=attn_ffn", "lora.dropout=0",
                       "trainer.gradient_checkpointing=true", f"trainer.liger={str(on).lower()}"])
        processor = load_processor(cfg.model)
        model = run.setup_for_training(load_model(cfg.model), cfg)
        model.train()
        batch = Collator(processor.tokenizer.pad_token_id)([encode(row, processor, small_synth) for row in rows])
        loss, _, grads = loss_and_grads(model, batch)
        results[on] = loss, grads
    assert liger_on_cpu["LigerSwiGLUMLP"] > 0
    (own_loss, own_grads), (loss, grads) = results[False], results[True]
    torch.testing.assert_close(loss, own_loss)
    assert grads.keys() == own_grads.keys() and any("mlp.gate_proj.lora_B" in n for n in grads)
    for name, grad in own_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-3, msg=name)


def test_models_load_without_transformers_hub_kernels(compose, liger_on_cpu, small_synth, rows):
    """transformers 5.25 loads with Hub kernels by default and re-applies them on train(), which would put the
    models' own forward back in place of Liger's: medvl loads with them off, so train() keeps Liger's kernels."""
    cfg, model, batch = tiny_batch(compose, small_synth, rows, "tiny")
    assert not model.use_kernels
    apply_liger(model, cfg.model.family)
    model.eval()
    model.train()
    with torch.no_grad():
        model(**batch)
    assert liger_on_cpu["RMSNorm"] == sum(type(m).__name__.endswith("RMSNorm") for m in model.modules())


def test_every_family_has_the_rotary_function_liger_replaces():
    for family, spec in FAMILIES.items():
        assert callable(getattr(importlib.import_module(spec.liger.module), TEXT_ROPE)), family


def test_a_transformers_without_the_rotary_function_is_refused_at_start_up(compose, monkeypatch):
    """If a transformers release moves the family's RoPE, medvl says so in one line before any weights load,
    rather than train with Liger's RoPE silently not in place."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    module = importlib.import_module(FAMILIES["qwen2_vl"].liger.module)
    validate_training(compose(["model=tiny", "trainer.liger=true"]))  # as installed: taken
    monkeypatch.delattr(module, TEXT_ROPE)
    with pytest.raises(ConfigError, match=r"^trainer.liger=true: transformers [\d.]+'s transformers.models.qwen2_vl."
                                          r"modeling_qwen2_vl has no apply_rotary_pos_emb\(q, k, cos, sin\), where "
                                          r"medvl puts Liger's RoPE for model.family=qwen2_vl; set "
                                          r"trainer.liger=false$"):
        validate_training(compose(["model=tiny", "trainer.liger=true"]))
    # A RoPE taking one tensor at a time (as Gemma 4's does) would not take Liger's (q, k, cos, sin) either.
    monkeypatch.setattr(module, TEXT_ROPE, lambda x, cos, sin, unsqueeze_dim=2: x, raising=False)
    with pytest.raises(ConfigError, match=r"has another apply_rotary_pos_emb\(x, cos, sin, unsqueeze_dim\) than "
                                          r"apply_rotary_pos_emb\(q, k, cos, sin\)"):
        validate_training(compose(["model=tiny", "trainer.liger=true"]))


def bf16_lora_step(compose, small_synth, rows, model_name: str, liger: bool, device: str):
    """One packed step as training takes it: bf16 weights under bf16 autocast, LoRA on attention and MLP (float32
    where the Trainer upcasts them), gradient checkpointing; the loss and the LoRA gradients."""
    torch.manual_seed(0)
    cfg = compose([f"model={model_name}", "stage=instruct", "lora=attn_ffn", "lora.dropout=0", "model.dtype=bfloat16",
                   "trainer.gradient_checkpointing=true", "trainer.packing=true", f"trainer.liger={str(liger).lower()}"])
    processor = load_processor(cfg.model)
    model = run.setup_for_training(load_model(cfg.model), cfg).to(device)
    model.train()
    batch = run.train_collator(cfg, processor, model.get_base_model())(
        [encode(row, processor, small_synth) for row in rows])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach().float(), {n: p.grad.float().flatten() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(own, patched):
    """bf16 rounds differently along the two paths: the loss within 1%, each LoRA gradient pointing the same way."""
    (own_loss, own_grads), (loss, grads) = own, patched
    torch.testing.assert_close(loss, own_loss, atol=0, rtol=1e-2)
    assert grads.keys() == own_grads.keys() and any("lora_B" in n for n in grads)
    for name, grad in own_grads.items():
        if grad.norm() > 0:
            assert F.cosine_similarity(grads[name], grad, dim=0) > 0.99, name


@pytest.mark.parametrize("model_name", ["tiny", "tiny3"])
def test_a_bf16_lora_step_with_checkpointing_and_packing_is_the_same_with_liger(compose, small_synth, rows,
                                                                                 liger_on_cpu, model_name):
    own = bf16_lora_step(compose, small_synth, rows, model_name, False, "cpu")
    patched = bf16_lora_step(compose, small_synth, rows, model_name, True, "cpu")
    assert liger_on_cpu["RMSNorm"] and liger_on_cpu["LigerSwiGLUMLP"] and liger_on_cpu["rope"]
    assert_same_step(own, patched)


def label_tokens(batch) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


@pytest.mark.parametrize("model_name, packed", [*((name, False) for name in TINY), ("tiny", True), ("tiny3", True)])
def test_the_fused_head_computes_the_models_own_loss(compose, small_synth, rows, liger_on_cpu, caplog, model_name,
                                                     packed):
    """Liger's fused linear cross-entropy in place of the head: the model's own loss and gradients, from the hidden
    states of the label tokens alone (not the union of the rows' answer positions), and the head is itself again
    after the call."""
    cfg, model, batch = tiny_batch(compose, small_synth, rows, model_name, packed)
    model.get_output_embeddings().weight.requires_grad_(False)  # as in every stage: the head is not trained
    own_loss, own_logits, own_grads = loss_and_grads(model, batch)
    with caplog.at_level(logging.INFO, logger="medvl.training.loss"):
        fused = fused_head(model, liger=True)
    assert fused is not None and "the loss is Liger's fused linear cross-entropy" in caplog.text
    model.zero_grad()
    loss = answer_loss(model, batch, fused=fused)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(loss, own_loss)
    assert grads.keys() == own_grads.keys() and grads
    for name, grad in own_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-3, msg=name)
    assert liger_on_cpu["FusedLinearCrossEntropy"] == 1 and liger_on_cpu["fused rows"] == label_tokens(batch)
    with torch.no_grad():
        assert model(**batch).logits.shape == own_logits.shape  # the head computes logits again
    # A sum over the label count of all accumulated micro-batches, as with the unfused head.
    with torch.no_grad():
        summed = answer_loss(model, batch, num_items_in_batch=torch.tensor(3 * label_tokens(batch)), fused=fused)
    torch.testing.assert_close(summed * 3, own_loss)


def test_the_fused_head_is_used_only_where_it_can_stand_in_for_the_head(compose, monkeypatch, caplog):
    from peft import LoraConfig, get_peft_model

    def refusal(model) -> str:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="medvl.training.loss"):
            assert fused_head(model, liger=True) is None
        return caplog.text

    model = load_model(compose(["model=tiny"]).model)
    assert "not Liger's fused linear cross-entropy: the head is trained" in refusal(model)
    model.lm_head.weight.requires_grad_(False)
    assert fused_head(model, liger=False) is None
    assert fused_head(model, liger=True) is not None
    import transformers.integrations.deepspeed as hf_deepspeed
    with monkeypatch.context() as patch:
        patch.setattr(hf_deepspeed, "is_deepspeed_zero3_enabled", lambda: True)
        assert "ZeRO-3 gathers the head's weight only while the head runs" in refusal(model)
    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=["lm_head"]))
    assert "the head is a peft.tuners.lora.layer.Linear, not a plain nn.Linear" in refusal(adapted)

    gemma = load_model(compose(["model=tiny_gemma3"]).model)
    gemma.lm_head.weight.requires_grad_(False)
    assert fused_head(gemma, liger=True) is not None
    gemma.config.get_text_config().final_logit_softcapping = 30.0
    assert "the model softcaps its logits" in refusal(gemma)

    moe = load_model(compose(["model=tiny3_moe"]).model)
    moe.lm_head.weight.requires_grad_(False)
    moe.config.text_config.output_router_logits = True
    assert "router's load-balancing loss" in refusal(moe)


def test_the_head_is_itself_again_after_the_loss_and_after_a_failed_forward(compose, small_synth, rows,
                                                                             liger_on_cpu):
    cfg, model, batch = tiny_batch(compose, small_synth, rows, "tiny")
    model.lm_head.weight.requires_grad_(False)
    fused = fused_head(model, liger=True)

    def out_of_memory(module, args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    layer = next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))
    hook = layer.register_forward_pre_hook(out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        answer_loss(model, batch, fused=fused)  # the model fails inside, with the head passing its input through
    hook.remove()
    assert "forward" not in vars(model.lm_head)
    with torch.no_grad():
        assert model(**batch).logits.shape[-1] == model.config.get_text_config().vocab_size
    # A forward set on the instance (accelerate's hooks put their wrapper there) is the head's forward again after.
    wrapper = model.lm_head.forward
    model.lm_head.forward = wrapper
    with torch.no_grad():
        answer_loss(model, batch, fused=fused)
    assert vars(model.lm_head)["forward"] is wrapper and liger_on_cpu["FusedLinearCrossEntropy"] == 1


def test_a_batch_without_a_label_token_has_no_loss_and_no_kernel_call(compose, small_synth, rows, liger_on_cpu):
    cfg, model, batch = tiny_batch(compose, small_synth, rows, "tiny")
    model.lm_head.weight.requires_grad_(False)
    loss = answer_loss(model, {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)},
                       fused=fused_head(model, liger=True))
    loss.backward()
    assert loss.item() == 0 and not liger_on_cpu["FusedLinearCrossEntropy"]


def test_a_float32_head_in_bf16_training_is_multiplied_in_bf16(compose, small_synth, rows, liger_on_cpu):
    """QLoRA's preparation keeps the head in float32 while the forward runs under bf16 autocast (as accelerate
    wraps it); the loss runs outside it, and the fused head multiplies in bf16 as autocast did for the head."""
    cfg, model, batch = tiny_batch(compose, small_synth, rows, "tiny")
    model.to(torch.bfloat16).lm_head.to(torch.float32).weight.requires_grad_(False)
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    with torch.no_grad():
        own = answer_loss(model, batch)
        loss = answer_loss(model, batch, fused=fused_head(model, liger=True, dtype=torch.bfloat16))
    assert liger_on_cpu["fused bfloat16"] == 1 and model.lm_head.weight.dtype == torch.float32
    torch.testing.assert_close(loss.float(), own.float(), atol=0, rtol=1e-2)


@pytest.mark.parametrize("liger_on", [True, False])
def test_trainer_liger_trains_with_the_fused_head(compose, small_synth, rows, liger_on_cpu, tmp_path, liger_on):
    """medvl's Trainer takes the fused head from trainer.liger (as medvl.train builds it), and its loss is the
    model's own."""
    cfg = compose(["model=tiny", "stage=instruct", "lora=attn_ffn", "lora.dropout=0",
                   f"trainer.liger={str(liger_on).lower()}"])
    processor = load_processor(cfg.model)
    model = run.setup_for_training(load_model(cfg.model), cfg)
    batch = Collator(processor.tokenizer.pad_token_id)([encode(row, processor, small_synth) for row in rows])
    trainer = run.build_trainer(cfg, model, run.training_arguments(cfg, tmp_path), None, None, [])
    assert (trainer.fused_head is not None) is liger_on
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        own = model(**batch).loss
    torch.testing.assert_close(loss, own)
    assert liger_on_cpu["FusedLinearCrossEntropy"] == int(liger_on)


# --- on a GPU: Liger's real kernels (skipped here) --------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("model_name", TINY)
def test_liger_kernels_on_a_gpu_compute_what_the_model_computed(compose, small_synth, rows, monkeypatch, model_name):
    """Float32 on the GPU, so that a difference is the kernels' and not bf16's rounding."""
    keep_rotary_functions(monkeypatch)
    cfg, model, batch = tiny_batch(compose, small_synth, rows, model_name)
    model.cuda()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    own_loss, _, own_grads = loss_and_grads(model, batch)
    patched = apply_liger(model, family_name(cfg.model.family))
    assert patched["RMSNorm"] > 0
    loss, _, grads = loss_and_grads(model, batch)
    torch.testing.assert_close(loss, own_loss, atol=1e-4, rtol=1e-4)
    for name, grad in own_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-4, rtol=1e-2, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("model_name", ["tiny", "tiny25", "tiny3"])
def test_a_bf16_lora_step_on_a_gpu_is_the_same_with_liger(compose, small_synth, rows, monkeypatch, model_name):
    keep_rotary_functions(monkeypatch)
    own = bf16_lora_step(compose, small_synth, rows, model_name, False, "cuda")
    assert_same_step(own, bf16_lora_step(compose, small_synth, rows, model_name, True, "cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("model_name", TINY)
def test_the_fused_head_on_a_gpu_computes_the_answer_loss(compose, small_synth, rows, model_name):
    """Liger's real fused linear cross-entropy against the unfused answer-position head: float32, then a bf16 step
    under autocast (the loss within 1%, the gradients pointing the same way)."""
    cfg, model, batch = tiny_batch(compose, small_synth, rows, model_name)
    model.cuda()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    model.get_output_embeddings().weight.requires_grad_(False)
    forward = model.forward
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        if dtype == torch.bfloat16:  # as accelerate runs the forward in bf16 training: the loss outside autocast
            from accelerate.utils import convert_outputs_to_fp32
            model.forward = convert_outputs_to_fp32(torch.autocast("cuda", dtype=torch.bfloat16)(forward))
        fused = fused_head(model, liger=True, dtype=torch.bfloat16 if dtype == torch.bfloat16 else None)
        results = []
        for head in (None, fused):
            model.zero_grad()
            loss = answer_loss(model, batch, fused=head)
            loss.backward()
            results.append((loss.detach().float(), {n: p.grad.float().flatten() for n, p in model.named_parameters()
                                                    if p.grad is not None}))
        (own_loss, own_grads), (loss, grads) = results
        if dtype == torch.float32:
            torch.testing.assert_close(loss, own_loss, atol=1e-4, rtol=1e-4)
            for name, grad in own_grads.items():
                torch.testing.assert_close(grads[name], grad, atol=1e-4, rtol=1e-2, msg=name)
        else:
            torch.testing.assert_close(loss, own_loss, atol=0, rtol=1e-2)
            assert grads.keys() == own_grads.keys()
            for name, grad in own_grads.items():
                if grad.norm() > 0:
                    assert F.cosine_similarity(grads[name], grad, dim=0) > 0.99, name
