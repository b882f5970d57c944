"""Several GPUs visible to one process (no torchrun): one GPU, never nn.DataParallel, and the launcher named.

No GPU here: torch.cuda is made to report four devices, which is all the Trainer reads to decide.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from medvl.training.distributed import one_gpu_without_launcher


@pytest.fixture
def four_gpus(monkeypatch):
    """torch.cuda as a node with four GPUs shows it to a process started without a launcher."""
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a, **k: None)
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # no "cuda" state left for later tests


def test_one_process_with_four_gpus_trains_on_one_and_names_the_launcher(four_gpus, compose, tmp_path, caplog):
    from medvl.training.run import training_arguments

    cfg = compose(["trainer.per_device_train_batch_size=3"])
    with caplog.at_level(logging.WARNING, logger="medvl.training.distributed"):
        args = training_arguments(cfg, tmp_path / "out")
    assert args.n_gpu == 1 and str(args.device) == "cuda:0"
    assert args.train_batch_size == 3  # not 3 x 4: no DataParallel batch across replicas
    (line,) = [r.getMessage() for r in caplog.records if r.name == "medvl.training.distributed"]
    assert "4 GPUs" in line and "\n" not in line
    assert "NPROC=4 bash launchers/multi_gpu.sh" in line and "torchrun --standalone --nproc_per_node 4" in line


def test_trainer_does_not_wrap_the_model_in_data_parallel(four_gpus, compose, tmp_path, monkeypatch):
    from transformers import Trainer

    from medvl.training.run import training_arguments

    wrapped = []

    class RecordingDataParallel(torch.nn.Module):  # the real one would query the (absent) GPUs' properties
        def __init__(self, module):
            super().__init__()
            wrapped.append(module)
            self.module = module

    monkeypatch.setattr(torch.nn, "DataParallel", RecordingDataParallel)
    model = torch.nn.Linear(2, 2)
    with mock.patch.object(Trainer, "_move_model_to_device"):  # no cuda:0 to move to
        trainer = Trainer(model=model, args=training_arguments(compose(), tmp_path / "out"))
    assert trainer._wrap_model(trainer.model, training=True) is model
    assert trainer._wrap_model(trainer.model, training=False) is model
    assert wrapped == []


def test_ranks_of_a_launch_are_left_to_it(monkeypatch):
    """Under torchrun each rank already has one GPU (n_gpu is 1 there); the arguments are not touched."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = SimpleNamespace(n_gpu=4, device="cuda:1")
    one_gpu_without_launcher(args)
    assert args.n_gpu == 4 and not hasattr(args, "_n_gpu")


def test_one_gpu_is_left_alone(monkeypatch, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = SimpleNamespace(n_gpu=1, device="cuda:0")
    with caplog.at_level(logging.WARNING):
        one_gpu_without_launcher(args)
    assert not hasattr(args, "_n_gpu") and not caplog.records
