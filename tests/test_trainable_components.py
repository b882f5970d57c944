"""A component trained fully beside another's LoRA adapters: which weights train (patch embedding, head)."""

from __future__ import annotations

from medvl.config import validate
from medvl.models.loading import load_model
from medvl.models.lora import apply_training_setup, trainable_parameter_names


def test_vision_full_beside_llm_lora(compose, tiny_dir):
    cfg = compose(["stage=instruct", "stage.vision=full"])
    validate(cfg)
    base = load_model(cfg.model)
    model = apply_training_setup(load_model(cfg.model), cfg)
    names = trainable_parameter_names(model)
    vision = {n for n, _ in base.named_parameters()
              if n.startswith("model.visual.") and not n.startswith("model.visual.merger.")}
    copies = {n.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
              for n in names if "modules_to_save" in n}
    assert copies == vision  # patch embedding included, merger not
    assert all("language_model" in n for n in names if "lora_" in n)


def test_vision_full_without_lora_includes_the_patch_embedding(compose, tiny_dir):
    cfg = compose(["stage=align", "lora=none", "stage.vision=full"])
    validate(cfg)
    base = load_model(cfg.model)
    names = trainable_parameter_names(apply_training_setup(load_model(cfg.model), cfg))
    assert names == {n for n, _ in base.named_parameters() if n.startswith("model.visual.")}


def test_llm_full_beside_merger_lora_trains_the_head(compose, tiny_dir):
    cfg = compose(["stage=align", "stage.llm=full"])
    validate(cfg)
    names = trainable_parameter_names(apply_training_setup(load_model(cfg.model), cfg))
    assert "base_model.model.lm_head.modules_to_save.default.weight" in names
    assert any(".language_model.modules_to_save.default.layers.0." in n for n in names)
    assert not any("visual.blocks" in n for n in names)
