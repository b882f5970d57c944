"""How many DataLoader worker processes feed each training rank (``trainer.dataloader_num_workers``).

Every training row is encoded on the fly (:class:`medvl.data.dataset.VQADataset`): its image is decoded, resized
to the model's pixel budget and cut into patches, and its conversation tokenized. At the real presets' budget
(1280 image tokens) that is tens of milliseconds of CPU per row (``benchmarks/data_loading.py`` measures it), a
second or more per step of 8 rows per device, which in the training process itself would leave the GPU idle
between steps. Worker processes prepare the next batches while the GPU computes.

``null`` (the default): on a CUDA machine, ``min(4, CPUs per local rank - 1)`` and at least 1 per rank, kept
alive across epochs; on the CPU, 0 (the rows are encoded between steps, as every test expects). An explicit
number wins.
"""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: The most workers ``null`` gives a rank: enough to keep a GPU fed at these encode costs, few enough to leave
#: cores to the other ranks of the node and to the training process itself.
AUTO_MAX = 4


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a SLURM or container share, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def dataloader_workers(cfg: DictConfig) -> int:
    """``trainer.dataloader_num_workers`` with ``null`` resolved for this machine and launch."""
    value = cfg.trainer.dataloader_num_workers
    if value is not None:
        return int(value)
    if not torch.cuda.is_available():
        return 0
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cpus = available_cpus()
    workers = max(1, min(AUTO_MAX, cpus // ranks_here - 1))
    log.info("trainer.dataloader_num_workers=null: %d worker process(es) per rank encode the rows (%d CPUs for "
             "%d rank(s) on this node)", workers, cpus, ranks_here)
    return workers
