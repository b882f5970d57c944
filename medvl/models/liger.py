"""Liger's Triton kernels in a loaded model (``trainer.liger=true``), placed by medvl.

Liger ships one patch function per model family (``apply_liger_kernel_to_qwen2_vl`` ...), and those functions
track transformers' model code closely. With liger-kernel 0.8.5 and transformers 5.24 they fail for the families
medvl trains most: the Qwen2-VL, Qwen2.5-VL and Qwen3-VL patches import output classes that transformers 5 no
longer has, and the Qwen2-VL/Qwen2.5-VL RoPE patch replaces ``apply_multimodal_rotary_pos_emb``, which those
modules no longer call (the multimodal sections are now folded into ``cos``/``sin`` before attention), so it would
silently change nothing. medvl therefore uses Liger's kernels directly, by what the modules are:

- every RMSNorm (the class name ends in ``RMSNorm``): Liger's RMSNorm, in the family's casting mode (Qwen:
  normalise in float32, cast back, times the weight; Gemma: float32 throughout, times ``1 + weight``);
- every ``nn.LayerNorm`` (the vision towers, Qwen2-VL's merger): Liger's LayerNorm;
- every gated MLP (``gate_proj``/``up_proj``/``down_proj``): Liger's SwiGLU where its activation is SiLU, Liger's
  GeGLU where it is tanh-GELU (Gemma 3). Qwen3-VL's dense MLP is a plain SwiGLU and gets it too. The MoE's experts
  keep transformers' grouped implementation;
- the family module's ``apply_rotary_pos_emb`` (and ``apply_rotary_pos_emb_vision`` where it has one): Liger's
  RoPE, which takes the same ``cos``/``sin``. These are module functions, so other models of that family built
  later in the same process get them too, as with Liger's own patch functions.

Liger's fused linear cross-entropy replaces the output head and the loss, not a module: medvl's loss runs the head at
the answer positions only, and with ``trainer.liger=true`` it gives the hidden states of the label tokens to Liger's
fused call instead (:func:`medvl.training.loss.fused_head`, which says where it cannot stand in for the head).

Modules are patched in place (their ``forward`` bound to Liger's), before LoRA wraps their linear layers: a
patched MLP calls its ``gate_proj``/``up_proj``/``down_proj`` submodules, which may then be LoRA layers.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections import Counter
from typing import Any

from torch import nn

from medvl.config import ConfigError
from medvl.config.families import LigerKernels, family_name, family_spec

log = logging.getLogger(__name__)

#: The rotary functions Liger's RoPE replaces in a family's transformers module (the vision one where present).
TEXT_ROPE, VISION_ROPE = "apply_rotary_pos_emb", "apply_rotary_pos_emb_vision"
#: Liger's RMSNorm settings for each casting mode (offset added to the weight, in-place backward).
RMS_NORM_MODES = {"llama": {"offset": 0.0, "in_place": True}, "gemma": {"offset": 1.0, "in_place": False}}


def transformers_module(kernels: LigerKernels):
    return importlib.import_module(kernels.module)


def check_wiring(family: Any) -> None:
    """One ConfigError, before any weights load, where the installed transformers does not have the rotary
    functions medvl puts Liger's RoPE in, as ``f(q, k, cos, sin, ...)`` (a transformers release that changed the
    family's attention)."""
    kernels = family_spec(family).liger
    module = transformers_module(kernels)
    for name in (TEXT_ROPE, VISION_ROPE):
        fn = getattr(module, name, None)
        if fn is None and name == VISION_ROPE:
            continue  # a vision tower without RoPE (Gemma 3's SigLIP)
        params = _parameters(fn) if callable(fn) else None
        if not callable(fn) or (params is not None and params[:4] != ["q", "k", "cos", "sin"]):
            import transformers

            found = "has no" if fn is None else f"has another {name}({', '.join(params)}) than"
            raise ConfigError(f"trainer.liger=true: transformers {transformers.__version__}'s {kernels.module} "
                              f"{found} {name}(q, k, cos, sin), where medvl puts Liger's RoPE for "
                              f"model.family={family_name(family)}; set trainer.liger=false")


def _parameters(fn: Any) -> list[str] | None:
    """The parameter names of a rotary function. With the ``kernels`` package installed (transformers 5.25 requires
    it) transformers wraps these functions in a module whose ``forward(*args, **kwargs)`` calls the function it
    closes over: that function's names. None where they cannot be told."""
    target = inspect.unwrap(fn)
    if isinstance(target, nn.Module):
        cells = getattr(type(target).forward, "__closure__", None) or ()
        target = next((cell.cell_contents for cell in cells if inspect.isfunction(cell.cell_contents)), None)
        if target is None:
            return None
    return list(inspect.signature(target).parameters)


def apply_liger(model: Any, family: Any) -> Counter:
    """Liger's kernels in the loaded ``model`` of ``family`` (before LoRA wraps it); returns how many modules
    and functions of each kind now run a Liger kernel, which the run log states."""
    from liger_kernel.transformers import LigerGEGLUMLP, LigerLayerNorm, LigerRMSNorm, LigerSwiGLUMLP
    from liger_kernel.transformers.rope import liger_rotary_pos_emb, liger_rotary_pos_emb_vision

    kernels = family_spec(family).liger
    norm = RMS_NORM_MODES[kernels.rms_norm]
    patched: Counter = Counter()
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and getattr(module, "weight", None) is not None:
            module.variance_epsilon = _eps(module)
            module.offset, module.in_place = norm["offset"], norm["in_place"]
            module.casting_mode, module.row_mode = kernels.rms_norm, None
            _bind(module, LigerRMSNorm)
            patched["RMSNorm"] += 1
        elif isinstance(module, nn.LayerNorm) and module.weight is not None and module.bias is not None:
            module.variance_epsilon, module.hidden_size = module.eps, module.normalized_shape
            module.impl = module.mode = None
            _bind(module, LigerLayerNorm)
            patched["LayerNorm"] += 1
        elif all(isinstance(getattr(module, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")):
            mlp = _gated_mlp(getattr(module, "act_fn", None), LigerSwiGLUMLP, LigerGEGLUMLP)
            if mlp is not None:
                _bind(module, mlp)
                patched[mlp.__name__] += 1
    source = transformers_module(kernels)
    for name, liger_fn in ((TEXT_ROPE, liger_rotary_pos_emb), (VISION_ROPE, liger_rotary_pos_emb_vision)):
        if callable(getattr(source, name, None)):
            setattr(source, name, liger_fn)
            patched[f"RoPE ({name})"] += 1
    log.info("trainer.liger=true: Liger's kernels in %s", ", ".join(f"{k} x{v}" for k, v in sorted(patched.items())))
    return patched


def _eps(module: Any) -> float:
    eps = getattr(module, "variance_epsilon", None)
    return getattr(module, "eps", 1e-6) if eps is None else eps


def _gated_mlp(act: Any, swiglu: type, geglu: type) -> type | None:
    """Liger's MLP for a gated MLP with activation ``act``: SwiGLU for SiLU, GeGLU for tanh-approximated GELU
    (transformers' ``silu`` and ``gelu_pytorch_tanh``); None for anything else, which keeps its own forward."""
    name = type(act).__name__
    if name in ("SiLU", "SiLUActivation"):
        return swiglu
    if name in ("GELUTanh", "PytorchGELUTanh") or (isinstance(act, nn.GELU) and act.approximate == "tanh"):
        return geglu
    return None


def _bind(module: Any, liger_class: type) -> None:
    """``module`` runs ``liger_class``'s forward on its own weights, and prints as ``liger_class``."""
    module.forward = liger_class.forward.__get__(module)
    module._get_name = lambda: liger_class.__name__
    if "extra_repr" in vars(liger_class):
        module.extra_repr = liger_class.extra_repr.__get__(module)
