"""Generation-based validation during training."""

from __future__ import annotations

import json

from medvl.training import callbacks
from medvl.training.run import train

from .conftest import read_scalars, small_data_overrides


def test_validation_runs_once_per_eval_step_logs_and_keeps_best(compose, tmp_path, small_synth, monkeypatch,
                                                                validation_steps):
    calls = validation_steps

    def no_trainer_evaluate(*args, **kwargs):  # full-vocabulary logits would be gathered there
        raise AssertionError("Trainer.evaluate must not run")

    monkeypatch.setattr("transformers.Trainer.evaluate", no_trainer_evaluate)
    out = tmp_path / "run"
    cfg = compose(["trainer.max_steps=4", "trainer.eval_steps=2", "trainer.eval_samples=8",
                   "trainer.per_device_train_batch_size=8", "trainer.logging_steps=1", "trainer.save_steps=1000",
                   "max_new_tokens=4", "logger=tensorboard", "trainer.metric_for_best=word_f1",
                   *small_data_overrides(small_synth)], output_dir=out)
    metrics = train(cfg)
    assert calls == [2, 4]

    scalars = read_scalars(out)
    assert [s for s, _ in scalars["eval/overall/exact_match"]] == [2, 4]
    assert any(tag.startswith("eval/closed_yes_no/") for tag in scalars)
    assert "train/loss" in scalars

    best = json.loads((out / "best" / "best.json").read_text())
    values = dict(scalars["eval/overall/word_f1"])
    assert best["metric"] == "word_f1" and best["step"] in (2, 4)
    assert abs(best["value"] - max(values.values())) < 1e-6
    assert values[best["step"]] == max(values.values())
    assert (out / "best" / "adapter_model.safetensors").exists()
    assert metrics["best_step"] == best["step"]


def test_flatten_names_groups_and_metrics():
    tables = {"overall": {"exact_match": 0.5, "count": 4}, "closed": {"exact_match": 1.0, "count": 2},
              "open": {"exact_match": 0.0, "count": 2}, "by_category": {"open_counting": {"exact_match": 0.0, "count": 2}}}
    assert callbacks.flatten(tables) == {"eval_overall/exact_match": 0.5, "eval_closed/exact_match": 1.0,
                                         "eval_open/exact_match": 0.0, "eval_open_counting/exact_match": 0.0}
