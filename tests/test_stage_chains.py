"""Stage chains: a later stage trains on top of every earlier stage's weights, and its run records where they are."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from medvl.config import validate
from medvl.models.loading import load_model
from medvl.models.lora import apply_training_setup
from medvl.training.run import build_model


def _fake_stage(compose, tmp_path, name: str, overrides: list[str], init_from: str | None):
    """A run dir as training leaves it (adapter/ + config.yaml), with random non-zero LoRA weights."""
    cfg = compose(overrides)
    validate(cfg)
    model = apply_training_setup(load_model(cfg.model), cfg)
    gen = torch.Generator().manual_seed(len(name))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    out = tmp_path / name
    model.save_pretrained(out / "adapter")
    (out / "config.yaml").write_text(OmegaConf.to_yaml({"init_from": init_from}))
    return out


def _merged(model: torch.nn.Module, adapter) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def test_chaining_from_a_chained_run_keeps_every_earlier_stage(compose, tmp_path, tiny_dir):
    align = _fake_stage(compose, tmp_path, "align", ["stage=align"], None)
    instruct = _fake_stage(compose, tmp_path, "instruct", ["stage=instruct"], str(align))
    cfg = compose(["stage=instruct", "lora=attn", f"init_from={instruct}"])
    validate(cfg)
    _, model = build_model(cfg)

    expected = _merged(_merged(load_model(cfg.model), align / "adapter"), instruct / "adapter").state_dict()
    got = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v
           for k, v in model.state_dict().items() if "lora_" not in k}
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_train_records_init_from_as_an_absolute_path(compose, tmp_path, tiny_dir, monkeypatch):
    from medvl.training import run

    align = _fake_stage(compose, tmp_path, "align", ["stage=align"], None)
    monkeypatch.chdir(tmp_path)
    cfg = compose(["stage=instruct", "init_from=align"])

    class Stop(Exception):
        pass

    def stop(cfg):
        raise Stop

    monkeypatch.setattr(run, "build_model", stop)
    with pytest.raises(Stop):
        run.train(cfg)
    assert cfg.init_from == str(align.resolve())
