"""The evaluation after training of a run trained again into its own directory: the earlier evaluation, of weights
the run has since replaced, is moved aside (not mixed in, and not a failure after hours of training)."""

from __future__ import annotations

import json
import logging

from omegaconf import OmegaConf

import medvl.evaluation.run as eval_run
from medvl.runs import RunDir
from medvl.training import run

from .conftest import small_data_overrides


def test_an_evaluation_of_replaced_weights_is_moved_aside(compose, small_synth, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    cfg = compose(small_data_overrides(small_synth), output_dir=out)
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"first weights")
    OmegaConf.save(cfg, out / "config.yaml")

    def evaluate(eval_cfg):  # what medvl.eval leaves: the fingerprint of what it evaluated, and predictions
        eval_dir = out / "eval"
        eval_dir.mkdir(exist_ok=True)
        fp = eval_run.fingerprint(eval_cfg, RunDir.from_ckpt(out), eval_cfg.split)
        (eval_dir / "eval_fingerprint.json").write_text(json.dumps(fp))
        (eval_dir / "predictions.jsonl").write_text('{"id": "r0", "prediction": "of the first weights"}\n')
        return {"ckpt": {"overall": {}}}

    monkeypatch.setattr(eval_run, "evaluate", evaluate)
    run.evaluate_run(cfg, out)
    run.evaluate_run(cfg, out)  # the same weights: the evaluation resumes in place
    assert [p.name for p in tmp_path.joinpath("run").glob("eval*")] == ["eval"]

    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"weights trained again")
    with caplog.at_level(logging.WARNING, logger="medvl.training.run"):
        run.evaluate_run(cfg, out)
    (moved,) = out.glob("eval.before-*")
    assert (moved / "predictions.jsonl").read_text() == '{"id": "r0", "prediction": "of the first weights"}\n'
    assert "held the evaluation of weights this run has since replaced; moved to" in caplog.text
    assert (out / "eval" / "predictions.jsonl").is_file()  # evaluated again
