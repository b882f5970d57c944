"""A few real training steps on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from medvl.config import validate
from medvl.models.loading import load_model
from medvl.training.run import build_model, train

from .conftest import small_data_overrides

STEPS = ["trainer.max_steps=4", "trainer.per_device_train_batch_size=8", "trainer.logging_steps=1",
         "trainer.save_steps=1000"]


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory, cache_dir, small_synth):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medvl.config import CONF_DIR

    out = tmp_path_factory.mktemp("instruct-run")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"cache_dir={cache_dir}", f"output_dir={out}", *STEPS,
                                          *small_data_overrides(small_synth)])
    GlobalHydra.instance().clear()
    metrics = train(cfg)
    return out, cfg, metrics


def test_run_directory_has_everything(instruct_run):
    out, cfg, metrics = instruct_run
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer.json",
                 "adapter/processor_config.json", "config.yaml", "trainer_state.json", "loss.png",
                 "train_metrics.json"):
        assert (out / name).is_file(), name
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.lora.name == "attn_ffn" and saved.stage.name == "instruct"
    assert "${" not in (out / "config.yaml").read_text()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert len([h for h in state["log_history"] if "loss" in h]) == 4
    assert metrics["train_loss"] > 0


def test_lora_weights_changed_and_frozen_weights_did_not(instruct_run):
    out, cfg, _ = instruct_run
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero
    assert all(".language_model.layers." in k for k in adapter)

    from peft import PeftModel

    base = load_model(cfg.model)
    trained = PeftModel.from_pretrained(load_model(cfg.model), out / "adapter")
    trained_base = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v
                    for k, v in trained.state_dict().items() if "lora_" not in k}
    for name, value in base.state_dict().items():
        assert torch.equal(trained_base[name], value), name


def test_stage_chaining_merges_the_earlier_adapter(instruct_run, compose, tmp_path, small_synth):
    align_out = tmp_path / "align"
    cfg = compose(["stage=align", *STEPS, "trainer.learning_rate=0.05", *small_data_overrides(small_synth)],
                  output_dir=align_out)
    train(cfg)
    assert set(json.loads((align_out / "adapter" / "adapter_config.json").read_text())["target_modules"]
               .strip("^()$").split("|")) == {r"model\.visual\.merger\.mlp\.0", r"model\.visual\.merger\.mlp\.2"}

    chained = compose(["stage=instruct", f"init_from={align_out}"], output_dir=tmp_path / "instruct")
    validate(chained)
    _, model = build_model(chained)
    base = load_model(chained.model)
    merged = model.base_model.model.state_dict()
    for name, value in base.state_dict().items():
        if name not in merged:  # LLM linears wrapped by the fresh adapter
            continue
        got = merged[name]
        if name.startswith("model.visual.merger.mlp.") and name.endswith("weight"):
            assert not torch.equal(got, value), f"{name} should carry the align adapter"
        elif "merger" not in name:
            assert torch.equal(got, value), name
    # The fresh adapter sits on the LLM only.
    assert all("language_model" in n for n, p in model.named_parameters() if p.requires_grad)


def test_length_grouping_uses_header_lengths(instruct_run, compose, small_synth):
    from medvl.data.dataset import Collator, VQADataset
    from medvl.data.format import read_jsonl
    from medvl.models.loading import load_processor
    from medvl.training.run import trainer_class, training_arguments

    _, cfg, _ = instruct_run
    processor = load_processor(cfg.model)
    ds = VQADataset(read_jsonl(small_synth / "train.jsonl"), processor, small_synth)
    trainer = trainer_class()(model=load_model(cfg.model), args=training_arguments(cfg, small_synth / "x"),
                              train_dataset=ds, data_collator=Collator(processor.tokenizer.pad_token_id))
    from medvl.training.sampler import EpochLengthGroupedSampler

    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, EpochLengthGroupedSampler)
    assert sampler.lengths == ds.lengths
    assert sorted(sampler) == list(range(len(ds)))
    # The order depends on (seed, epoch) only, so a resumed run replays the same batches.
    first = list(sampler)
    torch.manual_seed(1234)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
