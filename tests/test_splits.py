"""Reading prepared splits at start-up: an empty or missing split is one line that says where the rows went,
and prepared data alone (without ``data.root``) is enough to evaluate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medvl.config import ConfigError
from medvl.data.format import read_jsonl

from .conftest import REPO, make_dataset, prepare_cfg


def prepare_data(tmp_path: Path, cache_dir: Path, *extra: str, break_split: str | None = None) -> dict:
    """The small dataset of test_data_lengths, prepared; ``break_split``: every image of it missing."""
    from medvl.data.format import write_jsonl
    from medvl.data.prepare import prepare

    root, out = tmp_path / "raw", tmp_path / "prepared"
    splits = make_dataset(root)
    if break_split:
        write_jsonl(root / f"{break_split}.jsonl", [{**r, "image": "imgs/gone.png"} for r in splits[break_split]])
    report = prepare(prepare_cfg(cache_dir, [f"data.root={root}", f"data.dir={out}", *extra]))
    return {"root": root, "out": out, "report": report}


def _no_weights(monkeypatch) -> None:
    import medvl.evaluation.run as eval_run
    import medvl.training.run as run

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded before the split was checked")

    monkeypatch.setattr(run, "build_model", refuse)
    monkeypatch.setattr(eval_run, "load_for_eval", refuse)


def test_a_train_split_with_no_kept_rows_is_one_line(tmp_path, cache_dir, compose, monkeypatch) -> None:
    """It was ``IndexError: argmax(): Expected reduction dim ...`` from inside the Trainer."""
    from medvl.training.run import train

    data = prepare_data(tmp_path, cache_dir, break_split="train")
    assert data["report"]["splits"]["train"]["kept"] == 0
    _no_weights(monkeypatch)
    cfg = compose(["data=llava", f"data.root={data['root']}", f"data.dir={data['out']}", "trainer.max_steps=1"])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "the train split at" in message and "has no rows" in message
    assert "prepare rejected all 4 (image_missing 4)" in message
    assert str(data["out"] / "rejects.jsonl") in message


def test_an_evaluation_split_with_no_rows_is_one_line(tmp_path, cache_dir, compose, monkeypatch) -> None:
    from medvl.evaluation.run import evaluate

    data = prepare_data(tmp_path, cache_dir, break_split="test")
    _no_weights(monkeypatch)
    cfg = compose(["data=llava", f"data.root={data['root']}", f"data.dir={data['out']}"], config_name="eval")
    with pytest.raises(ConfigError, match=r"test split .* has no rows: prepare rejected all 4 .*rejects.jsonl"):
        evaluate(cfg)


def test_a_missing_split_names_the_prepare_command(tmp_path, cache_dir, compose, monkeypatch) -> None:
    from medvl.training.run import train

    data = prepare_data(tmp_path, cache_dir, "splits=[test]")
    _no_weights(monkeypatch)
    cfg = compose(["data=llava", f"data.root={data['root']}", f"data.dir={data['out']}"])
    with pytest.raises(FileNotFoundError) as err:
        train(cfg)
    message = str(err.value)
    assert "no train split at" in message and "report.json lists no train split" in message
    assert f"python -m medvl.prepare data=llava data.root={data['root']}" in message


def test_a_merged_model_evaluates_prepared_data_without_data_root(tmp_path, cache_dir, compose, tiny_dir) -> None:
    """``medvl.eval +ckpt=<merged model> data=vqa_rad data.dir=<prepared>``: images are found through the
    folder prepare recorded (absolute, even when prepare was given a relative data.root)."""
    from medvl.evaluation.run import evaluate

    data = prepare_data(tmp_path, cache_dir)
    assert Path(data["report"]["data"]["root"]).is_absolute()
    out = tmp_path / "eval"
    overrides = [f"+ckpt={tiny_dir}", "data=vqa_rad", f"data.dir={data['out']}", "max_new_tokens=2",
                 "metrics=[exact_match]", "perplexity=false"]
    cfg = compose(overrides, config_name="eval", output_dir=out)
    assert OmegaConf.is_missing(cfg.data, "root")
    tables = evaluate(cfg, overrides)["ckpt"]
    assert tables["overall"]["count"] == len(read_jsonl(data["out"] / "test.jsonl")) == 4
    assert OmegaConf.load(out / "eval_config.yaml").data.root == str(data["root"])


def test_without_data_root_or_a_report_it_is_one_line(tmp_path) -> None:
    """Hand-made rows (no report.json) and no data.root: one line, not MissingMandatoryValue."""
    make_dataset(tmp_path / "mine")
    proc = subprocess.run([sys.executable, "-m", "medvl.eval", "data=vqa_rad", f"data.dir={tmp_path / 'mine'}",
                           f"hydra.run.dir={tmp_path / 'eval'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "MissingMandatoryValue" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("medvl: data=vqa_rad: data.root is not set") and "add data.root=" in last


def test_an_empty_split_is_one_line(cache_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("")
    proc = subprocess.run([sys.executable, "-m", "medvl.eval", "data.format=medvl", f"data.root={data}",
                           f"data.dir={data}", "metrics=[exact_match]", f"hydra.run.dir={tmp_path / 'out'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MEDVL_CACHE": str(cache_dir), "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"medvl: data=synth: the test split at {data / 'test.jsonl'} has no rows"]
