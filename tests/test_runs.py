"""Sweeps, kill-and-resume and export: whole runs through the command line (slow tier)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from medvl.training.sweep import run_sweep_job, summarize_sweep

from .conftest import REPO

SMALL = ["data.num_train=96", "data.num_validation=24", "data.num_test=32", "trainer.per_device_train_batch_size=8",
         "max_new_tokens=6"]


def medvl(module: str, *args: str, cache: Path, timeout: int = 600, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDVL_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", f"medvl.{module}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


def test_failed_job_is_recorded_and_summarized(tmp_path):
    ok = run_sweep_job(lambda cfg: {"train_loss": 1.0}, None)
    bad = run_sweep_job(lambda cfg: (_ for _ in ()).throw(ValueError("boom\nmore")), None)
    assert ok == {"status": "ok", "metrics": {"train_loss": 1.0}}
    assert bad == {"status": "failed", "error": "ValueError: boom"}
    for num, status in enumerate([ok, bad]):
        job = tmp_path / f"{num}_job"
        job.mkdir()
        (job / "job_status.json").write_text(json.dumps({"num": num, "overrides": [f"lora.r={num}"],
                                                         "status": status["status"], "dir": str(job),
                                                         **({"error": status["error"]} if "error" in status else {})}))
    summary = summarize_sweep(tmp_path)
    assert summary["failed"] == [1]
    assert "| 1 | lora.r=1 | failed | - | ValueError: boom |" in (tmp_path / "sweep_summary.md").read_text()


@pytest.mark.slow
def test_two_job_sweep_ends_in_a_comparison_table(tmp_path, cache_dir, tiny_dir):
    sweep = tmp_path / "sweep"
    proc = medvl("train", "-m", "lora.r=4,8", "trainer.max_steps=4", *SMALL, f"data.root={tmp_path / 'data'}",
                 f"hydra.sweep.dir={sweep}", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "job_status.json").exists())
    assert len(jobs) == 2
    assert jobs[0].name.startswith("0_data.num_test-32_") and jobs[0].name.endswith("_lora.r-4_max_new_tokens-6_"
                                                                                    "trainer.max_steps-4_trainer."
                                                                                    "per_device_train_batch_size-8")
    for job in jobs:
        assert (job / "adapter" / "adapter_model.safetensors").exists()
        metrics = json.loads((job / "eval" / "metrics.json").read_text())  # eval_after_train is on in sweeps
        assert metrics["overall"]["count"] == 32
        assert (job / "eval" / "tables.md").exists()
    table = (sweep / "model_comparison_tables.md").read_text()
    assert all(job.name in table for job in jobs)
    assert json.loads((sweep / "sweep_summary.json").read_text())["failed"] == []


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_adapter(tmp_path, cache_dir, tiny_dir):
    args = ["trainer.max_steps=12", "trainer.save_steps=4", "trainer.logging_steps=1", *SMALL,
            f"data.root={tmp_path / 'data'}"]
    straight = tmp_path / "straight"
    assert medvl("train", *args, f"hydra.run.dir={straight}", cache=cache_dir).returncode == 0

    run = tmp_path / "killed"
    env = {**os.environ, "MEDVL_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medvl.train", *args, f"hydra.run.dir={run}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "adapter").exists()

    resumed = medvl("train", *args, f"hydra.run.dir={run}", "resume=auto", cache=cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume=auto: continuing from" in resumed.stdout + resumed.stderr
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    a, b = _adapter(straight), _adapter(run)
    assert a.keys() == b.keys()
    # Same data order (sampler seeded by (seed, epoch)) and restored RNG/optimizer state: only float
    # summation order may differ, so the tolerance is a few float32 ulps of the weights' scale.
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    figures = json.loads((run / "train_metrics.json").read_text())
    assert figures["resumed_from_step"] == 4 and figures["train_loss"] > 0  # the loss of steps 5-12

    # resume=auto on the finished run: nothing to train, and the figures its training wrote stay.
    again = medvl("train", *args, f"hydra.run.dir={run}", "resume=auto", cache=cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the checkpoint is already at the last step (12); nothing was trained, train_metrics.json kept" in again.stdout + again.stderr
    assert json.loads((run / "train_metrics.json").read_text()) == figures


@pytest.mark.slow
def test_export_merges_and_reloads(tmp_path, cache_dir, tiny_dir):
    run = tmp_path / "run"
    assert medvl("train", "trainer.max_steps=6", *SMALL, f"data.root={tmp_path / 'data'}", "trainer.learning_rate=0.01",
                 f"hydra.run.dir={run}", cache=cache_dir).returncode == 0
    out = tmp_path / "merged"
    proc = medvl("export", f"+ckpt={run}", f"save_dir={out}", f"hydra.run.dir={tmp_path / 'export'}", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    provenance = json.loads((out / "medvl_export.json").read_text())
    assert provenance["ckpt"] == str(run / "adapter") and provenance["init_from"] == []
    settings = OmegaConf.load(out / "config.yaml")  # what +ckpt=<merged dir> evaluates with: the run's settings
    assert set(settings) == {"model", "data", "prompt"} and settings.data.num_test == 32
    # Model cards: the adapter's (written by medvl.train, replacing peft's placeholder) and the merged model's.
    from huggingface_hub import ModelCard

    adapter_card, merged_card = ModelCard.load(run / "adapter" / "README.md"), ModelCard.load(out / "README.md")
    assert adapter_card.data.library_name == "peft" and merged_card.data.library_name == "transformers"
    assert "## LoRA configuration" in adapter_card.text and "target modules (28)" in merged_card.text

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    merged = AutoModelForImageTextToText.from_pretrained(out)
    base = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    adapted = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_dir), run / "adapter")
    reference = adapted.merge_and_unload().state_dict()
    changed = 0
    for name, value in merged.state_dict().items():
        assert torch.allclose(value, reference[name], atol=1e-6), name
        changed += not torch.equal(value, base.state_dict()[name])
    assert changed == 4 * 7  # every LoRA-targeted LLM linear carries the adapter

    ev = medvl("eval", f"+ckpt={out}", f"data.root={tmp_path / 'data'}", *SMALL[:3], "metrics=[exact_match]",
               "perplexity=false", f"hydra.run.dir={tmp_path / 'ev'}", cache=cache_dir)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["overall"]["count"] == 32


def test_export_without_ckpt_is_one_line(cache_dir, tmp_path):
    proc = medvl("export", f"hydra.run.dir={tmp_path / 'e'}", cache=cache_dir)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "medvl: medvl.export needs +ckpt=<run dir or adapter dir>"
