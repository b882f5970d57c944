"""What each rank holds after medvl loads a model for training under ZeRO-3 (``deepspeed=zero3``).

    DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 benchmarks/zero3_load.py [--out DIR] [overrides]
    (on GPUs: torchrun --nproc_per_node 8 benchmarks/zero3_load.py model=32b)

Each rank runs medvl.training.run.load_for_training (what ``medvl.train`` does before the Trainer starts)
and prints the model's parameter count, the elements this rank holds in memory, their share, and the
process's peak resident memory. Under ZeRO-3 the share is about 1/world_size: weights are partitioned
as they load. ``--model-first`` loads the model before the TrainingArguments exist (medvl's order
before the fix), where every rank holds the whole model. ``--out DIR`` writes ``rank<N>.json``.
Extra arguments are Hydra overrides of conf/train.yaml (default ``deepspeed=zero3``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

import torch


def held(model: torch.nn.Module) -> dict[str, int]:
    """Elements of the loaded weights (all of them, and this rank's ZeRO-3 partitions of them) and of the
    parameters added after loading (LoRA), which every rank holds whole until the Trainer's DeepSpeed
    engine partitions them."""
    counts = {"total": 0, "local": 0, "added": 0}
    for name, p in model.named_parameters():
        if "lora_" in name:
            counts["added"] += p.numel()
        elif hasattr(p, "ds_tensor"):
            counts["total"] += p.ds_numel
            counts["local"] += p.ds_tensor.numel()
        else:
            counts["total"] += p.numel()
            counts["local"] += p.numel()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--model-first", action="store_true")
    args, overrides = ap.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from hydra import compose, initialize_config_dir

    from medvl.config import CONF_DIR, validate
    from medvl.training.run import build_model, load_for_training, training_arguments

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out_dir = Path(tempfile.mkdtemp(prefix=f"medvl-zero3-{rank}-"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"output_dir={out_dir}", "deepspeed=zero3", *overrides])
    validate(cfg)  # as train() does first (lora=auto is resolved there)
    if args.model_first:
        _, model = build_model(cfg)
        targs = training_arguments(cfg, out_dir)
    else:
        targs, _, model = load_for_training(cfg, out_dir)
    counts = held(model)
    record = {"rank": rank, "world_size": world, **counts, "share": counts["local"] / counts["total"],
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "order": "model-first" if args.model_first else "arguments-first", "model": str(cfg.model.name)}
    print(f"rank {rank}/{world} ({record['order']}, model={record['model']}): holds {counts['local']:,} of the "
          f"{counts['total']:,} loaded parameters ({record['share']:.1%}; 1/world_size = {1 / world:.1%}) "
          f"+ {counts['added']:,} LoRA parameters, peak RSS {record['peak_rss_mib']:.0f} MiB", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"rank{rank}.json").write_text(json.dumps(record))
    del targs, model
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.exit(0)


if __name__ == "__main__":
    main()
