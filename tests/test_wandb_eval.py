"""W&B for medvl.eval (``logger=wandb``) and medvl.compare (``--wandb``), read back from offline run files:
metrics, a predictions table with images, report.html as an artifact, the training run's group, no secret.

A W&B key is set and the W&B server is a closed local port: the runs log offline (no network), and the key
must appear in no file the commands write.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from medvl import compare as compare_cli
from medvl.evaluation import wandb_log, wandb_session
from medvl.runs import RunDir

from .conftest import (
    compose_config,
    make_eval_dir,
    prediction_row,
    run_eval,
    small_data_overrides,
    unreachable_wandb_server,
    wandb_records,
)

KEY = "fedcba9876543210fedcba9876543210fedcba98"  # a W&B-key-shaped fake
SWEEP = "2026-12-03_10-00-00-000001"


@pytest.fixture
def offline_with_key(no_wandb_login, monkeypatch):
    """WANDB_API_KEY set, and a W&B server nobody listens on (refused at once): offline, said in one line."""
    with unreachable_wandb_server(monkeypatch, KEY) as host:
        yield host


def sweep_job(tmp_path: Path, cache_dir: Path, tiny_dir: Path, small_synth: Path) -> Path:
    """A training run as a Hydra multirun job leaves it: ``<sweep>/<job>/{model/, config.yaml, .hydra/}``
    (the tiny model as its weights: what matters here is where the run sits, not what it learned)."""
    run = tmp_path / "sweeps" / SWEEP / "0_r4"  # Hydra names it "0_lora.r=4"
    shutil.copytree(tiny_dir, run / "model")
    cfg = compose_config(cache_dir, "train", [*small_data_overrides(small_synth), f"model.name_or_path={tiny_dir}"],
                         run)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  mode: MULTIRUN\n  sweep:\n    dir: outputs/sweeps/${now:%Y-%m-%d_%H-%M-%S-%f}\n")
    return run


def offline_run(out: Path) -> Path:
    import wandb

    wandb.teardown()  # what a process exit does: wandb-core flushes the run file
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    return run_dir


def summary(records: dict[str, list]) -> dict[str, object]:
    return {"/".join(item.nested_key) or item.key: json.loads(item.value_json)
            for record in records.get("summary", []) for item in record.update}


def logged_table(run_dir: Path, records: dict[str, list], key: str) -> dict:
    """The table logged under ``key``, read from the artifact wandb staged it in under the run folder."""
    for artifact in records["artifact"]:
        for entry in artifact.manifest.contents:
            if entry.path == f"{key}.table.json":
                assert run_dir in Path(entry.local_path).parents
                return json.loads(Path(entry.local_path).read_text())
    raise AssertionError(f"no table {key}")


def artifact_files(records: dict[str, list], kind: str) -> dict[str, Path]:
    (artifact,) = [a for a in records["artifact"] if a.type == kind]
    return {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}


def assert_no_key(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert KEY.encode() not in path.read_bytes(), path


def test_eval_of_a_sweep_job_logs_both_runs_to_the_sweeps_group(cache_dir, tiny_dir, small_synth, tmp_path,
                                                                  offline_with_key, caplog):
    run = sweep_job(tmp_path, cache_dir, tiny_dir, small_synth)
    out = tmp_path / "eval"
    with caplog.at_level(logging.INFO, logger="medvl"):
        results = run_eval(cache_dir, out, [f"+ckpt={run}", "compare_base=true", "logger=wandb",
                                            "logger.log_predictions=3", "data.max_eval_samples=4",
                                            "metrics=[exact_match,word_f1]", "perplexity=false",
                                            "max_new_tokens=2"])
    run_dir = offline_run(out)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("W&B")]
    assert lines == [
        f"W&B: the W&B server {offline_with_key} cannot be reached from this node; logging offline to {run_dir} "
        f"(sync later with `wandb sync {run_dir}`)",
        "W&B: logged the metrics, 6 of 8 predictions with images (logger.log_predictions=3) and report.html, "
        f"base/report.html, base/metrics.json, ckpt/report.html, ckpt/metrics.json to {run_dir}"]

    records = wandb_records(run_dir)
    info = records["run"][0]
    assert (info.project, info.run_group, info.job_type) == ("medvl", SWEEP, "eval")
    values = summary(records)
    for key in ("base", "ckpt"):
        tables = results[key]
        assert values[f"{key}/overall/exact_match"] == pytest.approx(tables["overall"]["exact_match"])
        assert values[f"{key}/closed/word_f1"] == pytest.approx(tables["closed"]["word_f1"])
        for category, row in tables["by_category"].items():
            assert values[f"{key}/category/{category}/exact_match"] == pytest.approx(row["exact_match"])

        table = logged_table(run_dir, records, f"{key}/predictions")
        assert table["columns"] == ["id", "image", "question", "reference", "prediction", "category",
                                    "answer_type", "exact_match", "word_f1"]
        predicted = [json.loads(line) for line in (out / key / "predictions.jsonl").read_text().splitlines()]
        assert [row[0] for row in table["data"]] == [p["id"] for p in predicted[:3]]
        assert [row[4] for row in table["data"]] == [p["prediction"] for p in predicted[:3]]
        assert [row[7] for row in table["data"]] == [p["metrics"]["exact_match"] for p in predicted[:3]]
        images = [row[1] for row in table["data"]]
        assert all(img["_type"] == "image-file" and max(img["width"], img["height"]) <= wandb_session.THUMBNAIL_SIZE
                   for img in images)

    metrics = logged_table(run_dir, records, "metrics")
    assert metrics["columns"] == ["run", "breakdown", "group", "metric", "value", "count"]
    assert {row[0] for row in metrics["data"]} == {"base", "fine-tuned"}
    assert ["base", "overall", "overall", "exact_match", results["base"]["overall"]["exact_match"], 4] in \
        metrics["data"]

    files = artifact_files(records, "eval-report")
    assert set(files) == {"report.html", "base/report.html", "base/metrics.json", "ckpt/report.html",
                          "ckpt/metrics.json"}  # report.html: the two side by side
    assert files["ckpt/report.html"].read_bytes() == (out / "ckpt" / "report.html").read_bytes()
    assert_no_key(out, run)


def test_run_group_is_the_recorded_group_or_the_sweep(tmp_path, tiny_dir):
    run = tmp_path / "train" / "run"
    shutil.copytree(tiny_dir, run / "model")
    assert wandb_session.run_group(RunDir.from_ckpt(run)) is None  # a single run: no group
    (run / "config.yaml").write_text("logger:\n  group: ablation\n")
    assert wandb_session.run_group(RunDir.from_ckpt(run)) == "ablation"
    assert wandb_session.run_group(RunDir.from_ckpt(run / "model")) == "ablation"
    (run / "config.yaml").write_text("logger:\n  group: null\n")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: RUN\n")
    assert wandb_session.run_group(RunDir.from_ckpt(run)) is None
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    assert wandb_session.run_group(RunDir.from_ckpt(run / "model")) == "train"


def test_compare_logs_its_tables_and_files(tmp_path, offline_with_key, capsys):
    rows_a = [prediction_row(i, correct=i % 2 == 0, f1=0.5) for i in range(6)]
    rows_b = [prediction_row(i, correct=True, f1=0.75) for i in range(6)]
    make_eval_dir(tmp_path / "a", "a", rows_a)
    make_eval_dir(tmp_path / "b", "b", rows_b, overall={"exact_match": 1.0})
    out = tmp_path / "cmp"
    assert compare_cli.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--n-boot", "50",
                             "--wandb", "--wandb-group", "ablation"]) == 0
    run_dir = offline_run(out)
    err = capsys.readouterr().err
    assert f"cannot be reached from this node; logging offline to {run_dir}" in err
    (line,) = [line for line in err.splitlines() if line.startswith("W&B: logged")]
    assert line.startswith("W&B: logged the comparison of 2 runs and ") and line.endswith(f" to {run_dir}")
    assert "model_comparison.html" in line

    records = wandb_records(run_dir)
    info = records["run"][0]
    assert (info.run_group, info.job_type) == ("ablation", "compare")
    comparison = logged_table(run_dir, records, "comparison")
    written = json.loads((out / "model_comparison.json").read_text())
    assert comparison["columns"] == [*written["table"][0], "best"]
    assert len(comparison["data"]) == len(written["table"])
    assert ["b", "overall", "overall", "exact_match", 1.0, 6, True] in comparison["data"]
    significance = logged_table(run_dir, records, "significance")
    assert significance["columns"][:5] == ["reference", "run", "test", "metric", "n_common"]
    assert {(row[2], row[3]) for row in significance["data"]} >= {("bootstrap", "exact_match"),
                                                                  ("mcnemar", "closed_accuracy")}
    files = artifact_files(records, "comparison")
    assert set(files) == {p.name for p in out.iterdir() if p.is_file()}
    assert "model_comparison.html" in files
    assert_no_key(out, tmp_path / "a", tmp_path / "b")


def test_summary_keys_of_one_evaluation():
    tables = {"overall": {"exact_match": 0.5, "count": 4}, "closed": {"exact_match": 1.0, "count": 2},
              "open": {"exact_match": 0.0, "count": 2},
              "by_category": {"closed_yes_no": {"exact_match": 1.0, "bleu4": None, "count": 2}},
              "by_modality": {"CT": {"exact_match": 0.25, "count": 4}}}
    assert wandb_log.summary_values(tables) == {
        "overall/exact_match": 0.5, "closed/exact_match": 1.0, "open/exact_match": 0.0,
        "category/closed_yes_no/exact_match": 1.0, "modality/CT/exact_match": 0.25}
    assert set(wandb_log.summary_values(tables, "ckpt/")) == {f"ckpt/{k}" for k in wandb_log.summary_values(tables)}


def test_compared_runs_share_their_checkpoints_group(tmp_path, tiny_dir):
    runs = []
    for name in ("a", "b"):
        shutil.copytree(tiny_dir, tmp_path / name / "model")
        (tmp_path / name / "config.yaml").write_text("logger:\n  group: ablation\n")
        runs.append(SimpleNamespace(metrics={"run": {"ckpt": str(tmp_path / name / "model")}}))
    assert wandb_log.comparison_group(runs) == "ablation"
    assert wandb_log.comparison_group([*runs, SimpleNamespace(metrics={"run": {"ckpt": None}})]) is None


def test_wandb_mode_online_without_a_route_stops_eval_before_the_model_loads(cache_dir, tmp_path, offline_with_key,
                                                                             monkeypatch):
    from medvl.config import ConfigError

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr("medvl.evaluation.run.load_run", lambda *a, **k: pytest.fail("the model loaded first"))
    with pytest.raises(ConfigError, match="set WANDB_MODE=offline"):
        run_eval(cache_dir, tmp_path / "eval", ["logger=wandb", "data.max_eval_samples=2"])
