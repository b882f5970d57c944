"""benchmarks/data_loading.py runs end to end (--smoke) and measures what it says, with medvl's own code."""

from __future__ import annotations

import logging

import pytest

from .conftest import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("data_loading") as module:
        yield module


def test_smoke_measures_every_preset_with_workers_and_both_eval_encodings(bench, capsys):
    results = bench.main(["--smoke"])
    printed = capsys.readouterr().out
    assert set(results["presets"]) == {"7b", "qwen3_vl_8b"}
    for preset, r in results["presets"].items():
        # The presets' pixel budgets (28x28 and 32x32 pixels per image token), not the tiny models' own.
        assert r["max_pixels"] == 1280 * (28 * 28 if preset == "7b" else 32 * 32)
        assert r["image_tokens"] > 0 and r["encode_ms"] > 0
        # Each loop waits the simulated step per batch at least.
        assert set(r["loop_s_per_batch"]) == {0, 1} and all(v >= r["step_s"] for v in r["loop_s_per_batch"].values())
        assert r["eval_rows_per_s_twice"] > 0 and r["eval_rows_per_s_once"] > 0
        assert {k: len(v) for k, v in r["eval_loop_rows_per_s"].items()} == {"in turn": 2, "background": 2}
    assert "training loop with a 0.01 s step, 1 worker(s)" in printed and "evaluation encoding:" in printed
    assert "evaluation loop, tiny model on this CPU: in turn " in printed
    assert logging.root.manager.disable == logging.NOTSET  # logging left as it was for the tests that follow
