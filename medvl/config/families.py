"""The model families medvl loads, and all that medvl knows about each: one :class:`FamilySpec` per family.

Adding a model family takes two things, and no other edit:

1. one ``FamilySpec`` entry in :data:`FAMILIES`, keyed by transformers' ``model_type`` (where the vision tower,
   the merger/projector and the LLM live, pixels per image token, whether the processor resizes every image to
   one square, where Liger's kernels go, whether packing can build its positions);
2. one ``conf/model/<name>.yaml`` with ``family: <key>``, the checkpoint's hub id or local path and its pixel
   budget (``min_pixels``/``max_pixels``).

Everything that depends on the family reads it from here: ``model.family`` accepts exactly these keys
(:class:`medvl.config.schemas.Family` is built from them), LoRA targets and ``full`` components are found below
the component prefixes (:mod:`medvl.models.lora`), ``data.max_length=null`` counts the largest image's tokens
(:mod:`medvl.data.token_length`), the processor gets the pixel budget or not (:mod:`medvl.models.loading`), and
``trainer.liger`` / ``trainer.packing`` are taken or refused in one line (:mod:`medvl.models.speed`,
:mod:`medvl.training.packing`). tests/test_families.py registers a made-up family and checks each of them.
A tiny offline variant for tests is optional and test-only: :mod:`medvl.models.tiny`'s own table.

Plain data (no torch, no transformers), in the config layer, so that data, models and training may all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medvl.config.errors import ConfigError


@dataclass(frozen=True)
class Components:
    """Module-path prefixes of a model's three components (transformers 5 module names). A component's LoRA
    targets are searched below its prefixes; a ``full`` component trains every weight below them."""

    vision: tuple[str, ...]
    merger: tuple[str, ...]
    llm: tuple[str, ...]


@dataclass(frozen=True)
class LigerKernels:
    """What ``trainer.liger=true`` needs to know of a family (:mod:`medvl.models.liger` finds the RMSNorm,
    LayerNorm and gated-MLP modules itself)."""

    #: The family's transformers modeling module, whose ``apply_rotary_pos_emb`` (and vision counterpart) Liger's
    #: RoPE replaces.
    module: str
    #: How the family's RMSNorm computes: ``llama`` (normalise in float32, cast back, times the weight) or
    #: ``gemma`` (float32 throughout, times ``1 + weight``).
    rms_norm: str = "llama"


@dataclass(frozen=True)
class FamilySpec:
    """What medvl needs to know about one model family."""

    components: Components
    #: Pixels one image token covers: ``model.max_pixels // pixels_per_token`` is the largest image's token count.
    pixels_per_token: int
    #: The processor resizes every image to one square (its side is the checkpoint's: ``min_pixels = max_pixels``
    #: in the conf/model file), so it takes no pixel budget.
    fixed_image_size: bool = False
    #: Where Liger's kernels go; None: ``trainer.liger=true`` is refused.
    liger: LigerKernels | None = None
    #: Packing can build the rows' positions: the model has Qwen's 3D mrope ``get_rope_index``. False:
    #: ``trainer.packing=true`` is refused rather than trained with wrong positions.
    packing: bool = False
    #: The vision tower hands its images' (or windows') bounds to a FlashAttention-style attention in one call
    #: (Qwen-VL's ``cu_seqlens``), so PyTorch's varlen kernel can run it (:func:`medvl.models.speed.vision_attention`).
    vision_varlen: bool = False
    #: transformers' model class runs under FlashAttention 2. False (Gemma 3: it would drop the bidirectional mask
    #: over the image tokens): ``model.attn_implementation=auto`` takes SDPA, and ``flash_attention_2`` is refused.
    flash_attention: bool = True

    def prefixes(self, component: str) -> tuple[str, ...]:
        """Module-path prefixes of ``component`` (vision, merger, llm)."""
        return getattr(self.components, component)


_QWEN2_VL = Components(
    vision=("model.visual.patch_embed", "model.visual.blocks"),
    merger=("model.visual.merger",),
    llm=("model.language_model",),
)
# Qwen3-VL adds learned position embeddings to its vision encoder, and "deepstack" mergers that project the
# features of some vision blocks into the first LLM layers: they are part of the merger (the projector).
_QWEN3_VL = Components(
    vision=("model.visual.patch_embed", "model.visual.pos_embed", "model.visual.blocks"),
    merger=("model.visual.merger", "model.visual.deepstack_merger_list"),
    llm=("model.language_model",),
)


def _liger(model_type: str, **kwargs: str) -> LigerKernels:
    return LigerKernels(f"transformers.models.{model_type}.modeling_{model_type}", **kwargs)


#: Every family medvl loads, by transformers' ``model_type``. Pixels per token: 2x2 merged patches of 14 px
#: (Qwen2-VL, Qwen2.5-VL) or 16 px (Qwen3-VL); Gemma 3's one square gives 256 tokens for 896 px, 56x56 px each.
FAMILIES: dict[str, FamilySpec] = {
    "qwen2_vl": FamilySpec(_QWEN2_VL, 28 * 28, liger=_liger("qwen2_vl"), packing=True, vision_varlen=True),
    "qwen2_5_vl": FamilySpec(_QWEN2_VL, 28 * 28, liger=_liger("qwen2_5_vl"), packing=True, vision_varlen=True),
    "qwen3_vl": FamilySpec(_QWEN3_VL, 32 * 32, liger=_liger("qwen3_vl"), packing=True, vision_varlen=True),
    "qwen3_vl_moe": FamilySpec(_QWEN3_VL, 32 * 32, liger=_liger("qwen3_vl_moe"), packing=True, vision_varlen=True),
    # MedGemma (Gemma 3): a SigLIP vision tower, a projector that is one weight matrix (no nn.Linear, so no
    # LoRA: stage=align trains it with lora=none), and the Gemma 3 LLM. No mrope: packing is refused.
    "gemma3": FamilySpec(
        Components(vision=("model.vision_tower",), merger=("model.multi_modal_projector",),
                   llm=("model.language_model",)),
        56 * 56, fixed_image_size=True, liger=_liger("gemma3", rms_norm="gemma"), flash_attention=False),
}
#: ``model.family``'s default: the schema's, also for a bare namespace without the key.
DEFAULT_FAMILY = "qwen2_vl"


def family_name(value: Any) -> str:
    """``model.family`` as a string, whether the config holds the :class:`~medvl.config.schemas.Family` member
    (a composed config) or its name (a plain dict or a saved run's config.yaml)."""
    return str(getattr(value, "value", value))


def family_spec(family: Any) -> FamilySpec:
    """The :class:`FamilySpec` of ``family`` (a name or a ``Family`` member), or one ConfigError naming the known
    families: ``model.family`` is checked when the config is composed, so this only fires for a config built
    some other way (a hand-made dict, a family taken out of :data:`FAMILIES`)."""
    name = family_name(family)
    if name not in FAMILIES:
        raise ConfigError(f"model.family={name} is not a registered model family; add a FamilySpec to "
                          f"medvl.config.families.FAMILIES (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def model_family(model_cfg: Any) -> FamilySpec:
    """The :class:`FamilySpec` of a ``model`` config node (the schema's default family where it has none)."""
    return family_spec(getattr(model_cfg, "family", DEFAULT_FAMILY))
