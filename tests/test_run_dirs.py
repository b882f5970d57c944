"""medvl.runs: what a run directory holds, its config and its stage chain (no weights are loaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medvl.runs import CheckpointError, RunDir


def _run(root: Path, init_from: Path | str | None = None, kind: str = "adapter", **config) -> Path:
    """A run dir as medvl.train leaves it: weights in adapter/ or model/, config.yaml beside them."""
    weights = root / kind
    weights.mkdir(parents=True)
    (weights / ("adapter_config.json" if kind == "adapter" else "config.json")).write_text(json.dumps({}))
    (root / "config.yaml").write_text(OmegaConf.to_yaml({"init_from": None if init_from is None else str(init_from),
                                                         **config}))
    return root


def test_a_run_dir_its_adapter_dir_and_a_model_dir_are_found(tmp_path):
    run = _run(tmp_path / "align", prompt={"name": "custom"})
    for named in (run, run / "adapter"):
        found = RunDir.from_ckpt(named)
        assert (found.path, found.kind, found.name) == (run / "adapter", "adapter", "align")
        assert found.config.prompt.name == "custom"
    full = _run(tmp_path / "full", kind="model")
    assert (RunDir.from_ckpt(full).path, RunDir.from_ckpt(full).kind) == (full / "model", "model")
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    assert (RunDir.from_ckpt(merged).kind, RunDir.from_ckpt(merged).config) == ("model", None)


def test_the_best_checkpoint_reads_the_runs_config(tmp_path):
    run = _run(tmp_path / "instruct", init_from=_run(tmp_path / "align"))
    (run / "best").mkdir()
    (run / "best" / "adapter_config.json").write_text("{}")
    assert RunDir.from_ckpt(run / "best").init_from == (tmp_path / "align").resolve()


@pytest.mark.parametrize("ckpt, message", [
    ("", "+ckpt= is empty"), ("missing", "does not exist"), ("empty", "is not a medvl run directory")])
def test_a_bad_ckpt_is_one_checkpoint_error(tmp_path, ckpt, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=message.replace("+", r"\+")) as err:
        RunDir.from_ckpt(tmp_path / ckpt if ckpt else "")
    assert "\n" not in str(err.value)


def test_init_from_without_an_adapter_names_what_works(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"; name a medvl.train run directory \(with adapter/ or model/\)"):
        RunDir.from_init_from(tmp_path)


def test_stage_chain_lists_every_earlier_stage_nearest_first(tmp_path):
    align = _run(tmp_path / "align")
    instruct = _run(tmp_path / "instruct", init_from=align)
    third = _run(tmp_path / "third", init_from=instruct)
    assert [r.root for r in RunDir.from_init_from(third).stage_chain()] == [instruct.resolve(), align.resolve()]
    assert RunDir.from_ckpt(third / "adapter").stage_chain() == RunDir.from_ckpt(third).stage_chain()
    assert RunDir.from_init_from(align).stage_chain() == []


def test_a_chain_that_reaches_a_whole_model_stops_there_in_load_order(tmp_path):
    full = _run(tmp_path / "full", kind="model")
    lora = _run(tmp_path / "lora", init_from=full)
    assert [(r.kind, r.name) for r in RunDir.from_ckpt(lora).stage_chain()] == [("model", "full")]


def test_a_missing_or_looping_earlier_stage_is_refused(tmp_path):
    run = _run(tmp_path / "run", init_from=tmp_path / "gone")
    with pytest.raises(CheckpointError, match="init_from=.*gone, which does not exist"):
        RunDir.from_ckpt(run).stage_chain()
    a = tmp_path / "a"
    _run(a, init_from=tmp_path / "b")
    _run(tmp_path / "b", init_from=a)
    with pytest.raises(CheckpointError, match="init_from chain loops back to"):
        RunDir.from_ckpt(a).stage_chain()


def test_ckpt_config_fills_groups_the_command_line_leaves(tmp_path):
    run = RunDir.from_ckpt(_run(tmp_path / "run", model={"name": "7b", "dtype": "bfloat16"},
                                data={"name": "slake", "max_eval_samples": None}))
    # As composed from the command line below: its keys keep their values, the rest of each group is the run's.
    cfg = OmegaConf.create({"model": {"name": "tiny", "dtype": "float32"}, "data": {"name": "synth",
                                                                                    "max_eval_samples": 64}})
    run.apply_config(cfg, ["+ckpt=run", "model.dtype=float32", "data.max_eval_samples=64"])
    assert (cfg.model.name, cfg.model.dtype) == ("7b", "float32")
    assert (cfg.data.name, cfg.data.max_eval_samples) == ("slake", 64)
    cfg = OmegaConf.create({"model": {"name": "tiny"}, "data": {"name": "synth"}})
    run.apply_config(cfg, ["data=synth"])
    assert (cfg.model.name, cfg.data.name) == ("7b", "synth")


def test_the_weights_of_a_run_stop_at_the_first_whole_model_beneath_it(tmp_path):
    full = _run(tmp_path / "full", kind="model", init_from=tmp_path / "deleted")  # its weights hold that stage
    lora = _run(tmp_path / "lora", init_from=full)
    assert [(s.kind, s.name) for s in RunDir.from_ckpt(lora).weight_stages()] == [("adapter", "lora"), ("model", "full")]
    with pytest.raises(CheckpointError, match="does not exist"):
        RunDir.from_ckpt(lora).stage_chain()
