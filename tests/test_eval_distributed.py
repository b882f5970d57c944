"""Evaluating models at scale: data-parallel ranks (``torchrun -m medvl.eval``) merge into a one-process run's
predictions, row for row and in order, and resume; ``device=auto_shard`` loads one model with
``device_map="auto"`` (a model larger than one GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import medvl.evaluation.run as eval_run
from medvl.config import ConfigError
from medvl.evaluation import ranks
from medvl.evaluation.run import evaluate, merge_rank_files, read_done

from .conftest import REPO, small_data_overrides

# Two batches per rank of the 48 test rows; perplexity on, so the NLLs are merged too.
EVAL = ["model=tiny", "batch_size=12", "max_new_tokens=4", "metrics=[exact_match]", "perplexity=true"]


def run_eval(compose, out: Path, overrides: list[str]) -> dict:
    return evaluate(compose(overrides, config_name="eval", output_dir=out), overrides)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def launch_two_ranks(out: Path, overrides: list[str], cache_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDVL_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MEDVL_RUN_DIR"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medvl.eval",
         *overrides, f"hydra.run.dir={out}"], cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.mark.slow
def test_two_ranks_merge_into_the_one_process_predictions_and_resume(compose, small_synth, tiny_dir, cache_dir,
                                                                     tmp_path):
    overrides = [*EVAL, *small_data_overrides(small_synth)]
    one = run_eval(compose, tmp_path / "one", overrides)["base"]
    reference = lines(tmp_path / "one" / "predictions.jsonl")
    assert len(reference) == 48

    launch_two_ranks(tmp_path / "two", overrides, cache_dir)
    merged = lines(tmp_path / "two" / "predictions.jsonl")
    assert [r["id"] for r in merged] == [r["id"] for r in reference]  # the split's order
    for ours, ref in zip(merged, reference):
        assert (ours["prediction"], ours["nll"], ours["n_tokens"]) == (ref["prediction"], ref["nll"], ref["n_tokens"])
    tables = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert tables["overall"] == one["overall"]
    assert not list((tmp_path / "two").glob("predictions.rank*"))
    assert len(list(tmp_path.rglob(".hydra"))) == 1  # rank 0's only (the one-process run writes none here)

    # An interrupted data-parallel run: some rows in predictions.jsonl, some in rank 1's file (a torn last
    # line in it), under another world size than now. Those rows are kept, not predicted again.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "eval_fingerprint.json").write_text((tmp_path / "two" / "eval_fingerprint.json").read_text())
    kept = [{**r, "prediction": "KEPT"} for r in reference]
    (resumed / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept[:10]))
    (resumed / "predictions.rank1.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in kept[30:35]) + '{"id": "torn')
    launch_two_ranks(resumed, overrides, cache_dir)
    after = lines(resumed / "predictions.jsonl")
    assert [r["id"] for r in after] == [r["id"] for r in reference]
    was_kept = [i for i, r in enumerate(after) if r["prediction"] == "KEPT"]
    assert was_kept == [*range(10), *range(30, 35)]
    assert all(after[i]["prediction"] == reference[i]["prediction"] for i in range(48) if i not in was_kept)
    assert not list(resumed.glob("predictions.rank*"))


def test_merge_rank_files_keeps_every_row_once_and_the_latest_record(tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"id": "a", "v": 1}\n{"id": "b", "v": 1}\n{"id": "x", "v')
    (tmp_path / "predictions.rank0.jsonl").write_text('{"id": "c", "v": 1}\n')
    (tmp_path / "predictions.rank1.jsonl").write_text('{"id": "b", "v": 2}\n{"id": "d", "v": 1}\n{"id": "y')
    merge_rank_files(tmp_path)
    done = read_done(tmp_path / "predictions.jsonl")
    assert {k: v["v"] for k, v in done.items()} == {"a": 1, "b": 2, "c": 1, "d": 1}
    assert not list(tmp_path.glob("predictions.rank*"))


def test_ranks_take_every_nth_batch(compose, small_synth, tiny_dir, tmp_path, monkeypatch):
    """Rank 1 of 2 predicts batches 1 and 3 of 12 rows into its own file and returns nothing to score."""
    cfg = compose([*EVAL, *small_data_overrides(small_synth), "perplexity=false"], config_name="eval",
                  output_dir=tmp_path)
    rows = eval_run.load_split(cfg.data, cfg.data.eval_split)
    model, processor = eval_run.load_for_eval(cfg, None)
    monkeypatch.setattr(ranks, "rank_and_world", lambda: (1, 2))
    assert eval_run.predict(model, processor, rows, cfg, tmp_path) is None
    predicted = [r["id"] for r in lines(tmp_path / "predictions.rank1.jsonl")]
    assert predicted == [r["id"] for r in rows[12:24] + rows[36:48]]
    assert not (tmp_path / "predictions.jsonl").exists() or not lines(tmp_path / "predictions.jsonl")


def test_auto_shard_loads_with_device_map_auto_and_predicts_the_same(compose, small_synth, tiny_dir, tmp_path,
                                                                     monkeypatch):
    from transformers import AutoModelForImageTextToText

    maps = []
    real = AutoModelForImageTextToText.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        maps.append(kwargs.get("device_map"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", classmethod(spy))
    overrides = [*EVAL, *small_data_overrides(small_synth), "data.max_eval_samples=12", "perplexity=false"]
    run_eval(compose, tmp_path / "cpu", [*overrides, "device=cpu"])
    run_eval(compose, tmp_path / "shard", [*overrides, "device=auto_shard"])
    assert maps == [None, "auto"]
    shard, cpu = lines(tmp_path / "shard" / "predictions.jsonl"), lines(tmp_path / "cpu" / "predictions.jsonl")
    assert [(r["id"], r["prediction"]) for r in shard] == [(r["id"], r["prediction"]) for r in cpu]


def test_auto_shard_inside_torchrun_is_one_line(compose, small_synth, tmp_path, monkeypatch):
    monkeypatch.setattr(ranks, "rank_and_world", lambda: (0, 2))
    overrides = [*EVAL, *small_data_overrides(small_synth), "device=auto_shard"]
    with pytest.raises(ConfigError, match="device=auto_shard .* one process") as exc:
        run_eval(compose, tmp_path / "out", overrides)
    assert "\n" not in str(exc.value)


def test_eval_ranks_use_the_default_run_dir(monkeypatch):
    from medvl.training.distributed import REPLICA_OVERRIDES, rank_argv

    for var in ("MEDVL_RUN_DIR", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert rank_argv(["data=slake"], run_dir_required=False) == ["data=slake", *REPLICA_OVERRIDES]
    with pytest.raises(SystemExit, match="needs one run directory"):
        rank_argv(["data=slake"])  # medvl.train's default dir has a timestamp


def test_eval_launcher_starts_with_its_command():
    path = REPO / "launchers" / "eval_multi_gpu.sh"
    assert os.access(path, os.X_OK)
    lines_ = path.read_text().splitlines()
    assert lines_[1].startswith("# ") and "launchers/eval_multi_gpu.sh" in lines_[1]
    assert "torchrun --standalone --nproc_per_node" in path.read_text() and "-m medvl.eval" in path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_eval_ranks_wait_for_rank_zeros_scoring_on_gloo_with_hours_of_room(monkeypatch):
    """The ranks only wait for one another, for rank 0's scoring and reports above all: on a GPU node too they
    join a gloo group (NCCL's watchdog would abort a wait past 10 minutes) whose timeout leaves hours."""
    from datetime import timedelta

    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: joined.setdefault("device", index))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, timeout=None: joined.update(backend=backend, timeout=timeout))
    ranks.start()
    assert joined == {"device": 1, "backend": "gloo", "timeout": ranks.BARRIER_TIMEOUT}
    assert ranks.BARRIER_TIMEOUT >= timedelta(hours=1)
