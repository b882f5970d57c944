"""A length-grouped sampler whose order depends only on (seed, epoch).

HF's ``LengthGroupedSampler`` draws its permutation from the global torch RNG, so a run resumed
from a checkpoint would see a different order than the uninterrupted run. This one is reseeded
from ``(seed, epoch)`` at every epoch (the Trainer calls ``set_epoch``), so a resumed run replays
exactly the same batches.
"""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class EpochLengthGroupedSampler(LengthGroupedSampler):
    def __init__(self, batch_size: int, lengths: list[int], seed: int = 0):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
