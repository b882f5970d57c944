"""ZeRO-3 partitions the weights as they load: each of 2 CPU ranks holds half of the model after
medvl.train's loading step (benchmarks/zero3_load.py runs it in each rank), not a whole copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_each_rank_holds_half_of_the_weights_after_loading(tiny_dir, cache_dir, tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MEDVL_CACHE": str(cache_dir)}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MEDVL_RUN_DIR"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "benchmarks" / "zero3_load.py"), "--out", str(tmp_path / "ranks"), "deepspeed=zero3"],
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
