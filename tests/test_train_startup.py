"""medvl.train start-up: what the evaluation after training needs, a later stage's init_from and every path are
checked before the model loads (so that no job trains for hours and then fails), errors a user can fix are one
line, and sweep jobs started together get their own directories."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medvl.config import ConfigError, validate
from medvl.models.loading import ModelLoadError, load_model

from .conftest import REPO, adapter_run, small_data_overrides

NO_METEOR = "eval.metrics=[exact_match,closed_accuracy,bleu4]"


@pytest.fixture
def no_java(monkeypatch):
    """A node without a Java runtime, as far as METEOR's check can tell."""
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "java"
                        else real_which(name, *a, **k))


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights is an error: everything under test must fail (or pass) before it."""
    from medvl.training import run

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the start-up checks failed")

    monkeypatch.setattr("medvl.models.loading.load_model", never)
    monkeypatch.setattr(run, "load_processor", never)


def train_cfg(compose, root: Path, *extra: str):
    return compose([*small_data_overrides(root), "trainer.max_steps=1", *extra])


def test_missing_java_stops_training_before_the_model_loads(compose, small_synth, no_java, no_weights, tmp_path):
    from medvl.training.run import train

    with pytest.raises(ConfigError) as err:
        train(train_cfg(compose, small_synth, "eval_after_train=true"))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("the evaluation after training (eval_after_train) cannot run: metric meteor")
    assert "eval.metrics=[exact_match," in msg and "meteor" not in msg.partition("eval.metrics=")[2]


def test_without_eval_after_train_java_is_not_needed(compose, small_synth, no_java):
    from medvl.training.run import check_evaluation_needs

    check_evaluation_needs(train_cfg(compose, small_synth, "eval_after_train=false"))


def test_metrics_without_meteor_pass_without_java(compose, small_synth, no_java):
    from medvl.training.run import check_evaluation_needs

    check_evaluation_needs(train_cfg(compose, small_synth, "eval_after_train=true", NO_METEOR))


@pytest.mark.parametrize("override, key", [
    ("eval.metrics=[exact_match,blue]", "eval.metrics: unknown metrics ['blue']"),
    ("eval.bertscore.model=/no/such/bertscore-model", "eval.bertscore.model=/no/such/bertscore-model is not a local"),
    ("eval.bertscore.model=medvl-test/no-such-bertscore-model", "eval.bertscore.model=medvl-test/no-such-bertscore"),
    ("eval.bertscore.model_zh=/no/such/zh-model", "eval.bertscore.model_zh=/no/such/zh-model"),
])
def test_bad_metric_settings_stop_training_before_the_model_loads(compose, small_synth, no_weights, override, key):
    from medvl.training.run import train

    with pytest.raises(ConfigError, match="evaluation after training") as err:
        train(train_cfg(compose, small_synth, "eval_after_train=true", override))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_bertscore_directory_without_model_files_is_refused(compose, small_synth, tmp_path):
    from medvl.training.run import check_evaluation_needs

    (tmp_path / "empty").mkdir()
    cfg = train_cfg(compose, small_synth, "eval_after_train=true", f"eval.bertscore.model={tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match="is not a model directory"):
        check_evaluation_needs(cfg)
    # Leaving BERTScore out needs no model.
    check_evaluation_needs(train_cfg(compose, small_synth, "eval_after_train=true", NO_METEOR,
                                     f"eval.bertscore.model={tmp_path / 'empty'}"))


def test_missing_evaluation_split_stops_training_before_the_model_loads(compose, small_synth, no_weights):
    from medvl.training.run import train

    with pytest.raises(FileNotFoundError, match="no heldout split"):
        train(train_cfg(compose, small_synth, "eval_after_train=true", "data.eval_split=heldout"))


def test_missing_validation_split_stops_training_before_the_model_loads(compose, small_synth, no_weights):
    from medvl.training.run import train

    with pytest.raises(FileNotFoundError, match="no dev split"):
        train(train_cfg(compose, small_synth, "trainer.eval_steps=1", "data.validation_split=dev"))


def test_evaluation_after_training_uses_the_eval_node(compose, small_synth, monkeypatch, tmp_path):
    from medvl.evaluation import run as eval_run
    from medvl.training.run import evaluate_run

    seen = {}
    monkeypatch.setattr(eval_run, "evaluate", lambda cfg: seen.setdefault("cfg", cfg))
    cfg = train_cfg(compose, small_synth, "max_new_tokens=12", "trainer.per_device_eval_batch_size=5")
    evaluate_run(cfg, tmp_path)
    default = seen.pop("cfg")
    # By default generation follows validation's settings, and every metric is computed.
    assert (default.max_new_tokens, default.batch_size, list(default.metrics)) == (12, 5, [])

    cfg = train_cfg(compose, small_synth, "max_new_tokens=12", NO_METEOR, "eval.max_new_tokens=40",
                    "eval.batch_size=3", "eval.perplexity=false", "eval.bertscore.dtype=bfloat16")
    evaluate_run(cfg, tmp_path)
    chosen = seen["cfg"]
    assert list(chosen.metrics) == ["exact_match", "closed_accuracy", "bleu4"]
    assert (chosen.max_new_tokens, chosen.batch_size, chosen.perplexity) == (40, 3, False)
    assert chosen.bertscore.dtype == "bfloat16" and chosen.ckpt == str(tmp_path)


def test_eval_node_values_are_checked(compose):
    with pytest.raises(ConfigError, match=r"eval.max_new_tokens=0 is invalid"):
        validate(compose(["eval.max_new_tokens=0"]))
    with pytest.raises(ConfigError, match=r"eval.bertscore.dtype=half is invalid: must be float32 or bfloat16"):
        validate(compose(["eval.bertscore.dtype=half"]))


def _train_cli(*args: str, path: str | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "medvl.train", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("medvl: ")
    return lines[0]


def test_sweep_without_java_is_refused_before_any_job(tmp_path, cache_dir):
    """A GPU node without Java: the sweep stops in one line instead of training every job, then failing each."""
    (tmp_path / "bin").mkdir()
    proc = _train_cli("-m", "lora.r=4,8", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache_dir={cache_dir}",
                      path=str(tmp_path / "bin"))
    assert "no `java` is on PATH" in _one_line(proc) and "eval.metrics=[" in proc.stderr
    assert not (tmp_path / "sweep").exists()


def _preflight_multirun(*overrides: str) -> None:
    """``medvl train -m <overrides>``'s start-up, in this process."""
    from medvl.preflight import preflight

    preflight("train", ["-m", *overrides])


def test_sweep_preflight_checks_the_first_job_and_lets_metrics_drop_meteor(no_java):
    with pytest.raises(SystemExit, match="meteor"):
        _preflight_multirun("lora.r=4,8")
    with pytest.raises(SystemExit, match="meteor"):
        _preflight_multirun("experiment=lora_rank_sweep", "data.root=/data/Slake1.0")
    _preflight_multirun("lora.r=4,8", NO_METEOR)
    _preflight_multirun("lora.r=4,8", "eval_after_train=false")


def test_stage_two_sweep_without_init_from_is_refused_before_any_job():
    with pytest.raises(SystemExit, match="init_from is not set"):
        _preflight_multirun("experiment=slake_instruct_7b", "lora.r=8,16", "eval_after_train=false")
    _preflight_multirun("experiment=slake_instruct_7b", "lora.r=8,16", "init_from=a,b", "eval_after_train=false")


# -- a later stage cannot silently start from the base model --------------------------------------------------

def test_stage_two_experiment_without_init_from_is_refused(compose):
    cfg = compose(["experiment=slake_instruct_7b"])
    assert cfg.init_from is None and cfg.init_from_required
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert "init_from is not set" in msg and "init_from=<the earlier stage's run dir>" in msg
    assert "init_from=base" in msg and "\n" not in msg


def test_stage_two_experiment_preflight_is_one_line_before_anything_loads(tmp_path):
    line = _one_line(_train_cli("experiment=slake_instruct_7b", "data.root=x", f"hydra.run.dir={tmp_path / 'run'}"))
    assert "init_from is not set" in line
    assert not (tmp_path / "run").exists()


def test_stage_two_in_train_stops_before_the_model_loads(compose, small_synth, no_weights):
    from medvl.training.run import train

    with pytest.raises(ConfigError, match="init_from is not set"):
        train(train_cfg(compose, small_synth, "init_from_required=true"))


@pytest.mark.parametrize("word", ["base", "none", "Base"])
def test_init_from_base_starts_from_the_base_model_loudly(compose, caplog, word):
    from medvl.training.run import resolve_init_from

    cfg = compose(["experiment=slake_instruct_7b", f"init_from={word}"])
    validate(cfg)
    with caplog.at_level(logging.WARNING, logger="medvl"):
        resolve_init_from(cfg)
    assert cfg.init_from is None  # what config.yaml records: no earlier stage
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (f"init_from={word}: stage instruct starts from the base model Qwen/Qwen2-VL-7B-Instruct, "
                    f"not from an earlier stage's run")


def test_init_from_a_run_is_kept_absolute(compose, tmp_path, monkeypatch):
    from medvl.training.run import resolve_init_from

    monkeypatch.chdir(tmp_path)
    cfg = compose(["experiment=slake_instruct_7b", "init_from=outputs/train/align_7b"])
    validate(cfg)
    resolve_init_from(cfg)
    assert cfg.init_from == str(tmp_path / "outputs/train/align_7b")


@pytest.mark.parametrize("path", ["/no/such/qwen7b", "./qwen7b", "models/qwen/7b", "'~/no-such-qwen7b'"])
def test_missing_local_directory_says_so(compose, path):
    cfg = compose(["model=7b", f"model.name_or_path={path}"])
    with pytest.raises(ModelLoadError) as err:
        load_model(cfg.model)
    msg = str(err.value)
    assert "no such directory" in msg and "\n" not in msg and "huggingface-cli download" not in msg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model=7b", "medvl: cannot load 'Qwen/Qwen2-VL-7B-Instruct'"),
        ("init_from=/no/such/run", "medvl: no LoRA adapter (adapter_config.json) in /no/such/run"),
    ],
)
def test_train_cli_errors_a_user_can_fix_are_one_line(cache_dir, tmp_path, override, expected):
    proc = subprocess.run(
        [sys.executable, "-m", "medvl.train", override, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MEDVL_CACHE": str(cache_dir)})
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
    assert lines and lines[-1].startswith(expected), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("overrides", [["init_from=/no/such/stage1"], ["resume=/no/such/checkpoint-5"],
                                       ["data=slake", "data.root=/no/such/slake", "data.dir=/no/such/prepared"]])
def test_bad_paths_fail_before_weights_load(compose, monkeypatch, overrides):
    from medvl.training import run

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded before the paths were checked")

    monkeypatch.setattr("medvl.models.loading.load_model", never)
    monkeypatch.setattr(run, "load_processor", never)
    with pytest.raises(FileNotFoundError):
        run.train(compose(overrides))


def test_sweeps_started_in_the_same_second_get_their_own_directory(compose):
    import time

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medvl.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", return_hydra_config=True)
    GlobalHydra.instance().clear()
    pattern = OmegaConf.to_container(cfg.hydra.sweep)["dir"]

    def resolve() -> str:  # a fresh node: ${now:} is cached per config
        return OmegaConf.to_container(OmegaConf.create({"dir": pattern}), resolve=True)["dir"]

    first = resolve()
    time.sleep(0.002)
    assert resolve() != first


class _Loaded(Exception):
    """Raised where the model would load: what the run decided before it is what the test reads."""


@pytest.fixture
def stops_at_loading(monkeypatch):
    from medvl.training import run

    seen = {}

    def load_for_training(cfg, out):
        seen.update(init_from=cfg.init_from, config=OmegaConf.load(out / "config.yaml"))
        raise _Loaded

    monkeypatch.setattr(run, "load_for_training", load_for_training)
    return seen


def test_a_runs_config_is_written_before_the_model_loads(compose, small_synth, stops_at_loading, tmp_path):
    """A stage-2 run killed before it finished: its checkpoints are evaluated, exported and chained on top of
    stage 1, which its config.yaml (written at the start) records."""
    from medvl.runs import RunDir
    from medvl.training.run import train

    align = adapter_run(tmp_path / "align")
    with pytest.raises(_Loaded):
        train(train_cfg(compose, small_synth, f"init_from={align}"))
    assert stops_at_loading["config"].init_from == str(align)
    checkpoint = tmp_path / "run" / "checkpoint-2"  # the Trainer's checkpoint: the adapter, no config of medvl's
    checkpoint.mkdir()
    (checkpoint / "adapter_config.json").write_text("{}")
    assert [stage.path for stage in RunDir.from_ckpt(checkpoint).weight_stages()] == [checkpoint, align / "adapter"]


def test_a_resumed_run_continues_on_top_of_its_earlier_stage(compose, small_synth, stops_at_loading, tmp_path):
    """resume=auto without init_from (README's resume command names none) keeps the run's stage chain; a command
    that contradicts the run's init_from, model or stage is refused in one line."""
    from medvl.training.run import train

    align, other = adapter_run(tmp_path / "align"), adapter_run(tmp_path / "other")
    started = train_cfg(compose, small_synth, f"init_from={align}")
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint-2").mkdir(parents=True)
    (run_dir / "checkpoint-2" / "trainer_state.json").write_text("{}")
    OmegaConf.save(started, run_dir / "config.yaml")

    with pytest.raises(_Loaded):
        train(train_cfg(compose, small_synth, "resume=auto"))
    assert stops_at_loading["init_from"] == str(align)
    # A stage that requires init_from (experiment=slake_instruct_7b) resumes on the recorded one too...
    with pytest.raises(_Loaded):
        train(train_cfg(compose, small_synth, "resume=auto", "init_from_required=true"))
    assert stops_at_loading["init_from"] == str(align)
    # ... but with nothing to resume it still needs one.
    with pytest.raises(ConfigError, match="init_from_required=true\\) but init_from is not set"):
        train(train_cfg(compose, small_synth, "resume=auto", "init_from_required=true",
                        f"output_dir={tmp_path / 'fresh'}"))
    for extra, says in ((f"init_from={other}", f"trained on top of init_from={align}, this command has "
                                                f"init_from={other}"),
                        ("init_from=base", f"trained on top of init_from={align}, this command has init_from=base"),
                        ("model=tiny25", "trained with model.name=tiny, this command has model.name=tiny25")):
        OmegaConf.save(started, run_dir / "config.yaml")
        with pytest.raises(ConfigError, match="^resume: ") as err:
            train(train_cfg(compose, small_synth, "resume=auto", extra))
        assert says in str(err.value) and "\n" not in str(err.value)
