"""Which weights ``medvl.eval`` evaluates for a ``+ckpt``: an earlier stage merged under the adapter, a warning for
an adapter put on another base model, and a refusal where it would silently evaluate the base model."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import medvl.evaluation.run as eval_run
from medvl.runs import CheckpointError, RunDir


@pytest.mark.parametrize("overrides, message", [
    (["+ckpt="], "+ckpt= is empty"),
    (["compare_base=true"], "compare_base=true compares the base model with a checkpoint"),
])
def test_ckpt_that_would_silently_evaluate_the_base_model_is_refused(compose, tmp_path, overrides, message):
    out = tmp_path / "eval"
    cfg = compose([*overrides, "metrics=[exact_match]"], config_name="eval", output_dir=out)
    with pytest.raises(CheckpointError, match=message.replace("+", r"\+")):
        eval_run.evaluate(cfg, overrides)
    assert not (out / "eval_config.yaml").exists() and not (out / "predictions.jsonl").exists()


def test_a_run_trained_on_top_of_an_earlier_stage_is_evaluated_with_that_stage_merged(compose, tmp_path):
    """Stage 2 (``init_from=<stage-1 run>``) trains its LoRA on base + stage-1 weights; eval and export
    must rebuild that, not put the stage-2 adapter on the bare base."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from medvl.evaluation.run import load_for_eval

    cfg = compose([], config_name="eval")

    def base():
        return load_for_eval(cfg, None, device="cpu")[0]

    stage1, run = tmp_path / "stage1", tmp_path / "stage2"
    # A stage-1 merger adapter that changes the weights (random B instead of zeros).
    get_peft_model(base(), LoraConfig(r=2, target_modules=r".*visual\.merger\.mlp\.0", init_lora_weights=False)
                   ).save_pretrained(stage1 / "adapter")
    get_peft_model(base(), LoraConfig(r=2, target_modules=r".*language_model.*q_proj")).save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"init_from": str(stage1)}))

    model, _ = load_for_eval(cfg, RunDir.from_ckpt(run), device="cpu")
    expected = PeftModel.from_pretrained(base(), str(stage1 / "adapter")).merge_and_unload()
    name = next(n for n, _ in expected.named_parameters() if "visual.merger.mlp.0.weight" in n)
    got = dict(model.named_parameters())[name]
    assert not torch.equal(expected.get_parameter(name), base().get_parameter(name))
    assert torch.allclose(got, expected.get_parameter(name), atol=1e-6)

    (run / "config.yaml").write_text(OmegaConf.to_yaml({"init_from": str(tmp_path / "gone")}))
    with pytest.raises(CheckpointError, match="init_from=.*does not exist"):
        load_for_eval(cfg, RunDir.from_ckpt(run), device="cpu")


def test_an_adapter_put_on_another_base_model_is_warned_about(compose, tmp_path, caplog):
    from peft import LoraConfig, get_peft_model

    from medvl.evaluation.run import load_for_eval

    tiny = compose([], config_name="eval")
    get_peft_model(load_for_eval(tiny, None, device="cpu")[0],
                   LoraConfig(r=2, target_modules=r".*language_model.*q_proj")).save_pretrained(tmp_path / "lone")
    with caplog.at_level("WARNING", logger="medvl.models.loading"):
        load_for_eval(tiny, RunDir.from_ckpt(tmp_path / "lone"), device="cpu")
        assert "trained on" not in caplog.text
        load_for_eval(compose(["model=tiny25"], config_name="eval"), RunDir.from_ckpt(tmp_path / "lone"),
                      device="cpu")
    assert f"was trained on {tiny.model.name_or_path} but is applied to" in caplog.text
