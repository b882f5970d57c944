"""The config tree: every combination composes, bad overrides fail with one readable line."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from medvl.config import CONF_DIR, ConfigError, group_choices, validate

from .conftest import REPO

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra"))


def test_groups_are_walked_not_listed():
    assert {"model", "stage", "lora", "data", "deepspeed", "logger", "trainer", "prompt"} <= set(GROUPS)
    assert set(group_choices("model")) >= {"tiny", "tiny25", "2b", "7b", "7b_base", "32b"}
    assert set(group_choices("lora")) >= {"merger", "attn", "ffn", "attn_ffn", "all_linear", "none"}


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(compose, group):
    for choice in group_choices(group):
        cfg = compose([f"{group}={choice}"])
        assert OmegaConf.to_container(cfg, resolve=True)


def test_every_model_stage_lora_combination(compose):
    combos = itertools.product(group_choices("model"), group_choices("stage"), group_choices("lora"))
    for model, stage, lora in combos:
        cfg = compose([f"model={model}", f"stage={stage}", f"lora={lora}"])
        stage_component = "merger" if stage == "align" else "llm"
        preset_scope = OmegaConf.load(CONF_DIR / "lora" / f"{lora}.yaml").get("scope", "auto")
        if preset_scope in ("auto", stage_component):
            validate(cfg)
            assert cfg.lora.scope == stage_component
            assert cfg.lora.name != "auto"
            assert (cfg.lora.name == "none") == (not cfg.lora.targets)
        else:
            with pytest.raises(ConfigError, match=f"lora={lora} puts adapters on the"):
                validate(cfg)


def test_auto_lora_follows_the_stage(compose):
    align = compose(["stage=align"])
    validate(align)
    assert (align.lora.name, list(align.lora.targets)) == ("merger", ["all-linear"])
    instruct = compose(["stage=instruct", "lora.r=8"])
    validate(instruct)
    assert instruct.lora.name == "attn_ffn" and instruct.lora.r == 8


def test_model_files_name_real_checkpoints(compose):
    expected = {"2b": "Qwen/Qwen2-VL-2B-Instruct", "7b": "Qwen/Qwen2-VL-7B-Instruct", "7b_base": "Qwen/Qwen2-VL-7B",
                "32b": "Qwen/Qwen2.5-VL-32B-Instruct"}
    for name, hub_id in expected.items():
        assert compose([f"model={name}"]).model.name_or_path == hub_id
    assert compose(["model=32b"]).model.family.value == "qwen2_5_vl"


def run_train(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "medvl.train", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model=13b", "invalid choice model=13b; valid choices for model: 2b, 32b, 7b, 7b_base, lingshu_32b, "),
        ("stage=foo", "invalid choice stage=foo; valid choices for stage: align, instruct"),
        ("lora.r=-1", "lora.r=-1 is invalid: must be a positive integer"),
        ("trainer.warmup_ratio=3", "trainer.warmup_ratio=3.0 is invalid: must be in [0, 1)"),
        ("trainer.lerning_rate=1", "unknown key trainer.lerning_rate; valid keys in trainer:"),
        ("trainer.max_steps=abc", "trainer.max_steps:"),
    ],
)
def test_bad_override_is_one_line(override, expected):
    proc = run_train(override)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("medvl: ") and expected in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.metric_for_best=closed_acc", "trainer.metric_for_best: unknown metric closed_acc; valid:"),
        ("trainer.eval_metrics=[exact_match,blue]", "trainer.eval_metrics: unknown metric blue; valid:"),
    ],
)
def test_unknown_validation_metric_is_one_line_at_start(override, expected, tmp_path):
    proc = run_train("trainer.eval_steps=5", override, f"hydra.run.dir={tmp_path}/run")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("medvl: ") and expected in lines[0]
    assert not (tmp_path / "run").exists()  # refused before the run directory or the model


def test_cfg_job_prints_without_loading_weights(tmp_path):
    # With the hub unreachable and an empty cache, loading weights would fail; printing must not try.
    proc = run_train("model=7b", "stage=align", "--cfg", "job", env_extra={"MEDVL_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.model.name_or_path == "Qwen/Qwen2-VL-7B-Instruct"
    assert cfg.stage.name == "align"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("experiment", group_choices("experiment"))
def test_every_experiment_composes(compose, experiment):
    overrides = [f"experiment={experiment}"]
    cfg_text = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text()
    assert cfg_text.startswith("# @package _global_") and "-m medvl.train" in cfg_text
    if "init_from_required: true" in cfg_text:
        overrides.append("init_from=/runs/stage1")
    cfg = compose(overrides)
    validate(cfg)
    assert cfg.model.name == "7b"
    assert OmegaConf.to_container(cfg, resolve=True)
