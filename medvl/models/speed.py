"""Training speed and memory on a GPU: the attention kernel, Liger's fused kernels and QLoRA's 4-bit base.

- ``model.attn_implementation=auto`` (the presets' default) picks FlashAttention 2 where ``flash_attn`` is installed,
  a GPU is present and the weights are in half precision (FlashAttention runs in bf16/fp16 only), else PyTorch's
  SDPA, and logs which (:func:`resolve_attn_implementation`). For packed training (``trainer.packing``) without
  flash_attn it takes ``torch_varlen``, PyTorch's own varlen kernel, where that runs (:mod:`medvl.models.varlen`);
  the Qwen-VL vision towers take that kernel on a GPU without flash_attn, packing or not (:func:`vision_attention`).
- ``trainer.liger=true``: Liger's Triton kernels (RMSNorm, LayerNorm, RoPE, SwiGLU/GeGLU) in the loaded model
  (:mod:`medvl.models.liger`).
- ``lora.qlora=true``: the base weights load in 4-bit NF4 through bitsandbytes, with double quantization and bf16
  compute (:func:`quantization_config`); peft's ``prepare_model_for_kbit_training`` then readies the model.

Each option that needs a GPU or an optional package is refused in one line by :func:`check_speed_options`,
which ``medvl.preflight`` and ``train()`` run before any weights load.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from medvl.config import ConfigError, lora_component
from medvl.config.families import FAMILIES, family_name, family_spec
from medvl.models.liger import check_wiring
from medvl.models.varlen import VARLEN, VISION_VARLEN, kernel_unavailable, vision_kernel_unavailable
from medvl.models.varlen import register as register_varlen

log = logging.getLogger(__name__)

#: The attention a model's ``flash_attention_2`` needs, by transformers' name.
FLASH_ATTN_PACKAGE = "flash_attn"
HALF_DTYPES = ("bfloat16", "float16")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _half(dtype: Any) -> bool:
    """Whether weights of ``dtype`` (a ``torch.dtype`` or its name) are bf16/fp16, the dtypes FlashAttention-style
    kernels run in."""
    return str(dtype).removeprefix("torch.") in HALF_DTYPES


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_attn_implementation(name: str, dtype: Any = None, *, quiet: bool = False, packing: bool = False,
                                family: Any = None) -> str:
    """``model.attn_implementation`` as transformers takes it: ``auto`` becomes the fastest one installed.

    ``dtype`` is the dtype the weights load in (a ``torch.dtype`` or its name); FlashAttention is taken only for
    bf16/fp16 weights, as it runs in nothing else. ``packing`` (``trainer.packing``): without flash_attn, ``auto``
    takes PyTorch's own varlen kernel (:mod:`medvl.models.varlen`) where it runs on this GPU, so that packed rows
    need no block-diagonal mask. ``torch_varlen`` is registered with transformers whenever it is the answer.
    ``family``: a model family whose transformers class does not run under FlashAttention 2 (Gemma 3) gets SDPA.
    """
    name = str(getattr(name, "value", name))
    if name != "auto":
        if name == VARLEN:
            register_varlen()
        return name
    half = _half(dtype)
    flash = family is None or family_spec(family).flash_attention
    if flash and _installed(FLASH_ATTN_PACKAGE) and _cuda() and half:
        if not quiet:
            log.info("model.attn_implementation=auto: flash_attention_2")
        return "flash_attention_2"
    why = (f"transformers' {family_name(family)} model does not run under FlashAttention 2" if not flash else
           "flash_attn is not installed" if not _installed(FLASH_ATTN_PACKAGE) else
           "no CUDA GPU" if not _cuda() else f"the weights load in {str(dtype).removeprefix('torch.')}, "
           f"not bf16/fp16")
    if packing and _cuda() and half:
        unavailable = kernel_unavailable(_cuda_index())
        if unavailable is None:
            register_varlen()
            if not quiet:
                log.info("model.attn_implementation=auto: torch_varlen (%s; packed rows run PyTorch's "
                         "FlashAttention varlen kernel)", why)
            return VARLEN
        why += f"; PyTorch's varlen kernel: {unavailable}"
    if not quiet:
        log.info("model.attn_implementation=auto: sdpa (%s)", why)
    return "sdpa"


def vision_attention(model: Any, family: Any, requested: Any, attn: str, dtype: Any, device: Any = None) -> str:
    """The vision tower's attention, set on the loaded ``model``: PyTorch's varlen kernel (one non-causal call per
    block over the images' or windows' bounds, :data:`medvl.models.varlen.VISION_VARLEN`) where the family's
    vision tower hands over its bounds, ``model.attn_implementation`` is ``auto`` or ``torch_varlen`` and the
    model runs on a GPU (``device``: where it is put; None: the GPU where there is one) in bf16/fp16 where the
    kernel's test call at the vision tower's head size passes, without flash_attn (under ``flash_attention_2`` the
    vision tower already makes one call per block). Else it stays on ``attn``. Returns the vision tower's attention.

    The name is set on the loaded model's config alone (it is not saved): a model built from that live config with
    ``_from_config`` would take it for a Hub FlashAttention kernel, so medvl builds none that way.
    """
    requested = str(getattr(requested, "value", requested))
    half = _half(dtype)
    on_gpu = _cuda() and (device is None or str(device).startswith(("cuda", "auto")))
    if (not family_spec(family).vision_varlen or requested not in ("auto", VARLEN) or "flash" in attn
            or not (on_gpu and half)):
        return attn
    vision = model.config.vision_config
    head_dim = vision.hidden_size // vision.num_heads
    unavailable = vision_kernel_unavailable(_cuda_index(), head_dim)
    if unavailable is not None:
        log.info("Vision attention: %s, one call per image or window (PyTorch's varlen kernel: %s)", attn, unavailable)
        return attn
    register_varlen()
    vision._attn_implementation = VISION_VARLEN
    log.info("Vision attention: PyTorch's FlashAttention varlen kernel, one call per block over the images' "
             "(Qwen2.5-VL: windows') bounds, instead of one %s call per image or window", attn)
    return VISION_VARLEN


def _cuda_index() -> int:
    """This process's GPU: ``LOCAL_RANK``'s under torchrun/deepspeed (each rank tests the kernel on its own GPU,
    not every rank on GPU 0, where each would leave a CUDA context), else the current device."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    return int(local) if local is not None else torch.cuda.current_device()


def check_speed_options(cfg: Any) -> None:
    """One ConfigError, before any weights load, for a speed option this machine or config cannot run."""
    attn = str(getattr(cfg.model.attn_implementation, "value", cfg.model.attn_implementation))
    if attn == "flash_attention_2" and not _installed(FLASH_ATTN_PACKAGE):
        raise ConfigError("model.attn_implementation=flash_attention_2 but flash_attn is not installed; "
                          "install flash-attn, or set model.attn_implementation=auto (FlashAttention 2 where "
                          "installed, else sdpa)")
    if cfg.trainer.liger:
        _check_liger(cfg)
    if cfg.lora.qlora:
        _check_qlora(cfg)


def _check_liger(cfg: Any) -> None:
    if family_spec(cfg.model.family).liger is None:
        supported = [name for name, spec in FAMILIES.items() if spec.liger]
        raise ConfigError(f"trainer.liger=true: Liger has no kernels for model.family={family_name(cfg.model.family)} "
                          f"(supported: {', '.join(supported)}); set trainer.liger=false")
    _require_gpu_package("trainer.liger", "Liger's kernels are Triton GPU kernels", "liger_kernel", "liger-kernel",
                         "liger")
    check_wiring(cfg.model.family)


def _check_qlora(cfg: Any) -> None:
    comp = lora_component(cfg)
    if comp is None or cfg.lora.name == "none":
        raise ConfigError("lora.qlora=true puts LoRA adapters on a 4-bit base, but this config trains no LoRA "
                          "adapters; choose a lora preset (e.g. lora=attn_ffn) or set lora.qlora=false")
    full = [c for c in ("vision", "merger", "llm") if str(getattr(cfg.stage[c], "value", cfg.stage[c])) == "full"]
    if full:
        raise ConfigError(f"lora.qlora=true: stage.{full[0]}=full would train 4-bit weights, which cannot be "
                          f"trained; set stage.{full[0]}=frozen, or lora.qlora=false")
    zero = (cfg.deepspeed.config or {}).get("zero_optimization") or {}
    if zero.get("stage") == 3:  # ZeRO-3 would partition bitsandbytes' packed uint8 weights as if they were bf16
        raise ConfigError(f"lora.qlora=true with deepspeed={cfg.deepspeed.name} (ZeRO-3) is not supported; use "
                          f"deepspeed=zero2 or deepspeed=none (a 4-bit 7B fits one GPU), or lora.qlora=false")
    _require_gpu_package("lora.qlora", "bitsandbytes' 4-bit matrix products", "bitsandbytes", "bitsandbytes", "qlora")


def _require_gpu_package(option: str, why_gpu: str, module: str, package: str, extra: str) -> None:
    """``<option>=true`` needs a CUDA GPU and ``package`` (medvl's ``extra``): one ConfigError naming what is
    missing and how to get it, or how to turn the option off."""
    if not _cuda():
        raise ConfigError(f"{option}=true needs a CUDA GPU ({why_gpu}) and none is visible; set {option}=false")
    if not _installed(module):
        raise ConfigError(f"{option}=true but {package} is not installed; pip install 'medvl[{extra}]', or set "
                          f"{option}=false")


def quantization_config(cfg: Any):
    """``from_pretrained``'s ``quantization_config`` for ``lora.qlora``: 4-bit NF4 with double quantization and
    bf16 compute (the QLoRA paper's recipe); None without ``lora.qlora``."""
    if not cfg.lora.qlora:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def prepare_quantized(model: Any) -> Any:
    """peft's preparation of a 4-bit model for training: the weights that stay unquantized (embeddings, norms,
    output head) in float32. Gradient checkpointing is turned on later, once, by
    :func:`medvl.training.run.enable_checkpointing`."""
    from peft import prepare_model_for_kbit_training

    log.info("lora.qlora=true: the base is 4-bit NF4 (bitsandbytes), LoRA adapters train on top")
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
