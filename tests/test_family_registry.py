"""The family registry (medvl.config.families) is the one place a model family is described: a made-up family
registered there, and nowhere else, is picked up by every consumer (LoRA targets by component prefix, the image
tokens of data.max_length, the processor's pixel budget, the packing and Liger checks)."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch
from omegaconf import OmegaConf

from medvl.config import ConfigError, Family, validate
from medvl.config.families import FAMILIES, Components, FamilySpec, LigerKernels
from medvl.data.token_length import max_image_tokens, resolve_max_length
from medvl.models.liger import apply_liger
from medvl.models.loading import processor_budget
from medvl.models.lora import component_prefixes, target_modules
from medvl.models.speed import check_speed_options
from medvl.training.packing import check_packing, packable_families

#: A family none of medvl's code names: its components live under module paths no real family uses.
TOY = "toy_vl"
TOY_COMPONENTS = Components(vision=("model.eye",), merger=("model.bridge",), llm=("model.brain",))
ATTN_FFN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def _block() -> torch.nn.Module:
    """A transformer block's Linears under their usual names (in the vision tower and the LLM alike)."""
    linear = lambda: torch.nn.Linear(2, 2)  # noqa: E731
    return torch.nn.ModuleDict({
        "self_attn": torch.nn.ModuleDict({p: linear() for p in ("q_proj", "k_proj", "v_proj", "o_proj")}),
        "mlp": torch.nn.ModuleDict({p: linear() for p in ("gate_proj", "up_proj", "down_proj")}),
    })


def _toy_model() -> torch.nn.Module:
    model = torch.nn.ModuleDict({
        "eye": torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([_block()])}),
        "bridge": torch.nn.ModuleDict({"mlp": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GELU(),
                                                                  torch.nn.Linear(2, 2))}),
        "brain": torch.nn.ModuleDict({"layers": torch.nn.ModuleList([_block(), _block()])}),
    })
    return torch.nn.ModuleDict({"model": model})


def _toy_cfg(compose, overrides: list[str]):
    """A composed, validated config with ``model.family`` set to the made-up family. The Family enum is built from
    the registry when medvl.config is imported, so a family registered in a test (not in the source) goes into
    a plain copy of the config, as a saved run's config.yaml holds it."""
    cfg = compose(overrides)
    validate(cfg)
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    plain.model.family = TOY
    return plain


@pytest.fixture
def toy(monkeypatch):
    """Register the made-up family (tests change its spec with ``dataclasses.replace``)."""
    spec = FamilySpec(TOY_COMPONENTS, pixels_per_token=20 * 20)
    monkeypatch.setitem(FAMILIES, TOY, spec)
    return spec


def test_model_family_accepts_exactly_the_registered_families():
    assert [member.value for member in Family] == list(FAMILIES)


def test_lora_targets_are_found_below_a_new_familys_component_prefixes(compose, toy):
    model = _toy_model()
    instruct = _toy_cfg(compose, ["stage=instruct", "lora=attn_ffn"])
    # The vision tower has the same leaf names as the LLM: only the LLM's prefix scopes them in.
    assert target_modules(model, instruct) == [f"model.brain.layers.{i}.{s}" for i in range(2) for s in ATTN_FFN]
    align = _toy_cfg(compose, ["stage=align", "lora=merger"])
    assert target_modules(model, align) == ["model.bridge.mlp.0", "model.bridge.mlp.2"]
    assert component_prefixes(align, "vision") == ("model.eye",)


def test_a_new_familys_image_tokens_set_the_derived_max_length(compose, toy, monkeypatch):
    cfg = _toy_cfg(compose, ["model.max_pixels=160000"])  # 400 x 400 px: 400 tokens of 20 x 20 px
    assert cfg.data.max_length is None
    assert max_image_tokens(cfg.model) == 400
    assert resolve_max_length(cfg.model, cfg.data) == 400 + cfg.data.text_tokens
    assert processor_budget(cfg.model) == {"size": {"shortest_edge": cfg.model.min_pixels,
                                                    "longest_edge": 160000}}
    monkeypatch.setitem(FAMILIES, TOY, dataclasses.replace(toy, fixed_image_size=True))
    assert processor_budget(cfg.model) == {}  # its processor resizes every image to one square


def test_packing_and_liger_follow_a_new_familys_spec(compose, toy, monkeypatch):
    monkeypatch.setattr("medvl.models.speed._cuda", lambda: False)  # the same refusal on a GPU machine
    packed = _toy_cfg(compose, ["trainer.packing=true"])
    with pytest.raises(ConfigError, match=rf"^trainer.packing=true: model.family={TOY} is not supported "
                                          rf"\(packing builds Qwen-VL mrope positions; supported: qwen2_vl, "):
        check_packing(packed)
    liger = _toy_cfg(compose, ["trainer.liger=true"])
    with pytest.raises(ConfigError, match=rf"^trainer.liger=true: Liger has no kernels for model.family={TOY} "):
        check_speed_options(liger)

    # Its transformers module (here a made-up one) holds the rotary function Liger's RoPE replaces.
    modeling = types.ModuleType("toy_modeling")
    modeling.apply_rotary_pos_emb = lambda q, k, cos, sin, unsqueeze_dim=1: (q, k)
    monkeypatch.setitem(sys.modules, "toy_modeling", modeling)
    monkeypatch.setitem(FAMILIES, TOY, dataclasses.replace(toy, packing=True, liger=LigerKernels("toy_modeling")))
    check_packing(packed)
    assert TOY in packable_families()
    with pytest.raises(ConfigError, match="^trainer.liger=true needs a CUDA GPU"):
        check_speed_options(liger)  # past the family check: what is left is the machine's
    pytest.importorskip("liger_kernel")
    from liger_kernel.transformers import LigerSwiGLUMLP, liger_rotary_pos_emb

    model = _toy_model()
    for block in model["model"]["brain"]["layers"]:
        block["mlp"].act_fn = torch.nn.SiLU()
    patched = apply_liger(model, liger.model.family)
    assert modeling.apply_rotary_pos_emb is liger_rotary_pos_emb
    assert patched["LigerSwiGLUMLP"] == 2 and model["model"]["brain"]["layers"][0]["mlp"]._get_name() == (
        LigerSwiGLUMLP.__name__)


@pytest.mark.parametrize("model_type, expected", [
    ("gemma3", r"^model.family=qwen2_vl but \S+ is a gemma3 checkpoint; set model.family=gemma3$"),
    ("llava", r"^\S+ is a llava checkpoint, a model family medvl has no component map for \(known: qwen2_vl, .*\); "
              r"add a FamilySpec for llava to medvl.config.families.FAMILIES"),
])
def test_a_checkpoint_of_another_or_no_registered_family_is_refused_before_anything_loads(compose, tmp_path,
                                                                                         model_type, expected):
    """Its config.json's model_type names its family: with another family's component map a run would train the
    wrong modules, or none, and fail in its first step (a MedGemma directory given to a Qwen2-VL preset)."""
    from medvl.models.loading import ModelLoadError, load_model, load_processor

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(f'{{"model_type": "{model_type}"}}')  # no weights: refused before them
    cfg = compose(["model=tiny", "model.build_tiny=false", f"model.name_or_path={ckpt}"])
    for load in (load_model, load_processor):
        with pytest.raises(ModelLoadError, match=expected):
            load(cfg.model)
