"""Resuming ``medvl.eval`` from its predictions.jsonl: finished rows are kept and never dropped, perplexity is
filled in for rows predicted without it, and predictions of another model setup are not mixed in."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

import medvl.evaluation.run as eval_run
from medvl.models.loading import attention_of
from medvl.runs import CheckpointError


class _Model:
    def eval(self):
        return self


def test_resume_fills_in_perplexity_of_rows_predicted_without_it(tmp_path, monkeypatch):
    rows = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
            for i in range(5)]
    # An earlier run with perplexity=false predicted the first three rows.
    earlier = [{"id": r["id"], "question": f"q{i}", "reference": "a", "prediction": f"kept {i}",
                "nll": None, "n_tokens": 0, "perplexity": None} for i, r in enumerate(rows[:3])]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier))
    generated, scored = [], []

    def fake_generate(model, processor, chunk, *args, **kwargs):
        generated.extend(r["id"] for r in chunk)
        return ["new"] * len(chunk)

    def fake_nll(model, processor, chunk, *args, **kwargs):
        scored.extend(r["id"] for r in chunk)
        return [(float(int(r["id"][1:]) + 1), 2) for r in chunk]

    def fake_answer_chunks(model, processor, chunks, *args, perplexity=False, **kwargs):
        for chunk in chunks:
            yield chunk, fake_generate(model, processor, chunk), (fake_nll(model, processor, chunk) if perplexity
                                                                   else [(None, 0)] * len(chunk))

    monkeypatch.setattr(eval_run, "answer_chunks", fake_answer_chunks)
    monkeypatch.setattr(eval_run, "answer_nll", fake_nll)
    cfg = OmegaConf.create({"prompt": {"system_prompt": None}, "batch_size": 2, "max_new_tokens": 4,
                            "perplexity": True, "data": {"root": str(tmp_path)}})
    recs = eval_run.predict(_Model(), None, rows, cfg, tmp_path)
    assert generated == ["r3", "r4"]  # finished rows are not generated again
    assert sorted(scored) == [r["id"] for r in rows]
    assert [r["prediction"] for r in recs[:3]] == ["kept 0", "kept 1", "kept 2"]
    assert [r["nll"] for r in recs] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert all(r["perplexity"] == pytest.approx(math.exp(r["nll"] / 2)) for r in recs)


def test_a_smaller_rerun_never_drops_finished_rows(tmp_path, monkeypatch):
    rows = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
            for i in range(4)]
    finished = "".join(json.dumps({"id": r["id"], "prediction": "kept", "nll": 1.0, "n_tokens": 1}) + "\n"
                       for r in rows)
    (tmp_path / "predictions.jsonl").write_text(finished)
    def generates_nothing(model, processor, chunks, *args, **kwargs):
        assert not chunks, "nothing should be generated"
        return iter(())

    monkeypatch.setattr(eval_run, "answer_chunks", generates_nothing)
    cfg = OmegaConf.create({"prompt": {"system_prompt": None}, "batch_size": 2, "max_new_tokens": 4,
                            "perplexity": False, "data": {"root": str(tmp_path)}})
    with pytest.raises(CheckpointError, match="holds 4 predicted rows, 2 of them outside this selection of 2"):
        eval_run.predict(_Model(), None, rows[:2], cfg, tmp_path)
    assert (tmp_path / "predictions.jsonl").read_text() == finished
    assert len(eval_run.predict(_Model(), None, rows, cfg, tmp_path)) == 4  # the full selection resumes


def test_predictions_of_another_dtype_or_stage_one_are_not_mixed_in(compose, tmp_path):
    cfg = compose(config_name="eval", output_dir=tmp_path)
    base = eval_run.fingerprint(cfg, None, "test")
    eval_run.check_resumable(tmp_path, base)
    (tmp_path / "predictions.jsonl").write_text("{}\n")
    cfg.model.dtype = "bfloat16"
    with pytest.raises(CheckpointError, match="dtype changed"):
        eval_run.check_resumable(tmp_path, eval_run.fingerprint(cfg, None, "test"))
    # The kernel the model loads with: the default "auto" is SDPA on a machine without flash-attn and CUDA.
    assert base["init_from"] is None and base["attn_implementation"] == attention_of(cfg.model) == "sdpa"
