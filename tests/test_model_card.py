"""The model card beside every adapter and merged model: metadata a Hub page reads, and the text a reader needs."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard
from omegaconf import OmegaConf

from medvl.models.card import model_card, target_patterns, write_model_card
from medvl.runs import RunDir


def fake_run(root: Path, *, stage: str, data: str, lora: str, init_from: Path | None = None,
             base: str = "Qwen/Qwen2-VL-7B-Instruct") -> Path:
    """A run directory as medvl.train leaves it, without weights (the card reads only configs)."""
    (root / "adapter").mkdir(parents=True)
    targets = "^(model\\.language_model\\.layers\\.0\\.self_attn\\.q_proj|model\\.language_model\\.layers\\.1\\.self_attn\\.q_proj)$"
    (root / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "use_rslora": True, "use_dora": False,
         "target_modules": targets, "base_model_name_or_path": base}))
    cfg = {"model": {"name": "7b", "name_or_path": base, "family": "qwen2_vl"}, "stage": {"name": stage},
           "data": {"name": data, "eval_split": "test"}, "lora": {"name": lora},
           "prompt": {"system_prompt": "Answer with a single word or phrase."},
           "init_from": str(init_from) if init_from else None}
    OmegaConf.save(OmegaConf.create(cfg), root / "config.yaml")
    return root


def test_card_of_a_two_stage_adapter_names_base_chain_lora_and_scores(tmp_path: Path) -> None:
    align = fake_run(tmp_path / "align", stage="align", data="llava_med_align", lora="merger")
    instruct = fake_run(tmp_path / "instruct", stage="instruct", data="slake", lora="attn_ffn", init_from=align)
    metrics = {"overall": {"exact_match": 0.61234, "closed_accuracy": 0.8, "count": 1061, "not_a_metric": "x"},
               "run": {"data": "slake", "split": "test"}}
    path = write_model_card(RunDir.from_ckpt(instruct), instruct / "adapter", metrics=metrics)

    card = ModelCard.load(path)  # what the Hub parses
    assert card.data.base_model == "Qwen/Qwen2-VL-7B-Instruct"
    assert card.data.library_name == "peft"
    results = {(r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {("slake", "test", "exact_match"): 0.6123, ("slake", "test", "closed_accuracy"): 0.8}
    text = card.text
    # The stage chain, first stage first, each with its data and LoRA group.
    assert text.index("| `align` | align | llava_med_align | merger |") < text.index(
        "| `instruct` | instruct | slake | attn_ffn |")
    assert "rank `r`: 8, `lora_alpha`: 16" in text and "rsLoRA: True" in text
    assert "target modules (2): `model.language_model.layers.*.self_attn.q_proj`" in text
    assert "| 1061 | 0.6123 | 0.8000 |" in text
    assert "Answer with a single word or phrase." in text
    assert "The earlier stages' weights are not in this adapter" in text


def test_card_of_a_merged_model_from_a_local_base_has_no_hub_base(tmp_path: Path) -> None:
    local = tmp_path / "base-model"
    local.mkdir()
    run = fake_run(tmp_path / "run", stage="instruct", data="vqa_rad", lora="attn", base=str(local))
    card = model_card(RunDir.from_ckpt(run), merged=True)
    assert card.data.base_model is None  # a local folder is no hub id; the text still names it
    assert card.data.library_name == "transformers" and card.data.eval_results is None
    assert str(local) in card.text and "PeftModel" not in card.text


def test_target_patterns_collapse_layers() -> None:
    regex = "^(a\\.layers\\.0\\.q|a\\.layers\\.11\\.q|a\\.merger\\.mlp\\.0)$"
    assert target_patterns(regex) == (3, ["a.layers.*.q", "a.merger.mlp.0"])
    assert target_patterns(["q_proj", "v_proj"]) == (2, ["q_proj", "v_proj"])
