"""ZeRO-3 partitions the weights as they load: each of 2 CPU ranks holds half of the model after
medvl.train's loading step (benchmarks/zero3_load.py runs it in each rank), not a whole copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from medvl.config import validate
from medvl.models.loading import load_model
from medvl.models.lora import apply_training_setup

from .conftest import REPO


def _earlier_stage(compose, out):
    """An align run dir as training leaves it, whose merger adapter changes the weights (random B)."""
    cfg = compose(["stage=align"])
    validate(cfg)
    model = apply_training_setup(load_model(cfg.model), cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.save_pretrained(out / "adapter")
    (out / "config.yaml").write_text(OmegaConf.to_yaml({"init_from": None}))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("chained", [False, True])
def test_each_rank_holds_half_of_the_weights_after_loading(chained, tiny_dir, cache_dir, tmp_path, compose):
    # chained: a later stage merges the earlier stage's adapter into the gathered weights, then re-partitions them.
    stage = ["stage=instruct", f"init_from={_earlier_stage(compose, tmp_path / 'align')}"] if chained else []
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MEDVL_CACHE": str(cache_dir)}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MEDVL_RUN_DIR"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "benchmarks" / "zero3_load.py"), "--out", str(tmp_path / "ranks"), "deepspeed=zero3", *stage],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = ranks[0]["total"]
    assert total > 900_000 and all(r["total"] == total and r["world_size"] == 2 for r in ranks)
    for r in ranks:
        # Half of every tensor, rounded up per tensor (ZeRO-3 pads each to a multiple of the world size).
        assert 0.5 <= r["share"] < 0.51, r
        assert r["added"] > 0  # LoRA, added after loading: partitioned later by the Trainer's engine
    assert sum(r["local"] for r in ranks) < total * 1.01
