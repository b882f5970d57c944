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

from .conftest import adapter_run


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


def test_rank_files_of_an_interrupted_data_parallel_run_are_not_mixed_with_another_setup(compose, tmp_path):
    """A torchrun evaluation killed before its final merge leaves only predictions.rank<R>.jsonl: a rerun with
    another setup is refused as it would be with predictions.jsonl."""
    cfg = compose(config_name="eval", output_dir=tmp_path)
    eval_run.check_resumable(tmp_path, eval_run.fingerprint(cfg, None, "test"))
    (tmp_path / "predictions.rank1.jsonl").write_text('{"id": "r0", "prediction": "long answer"}\n')
    eval_run.check_resumable(tmp_path, eval_run.fingerprint(cfg, None, "test"))  # the same setup resumes
    cfg.max_new_tokens = 4
    with pytest.raises(CheckpointError, match="generation changed"):
        eval_run.check_resumable(tmp_path, eval_run.fingerprint(cfg, None, "test"))


def test_an_earlier_stage_trained_again_is_not_mixed_in(compose, tmp_path):
    """The instruct run's predictions depend on the align stage merged beneath it: retraining that stage in place
    changes the fingerprint, so its stale predictions are refused."""
    from medvl.runs import RunDir

    align = adapter_run(tmp_path / "align")
    instruct = RunDir.from_ckpt(adapter_run(tmp_path / "instruct", init_from=align))
    cfg = compose(config_name="eval", output_dir=tmp_path)
    out = tmp_path / "eval"
    out.mkdir()
    first = eval_run.fingerprint(cfg, instruct, "test")
    assert [entry[0] for entry in first["earlier_weights"]] == [str(align / "adapter")]
    eval_run.check_resumable(out, first)
    (out / "predictions.jsonl").write_text("{}\n")
    eval_run.check_resumable(out, eval_run.fingerprint(cfg, instruct, "test"))
    (align / "adapter" / "adapter_model.safetensors").write_bytes(b"stage weights, trained again")
    with pytest.raises(CheckpointError, match="earlier_weights changed"):
        eval_run.check_resumable(out, eval_run.fingerprint(cfg, instruct, "test"))
    # A run of one stage records no earlier weights (its fingerprint is what it was before there were any).
    assert "earlier_weights" not in eval_run.fingerprint(cfg, RunDir.from_ckpt(align), "test")
    # An eval directory written before the fingerprint had them resumes (and is rescored).
    older = {k: v for k, v in first.items() if k != "earlier_weights"}
    (out / "eval_fingerprint.json").write_text(json.dumps(older))
    eval_run.check_resumable(out, eval_run.fingerprint(cfg, instruct, "test"))


def test_a_merged_model_is_evaluated_with_its_runs_settings(compose, tmp_path):
    """medvl.export writes the run's model, data and prompt settings beside the merged weights (no init_from: the
    earlier stages are merged in), so +ckpt=<merged dir> evaluates with the run's pixel budget and prompt, as
    +ckpt=<run dir> does, rather than the command line's defaults."""
    from medvl.models.export import merged_config
    from medvl.runs import CONFIG_FILE, RunDir

    trained = compose(["model.min_pixels=12544", "prompt=custom"], output_dir=tmp_path / "run")
    run_dir = tmp_path / "run"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_config.json").write_text("{}")
    OmegaConf.save(OmegaConf.merge(trained, {"init_from": str(tmp_path / "align")}), run_dir / CONFIG_FILE)
    run = RunDir.from_ckpt(run_dir)
    export_cfg = compose(config_name="export", output_dir=tmp_path / "export")
    run.apply_config(export_cfg, [])

    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    OmegaConf.save(merged_config(run, export_cfg), merged / CONFIG_FILE)
    found = RunDir.from_ckpt(merged)
    assert found.kind == "model" and found.init_from is None and found.stage_chain() == []

    cfg = compose(config_name="eval", output_dir=tmp_path / "eval")
    assert cfg.model.min_pixels != 12544 and cfg.prompt.name != "custom"
    found.apply_config(cfg, [])
    assert cfg.model.min_pixels == 12544 and cfg.prompt.name == "custom"
    assert cfg.prompt.system_prompt == trained.prompt.system_prompt and cfg.data.name == trained.data.name
    assert merged_config(RunDir(run.path, "adapter"), export_cfg) is None  # a bare adapter dir has no config
