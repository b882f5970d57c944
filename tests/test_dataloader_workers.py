"""trainer.dataloader_num_workers: worker processes encode the rows; null picks a number per machine and launch."""

from __future__ import annotations

import json

import pytest

import medvl.training.workers as workers
from medvl.config import ConfigError
from medvl.training.checks import validate_training
from medvl.training.run import train, training_arguments
from medvl.training.workers import dataloader_workers

from .conftest import small_data_overrides


@pytest.mark.parametrize("cpus, ranks, expected", [(16, 1, 4), (16, 8, 1), (64, 8, 4), (2, 1, 1), (24, 4, 4),
                                                   (12, 4, 2)])
def test_null_gives_each_gpu_rank_workers_from_its_share_of_the_cpus(compose, monkeypatch, cpus, ranks, expected):
    monkeypatch.setattr(workers.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(workers, "available_cpus", lambda: cpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    assert dataloader_workers(compose([])) == expected


def test_null_is_no_workers_on_the_cpu_and_a_number_wins(compose, monkeypatch):
    monkeypatch.setattr(workers.torch.cuda, "is_available", lambda: False)
    assert dataloader_workers(compose([])) == 0
    monkeypatch.setattr(workers.torch.cuda, "is_available", lambda: True)
    assert dataloader_workers(compose(["trainer.dataloader_num_workers=0"])) == 0
    assert dataloader_workers(compose(["trainer.dataloader_num_workers=7"])) == 7


def test_a_negative_number_of_workers_is_one_line(compose):
    with pytest.raises(ConfigError, match=r"^trainer.dataloader_num_workers=-1 is invalid: must be 0 or more"):
        validate_training(compose(["trainer.dataloader_num_workers=-1"]))


def test_workers_are_kept_across_epochs(compose, tmp_path):
    args = training_arguments(compose(["trainer.dataloader_num_workers=2"]), tmp_path)
    assert args.dataloader_num_workers == 2 and args.dataloader_persistent_workers
    args = training_arguments(compose(["trainer.dataloader_num_workers=0"]), tmp_path)
    assert args.dataloader_num_workers == 0 and not args.dataloader_persistent_workers


@pytest.mark.parametrize("packing", [False, True])
def test_training_with_worker_processes_sees_the_same_batches(compose, small_synth, tiny_dir, tmp_path, packing):
    """Rows encoded in two worker processes (padded, or packed by the collator there) train exactly as rows encoded
    in the training process: same losses and gradient norms step after step."""
    steps = ["trainer.max_steps=3", "trainer.per_device_train_batch_size=4", "trainer.logging_steps=1",
             "trainer.save_steps=1000", "lora.dropout=0", f"trainer.packing={str(packing).lower()}",
             *small_data_overrides(small_synth)]
    logged = {}
    for n in (0, 2):
        out = tmp_path / f"workers-{n}"
        train(compose([*steps, f"trainer.dataloader_num_workers={n}"], output_dir=out))
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        logged[n] = [(h["loss"], h["grad_norm"]) for h in history if "loss" in h]
    assert len(logged[2]) == 3
    for (loss, norm), (w_loss, w_norm) in zip(logged[0], logged[2]):
        assert w_loss == pytest.approx(loss, abs=1e-6) and w_norm == pytest.approx(norm, rel=1e-5)
