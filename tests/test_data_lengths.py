"""Row lengths at real scale: max_length follows the model's pixel budget, evaluation splits never shrink for
their length, training drops are counted and said, and data prepared for one model is re-checked (or
refused) when another trains on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medvl.config import CONF_DIR, ConfigError
from medvl.data.format import read_jsonl

from .conftest import make_dataset, prepare_cfg, run_eval

MAX_LENGTH = 80


def run_prepare(tmp_path: Path, cache_dir: Path) -> dict:
    from medvl.data.prepare import prepare

    root, out = tmp_path / "raw", tmp_path / "prepared"
    make_dataset(root)
    cfg = prepare_cfg(cache_dir, [f"data.root={root}", f"data.dir={out}", f"data.max_length={MAX_LENGTH}"])
    return {"root": root, "out": out, "report": prepare(cfg)}


@pytest.fixture
def prepared(tmp_path, cache_dir) -> dict:
    return run_prepare(tmp_path, cache_dir)


# --- the default max_length ----------------------------------------------------------------


@pytest.mark.parametrize("model", ["2b", "7b", "32b", "tiny"])
@pytest.mark.parametrize("data", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
def test_default_max_length_holds_the_largest_image_the_model_allows(compose, model, data) -> None:
    """The derived limit is the largest image the pixel budget allows (max_pixels / 28², the
    processor's own resize rule) plus the data config's text allowance, so no image alone is too long."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from medvl.data.token_length import resolve_max_length

    cfg = compose([f"model={model}", f"data={data}"])
    assert cfg.data.max_length is None  # derived unless a user sets it
    max_pixels = cfg.model.max_pixels
    # The largest image at any of a range of aspect ratios gets no more tokens than the budget allows.
    largest = max(h * w // (28 * 28) for h, w in (smart_resize(4000, int(4000 * r), 28, cfg.model.min_pixels,
                                                                max_pixels) for r in (0.2, 0.5, 0.75, 1, 4 / 3, 3)))
    assert resolve_max_length(cfg.model, cfg.data) == max_pixels // (28 * 28) + cfg.data.text_tokens
    assert resolve_max_length(cfg.model, cfg.data) >= largest + 64
    if model == "7b":
        assert resolve_max_length(cfg.model, cfg.data) > 1280  # 1024 dropped every image above ~0.8 MP


def test_an_explicit_max_length_wins(compose) -> None:
    from medvl.data.token_length import describe_max_length, resolve_max_length

    cfg = compose(["model=7b", "data=slake", "data.max_length=4096"])
    assert resolve_max_length(cfg.model, cfg.data) == 4096
    assert "set by data.max_length" == describe_max_length(cfg.model, cfg.data)
    derived = compose(["model=7b", "data=slake", "data.text_tokens=100"])
    assert resolve_max_length(derived.model, derived.data) == 1380
    assert "1280 image tokens" in describe_max_length(derived.model, derived.data)


def test_prepare_measures_against_the_derived_limit(tmp_path, cache_dir) -> None:
    from medvl.data.prepare import prepare

    root = tmp_path / "raw"
    make_dataset(root)
    report = prepare(prepare_cfg(cache_dir, [f"data.root={root}", f"data.dir={tmp_path / 'out'}",
                                             "data.text_tokens=500"]))
    assert report["max_length"] == 16 + 500  # tiny: 12544 / 28² image tokens
    assert "derived" in report["max_length_rule"] and report["model"]["max_image_tokens"] == 16
    assert report["total"]["rejected"] == 0


# --- evaluation rows are kept, training drops are said ------------------------------------------


def test_long_evaluation_rows_are_kept_and_long_training_rows_counted(tmp_path, cache_dir, capsys) -> None:
    prepared = run_prepare(tmp_path, cache_dir)
    report, out = prepared["report"], prepared["out"]
    test_ids = [r["id"] for r in read_jsonl(out / "test.jsonl")]
    assert test_ids == ["test-short-0", "test-short-1", "test-long-0", "test-long-1"]  # the whole split
    assert all(r["meta"]["n_tokens"] > MAX_LENGTH for r in read_jsonl(out / "test.jsonl") if "long" in r["id"])
    test = report["splits"]["test"]
    assert test["kept"] == test["input"] == 4 and test["rejected"] == 0
    assert test["kept_over_max_length"] == {"count": 2, "ids": ["test-long-0", "test-long-1"]}
    assert set(json.loads((out / "type_mapping.json").read_text())["test"]) == set(test_ids)

    train = report["splits"]["train"]
    assert train["by_reason"] == {"too_long": 2} and train["kept"] == 2
    rejects = read_jsonl(out / "rejects.jsonl")
    assert {(r["split"], r["id"], r["reason"]) for r in rejects} == {("train", "train-long-0", "too_long"),
                                                                     ("train", "train-long-1", "too_long")}
    # The report and the console both say it, in words.
    assert any(w.startswith("train: 2 of 4 rows dropped as too_long") for w in report["warnings"])
    assert any(w.startswith("test: 2 rows longer than max_length=80 kept") for w in report["warnings"])
    assert any(w.startswith("lengths were measured with model=tiny") for w in report["warnings"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "train: 2 of 4 rows dropped as too_long" in shown and "test: 2 rows longer than max_length=80 kept" in shown


def test_scored_splits_follow_the_data_config(compose) -> None:
    """test and validation, and whatever the data config scores, less the split it trains on."""
    from medvl.data.splits import eval_split_names

    assert eval_split_names(compose(["data=vqa_rad"]).data) == {"validation", "test"}
    assert eval_split_names(compose(["data=gmai_mmbench"]).data) == {"validation", "test"}
    assert eval_split_names(compose(["data=synth", "data.train_split=validation"]).data) == {"test"}


def test_evaluation_scores_every_row_longer_than_max_length(prepared, cache_dir, tmp_path) -> None:
    """Generation and perplexity read long rows whole: the eval covers the whole split."""

    out = tmp_path / "eval"
    overrides = ["data=llava", f"data.root={prepared['root']}", f"data.dir={prepared['out']}",
                 f"data.max_length={MAX_LENGTH}", "max_new_tokens=2", "metrics=[exact_match]"]
    tables = run_eval(cache_dir, out, overrides)["base"]
    predictions = read_jsonl(out / "predictions.jsonl")
    assert sorted(p["id"] for p in predictions) == sorted(r["id"] for r in read_jsonl(prepared["out"] / "test.jsonl"))
    assert tables["overall"]["count"] == 4
    assert all(p["n_tokens"] for p in predictions)  # perplexity was computed on the long rows too


def test_an_eval_split_that_lost_rows_to_its_length_is_refused(prepared) -> None:
    """Data prepared before evaluation rows were kept (or by hand) with too_long drops in test: one line."""
    from omegaconf import OmegaConf

    from medvl.data.splits import load_split

    report_path = prepared["out"] / "report.json"
    report = json.loads(report_path.read_text())
    report["splits"]["test"]["by_reason"] = {"too_long": 174}
    report["splits"]["test"]["input"] = 450
    report_path.write_text(json.dumps(report))
    data = OmegaConf.create({"name": "vqa_rad", "dir": str(prepared["out"]), "root": str(prepared["root"]),
                             "format": "vqa_rad", "train_split": "train", "eval_split": "test",
                             "validation_split": "test"})
    with pytest.raises(ConfigError) as err:
        load_split(data, "test")
    message = str(err.value)
    assert "\n" not in message
    assert "174 of 450 test rows were dropped as too_long" in message and "rejects.jsonl" in message
    assert "python -m medvl.prepare data=vqa_rad" in message
    assert len(load_split(data, "train")) == 2  # training rows may be dropped


# --- prepared with one model, trained with another --------------------------------------------


def train_cfg(compose, prepared, *extra: str):
    return compose(["data=llava", f"data.root={prepared['root']}", f"data.dir={prepared['out']}",
                    "trainer.max_steps=1", "trainer.per_device_train_batch_size=2", *extra])


def _no_weights(monkeypatch) -> None:
    """The check must come before any weights load."""
    import medvl.training.run as run

    def refuse(cfg):
        raise AssertionError("weights loaded before the length check")

    monkeypatch.setattr(run, "build_model", refuse)


def test_rows_too_long_for_the_running_model_are_refused_at_start_up(prepared, compose, monkeypatch) -> None:
    """Prepared with max_length 80; a run with a larger pixel budget makes kept rows too long: one line
    naming the rows and the prepare command, before weights load (it was a ValueError mid-training)."""
    from medvl.training.run import train

    _no_weights(monkeypatch)
    cfg = train_cfg(compose, prepared, f"data.max_length={MAX_LENGTH}", "model.min_pixels=200704",
                    "model.max_pixels=1003520")
    with pytest.raises(ConfigError) as err:
        train(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "2 of 2 train rows are longer than max_length=80 with model=tiny" in message
    assert "train-short-0" in message and "min_pixels 3136 (now 200704)" in message
    assert f"python -m medvl.prepare data=llava data.root={prepared['root']}" in message and "model=tiny" in message


def test_a_smaller_max_length_than_prepare_used_is_re_checked(prepared, compose, monkeypatch) -> None:
    from medvl.training.run import train

    _no_weights(monkeypatch)
    with pytest.raises(ConfigError, match="2 of 2 train rows are longer than max_length=30"):
        train(train_cfg(compose, prepared, "data.max_length=30"))


def test_prepared_lengths_are_trusted_when_the_run_matches(prepared, compose, monkeypatch) -> None:
    """Same model, budget and prompt, and a limit no smaller: prepare's n_tokens are used, nothing is measured."""
    import medvl.data.token_length as token_length
    from medvl.data.splits import check_train_lengths, load_split

    def no_measuring(*args, **kwargs):
        raise AssertionError("rows measured again")

    monkeypatch.setattr(token_length, "estimate_lengths", no_measuring)
    cfg = train_cfg(compose, prepared, "data.max_length=200")
    rows = load_split(cfg.data, "train")
    lengths = check_train_lengths(rows, cfg.data, cfg.model, cfg.prompt.system_prompt, "train")
    assert lengths == [r["meta"]["n_tokens"] for r in rows]


def test_data_without_a_report_is_measured_with_the_running_model(tmp_path, compose) -> None:
    """Hand-made jsonl (no report.json): every training row is measured; a long one is refused in one line."""
    from medvl.data.splits import check_train_lengths, load_split

    root = tmp_path / "mine"
    make_dataset(root)
    cfg = compose(["data=llava", f"data.root={root}", f"data.dir={root}", f"data.max_length={MAX_LENGTH}"])
    rows = load_split(cfg.data, "train")
    with pytest.raises(ConfigError, match=r"2 of 4 train rows .* no report.json from medvl.prepare"):
        check_train_lengths(rows, cfg.data, cfg.model, cfg.prompt.system_prompt, "train")
    short = rows[:2]
    assert check_train_lengths(short, cfg.data, cfg.model, None, "train")[0] < MAX_LENGTH
