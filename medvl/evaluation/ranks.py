"""Data-parallel evaluation: ``torchrun --nproc_per_node N -m medvl.eval ...`` (one rank per GPU).

Each rank loads the whole model on its own GPU (``device=auto``: ``cuda:$LOCAL_RANK``) and predicts every
N-th batch of the rows still to do, so every batch is the one a single process would form and the
merged predictions equal a one-process run's. Each rank appends to its own ``predictions.rank<R>.jsonl``;
rank 0 folds those into ``predictions.jsonl`` (at the start, from an interrupted run of any world size,
and at the end), then scores and writes every report alone. A model larger than one GPU instead runs in
one process with ``device=auto_shard``.

The entry point (``medvl/eval.py``) starts the process group; ``evaluate()`` only asks whether there is
one, so the evaluation after training (rank 0 alone, its group already closed) runs as one process.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

#: How long a rank waits at a barrier. The ranks exchange no tensors, they only wait for one another, above all
#: for rank 0 scoring and writing the reports alone (METEOR, BERTScore, the HTML report, W&B; with compare_base,
#: before the next model's predictions), which on a large split can outlast NCCL's 10-minute watchdog.
BARRIER_TIMEOUT = timedelta(hours=3)


def start() -> None:
    """Join the launch's process group when started by torchrun (WORLD_SIZE > 1): gloo, on the CPU, also on GPU
    nodes (barriers only: no GPU memory for NCCL's communicators), with :data:`BARRIER_TIMEOUT`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)


def finish() -> None:
    """Wait for rank 0's writes, then leave the group (a rank exiting with it open can abort the others)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
