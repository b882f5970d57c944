"""BERTScore compares the layer bert-score tuned for a model, also when the model is a local copy of it (offline
nodes load BERTScore models from directories), so numbers agree with bert-score's own for that model."""

from __future__ import annotations

import json
import logging

import pytest
from bert_score.utils import model2layers
from transformers import BertConfig, RobertaConfig

from medvl.evaluation.metrics.bertscore import _bertscore_layers


@pytest.fixture
def copies(tmp_path):
    """Config-only local copies laid out as users get them."""
    roberta = RobertaConfig(num_hidden_layers=24, hidden_size=64, num_attention_heads=2, intermediate_size=64)
    mbert = BertConfig(num_hidden_layers=12, hidden_size=64, num_attention_heads=2, intermediate_size=64)
    dirs = {"local_dir": tmp_path / "models" / "roberta-large",  # huggingface-cli download ... --local-dir
            "hub_cache": tmp_path / "hub" / "models--FacebookAI--roberta-large" / "snapshots" / "0123abc",
            "mbert": tmp_path / "zh" / "bert-base-multilingual-cased",
            "renamed": tmp_path / "models" / "my-scorer",
            "unknown": tmp_path / "models" / "some-bert"}
    for name, path in dirs.items():
        (mbert if name in ("mbert", "unknown") else roberta).save_pretrained(path)
    # A copy whose folder name says nothing: the name its config records.
    config = json.loads((dirs["renamed"] / "config.json").read_text())
    (dirs["renamed"] / "config.json").write_text(json.dumps({**config, "_name_or_path": "roberta-large"}))
    return dirs


def test_a_local_copy_of_a_known_model_gets_bert_scores_layer_for_it(copies):
    assert model2layers["roberta-large"] == 17 and model2layers["bert-base-multilingual-cased"] == 9
    for name in ("local_dir", "hub_cache", "renamed"):
        assert _bertscore_layers(str(copies[name]), None) == 17, name
    assert _bertscore_layers(str(copies["mbert"]), None) == 9
    assert _bertscore_layers("roberta-large", None) == 17
    assert _bertscore_layers("FacebookAI/roberta-large", None) == 17  # the Hub's current name for it


def test_a_set_layer_wins_and_an_unknown_model_gets_its_last_layer_with_a_warning(copies, caplog):
    assert _bertscore_layers(str(copies["local_dir"]), 5) == 5
    with caplog.at_level(logging.WARNING, logger="medvl.evaluation.metrics.bertscore"):
        assert _bertscore_layers(str(copies["unknown"]), None) == 12
    assert "no tuned layer for" in caplog.text and "bertscore.num_layers" in caplog.text
