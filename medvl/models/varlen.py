"""``torch_varlen``: padding-free attention for packed rows from PyTorch alone, without the flash-attn package.

PyTorch 2.10 and later ship FlashAttention's variable-length kernel as ``torch.nn.attention.varlen.varlen_attn``.
Under ``trainer.packing`` the collator gives every text layer the packed row's ``cu_seq_lens_q/k`` and
``max_length_q/k`` (:mod:`medvl.training.packing`); :func:`varlen_attention_forward`, registered with transformers
as the attention ``torch_varlen``, runs causal attention inside each segment on them: no attention across rows,
and no work or memory spent on the blocks between rows that a block-diagonal mask under SDPA still computes.

Padded batches and generation (left padding, KV cache) go through transformers' SDPA unchanged.

The vision tower (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) attends within each image, and Qwen2.5-VL's windowed blocks within
each window of 64 patches. Under SDPA transformers splits the patches and makes one SDPA call per image or window:
for eight 1280-token images, about 640 calls in each of Qwen2.5-VL's 28 windowed blocks. It hands the bounds to
the attention function in one call only where the attention's name says "flash" (``is_flash_attention_requested``).
:data:`VISION_VARLEN` is this module's function under such a name, set on the vision config alone after loading
(:func:`medvl.models.speed.vision_attention`): the vision tower then makes one non-causal kernel call per block.

The kernel runs on a CUDA GPU in bf16/fp16 with a head size that is a multiple of 8, up to 256. Anywhere else (the CPU, float32) the
packed rows run as one SDPA call per row: the same result, padding-free, slower. :func:`kernel_unavailable` says
whether the kernel runs forward and backward on this GPU; ``model.attn_implementation=auto`` takes ``torch_varlen``
for packed training only where it does (:func:`medvl.models.speed.resolve_attn_implementation`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

#: The name transformers knows this attention by (``model.attn_implementation=torch_varlen``).
VARLEN = "torch_varlen"
#: The same function for a vision tower: "flash" in the name is what makes transformers' Qwen-VL vision attention
#: pass its images' (or windows') bounds as ``cu_seq_lens`` in one call instead of splitting them.
VISION_VARLEN = "torch_varlen_flash_style"
HALF = (torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256  # FlashAttention's largest head size


def register() -> None:
    """Make ``torch_varlen`` an attention transformers can load a model with (idempotent).

    Its mask function is SDPA's where there is a padding mask (a padded batch, generation), and none otherwise
    (:func:`_mask`).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionInterface.register(VISION_VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, _mask)


def _mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """SDPA's mask where there is padding (a padded batch, left-padded generation); none without a padding mask.

    A packed row comes with no ``attention_mask``: its rows are kept apart by ``cu_seq_lens``, so the
    block-diagonal mask transformers would build from the restarting positions (total x total, 4 GB at 64k
    tokens) is not built. Without padding and without ``cu_seq_lens`` attention is plain causal SDPA.
    """
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def _varlen_attn():
    """PyTorch's ``varlen_attn``, or None before 2.10."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, *, cu_seq_lens_q: torch.Tensor | None = None,
                             cu_seq_lens_k: torch.Tensor | None = None, max_length_q: int | None = None,
                             max_length_k: int | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: ``query`` ``[1, heads, total, head_dim]``, ``key``/``value`` with the
    key-value heads; returns ``[1, total, heads, head_dim]``. Attention inside each ``cu_seq_lens_q`` segment:
    causal for a packed row of text, non-causal for a vision tower's images or windows (``is_causal=False``).
    Without ``cu_seq_lens_q`` (a padded batch, generation), transformers' SDPA. ``cu_seq_lens_k``/``max_length_k``
    are taken as equal to the query's (self-attention)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"torch_varlen: a packed batch is one row of concatenated rows, got {query.shape[0]} rows")
    if kwargs.get("sliding_window"):
        raise ValueError("torch_varlen: sliding-window attention is not supported; use attn_implementation=sdpa")
    # Self-attention inside each segment: the key bounds are the query bounds (cu_seq_lens_k, max_length_k are the
    # same numbers; comparing them on the GPU would stall every layer).
    compute = _compute_dtype(query)
    if _kernel_applies(query, scaling, dropout, compute):
        out = _kernel(*(t.to(compute) for t in (query, key, value)), cu_seq_lens_q, scaling, max_length_q, causal)
        return out.to(query.dtype), None
    bounds = cu_seq_lens_q.tolist()
    pieces = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                     dropout=dropout, scaling=scaling, is_causal=causal, **kwargs)[0]
              for a, b in zip(bounds, bounds[1:])]
    return torch.cat(pieces, dim=1), None


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype the kernel computes in: the autocast dtype for float32 inputs under CUDA autocast (QLoRA's
    float32 residual stream reaches attention in float32 even under bf16 mixed precision), else the query's."""
    if query.is_cuda and query.dtype == torch.float32 and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return query.dtype


def _kernel_applies(query: torch.Tensor, scaling: float | None, dropout: float,
                    dtype: torch.dtype | None = None) -> bool:
    """Whether PyTorch's varlen kernel can compute this call in ``dtype`` (default: the query's), else one SDPA
    call per row does."""
    varlen = _varlen_attn()
    dtype = query.dtype if dtype is None else dtype
    if varlen is None or not query.is_cuda or dtype not in HALF or not supported_head_dim(query.shape[-1]):
        return False
    if dropout:  # the kernel's dropout is fixed at 0
        return False
    default_scale = query.shape[-1] ** -0.5
    return "scale" in _params(varlen) or scaling is None or abs(scaling - default_scale) < 1e-12


def supported_head_dim(head_dim: int) -> bool:
    """FlashAttention's head sizes: multiples of 8 up to 256."""
    return head_dim % 8 == 0 and head_dim <= MAX_HEAD_DIM


@functools.cache
def _params(fn) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


def _kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_lens: torch.Tensor,
            scaling: float | None, max_length: int | None, causal: bool = True) -> torch.Tensor:
    """One call of ``varlen_attn`` on the packed segments, in the layout it takes (``[total, heads, head_dim]``).

    Its keyword arguments differ between PyTorch releases: 2.10 takes ``is_causal``; later ones take
    ``window_size=(-1, 0)`` for causal attention (``(-1, -1)``: none), ``scale`` and ``enable_gqa``. Without
    ``enable_gqa`` the key-value heads are repeated to the query heads, as transformers' ``repeat_kv`` does.
    """
    varlen = _varlen_attn()
    params = _params(varlen)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    extra: dict[str, Any] = {}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    if "window_size" in params:
        extra["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        extra["is_causal"] = causal
    if "scale" in params and scaling is not None:
        extra["scale"] = scaling
    cu = cu_seq_lens.to(device=q.device, dtype=torch.int32)
    longest = int(max_length) if max_length is not None else int((cu[1:] - cu[:-1]).max())
    return varlen(q, k, v, cu, cu, longest, longest, **extra)[None]


@functools.cache
def kernel_unavailable(device_index: int = 0) -> str | None:
    """None when PyTorch's varlen kernel runs forward and backward on this CUDA device and computes causal
    attention inside each segment (bf16, grouped-query heads, segments longer than 128 tokens, where PyTorch may
    choose another backend), compared with SDPA segment by segment; else why not, in a few words. Tried once per
    process and device."""
    return _unavailable(device_index) or _call_fails(torch.device("cuda", device_index), causal=True)


@functools.cache
def vision_kernel_unavailable(device_index: int, head_dim: int) -> str | None:
    """As :func:`kernel_unavailable`, for a vision tower's non-causal attention at its own head size (80 for
    Qwen2/2.5-VL, 72 for Qwen3-VL): segments both up to 128 patches (Qwen2.5-VL's windows) and longer (whole
    images), which PyTorch may send to different backends."""
    if not supported_head_dim(head_dim):
        return f"its head size {head_dim} is not a multiple of 8 up to {MAX_HEAD_DIM}"
    return _unavailable(device_index) or _call_fails(torch.device("cuda", device_index), causal=False,
                                                     head_dim=head_dim)


def _unavailable(device_index: int) -> str | None:
    if _varlen_attn() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (PyTorch 2.10 or later)"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def _call_fails(device: torch.device, causal: bool, head_dim: int = 128) -> str | None:
    """One forward and backward of the kernel on ``device`` in bf16, compared with float32 SDPA per segment: None
    where it matches, else why not. Causal: 8 query and 2 key-value heads, segments of 150/333/64 tokens.
    Non-causal: 16 heads, segments of 64, 150, 49 and 333 tokens."""
    kind = "causal" if causal else "non-causal"
    try:
        lengths, kv_heads, heads = ([150, 333, 64], 2, 8) if causal else ([64, 150, 49, 333], 16, 16)
        generator = torch.Generator(device=device).manual_seed(0)
        cu = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
        query = torch.randn(1, heads, sum(lengths), head_dim, device=device, generator=generator)
        key, value = (torch.randn(1, kv_heads, sum(lengths), head_dim, device=device, generator=generator)
                      for _ in range(2))
        query, key, value = (t.bfloat16().requires_grad_() for t in (query, key, value))
        out = _kernel(query, key, value, cu, None, max(lengths), causal)
        out.float().sum().backward()
        if not all(torch.isfinite(t).all() for t in (out, query.grad, key.grad, value.grad)):
            return f"its {kind} test call gave non-finite values"
        error = _relative_error(out[0], query.detach(), key.detach(), value.detach(), cu.tolist(), causal)
        if error > 2e-2:
            return f"its test call differs from {kind} SDPA per row by {error:.3f} (relative)"
    except Exception as exc:  # noqa: BLE001 - any failure means: not this kernel here
        return f"its test call failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _relative_error(out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    bounds: list[int], causal: bool = True) -> float:
    """|out - reference| / |reference| for ``out`` ``[total, heads, dim]`` against float32 SDPA per segment."""
    repeat = query.shape[1] // key.shape[1]
    pieces = []
    for a, b in zip(bounds, bounds[1:]):
        q, k, v = (t[0, :, a:b].float() for t in (query, key, value))
        k, v = k.repeat_interleave(repeat, dim=0), v.repeat_interleave(repeat, dim=0)
        pieces.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(0, 1))
    reference = torch.cat(pieces)
    return float((out.detach().float() - reference).norm() / reference.norm())
