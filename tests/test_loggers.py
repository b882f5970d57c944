"""Loggers: a W&B offline run read back from its folder, the training monitor in TensorBoard, secrets kept out."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from medvl.config import ConfigError, is_secret_key
from medvl.evaluation import wandb_session
from medvl.preflight import preflight
from medvl.training import loggers
from medvl.training.run import learning_rate, train

from .conftest import read_scalars, small_data_overrides, wandb_records

SECRET = "hf_not_a_real_secret_51f0c2a9"
MONITOR = ("train/step_time", "train/samples_per_second", "train/tokens_per_second")


def train_overrides(root: Path, *extra: str) -> list[str]:
    return ["trainer.max_steps=4", "trainer.eval_steps=2", "trainer.eval_samples=8",
            "trainer.per_device_train_batch_size=8", "trainer.logging_steps=2", "trainer.save_steps=1000",
            "max_new_tokens=4", *small_data_overrides(root), *extra]


def history_rows(records: dict[str, list]) -> list[dict]:
    rows = []
    for history in records.get("history", []):
        rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in history.item})
    return rows


def logged_config(records: dict[str, list]) -> dict:
    config = {}
    for update in [*records["run"][0].config.update, *(u for c in records.get("config", []) for u in c.update)]:
        config[update.key] = json.loads(update.value_json)
    return config


def secret_values(node, path="") -> dict[str, object]:
    """Every secret-named key of a plain config with its value."""
    found = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if is_secret_key(key):
                found[path + key] = value
            else:
                found |= secret_values(value, f"{path}{key}.")
    return found


def test_wandb_offline_run_logs_config_curves_eval_and_predictions(compose, tmp_path, small_synth, no_wandb_login,
                                                                  monkeypatch, caplog):
    import wandb

    monkeypatch.setenv("HF_TOKEN", SECRET)  # environment variables must never reach the run
    out = tmp_path / "run"
    cfg = compose(train_overrides(small_synth, "logger=wandb", "logger.log_predictions=5", "logger.tags=[smoke]"),
                  output_dir=out)
    with caplog.at_level(logging.INFO, logger="medvl"):
        train(cfg)
    wandb.teardown()  # what a process exit does: wandb-core flushes the run file

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    offline = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
    assert offline == [f"W&B: no API key found; logging offline to {run_dir} (sync later with `wandb sync {run_dir}`)"]

    records = wandb_records(run_dir)
    run = records["run"][0]
    assert (run.project, run.display_name, run.run_group, list(run.tags)) == ("medvl", cfg.run_name, "", ["smoke"])

    config = logged_config(records)
    medvl = config["medvl"]
    assert medvl["model"]["name"] == "tiny" and medvl["trainer"]["eval_steps"] == 2
    assert medvl["logger"]["name"] == "wandb" and medvl["output_dir"] == str(out)
    assert config["learning_rate"] == pytest.approx(learning_rate(cfg))  # HF's TrainingArguments, same run
    # Secret-named keys only with empty or masked values (HF masks its own hub_token as "<HUB_TOKEN>").
    for key, value in secret_values(config).items():
        assert value in (None, "", wandb_session.MASK) or str(value).startswith("<"), key

    rows = history_rows(records)
    assert [r["train/global_step"] for r in rows if "train/loss" in r] == [2, 4]
    for key in ("train/learning_rate", "train/grad_norm", *MONITOR):
        assert [r["train/global_step"] for r in rows if key in r] == [2, 4], key
    assert [r["train/global_step"] for r in rows if "eval/overall/exact_match" in r] == [2, 4]
    assert any(k.startswith("eval/closed_yes_no/") for r in rows for k in r)
    tables = [r for r in rows if "eval/predictions/_type" in r]  # nested keys are joined with "/"
    assert [(t["train/global_step"], t["eval/predictions/_type"], t["eval/predictions/nrows"]) for t in tables] == [
        (2, "table-file", 5), (4, "table-file", 5)]

    # The table and its thumbnails are a run_table artifact, staged under the run folder until `wandb sync`.
    artifacts = [a for a in records["artifact"] if a.type == "run_table"]
    assert len(artifacts) == 2
    contents = {c.path: Path(c.local_path) for c in artifacts[-1].manifest.contents}
    assert all(run_dir in p.parents for p in contents.values())
    table = json.loads(contents["eval/predictions.table.json"].read_text())
    assert table["columns"] == ["id", "image", "question", "reference", "prediction", "category"]
    assert len(table["data"]) == 5
    images = [row[1] for row in table["data"]]
    assert all(img["_type"] == "image-file" and max(img["width"], img["height"]) <= wandb_session.THUMBNAIL_SIZE
               for img in images)
    assert all(img["path"] in contents for img in images)
    assert {row[3] for row in table["data"]} <= {r["conversations"][1]["value"] for r in _validation_rows(small_synth)}

    for path in [*run_dir.rglob("*"), out / "config.yaml"]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert "hf_token" not in (out / "config.yaml").read_text().lower()


def _validation_rows(root: Path) -> list[dict]:
    from medvl.data.format import read_jsonl

    (path,) = [p for p in root.rglob("validation.jsonl")]
    return read_jsonl(path)


def test_tensorboard_gets_monitor_scalars_with_exact_token_counts(compose, tmp_path, small_synth):
    """One epoch of 48 rows in 6 steps: the logged tokens/s add up to the rows' real (unpadded) lengths."""
    from medvl.data.dataset import VQADataset
    from medvl.data.splits import load_split
    from medvl.models.loading import load_processor, resolve_model_path

    out = tmp_path / "run"
    cfg = compose(train_overrides(small_synth, "logger=tensorboard", "data.max_train_samples=48",
                                  "trainer.max_steps=-1", "trainer.num_train_epochs=1", "trainer.eval_steps=3"),
                  output_dir=out)
    train(cfg)

    scalars = read_scalars(out)
    for key in (*MONITOR, "train/loss", "train/learning_rate", "train/grad_norm"):
        assert [s for s, _ in scalars[key]] == [2, 4, 6], key
    assert [s for s, _ in scalars["eval/overall/exact_match"]] == [3, 6]
    assert "train/gpu_mem_peak_gb" not in scalars  # CPU here

    step_time = dict(scalars["train/step_time"])
    samples = {s: v * step_time[s] * 2 for s, v in scalars["train/samples_per_second"]}
    tokens = {s: v * step_time[s] * 2 for s, v in scalars["train/tokens_per_second"]}
    assert all(v == pytest.approx(16, rel=1e-4) for v in samples.values())  # 2 steps x 8 rows per interval

    rows = load_split(cfg.data, cfg.data.train_split, 48)
    dataset = VQADataset(rows, load_processor(cfg.model, resolve_model_path(cfg.model)), cfg.data.root,
                         system_prompt=cfg.prompt.system_prompt)
    real_tokens = sum(len(dataset[i]["input_ids"]) for i in range(len(dataset)))
    assert sum(tokens.values()) == pytest.approx(real_tokens, rel=1e-4)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert history[-1]["num_input_tokens_seen"] == real_tokens


def test_secret_in_config_is_refused_before_anything_is_written(compose, tmp_path):
    out = tmp_path / "run"
    cfg = compose([f"+logger.api_key={SECRET}", "logger=wandb"], output_dir=out)
    with pytest.raises(ConfigError, match=r"logger\.api_key") as err:
        train(cfg)
    assert SECRET not in str(err.value)
    assert not (out / "config.yaml").exists() and not (out / "wandb").exists()


@pytest.mark.parametrize("argv", [[f"+logger.api_key={SECRET}"], ["-m", "trainer.seed=1,2", f"+hf_token={SECRET}"],
                                  [f"++deepspeed.config.wandbApiKey={SECRET}"],
                                  # Inside a dict value, and inside one value of a sweep: multirun.yaml would
                                  # hold them before any job composes its config.
                                  ["-m", f"+extra={{api_key:{SECRET}}}"],
                                  ["-m", f"+extra={{a:1}},{{wandb:{{api_key:{SECRET}}}}}"]])
def test_preflight_refuses_secret_overrides_before_hydra_writes_them(argv):
    with pytest.raises(SystemExit) as err:
        preflight("train", argv)
    assert "secrets must not be in the config" in str(err.value) and SECRET not in str(err.value)


@pytest.mark.parametrize("config_name, argv", [
    ("train", ["-m", "lora.r=4,8", "data=synth_secret"]),
    ("train", ["-m", "data=synth,synth_secret"]),  # only a later value of the sweep holds it
    ("eval", ["-m", "prompt=default,custom", "data=synth_secret"]),
    ("prepare", ["data=synth_secret"]),
    ("eval", ["data=synth_secret"]),
])
def test_preflight_refuses_a_secret_from_a_config_file_of_ones_own(tmp_path, config_name, argv):
    """A secret-named key in a config folder of one's own (hydra.searchpath) is refused by every command, and
    under -m before Hydra writes multirun.yaml and the jobs' .hydra/ (a job would refuse it only after)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synth_secret.yaml").write_text(
        f"defaults:\n  - synth\n  - _self_\nname: synth_secret\noptions:\n  HFToken: {SECRET}\n")
    with pytest.raises(SystemExit) as err:
        preflight(config_name, [*argv, f"hydra.searchpath=[file://{tmp_path}]"])
    assert "data.options.HFToken: secrets must not be in the config" in str(err.value)
    assert SECRET not in str(err.value)


def test_secret_names_and_redaction():
    assert [is_secret_key(k) for k in ("api_key", "hf_token", "wandbApiKey", "db_password", "client_secret",
                                       "HFToken", "HFAPIKey", "TOKEN")] == [True] * 8
    assert not any(is_secret_key(k) for k in ("max_new_tokens", "pad_token_id", "monkey", "eval_metrics",
                                              "HFTokenizer"))
    config = {"logger": {"project": "p", "api_key": SECRET}, "tokens": [{"access_token": SECRET}], "max_new_tokens": 4}
    assert wandb_session.redact(config) == {"logger": {"project": "p", "api_key": wandb_session.MASK},
                                            "tokens": [{"access_token": wandb_session.MASK}], "max_new_tokens": 4}


def test_credentials_from_env_or_netrc(no_wandb_login, monkeypatch):
    assert not wandb_session.has_wandb_credentials()
    netrc = no_wandb_login / ".netrc"
    netrc.write_text("machine example.com login user password x\n")
    netrc.chmod(0o600)
    assert not wandb_session.has_wandb_credentials()
    netrc.write_text("machine api.wandb.ai login user password x\n")
    assert wandb_session.has_wandb_credentials()
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x")
    assert wandb_session.has_wandb_credentials()


def test_wandb_group_mode_and_dir(compose, tmp_path, no_wandb_login, monkeypatch, multirun_context):
    out = tmp_path / "run"
    single = loggers.wandb_init_kwargs(compose(["logger=wandb"], output_dir=out), out)
    assert single["group"] is None and single["mode"] == "offline" and single["dir"] == str(out)
    assert single["name"] == "instruct-tiny-auto" and single["project"] == "medvl"  # lora=auto: validate() resolves it

    assert loggers.wandb_init_kwargs(compose(["logger=wandb", "logger.group=ablation"]), out)["group"] == "ablation"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's choice stands
    assert "mode" not in loggers.wandb_init_kwargs(compose(["logger=wandb"]), out)

    multirun_context("2026-11-25_10-00-00")
    assert loggers.wandb_init_kwargs(compose(["logger=wandb"]), out)["group"] == "2026-11-25_10-00-00"


def test_monitor_times_training_not_validation_or_saving():
    """Between two optimizer steps, time spent in other callbacks (validation) and saving is left out."""
    import time
    from types import SimpleNamespace

    import torch

    from medvl.training.monitor import TrainingMonitor

    logged = []
    monitor = TrainingMonitor()
    monitor.trainer = SimpleNamespace(log=logged.append)
    args = SimpleNamespace(device=torch.device("cpu"), train_batch_size=4, gradient_accumulation_steps=2, world_size=1,
                           include_num_input_tokens_seen="no")
    state = SimpleNamespace(num_input_tokens_seen=0)
    control = SimpleNamespace(should_log=False)
    monitor.on_train_begin(args, state, control)
    assert args.include_num_input_tokens_seen == "non_padding"
    for step in (1, 2):
        time.sleep(0.05)  # data loading, forward, backward
        state.num_input_tokens_seen += 100
        monitor.on_optimizer_step(args, state, control)
        time.sleep(0.3)  # generation-based validation in an earlier callback's on_step_end
        control.should_log = step == 2
        monitor.on_step_end(args, state, control)
        time.sleep(0.3)  # checkpoint saving
        monitor.on_save(args, state, control)
    (logs,) = logged
    assert 0.05 <= logs["step_time"] < 0.15
    assert logs["samples_per_second"] * logs["step_time"] == pytest.approx(8)  # 4 x 2 accumulation per step
    assert logs["tokens_per_second"] * logs["step_time"] == pytest.approx(100)
    assert control.should_log  # HF's own loss log for this step still happens


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_monitor_logs_gpu_memory_on_gpu(compose, tmp_path, small_synth):
    out = tmp_path / "run"
    train(compose(train_overrides(small_synth, "logger=tensorboard", "trainer.eval_steps=0"), output_dir=out))
    peaks = read_scalars(out)["train/gpu_mem_peak_gb"]
    assert [s for s, _ in peaks] == [2, 4] and all(v > 0 for _, v in peaks)


def test_evaluation_after_training_reaches_the_wandb_run(compose, tmp_path, small_synth, no_wandb_login):
    import wandb

    out = tmp_path / "run"
    cfg = compose(train_overrides(small_synth, "logger=wandb", "trainer.eval_steps=0", "eval_after_train=true"),
                  output_dir=out)
    metrics = train(cfg)
    wandb.teardown()
    assert wandb.run is None  # finished after the evaluation
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    rows = history_rows(wandb_records(run_dir))
    final = [r for r in rows if "final_eval/overall/exact_match" in r]
    assert len(final) == 1
    assert final[0]["final_eval/overall/exact_match"] == pytest.approx(metrics["eval"]["exact_match"])
    assert any(k.startswith("final_eval/closed/") for k in final[0])
