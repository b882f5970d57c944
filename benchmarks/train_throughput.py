"""Length-grouped vs random batching on the synth data: padding efficiency and training samples/s.

    python benchmarks/train_throughput.py [--steps 60] [--batch-size 16]

Padding efficiency = real tokens / padded tokens over all batches of one epoch, with the batches
HF's LengthGroupedSampler forms from header-computed lengths vs shuffled fixed-size batches.
Samples/s comes from short real training runs of the default tiny experiment, one per strategy,
measured back to back in this process.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers.trainer_pt_utils import LengthGroupedSampler

from medvl.config import CONF_DIR
from medvl.data.dataset import VQADataset
from medvl.data.splits import load_split
from medvl.models.loading import load_processor
from medvl.training.run import train


def random_batches(n: int, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Shuffled fixed-size batches of indices: the baseline length grouping is measured against."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def efficiency(lengths: list[int], batches: list[list[int]]) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return real / padded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="medvl-bench-"))

    def cfg_for(grouped: bool, name: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[
                f"output_dir={tmp / name}", f"trainer.max_steps={args.steps}", "trainer.logging_steps=1000",
                f"trainer.per_device_train_batch_size={args.batch_size}", "trainer.save_steps=100000",
                f"trainer.group_by_length={grouped}"])

    cfg = cfg_for(True, "probe")
    processor = load_processor(cfg.model)
    rows = load_split(cfg.data, cfg.data.train_split)
    t0 = time.perf_counter()
    lengths = VQADataset(rows, processor, cfg.data.root).lengths
    t_len = time.perf_counter() - t0
    grouped = list(LengthGroupedSampler(args.batch_size, lengths=lengths))
    grouped_batches = [grouped[i : i + args.batch_size] for i in range(0, len(grouped), args.batch_size)]
    rand_batches = random_batches(len(rows), args.batch_size)
    print(f"rows: {len(rows)}, token lengths {min(lengths)}..{max(lengths)}, "
          f"header lengths computed in {t_len:.2f} s")
    print(f"padding efficiency  grouped: {efficiency(lengths, grouped_batches):.3f}   "
          f"random: {efficiency(lengths, rand_batches):.3f}")

    train(cfg_for(True, "warmup"))  # first-run costs (thread pools, allocator) hit neither measurement
    speeds: dict[str, float] = {"grouped": 0.0, "random": 0.0}
    for rep in range(2):  # interleaved, best of two: other load on the machine hits both alike
        for name, flag in (("grouped", True), ("random", False)):
            m = train(cfg_for(flag, f"{name}{rep}"))
            speeds[name] = max(speeds[name], m["train_samples_per_second"])
    print(f"training samples/s  grouped: {speeds['grouped']:.1f}   random: {speeds['random']:.1f}   "
          f"ratio: {speeds['grouped'] / speeds['random']:.2f}  ({args.steps} steps of batch {args.batch_size})")


if __name__ == "__main__":
    main()
