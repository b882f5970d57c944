"""Best-checkpoint selection of the validation callback: which metrics, which direction, across a resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from medvl.config import ConfigError
from medvl.data.format import make_row
from medvl.training.callbacks import GenerationEvalCallback
from medvl.training.run import train

from .conftest import read_scalars, small_data_overrides

ROWS = [make_row(f"r{i}", None, f"question {i}?", answer, answer_type="OPEN", category="open_location")
        for i, answer in enumerate(["left lung", "liver", "right kidney", "heart"])]


class FakeModel:
    training = True

    def train(self, mode: bool = True):
        self.training = mode

    def parameters(self):
        return iter(())

    def save_pretrained(self, path, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "adapter_model.safetensors").write_text("weights")


class FakeProcessor:
    def save_pretrained(self, path):
        (Path(path) / "processor_config.json").write_text("{}")


def _callback(tmp_path: Path, metrics: list[str], metric_for_best: str | None) -> GenerationEvalCallback:
    return GenerationEvalCallback(FakeProcessor(), ROWS, tmp_path, eval_steps=1, system_prompt=None, batch_size=2,
                                  max_new_tokens=4, metrics=metrics, metric_for_best=metric_for_best,
                                  best_dir=tmp_path / "best")


def _step(callback: GenerationEvalCallback, step: int) -> None:
    state = SimpleNamespace(global_step=step)
    callback.on_step_end(None, state, SimpleNamespace(should_log=False), model=FakeModel())


@pytest.mark.parametrize("key,metrics,best", [
    ("trainer.metric_for_best", ["exact_match"], "closed_acc"),
    ("trainer.eval_metrics", ["exact_match", "word_f11"], "exact_match"),
])
def test_unknown_metrics_are_refused_at_start(tmp_path: Path, key: str, metrics: list[str], best: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _callback(tmp_path, metrics, best)


def test_metric_for_best_outside_eval_metrics_is_still_computed(tmp_path: Path, monkeypatch) -> None:
    answers = iter([["lung", "liver", "kidney", "x"], ["left lung", "liver", "right kidney", "x"]])
    def fake_answer_chunks(model, processor, chunks, *args, **kwargs):
        step_answers, first = next(answers), 0
        for chunk in chunks:
            yield chunk, step_answers[first: first + len(chunk)], [(None, 0)] * len(chunk)
            first += len(chunk)

    monkeypatch.setattr("medvl.evaluation.generate.answer_chunks", fake_answer_chunks)
    callback = _callback(tmp_path, ["exact_match"], "word_f1")
    _step(callback, 1)
    _step(callback, 2)
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["metric"] == "word_f1" and best["step"] == 2
    assert best["value"] == pytest.approx(0.75)


def test_lower_perplexity_is_better_and_a_resume_keeps_the_best(tmp_path: Path, monkeypatch) -> None:
    values = iter([5.0, 3.0, 4.0, 3.5, 2.0])

    def fake_run(self, model, step):
        return {"overall": {"perplexity": next(values), "count": 4}, "closed": {}, "open": {}, "by_category": {}}

    monkeypatch.setattr(GenerationEvalCallback, "run", fake_run)
    first = _callback(tmp_path, ["exact_match"], "perplexity")
    for step in (1, 2, 3):
        _step(first, step)
    assert (first.best["step"], first.best["value"]) == (2, 3.0)

    # Killed after step 3 and resumed from it: a worse value at step 4 must not replace best/.
    resumed = _callback(tmp_path, ["exact_match"], "perplexity")
    resumed.on_train_begin(None, SimpleNamespace(global_step=3), None)
    _step(resumed, 4)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 2
    _step(resumed, 5)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 5


def test_validation_perplexity_selects_the_lowest(compose, tmp_path, small_synth, validation_steps) -> None:
    calls = validation_steps
    out = tmp_path / "run"
    # eval_steps coincides with save_steps and with the last step: still one validation per step.
    cfg = compose(["trainer.max_steps=4", "trainer.eval_steps=2", "trainer.save_steps=2", "trainer.eval_samples=8",
                   "trainer.per_device_train_batch_size=8", "trainer.logging_steps=1", "max_new_tokens=4",
                   "logger=tensorboard", "trainer.metric_for_best=perplexity", *small_data_overrides(small_synth)],
                  output_dir=out)
    train(cfg)
    assert calls == [2, 4]
    scalars = read_scalars(out)
    values = dict(scalars["eval/overall/perplexity"])
    assert sorted(values) == [2, 4] and all(v > 1 for v in values.values())
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["metric"] == "perplexity" and best["value"] == pytest.approx(min(values.values()), rel=1e-6)
    assert values[best["step"]] == min(values.values())
